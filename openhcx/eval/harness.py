"""`openhcx eval`: prompts, few-shot sampling, scoring, caching and result files for registered tasks.

Multiple-choice tasks are scored by log-likelihood in one of two modes; generation tasks decode completions
(greedy or sampled, `n` per prompt, chats answered turn by turn) and hand them to the task's scorer.
Two scoring modes. `loglik` is lm-evaluation-harness's: the same prompt string, few-shot examples
drawn the same way (canonical first-n, or `random.Random(seed).sample` per item in order), every choice
scored by its log-likelihood, acc and length-normalised acc_norm. `letters` is the report's: options
are shown with letters and the answer is the letter with the highest next-token probability among
the option letters. Requests go through a resumable cache in the output directory, so a killed run
rerun with the same command continues where it stopped and ends with the same scores.
Not here: model execution (backends.py), task files (tasks/), category tables and charts (report.py).
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from openhcx.eval import metrics as M
from openhcx.eval.backends import Backend, Request, open_backend
from openhcx.eval.cache import Cache, request_key
from openhcx.eval.categories import CategoryScore, category_scores, overall
from openhcx.eval.generation import GenRequest, Generator, Result, open_generator, request_seed
from openhcx.eval.tasks import REGISTRY, Item, Task, task_dir
from openhcx.eval.tasks.mmlu import lettered
from openhcx.io import UserError, atomic_file, write_json, write_manifest

MODES = ("loglik", "letters")


@dataclass
class TaskResult:
    task: str
    n: int
    shots: int
    mode: str
    primary: str
    metrics: dict[str, float]


@dataclass
class EvalResults:
    model: str
    mode: str
    tasks: dict[str, TaskResult]
    categories: list[CategoryScore]
    overall: float | None
    config: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """Per-task metrics and the category scores as Markdown, for the terminal."""
        lines = ["| task | n | shots | metrics |", "|---|---|---|---|"]
        for name, r in self.tasks.items():
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
            lines.append(f"| {name} | {r.n} | {r.shots} | {metrics} |")
        lines += ["", "| category | score | missing benchmarks |", "|---|---|---|"]
        for c in self.categories:
            score = "missing" if c.score is None else f"{c.score:.2f}"
            lines.append(f"| {c.name} | {score} | {', '.join(c.missing)} |")
        overall = "missing" if self.overall is None else f"{self.overall:.2f}"
        lines.append(f"| **Overall** (mean of categories present) | {overall} | |")
        return "\n".join(lines)


def sample_shots(task: Task, items: list[Item], pool: list[Item], k: int, seed: int) -> list[list[Item]]:
    """Few-shot examples per item, drawn exactly as lm-eval draws them (one seeded stream per task)."""
    if k == 0:
        return [[] for _ in items]
    same = task.fewshot_split == task.eval_split
    rnd = random.Random(seed)
    shots = []
    for item in items:
        if task.sampler == "first_n":
            shots.append([x for x in pool if not (same and x == item)][:k])
        elif same:
            shots.append([x for x in rnd.sample(pool, k + 1) if x != item][:k])
        else:
            shots.append(rnd.sample(pool, k))
    return shots


def letterize(task: Task, item: Item) -> Item:
    """The report's format: the raw question with lettered options; the choices are the letters."""
    if not item.options:
        raise UserError(f"{task.name}: letter scoring needs the question's options, which this task lacks")
    letters = tuple(chr(65 + i) for i in range(len(item.options)))
    return Item(query=lettered(item.question, item.options, task.answer_prompt), choices=letters,
                gold=item.gold, question=item.question, options=item.options, meta=item.meta)


def build_requests(task: Task, item: Item, shots: list[Item]) -> list[Request]:
    """Context(s) and continuations for one item: description, shots, then the item's query."""
    d = task.target_delimiter
    prefix = task.description + "".join(
        (s.contexts[s.gold] if s.contexts else s.query) + d + s.answer_text() + task.fewshot_delimiter for s in shots
    )
    if item.contexts:  # partial scoring: each choice completes the context, the target is scored
        return [Request(prefix + c, (d + item.target,)) for c in item.contexts]
    return [Request(prefix + item.query, tuple(d + c for c in item.choices))]


def item_record(task: Task, index: int, item: Item, lls: list[float], greedy: list[bool]) -> dict:
    choices = item.contexts or item.choices
    rec = {"index": index, "gold": list(item.gold) if isinstance(item.gold, tuple) else item.gold,
           "lls": lls, "greedy": greedy, **M.choice_scores(lls, choices, item.gold)}
    if "mc2" in task.metrics:
        rec["mc2"] = M.mc2(lls, item.get("true_mask"))
    if "bias" in task.metrics:
        rec.update(condition=item.get("condition"), biased=item.get("biased"), counter=item.get("counter"))
    return rec


def load_items(task: Task, split: str, data_root, data) -> list[Item]:
    items = task.load(task_dir(task, data_root, data), split)
    if not items:
        raise UserError(f"{task_dir(task, data_root, data)}: no {split} items for {task.name}")
    return items


def prepare(task: Task, *, shots: int | None = None, limit: int | None = None, mode: str = "loglik",
            seed: int = 1234, data_root=None, data=None) -> tuple[list[Item], list[list[Request]], int]:
    """Items (first `limit`), their requests with few-shot context, and the number of shots used."""
    k = task.shots if shots is None else shots
    items = load_items(task, task.eval_split, data_root, data)[:limit]
    pool = load_items(task, task.fewshot_split, data_root, data) if k and task.fewshot_split else []
    if k and not pool:
        raise UserError(f"{task.name}: {k}-shot needs a few-shot split, and this task has none")
    per_item_shots = sample_shots(task, items, pool, k, seed)
    if mode == "letters":
        items = [letterize(task, it) for it in items]
        per_item_shots = [[letterize(task, s) for s in ss] for ss in per_item_shots]
    return items, [build_requests(task, it, ss) for it, ss in zip(items, per_item_shots)], k


def run_task(backend: Backend, task: Task, *, shots: int | None = None, limit: int | None = None,
             mode: str = "loglik", seed: int = 1234, data_root=None, data=None, cache: Cache | None = None,
             progress: bool = False) -> tuple[TaskResult, list[dict]]:
    """Score one task; returns the aggregate and one record per item."""
    from tqdm import tqdm

    items, reqs, k = prepare(task, shots=shots, limit=limit, mode=mode, seed=seed, data_root=data_root, data=data)
    flat = [r for rs in reqs for r in rs]
    cache = cache or Cache()
    keys = [request_key(backend.fingerprint, r.context, r.continuations) for r in flat]
    todo = [i for i, key in enumerate(keys) if cache.get(key) is None]
    bar = tqdm(total=len(todo), desc=task.name, disable=None if progress else True, unit="q")  # None: only on a terminal
    pending: dict[str, object] = {}
    for j, scores in backend.loglikelihood([flat[i] for i in todo]):
        pending[keys[todo[j]]] = scores
        bar.update(1)
        if len(pending) >= 32:
            cache.put_many(pending)
            pending = {}
    cache.put_many(pending)
    bar.close()
    records, pos = [], 0
    for index, (item, rs) in enumerate(zip(items, reqs)):
        scores = [s for key in keys[pos:pos + len(rs)] for s in cache.get(key)]
        pos += len(rs)
        records.append(item_record(task, index, item, [s[0] for s in scores], [bool(s[1]) for s in scores]))
    agg = M.aggregate(task.metrics if mode == "loglik" else tuple(m for m in task.metrics if m != "acc_norm"), records)
    return TaskResult(task.name, len(items), k, mode, task.primary, agg), records


def generate_cached(generator: Generator, requests: list[GenRequest], cache: Cache, *, desc: str = "generate",
                    progress: bool = False) -> list[Result]:
    """Completions for every request, decoding only those not in the cache; failures are returned, not cached
    (a rerun retries them). A sampled request's seed comes from its cache key, so reruns draw the same samples."""
    from dataclasses import replace

    from tqdm import tqdm

    keys = [request_key(generator.fingerprint, "generate", r.prompt, r.settings(), r.n) for r in requests]
    requests = [replace(r, seed=request_seed(k)) for r, k in zip(requests, keys)]
    out: list[Result | None] = [cache.get(k) for k in keys]
    todo = [i for i, got in enumerate(out) if got is None]
    bar = tqdm(total=len(todo), desc=desc, disable=None if progress else True, unit="prompt")
    pending: dict[str, object] = {}
    for j, result in generator.generate([requests[i] for i in todo]):
        out[todo[j]] = result
        if isinstance(result, list):
            pending[keys[todo[j]]] = result
        bar.update(1)
        if len(pending) >= 8:
            cache.put_many(pending)
            pending = {}
    cache.put_many(pending)
    bar.close()
    return out


@dataclass
class Scoring:
    """The `ScoreContext` scorers receive: worker processes, progress, the judge and the toxicity scorer (a
    directory or a scorer object; None: env OPENHCX_TOXICITY) when configured."""

    workers: int
    progress: bool
    cache: Cache
    judge_generator: Generator | None = None
    judge_max_new_tokens: int = 1024
    toxicity: object = None

    def judge(self, prompts: list[list[dict]]) -> list[str | None]:
        if self.judge_generator is None:
            raise UserError("this task is graded by a judge: give judge=<model directory or http(s) endpoint>")
        reqs = [GenRequest(tuple((m["role"], m["content"]) for m in p), self.judge_max_new_tokens) for p in prompts]
        got = generate_cached(self.judge_generator, reqs, self.cache, desc="judge", progress=self.progress)
        return [r[0] if isinstance(r, list) else None for r in got]


def run_generation_task(generator: Generator, task: Task, scoring: Scoring, *, shots: int | None = None,
                        limit: int | None = None, seed: int = 1234, data_root=None, data=None,
                        progress: bool = False) -> tuple[TaskResult, list[dict]]:
    """Decode every item's prompt (each turn in order for multi-turn chats) and score the completions."""
    items, reqs, k = prepare(task, shots=shots, limit=limit, seed=seed, data_root=data_root, data=data)
    gen = task.generation
    settings = dict(max_new_tokens=gen.max_new_tokens, stop=gen.stop, temperature=gen.temperature,
                    top_p=gen.top_p, n=gen.samples)
    turns = [item.get("turns") or (rs[0].context,) for item, rs in zip(items, reqs)]
    chat = gen.chat or any(item.get("turns") for item in items)
    answers: list[list[str]] = [[] for _ in items]
    errors: list[str | None] = [None] * len(items)
    for t in range(max(len(x) for x in turns)):
        live = [i for i, x in enumerate(turns) if t < len(x) and errors[i] is None]
        prompts = []
        for i in live:
            if not chat:
                prompts.append(turns[i][0])
                continue
            history = [m for u, a in zip(turns[i][:t], answers[i]) for m in (("user", u), ("assistant", a))]
            prompts.append((*history, ("user", turns[i][t])))
        results = generate_cached(generator, [GenRequest(p, **settings) for p in prompts], scoring.cache,
                                  desc=f"{task.name}" + (f" turn {t + 1}" if t else ""), progress=progress)
        for i, res in zip(live, results):
            if isinstance(res, str):
                errors[i] = res
            elif len(turns[i]) > 1:
                answers[i].append(res[0])
            else:
                answers[i] = list(res)
    completions = [a if e is None else [""] * (len(turns[i]) if len(turns[i]) > 1 else gen.samples)
                   for i, (a, e) in enumerate(zip(answers, errors))]
    records = task.score(items, completions, scoring)
    for index, (rec, comps, err) in enumerate(zip(records, completions, errors)):
        rec.update(index=index, completions=comps, **({"error": err} if err else {}))
    metrics = task.aggregate(records) if task.aggregate else mean_metrics(task.metrics, records)
    failed = sum(e is not None for e in errors)
    if failed:
        metrics["failed_items"] = float(failed)
    return TaskResult(task.name, len(items), k, "generate", task.primary, metrics), records


def mean_metrics(names: tuple[str, ...], records: list[dict]) -> dict[str, float]:
    """Each metric's mean over the items that have it (a judge that gave no grade leaves its item out)."""
    out = {}
    for name in names:
        values = [r[name] for r in records if r.get(name) is not None]
        if values:
            out[name] = sum(values) / len(values)
    return out


def evaluate(model: str, tasks: list[str], *, out: str | None = None, shots: int | None = None,
             limit: int | None = None, mode: str = "loglik", seed: int = 1234, batch_tokens: int = 4096,
             dtype: str = "auto", device: str = "cpu", data_root: str | None = None,
             data: dict[str, str] | None = None, judge: str | None = None, toxicity: str | None = None,
             workers: int | None = None, tracking_uri: str | None = None, progress: bool = True) -> EvalResults:
    """Evaluate `model` (HF directory, .gguf file, or http(s) endpoint) on `tasks` (names or groups).

    shots: override every task's RECIPE §6 default. limit: first N items per task. mode: "loglik"
    (lm-eval style) or "letters" (the report's), for multiple-choice tasks. out: directory for results.json,
    per-item samples/<task>.jsonl, the resumable cache.jsonl and manifest.json; rerunning the same command
    after a crash resumes from the cache. data_root/data: where benchmark files live (see tasks/).
    judge: the model that grades judged tasks (MT-Bench): a checkpoint directory or an http(s) endpoint.
    toxicity: the scorer of toxicity tasks: a directory from `train_toxicity` or an HF classifier (default:
    env OPENHCX_TOXICITY).
    workers: processes for scoring work such as running generated code (default: all cores).
    tracking_uri (or env MLFLOW_TRACKING_URI): also log parameters, scores and files to MLflow.
    """
    if mode not in MODES:
        raise UserError(f"mode: {mode!r} is not one of {MODES}")
    backend, generator = open_models(model, tasks, dtype=dtype, device=device, batch_tokens=batch_tokens)
    results = evaluate_backend(backend, model, tasks, out=out, shots=shots, limit=limit, mode=mode, seed=seed,
                               data_root=data_root, data=data, tracking_uri=tracking_uri, progress=progress,
                               config=dict(dtype=dtype, device=device, batch_tokens=batch_tokens, judge=judge,
                                           toxicity=toxicity),
                               generator=generator, judge=open_generator(judge, device) if judge else None,
                               toxicity=toxicity, workers=workers)
    if progress:
        print(results.summary())
    return results


def open_models(model: str, tasks: list[str], *, dtype: str = "auto", device: str = "cpu",
                batch_tokens: int = 4096) -> tuple[Backend | None, Generator | None]:
    """What `tasks` need of `model`: a scoring backend for multiple-choice ones, a generator for generation ones.
    Unknown task names fail here, before any model loads."""
    selected = REGISTRY.expand(tasks)
    backend = generator = None
    if any(t.output != "generate" for t in selected):
        backend = open_backend(model, dtype=dtype, device=device, batch_tokens=batch_tokens)
    if any(t.output == "generate" for t in selected):
        generator = open_generator(model, device, None if dtype == "auto" else dtype)
    return backend, generator


def evaluate_backend(backend: Backend | None, model: str, tasks: list[str], *, out: str | None = None,
                     shots: int | None = None, limit: int | None = None, mode: str = "loglik", seed: int = 1234,
                     data_root: str | None = None, data: dict[str, str] | None = None,
                     tracking_uri: str | None = None, progress: bool = True, config: dict | None = None,
                     log_to_mlflow: bool = True, generator: Generator | None = None,
                     judge: Generator | None = None, toxicity=None, workers: int | None = None) -> EvalResults:
    """`evaluate` with already-built backends (`model` only labels the results): `backend` scores
    multiple-choice tasks, `generator` decodes generation tasks, `judge` grades judged ones, `toxicity` (a
    scorer directory or object) scores toxicity tasks.

    log_to_mlflow=False leaves tracking to the caller (a pipeline worker records its own evaluation run).
    """
    if mode not in MODES:
        raise UserError(f"mode: {mode!r} is not one of {MODES}")
    selected = REGISTRY.expand(tasks)
    start = time.time()
    outdir = Path(out) if out else None
    cache = Cache(outdir / "cache.jsonl" if outdir else None)
    scoring = Scoring(workers or os.cpu_count() or 1, progress, cache, judge, toxicity=toxicity)
    results: dict[str, TaskResult] = {}
    for task in selected:
        if task.output == "generate":
            if generator is None:
                raise UserError(f"{task.name}: a generation task needs a generator (a checkpoint or endpoint)")
            res, records = run_generation_task(generator, task, scoring, shots=shots, limit=limit, seed=seed,
                                               data_root=data_root, data=data, progress=progress)
        else:
            if backend is None:
                raise UserError(f"{task.name}: multiple-choice scoring needs a local model, not {model}")
            res, records = run_task(backend, task, shots=shots, limit=limit, mode=mode, seed=seed,
                                    data_root=data_root, data=data, cache=cache, progress=progress)
        results[task.name] = res
        if outdir:
            _write_jsonl(outdir / "samples" / f"{task.name}.jsonl", records)
    cats = category_scores({k: v.metrics.get(v.primary) for k, v in results.items()},
                           {k: v.n for k, v in results.items()})
    config = dict(tasks=tasks, shots=shots, limit=limit, mode=mode, seed=seed, **(config or {}),
                  data_root=str(data_root) if data_root else None, data=data)
    final = EvalResults(model=model, mode=mode, tasks=results, categories=cats,
                        overall=overall(cats), config=config,
                        seconds=time.time() - start)
    if outdir:
        write_json(outdir / "results.json", final.to_json())
        write_manifest(outdir, "eval", config, {"model": model, "data_root": str(data_root or "")},
                       overall=final.overall)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and log_to_mlflow:
        log_mlflow(final, uri, outdir)
    return final


def _write_jsonl(path: Path, records: list[dict]) -> None:
    import json

    with atomic_file(path, encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def log_mlflow(results: EvalResults, uri: str, outdir: Path | None = None) -> str:
    """One MLflow run per evaluation: config as params, every task metric and category as metrics."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("openhcx-eval")
    with mlflow.start_run(run_name=f"eval:{Path(results.model).name}") as run:
        mlflow.log_params({"model": results.model, "mode": results.mode,
                           **{k: str(v) for k, v in results.config.items()}})
        mlflow.log_metrics({f"{t}/{m}": v for t, r in results.tasks.items() for m, v in r.metrics.items()})
        mlflow.log_metrics({f"category/{c.name}": c.score for c in results.categories if c.score is not None})
        if results.overall is not None:
            mlflow.log_metric("overall", results.overall)
        if outdir:
            mlflow.log_artifact(str(outdir / "results.json"))
        return run.info.run_id
