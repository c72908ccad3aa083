"""`openhcx eval`: prompts, few-shot sampling, scoring, caching and result files for registered tasks.

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
    bar = tqdm(total=len(todo), desc=task.name, disable=not progress, unit="q")
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


def evaluate(model: str, tasks: list[str], *, out: str | None = None, shots: int | None = None,
             limit: int | None = None, mode: str = "loglik", seed: int = 1234, batch_tokens: int = 4096,
             dtype: str = "auto", device: str = "cpu", data_root: str | None = None,
             data: dict[str, str] | None = None, tracking_uri: str | None = None,
             progress: bool = True) -> EvalResults:
    """Evaluate `model` (HF directory, .gguf file, or http(s) endpoint) on `tasks` (names or groups).

    shots: override every task's RECIPE §6 default. limit: first N items per task. mode: "loglik"
    (lm-eval style) or "letters" (the report's). out: directory for results.json, per-item
    samples/<task>.jsonl, the resumable cache.jsonl and manifest.json; rerunning the same command
    after a crash resumes from the cache. data_root/data: where benchmark files live (see tasks/).
    tracking_uri (or env MLFLOW_TRACKING_URI): also log parameters, scores and files to MLflow.
    """
    if mode not in MODES:
        raise UserError(f"mode: {mode!r} is not one of {MODES}")
    REGISTRY.expand(tasks)  # unknown names fail before the model loads
    backend = open_backend(model, dtype=dtype, device=device, batch_tokens=batch_tokens)
    results = evaluate_backend(backend, model, tasks, out=out, shots=shots, limit=limit, mode=mode, seed=seed,
                               data_root=data_root, data=data, tracking_uri=tracking_uri, progress=progress,
                               config=dict(dtype=dtype, device=device, batch_tokens=batch_tokens))
    if progress:
        print(results.summary())
    return results


def evaluate_backend(backend: Backend, model: str, tasks: list[str], *, out: str | None = None,
                     shots: int | None = None, limit: int | None = None, mode: str = "loglik", seed: int = 1234,
                     data_root: str | None = None, data: dict[str, str] | None = None,
                     tracking_uri: str | None = None, progress: bool = True, config: dict | None = None,
                     log_to_mlflow: bool = True) -> EvalResults:
    """`evaluate` with an already-built backend (`model` only labels the results).

    log_to_mlflow=False leaves tracking to the caller (a pipeline worker records its own evaluation run).
    """
    if mode not in MODES:
        raise UserError(f"mode: {mode!r} is not one of {MODES}")
    selected = REGISTRY.expand(tasks)
    start = time.time()
    outdir = Path(out) if out else None
    cache = Cache(outdir / "cache.jsonl" if outdir else None)
    results: dict[str, TaskResult] = {}
    for task in selected:
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
