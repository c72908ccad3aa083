"""The main job: a recipe's stages joined by events, every checkpoint evaluated asynchronously, one MLflow tree.

`openhcx run --recipe R --out RUN` validates the whole recipe before any work, then drives the flow
(corpus -> tokenizer (+ report) -> shards -> pretrain or import -> SFT -> reward model -> PPO -> final
evaluation -> report) through the durable event queue (events.py): finishing a stage emits `stage-done`,
whose handler queues every stage whose inputs are now all complete; nothing here is a fixed loop over calls.
Each stage runs in a child process (its memory and threads go with it; a killed runner takes it along), and
every checkpoint a training stage saves emits an `eval` event that evaluation workers (evaluation.py; separate,
niced processes) pick up while training goes on.

The run directory is the source of truth (DESIGN.md): a stage is complete when its artifact and the runner's
marker `RUN/pipeline/stages/<stage>.json` exist; on every start the runner reconciles the queue with it
(a stage or an evaluation whose event says done but whose output is missing is queued again, a checkpoint
without an evaluation gets one), so a lost message or a killed process delays work but never loses or
repeats it. Not here: the queue (events.py), evaluation workers (evaluation.py), the report (report.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from openhcx.io import UserError, atomic_file, require_file, write_json
from openhcx.pipeline.mlflow_tree import finish_parent_run, log_stage, parent_run
from openhcx.recipe import load_recipe, stage_args


@dataclass(frozen=True)
class Stage:
    """One arrow of the flow: a stage function writing one artifact directory under RUN."""

    name: str  # artifact directory under RUN, and the stage's name in events and status
    section: str  # the recipe section holding its arguments
    target: str  # module:function
    inputs: dict[str, str] = field(default_factory=dict)  # argument -> the stage whose artifact it takes
    trains: bool = False  # writes checkpoints/ that are evaluated as they appear
    model: bool = False  # consumers get RUN/<name>/model rather than RUN/<name>


STAGES = (
    Stage("corpus", "corpus", "openhcx.data.corpus:build_corpus"),
    Stage("tokenizer", "tokenizer", "openhcx.tokenizer.train:train_tokenizer", {"corpus": "corpus"}),
    # The tokenizer report compares with a plain byte-level BPE trained on the same corpus at the same size.
    Stage("tokenizer-plain-bpe", "report", "openhcx.tokenizer.train:train_tokenizer", {"corpus": "corpus"}),
    Stage("tokenizer-report", "report", "openhcx.tokenizer.report:tokenizer_report",
          {"tokenizer": "tokenizer", "corpus": "corpus", "baseline": "tokenizer-plain-bpe"}),
    Stage("shards", "shards", "openhcx.data.shards:build_shards", {"corpus": "corpus", "tokenizer": "tokenizer"}),
    Stage("base", "pretrain", "openhcx.train.pretrain:pretrain", {"shards": "shards", "tokenizer": "tokenizer"},
          trains=True, model=True),
    Stage("base", "import_hf", "openhcx.model.hf:import_hf", model=True),
    Stage("sft", "sft", "openhcx.train.sft:sft", {"base": "base"}, trains=True, model=True),
    Stage("reward", "reward", "openhcx.train.reward:train_reward", {"sft": "sft"}, trains=True, model=True),
    Stage("ppo", "ppo", "openhcx.train.ppo:ppo", {"sft": "sft", "reward": "reward"}, trains=True, model=True),
)
SECTIONS = {s.section for s in STAGES} | {"evaluation", "pipeline"}
FINAL = "final"  # the stage label of final-model evaluations


def pipeline_settings(queue: str | None = None, experiment: str = "openhcx", lease_s: float = 120.0,
                      stage_attempts: int = 3) -> dict:
    """The recipe's `pipeline` section.

    Args:
        queue: Event queue URL shared with workers on other machines (postgresql://...); default: SQLite in
            RUN/pipeline/queue.db.
        experiment: MLflow experiment holding the run tree (MLFLOW_TRACKING_URI, else SQLite in RUN/mlflow.db).
        lease_s: Seconds a claimed event stays owned without a heartbeat; a killed owner's event is retried after it.
        stage_attempts: Attempts per stage within one `openhcx run` before the run stops with the stage's error.
    """
    if lease_s <= 0 or stage_attempts < 1:
        raise UserError("pipeline: lease_s must be positive and stage_attempts at least 1")
    return dict(queue=queue, experiment=experiment, lease_s=lease_s, stage_attempts=stage_attempts)


@dataclass(frozen=True)
class Plan:
    """A validated recipe: the stages it runs (flow order), each with its resolved arguments."""

    run: Path
    recipe: dict
    stages: list[tuple[Stage, dict]]  # (stage, arguments as given to the function, JSON-able)
    needs: dict[str, list[str]]  # stage -> stages of this recipe it waits for
    evaluation: dict  # the validated evaluation section (openhcx.pipeline.evaluation.evaluation_settings)
    settings: dict  # the validated pipeline section

    def stage(self, name: str) -> tuple[Stage, dict]:
        return next((s, a) for s, a in self.stages if s.name == name)

    @property
    def run_key(self) -> str:
        """Names this run's events in a queue several runs may share."""
        return hashlib.sha1(str(self.run.resolve()).encode()).hexdigest()[:10]


def artifact(run: Path, stage: Stage) -> Path:
    return run / stage.name / "model" if stage.model else run / stage.name


def _out_arg(run: Path, stage: Stage) -> str:
    return str(artifact(run, stage) if stage.section == "import_hf" else run / stage.name)


def _to_json(value: Any) -> Any:
    """Validated arguments (dataclasses, paths) as plain JSON values for the stage's child process."""
    if hasattr(value, "__dataclass_fields__"):
        return _to_json(asdict(value))
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return str(value) if isinstance(value, Path) else value


# Arguments holding user files that must exist before anything starts (lists of paths allowed).
PATH_ARGS = ("data", "prompts", "heldout", "src", "base", "sft", "reward")


def _check_paths(section: str, args: dict, where: str) -> None:
    for key in PATH_ARGS:
        values = args.get(key)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and not value.startswith("package:") and not Path(value).exists():
                raise UserError(f"{where}:{section}.{key}: {value} does not exist")
    for source in args.get("sources") or []:
        if not Path(source["path"]).exists():
            raise UserError(f"{where}:{section}.sources: {source['path']} does not exist")


def make_plan(recipe_path: str | Path, run: str | Path) -> Plan:
    """Validate every section, input path and dependency of a recipe before any work starts."""
    from openhcx.cli import load_function
    from openhcx.pipeline.evaluation import evaluation_settings

    run, where = Path(run), str(recipe_path)
    sections = load_recipe(recipe_path, SECTIONS)
    if "pretrain" in sections and "import_hf" in sections:
        raise UserError(f"{where}: both pretrain and import_hf make the base model; keep one")
    chosen = [s for s in STAGES if s.section in sections]
    made = {s.name for s in chosen}
    stages, needs = [], {}
    for stage in chosen:
        section = dict(sections[stage.section] or {})
        if stage.name == "tokenizer-plain-bpe":  # the baseline shares the tokenizer's size and corpus filters
            section = {k: v for k, v in (sections.get("tokenizer") or {}).items() if k != "morpheme_aware"}
            section["morpheme_aware"] = False
        fixed: dict[str, Any] = {"out": _out_arg(run, stage)}
        for arg, producer in stage.inputs.items():
            if producer in made:
                fixed[arg] = str(artifact(run, next(s for s in chosen if s.name == producer)))
            elif arg not in section:
                raise UserError(f"{where}:{stage.section}.{arg}: no earlier stage of this recipe makes it (add a "
                                f"'{_section_of(producer)}' section, or set {stage.section}.{arg} to an existing path)")
        fn = load_function(stage.target)
        params = fn.__code__.co_varnames[:fn.__code__.co_argcount]
        for key, value in (("overwrite", True), ("experiment", None)):
            if key in params:
                fixed[key] = value
        fixed = {k: v for k, v in fixed.items() if v is not None}
        args = _to_json(stage_args(fn, section, f"{where}:{stage.section}", **fixed))
        _check_paths(stage.section, {k: v for k, v in args.items() if k not in fixed}, where)
        stages.append((stage, args))
        needs[stage.name] = sorted({p for p in stage.inputs.values() if p in made})
    if not stages:
        raise UserError(f"{where}: no stage section ({', '.join(sorted(SECTIONS - {'evaluation', 'pipeline'}))})")
    settings = stage_args(pipeline_settings, dict(sections.get("pipeline") or {}), f"{where}:pipeline")
    for stage, args in stages:  # training stages log under the run's experiment
        if "experiment" in args:
            args["experiment"] = settings["experiment"]
    evaluation = evaluation_settings(dict(sections.get("evaluation") or {}), made, run, where)
    return Plan(run, sections, stages, needs, evaluation, settings)


def _section_of(stage_name: str) -> str:
    return next(s.section for s in STAGES if s.name == stage_name)


# ---- the run directory: what is complete ------------------------------------------------------------------


def marker(run: Path, name: str) -> Path:
    return run / "pipeline" / "stages" / f"{name}.json"


def is_complete(plan: Plan, name: str) -> bool:
    stage, args = plan.stage(name)
    path = marker(plan.run, name)
    if not (path.is_file() and artifact(plan.run, stage).exists()):
        return False
    recorded = json.loads(path.read_text(encoding="utf-8"))["args"]
    if recorded != args:
        key = next((k for k in sorted(set(recorded) | set(args)) if recorded.get(k) != args.get(k)), "?")
        raise UserError(f"{plan.run}: stage {name} completed with {stage.section}.{key}={recorded.get(key)!r}, the "
                        f"recipe now says {args.get(key)!r}; use a new --out, or delete {plan.run / name} to redo it")
    return True


def check_recipe_unchanged(plan: Plan) -> None:
    """A completed stage whose arguments changed is refused before anything runs (see is_complete)."""
    for stage, _ in plan.stages:
        is_complete(plan, stage.name)


# ---- the runner ---------------------------------------------------------------------------------------------


class Runner:
    """Claims this run's stage events, runs stages as child processes, keeps evaluation workers alive."""

    def __init__(self, plan: Plan, workers: int | None = None):
        from openhcx.pipeline.events import EventQueue, queue_url, worker_id

        self.plan, self.run = plan, plan.run
        self.queue_url = queue_url(plan.run, plan.settings["queue"])  # with its password, for child processes
        self.queue = EventQueue(self.queue_url)
        self.me = worker_id()
        self.stage_kind = f"stage@{plan.run_key}"
        self.done_kind = f"stage-done@{plan.run_key}"
        self.lease = plan.settings["lease_s"]
        self.workers_wanted = plan.evaluation["workers"] if workers is None else workers
        self.workers: list[subprocess.Popen] = []
        self.failed: str | None = None

    # keys -------------------------------------------------------------------------------------------------
    def _key(self, kind: str, name: str) -> str:
        return f"{kind}:{self.plan.run_key}:{name}"

    def reconcile(self) -> None:
        """Make the queue agree with the run directory (called on every start, and again while running)."""
        import socket

        self.queue.release_dead(socket.gethostname(), _alive)
        for stage, args in self.plan.stages:
            key = self._key("stage", stage.name)
            event = self.queue.get(key)
            if is_complete(self.plan, stage.name):
                if not stage.trains:  # training stages are child runs by themselves
                    log_stage(self.plan, self.parent_run, stage, args)
                self.queue.put(self.done_kind, self._key("stage-done", stage.name), {"stage": stage.name})
            elif event is not None and event.status in ("done", "failed"):
                self.queue.requeue(key)  # done without its artifact, or failed in an earlier invocation
            elif all(is_complete(self.plan, n) for n in self.plan.needs[stage.name]):
                self.queue.put(self.stage_kind, key, {"stage": stage.name},
                               max_attempts=self.plan.settings["stage_attempts"])
        self.reconcile_checkpoints()

    def on_stage_done(self, name: str) -> None:
        """A stage finished: queue each stage whose inputs are now all complete."""
        for stage, _ in self.plan.stages:
            if name in self.plan.needs[stage.name] and not is_complete(self.plan, stage.name):
                if all(is_complete(self.plan, n) for n in self.plan.needs[stage.name]):
                    self.queue.put(self.stage_kind, self._key("stage", stage.name), {"stage": stage.name},
                                   max_attempts=self.plan.settings["stage_attempts"])

    def run_stage(self, event) -> None:
        name = event.payload["stage"]
        stage, args = self.plan.stage(name)
        if is_complete(self.plan, name):  # finished just before a crash, its event not yet marked
            self.queue.done(event.id, self.me)
            return
        print(f"== {name}: {stage.target.split(':')[1]} (attempt {event.attempts})", flush=True)
        start = time.time()
        env = {**os.environ, **self.child_env(name)}
        proc = subprocess.Popen([sys.executable, "-m", "openhcx.pipeline.runner", str(self.run), name], env=env,
                                preexec_fn=_die_with_parent)
        while proc.poll() is None:
            self.queue.heartbeat(event.id, self.me, self.lease)
            self.keep_workers()
            self.reconcile_checkpoints()
            _wait(proc, min(5.0, self.lease / 3))
        if proc.returncode != 0:
            error = _last_error(self.run, name) or f"exited with code {proc.returncode}"
            # exit 2 is a UserError (bad data found by the stage): the same every time, so no retry
            status = self.queue.fail(event.id, self.me, error, retry=proc.returncode != 2)
            print(f"== {name} failed: {error}" + (" (retrying)" if status == "queued" else ""), flush=True)
            if status == "failed":
                self.failed = f"stage {name}: {error}"
            return
        write_json(marker(self.run, name), {"stage": name, "args": args, "seconds": round(time.time() - start, 1),
                                            "finished": time.time()})
        if not stage.trains:
            log_stage(self.plan, self.parent_run, stage, args)
        self.queue.put(self.done_kind, self._key("stage-done", name), {"stage": name})
        self.queue.done(event.id, self.me, {"seconds": round(time.time() - start, 1)})

    def child_env(self, stage: str | None = None) -> dict[str, str]:
        """What a stage or worker process needs to join this run: the tracker, the parent run, the queue."""
        from openhcx.pipeline.tracking import tracking_uri

        env = {"MLFLOW_TRACKING_URI": tracking_uri(self.run), "OPENHCX_MLFLOW_PARENT_RUN": self.parent_run,
               "OPENHCX_QUEUE": self.queue_url, "OPENHCX_RUN": str(self.run)}
        return env | ({"OPENHCX_STAGE": stage} if stage else {})

    # evaluation workers ----------------------------------------------------------------------------------
    def keep_workers(self) -> None:
        """Start (or restart) the configured number of local evaluation workers."""
        self.workers = [w for w in self.workers if w.poll() is None]
        nice = self.plan.evaluation["nice"]
        while len(self.workers) < self.workers_wanted:
            cmd = [sys.executable, "-m", "openhcx.pipeline.evaluation", "--queue", self.queue_url,
                   "--nice", str(nice), "--lease_s", str(self.lease)]
            self.workers.append(subprocess.Popen(cmd, env={**os.environ, **self.child_env()},
                                                 preexec_fn=_die_with_parent))

    def stop_workers(self) -> None:
        for w in self.workers:
            w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
        self.workers = []

    def reconcile_checkpoints(self) -> None:
        from openhcx.pipeline.evaluation import queue_checkpoint_evaluations

        for stage, _ in self.plan.stages:
            if stage.trains:
                queue_checkpoint_evaluations(self.queue, self.plan, stage.name)

    # the loop --------------------------------------------------------------------------------------------
    def loop(self) -> None:
        from openhcx.pipeline.evaluation import evaluations_pending, queue_final_evaluations

        while self.failed is None:
            event = self.queue.claim(self.me, [self.done_kind, self.stage_kind], self.lease)
            if event is not None:
                if event.kind == self.done_kind:
                    self.on_stage_done(event.payload["stage"])
                    self.queue.done(event.id, self.me)
                else:
                    self.run_stage(event)
                continue
            if all(is_complete(self.plan, s.name) for s, _ in self.plan.stages):
                queue_final_evaluations(self.queue, self.plan)
                if not evaluations_pending(self.queue, self.plan):
                    return
            elif not self._stage_work_left():
                self.reconcile()  # e.g. a stage event another process marked done without the stage's artifact
                if not self._stage_work_left():
                    self.failed = "no stage can run: " + ", ".join(s.name for s, _ in self.plan.stages
                                                                  if not is_complete(self.plan, s.name))
                    return
            self.keep_workers()
            self.reconcile_checkpoints()
            time.sleep(0.5)

    def _stage_work_left(self) -> bool:
        return any(e.status in ("queued", "running") for kind in (self.stage_kind, self.done_kind)
                   for e in self.queue.events(kind=kind))

    def start(self) -> Path | None:
        """Run to the end: the report's path, or None when a stage failed (its error is printed)."""
        from openhcx.pipeline.report import build_report

        self.parent_run = parent_run(self.plan)
        for event in self.queue.events(kind="eval", status="failed"):  # failed in an earlier invocation: its
            if event.key.startswith(f"eval:{self.plan.run_key}:"):   # cause may be fixed now, as for stages
                self.queue.requeue(event.key)
        self.reconcile()
        self.keep_workers()
        try:
            self.loop()
        finally:
            self.stop_workers()
        if self.failed:
            print(f"error: {self.failed}", file=sys.stderr)
            finish_parent_run(self.plan, self.parent_run, failed=True)
            return None
        report = build_report(str(self.run))
        finish_parent_run(self.plan, self.parent_run, failed=False)
        failed = [e for e in self.queue.events(kind="eval", status="failed")
                  if e.key.startswith(f"eval:{self.plan.run_key}:")]
        if failed:  # the models are there, but a result the report should show is not
            print(f"error: {len(failed)} evaluation(s) failed, first {failed[0].key}: "
                  f"{(failed[0].error or '').strip().splitlines()[-1]} (`openhcx status {self.run}` lists them)",
                  file=sys.stderr)
            return None
        return report


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the runner dies, so a killed run leaves no orphan training the same stage."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _wait(proc: subprocess.Popen, seconds: float) -> None:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass


def _last_error(run: Path, name: str) -> str | None:
    path = run / "pipeline" / "errors" / f"{name}.txt"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def run(recipe: str = "recipes/tiny.yaml", out: str = "runs/demo", workers: int | None = None) -> Path:
    """Run a whole recipe as an event-driven pipeline; rerunning the same command resumes it.

    Stages: corpus -> tokenizer (+ report) -> shards -> pretrain (or import_hf) -> sft -> reward -> ppo ->
    final evaluation -> RUN/report.html. A section the recipe leaves out is skipped; a later stage may take an
    existing checkpoint instead (e.g. sft.base). Checkpoints are evaluated by worker processes while training
    goes on (recipe section `evaluation`); `openhcx status RUN` shows progress from another terminal.

    Args:
        recipe: YAML file with one section per stage (keys: the stage command's arguments), plus `evaluation`
            and `pipeline`.
        out: Run directory; every stage writes its artifact into a subdirectory.
        workers: Local evaluation workers to start (default: evaluation.workers; 0 leaves evaluation to workers
            started elsewhere with `openhcx worker`).
    """
    plan = make_plan(recipe, out)
    plan.run.mkdir(parents=True, exist_ok=True)
    check_recipe_unchanged(plan)
    with atomic_file(plan.run / "recipe.yaml", encoding="utf-8") as f:
        yaml.safe_dump(plan.recipe, f, allow_unicode=True, sort_keys=False)
    report = Runner(plan, workers).start()
    if report is None:
        raise SystemExit(1)
    print(f"run: {plan.run} complete; report {report}; `openhcx status {plan.run}` lists every artifact")
    return report


def stage_main(run_dir: str, name: str) -> None:
    """A stage's child process: rebuild its arguments from RUN/recipe.yaml and call the stage function."""
    from openhcx.cli import load_function

    run = Path(run_dir)
    plan = make_plan(require_file(run / "recipe.yaml", "run recipe"), run)
    stage, args = plan.stage(name)
    errors = run / "pipeline" / "errors" / f"{name}.txt"
    errors.unlink(missing_ok=True)
    fn = load_function(stage.target)
    try:
        fn(**stage_args(fn, args, f"{run}/recipe.yaml"))
    except UserError as e:  # the user's to fix: the message alone, no traceback
        _record_error(errors, str(e))
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:
        _record_error(errors, f"{type(e).__name__}: {e}")
        raise


def _record_error(path: Path, message: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, encoding="utf-8") as f:
        f.write(message)


if __name__ == "__main__":
    stage_main(*sys.argv[1:3])
