"""`openhcx status RUN`: where a recipe run stands, from its run directory and its event queue.

Stages done / running / failed / pending (done means the artifact and the runner's marker exist), each
training stage's latest step and metrics, and evaluations by state with the errors of failed ones. Reads
only: safe to call while the run goes on, from another terminal or machine. Not here: changing anything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from openhcx.io import require_file

SHOWN = ("loss", "lr", "tokens_per_s", "mfu", "reward", "kl", "response_length")


def _latest_row(path: Path) -> dict | None:
    from openhcx.train.callbacks import read_metrics

    rows = read_metrics(path)
    return rows[-1] if rows else None


def stage_rows(plan, queue) -> list[dict]:
    from openhcx.pipeline.runner import is_complete, marker

    rows = []
    for stage, _ in plan.stages:
        event = queue.get(f"stage:{plan.run_key}:{stage.name}")
        if is_complete(plan, stage.name):
            state = "done"
            seconds = json.loads(marker(plan.run, stage.name).read_text(encoding="utf-8"))["seconds"]
            detail = f"{seconds:.0f} s"
        elif event is not None and event.status in ("running", "failed"):
            alive = event.status == "running" and (event.lease_until or 0) > time.time()
            state = {"failed": "failed", "running": "running" if alive else "stalled"}[event.status]
            detail = (event.error or "").splitlines()[-1][:120] if event.error else f"attempt {event.attempts}"
        else:
            state, detail = "pending", ""
        latest = _latest_row(plan.run / stage.name / "metrics.jsonl") if stage.trains else None
        if latest is not None:
            figures = ", ".join(f"{k} {latest[k]:.4g}" for k in SHOWN if isinstance(latest.get(k), (int, float)))
            detail = f"{detail}; step {latest['step']}: {figures}".lstrip("; ")
        rows.append({"stage": stage.name, "state": state, "detail": detail})
    return rows


def status(run: str) -> dict:
    """Print the stages, the evaluations and the latest metrics of a run (started with `openhcx run`).

    Args:
        run: The run directory (the --out of `openhcx run`).
    """
    from openhcx.pipeline.events import EventQueue, queue_url
    from openhcx.pipeline.runner import make_plan

    run_dir = Path(run)
    plan = make_plan(require_file(run_dir / "recipe.yaml", "run directory (its recipe.yaml)"), run_dir)
    queue = EventQueue(queue_url(run_dir, plan.settings["queue"]))
    stages = stage_rows(plan, queue)
    width = max(len(r["stage"]) for r in stages)
    print(f"run {run_dir}")
    for r in stages:
        print(f"  {r['stage']:<{width}}  {r['state']:<8} {r['detail']}")
    prefix = f"eval:{plan.run_key}:"
    evals = [e for e in queue.events(kind="eval") if e.key.startswith(prefix)]
    counts = {s: sum(e.status == s for e in evals) for s in ("queued", "running", "done", "failed")}
    print("evaluations: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for e in evals:
        label = e.key[len(prefix):].replace(":", " ")
        if e.status == "failed":
            print(f"  {label}: failed after {e.attempts} attempt(s): {(e.error or '').strip().splitlines()[-1][:160]}")
        elif e.status == "done" and e.result:
            figures = ", ".join(f"{k} {v:.4g}" for k, v in (e.result.get("metrics") or {}).items()
                                if isinstance(v, (int, float)))
            overall = e.result.get("overall")
            print(f"  {label}: {figures}" + (f", overall {overall:.2f}" if overall is not None else ""))
    report = run_dir / "report.html"
    print(f"report: {report if report.is_file() else 'not yet built'}")
    queue.close()
    return {"stages": stages, "evaluations": counts}
