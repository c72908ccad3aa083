"""Asynchronous evaluation: checkpoint events, the snapshots they point at, and the worker that serves them.

Every checkpoint a training stage saves gets a snapshot, `RUN/evals/<stage>/step-N/model` (hard links to
the checkpoint's model files: no copy, and it outlives the checkpoint's pruning), and an `eval` event carrying
everything a worker needs (model path, suite, output directory, MLflow parent), so a worker on another machine
needs only the queue and the shared run directory. Workers (`openhcx worker`) are separate, niced processes:
training never waits for them. A worker writes `results.json` atomically before it marks the event done and
logs one MLflow child run per evaluation, found again by its event key, so a worker killed at any point
leaves an evaluation that is retried, never one that is lost or recorded twice.
Not here: what a suite measures (suites.py), the queue (events.py).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from openhcx.io import UserError, atomic_dir, require_file
from openhcx.pipeline.suites import Suite
from openhcx.train.trainer import Callback

SUITE_STAGES = ("base", "sft", "reward", "ppo")
STEP_DIR = "step-{:08d}"


def evaluation(workers: int = 1, nice: int = 10, suites: dict[str, Suite] | None = None,
               final: Suite | None = None) -> dict:
    """The recipe's `evaluation` section.

    Args:
        workers: Evaluation worker processes the runner starts on this machine (0: only workers started
            elsewhere with `openhcx worker`).
        nice: Niceness of those workers (0-19): training keeps priority on shared cores.
        suites: Suite per training stage (base, sft, reward, ppo), run on each of its checkpoints.
        final: Suite run on the final model of each language-model stage (base, sft, ppo).
    """
    return dict(workers=workers, nice=nice, suites=suites or {}, final=final)


def evaluation_settings(section: dict, made: set[str], run: Path, where: str) -> dict:
    """Validate the `evaluation` section: suite names, types, files; `bpb: corpus` means this run's corpus."""
    from openhcx.recipe import stage_args

    settings = stage_args(evaluation, section, f"{where}:evaluation")
    if settings["workers"] < 0 or not 0 <= settings["nice"] <= 19:
        raise UserError(f"{where}:evaluation: workers must be >= 0 and nice within 0-19")
    suites = {}
    for name, suite in settings["suites"].items():
        if name not in SUITE_STAGES:
            raise UserError(f"{where}:evaluation.suites.{name}: not a training stage ({', '.join(SUITE_STAGES)})")
        if name not in made:
            raise UserError(f"{where}:evaluation.suites.{name}: the recipe has no {name} stage")
        suites[name] = _resolve(suite, made, run, f"{where}:evaluation.suites.{name}")
    final = settings["final"]
    settings["final"] = _resolve(final, made, run, f"{where}:evaluation.final") if final is not None else None
    settings["suites"] = suites
    return settings


def _resolve(suite: Suite, made: set[str], run: Path, where: str) -> dict:
    fields = asdict(suite)
    if fields["bpb"] == "corpus":
        if "corpus" not in made:
            raise UserError(f"{where}.bpb: 'corpus' names this run's corpus, but the recipe has no corpus stage")
        fields["bpb"] = str(run / "corpus")
    elif fields["bpb"] is not None:
        require_file(fields["bpb"], f"{where}.bpb")
    for key in ("prompts", "pairs", "data_root"):
        if fields[key] is not None and not Path(fields[key]).exists():
            raise UserError(f"{where}.{key}: {fields[key]} does not exist")
    return fields


# ---- events --------------------------------------------------------------------------------------------------


def snapshot(checkpoint: Path, dest: Path) -> Path:
    """`dest`: the checkpoint's model files (not its trainer state), hard-linked where the filesystem allows."""
    if dest.exists():
        return dest
    with atomic_dir(dest) as tmp:
        for path in checkpoint.iterdir():
            if path.is_file():
                try:
                    os.link(path, tmp / path.name)
                except OSError:  # another filesystem, or links not allowed
                    shutil.copy2(path, tmp / path.name)
    return dest


def _event_payload(plan, stage: str, name: str, model: Path, out: Path, suite: dict, step: int | None) -> dict:
    from openhcx.pipeline.tracking import tracking_uri

    return {"run": str(plan.run), "run_key": plan.run_key, "stage": stage, "name": name, "step": step,
            "model": str(model), "out": str(out), "suite": suite, "experiment": plan.settings["experiment"],
            "tracking_uri": tracking_uri(plan.run), "parent_run": _parent_run_id(plan.run)}


def _parent_run_id(run: Path) -> str | None:
    path = run / "pipeline" / "mlflow.json"
    return json.loads(path.read_text(encoding="utf-8"))["run_id"] if path.is_file() else None


def _ensure(queue, key: str, payload: dict) -> None:
    """Queue the evaluation once; a done one whose results.json is missing is queued again."""
    if not queue.put("eval", key, payload):
        event = queue.get(key)
        if event.status == "done" and not (Path(payload["out"]) / "results.json").is_file():
            queue.requeue(key)


def queue_checkpoint_evaluations(queue, plan, stage: str) -> None:
    """Snapshot and queue every checkpoint of `stage` that has no evaluation event yet (idempotent)."""
    from openhcx.train.checkpoint import NAME

    suite = plan.evaluation["suites"].get(stage)
    root = plan.run / stage / "checkpoints"
    if suite is None or not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        match = NAME.match(path.name)
        if not match:  # temporaries of a save in progress
            continue
        step = int(match.group(1))
        key = f"eval:{plan.run_key}:{stage}:{step}"
        event = queue.get(key)
        if event is not None and not (event.status == "done"):
            continue
        out = plan.run / "evals" / stage / STEP_DIR.format(step)
        try:
            model = snapshot(path, out / "model")
        except FileNotFoundError:  # pruned while we looked
            continue
        _ensure(queue, key, _event_payload(plan, stage, stage, model, out, suite, step))


def queue_final_evaluations(queue, plan) -> None:
    """The final suite on the final model of every language-model stage of the recipe."""
    from openhcx.pipeline.runner import artifact

    suite = plan.evaluation["final"]
    if suite is None:
        return
    for stage, _ in plan.stages:
        if stage.model and stage.name != "reward":
            out = plan.run / "evals" / "final" / stage.name
            _ensure(queue, f"eval:{plan.run_key}:final:{stage.name}",
                    _event_payload(plan, "final", stage.name, artifact(plan.run, stage), out, suite, None))


def evaluations_pending(queue, plan) -> bool:
    prefix = f"eval:{plan.run_key}:"
    return any(e.key.startswith(prefix) and e.status in ("queued", "running") for e in queue.events(kind="eval"))


class CheckpointEvents(Callback):
    """Training callback: each saved checkpoint is snapshotted and queued for evaluation at once (rank 0).

    Active only inside a stage the runner started (it sets OPENHCX_RUN and OPENHCX_STAGE); the runner's
    own scan of checkpoints/ is the safety net should this process die between saving and queueing.
    """

    def __init__(self, run: str, stage: str, queue_url: str):
        from openhcx.pipeline.events import EventQueue
        from openhcx.pipeline.runner import make_plan

        self.plan = make_plan(Path(run) / "recipe.yaml", run)
        self.stage, self.queue = stage, EventQueue(queue_url)

    def on_checkpoint(self, trainer, path) -> None:
        if trainer.world.is_main:
            queue_checkpoint_evaluations(self.queue, self.plan, self.stage)


def checkpoint_callbacks() -> list:
    """[CheckpointEvents] inside a stage the runner started, else nothing (a stage run by hand)."""
    run, stage, url = (os.environ.get(k) for k in ("OPENHCX_RUN", "OPENHCX_STAGE", "OPENHCX_QUEUE"))
    return [CheckpointEvents(run, stage, url)] if run and stage and url else []


# ---- the worker ----------------------------------------------------------------------------------------------


def evaluate_event(payload: dict, progress: bool = False) -> dict:
    """Run one evaluation event's suite (or reuse its results.json) and record it in MLflow once."""
    from openhcx.pipeline.mlflow_tree import log_evaluation
    from openhcx.pipeline.suites import run_suite

    out = Path(payload["out"])
    results_file = out / "results.json"
    if results_file.is_file():  # written by a worker that died before marking the event done
        results = json.loads(results_file.read_text(encoding="utf-8"))
    else:
        checkpoint = {"stage": payload["name"] if payload["stage"] == "final" else payload["stage"],
                      "step": payload["step"], "path": payload["model"], "final": payload["stage"] == "final"}
        results = run_suite(payload["model"], str(out), Suite(**payload["suite"]), checkpoint, progress=progress)
    log_evaluation(payload, results)
    return {"overall": results.get("overall"), "metrics": results.get("metrics", {})}


def worker(queue: str, nice: int = 10, lease_s: float = 120.0, once: bool = False, idle_exit: float = 0.0) -> int:
    """Evaluate checkpoints from an event queue until stopped; run it on any machine that sees the run directory.

    Args:
        queue: Event queue URL (postgresql://... to share one across machines, or sqlite:///RUN/pipeline/queue.db).
        nice: Niceness to run at (0-19).
        lease_s: Seconds an event stays ours without a heartbeat (heartbeats come every lease_s / 3).
        once: Evaluate at most one event, then exit.
        idle_exit: Exit after this many seconds without work (0: never).
    """
    from openhcx.pipeline.events import EventQueue, worker_id

    if nice:
        os.nice(nice)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a worker's output is a log next to training's: one line per evaluation
    q, me = EventQueue(queue), worker_id()
    done, idle_since = 0, time.time()
    while True:
        event = q.claim(me, ["eval"], lease_s)
        if event is None:
            if once or (idle_exit and time.time() - idle_since > idle_exit):
                return done
            time.sleep(1.0)
            continue
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(q.url, event.id, me, lease_s, stop), daemon=True)
        beat.start()
        started = time.time()
        try:
            result = evaluate_event(event.payload) | {"started": started, "finished": time.time()}
        except Exception as e:  # recorded on the event, the worker goes on
            message = f"{type(e).__name__}: {e}" if isinstance(e, UserError) else traceback.format_exc(limit=3)
            # bad input fails the same way every time: no retry; anything else may be transient
            status = q.fail(event.id, me, message.strip()[-2000:], retry=not isinstance(e, UserError))
            print(f"worker {me}: {event.key} {status}: {message.strip().splitlines()[-1]}", flush=True)
        else:
            q.done(event.id, me, result)
            done += 1
            label = f"{event.payload['stage']} step {event.payload['step']}" if event.payload["step"] is not None \
                else f"final {event.payload['name']}"
            print(f"eval {label}: {event.payload['out']}/results.json ({_figures(result)})", flush=True)
        finally:
            stop.set()
            beat.join()
        idle_since = time.time()
        if once:
            return done


def _heartbeat(url: str, event_id: int, me: str, lease_s: float, stop: threading.Event) -> None:
    from openhcx.pipeline.events import EventQueue

    q = EventQueue(url)  # its own connection: the worker's may be busy
    while not stop.wait(lease_s / 3):
        q.heartbeat(event_id, me, lease_s)
    q.close()


def _figures(result: dict) -> str:
    parts = [f"{k} {v:.4g}" for k, v in (result.get("metrics") or {}).items() if isinstance(v, (int, float))]
    if result.get("overall") is not None:
        parts.append(f"overall {result['overall']:.2f}")
    return ", ".join(parts) or "no figures"


def main() -> None:
    from jsonargparse import CLI

    CLI(worker, as_positional=False)


if __name__ == "__main__":
    main()
