"""Category tables and the report's Figure 1: a radar chart of category scores, one polygon per model.

Reads `results.json` files written by `evaluate` (or the run's evaluator, which adds "checkpoint" and
suite-level "metrics"). Files of one model are merged: a model is its checkpoint (stage, step, path)
when the file names one, else its resolved model path, so three suites run on one checkpoint make one
polygon and one table row. A category a model was not evaluated on is drawn as a gap on its polygon and
printed as "missing" in the tables, never as zero. Not here: computing task scores (harness.py), the
run's whole report (openhcx.pipeline.report).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from openhcx.eval.categories import CATEGORIES, category_scores, overall
from openhcx.io import UserError, atomic_file

MARKERS = "osD^vP*X"  # one shape per polygon, so polygons lying on top of each other still show


@dataclass(frozen=True)
class Checkpoint:
    """Which training checkpoint a results file scored; `final` marks a stage's final model."""

    stage: str
    step: int | None
    path: str
    final: bool = False

    @property
    def label(self) -> str:
        return f"{self.stage} final" if self.final or self.step is None else f"{self.stage} step {self.step}"


@dataclass
class ResultsFile:
    """What one results.json says, reduced to what tables and charts need."""

    model: str
    checkpoint: Checkpoint | None
    tasks: dict[str, tuple[float | None, int]]  # task -> (primary score in [0, 1], items)
    categories: dict[str, float | None]  # as stored; used only when the file carries no task scores
    metrics: dict[str, float]  # suite-level figures (bpb, heldout_score, ...)


@dataclass
class ModelScores:
    """One evaluated model: every results file of it merged."""

    key: tuple  # what makes it one model: (stage, step, path) of its checkpoint, or (resolved model path,)
    checkpoint: Checkpoint | None
    categories: dict[str, float | None]  # every category of CATEGORIES, None when missing
    overall: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    label: str = ""


def _resolved(model: str) -> str:
    return model if "://" in model else str(Path(model).resolve())


def read_results(path: str | Path) -> ResultsFile:
    """Read one results.json; anything malformed is a UserError naming the file and what is wrong."""
    path = Path(path)
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
        ckpt = res.get("checkpoint")
        checkpoint = None if ckpt is None else Checkpoint(
            str(ckpt["stage"]), None if ckpt.get("step") in (None, "final") else int(ckpt["step"]),
            _resolved(str(ckpt["path"])), ckpt.get("final") is True or ckpt.get("step") == "final")
        tasks = {name: (t["metrics"].get(t["primary"]), int(t["n"])) for name, t in res.get("tasks", {}).items()}
        cats = {c["name"]: c["score"] for c in res.get("categories", [])}
        metrics = {str(k): float(v) for k, v in (res.get("metrics") or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return ResultsFile(str(res["model"]), checkpoint, tasks, cats, metrics)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not an evaluation results.json ({type(e).__name__}: {e})") from None


def merge(files: list[ResultsFile]) -> list[ModelScores]:
    """Group results files by model, in order of first appearance, and merge each group.

    Task scores are merged across a group's files and a task present in several files takes the later
    file's score (files are read in the order given). Categories are recomputed from the merged task
    scores with `category_scores`, weighting tasks by their item counts. A file with no task scores (an
    older or hand-written one) contributes its stored category scores, only to categories the task
    scores leave missing. Suite-level metrics merge the same way, the later file winning.
    """
    groups: dict[tuple, list[ResultsFile]] = {}
    for f in files:
        key = (f.checkpoint.stage, f.checkpoint.step, f.checkpoint.path) if f.checkpoint else (_resolved(f.model),)
        groups.setdefault(key, []).append(f)
    models = []
    for key, group in groups.items():
        tasks: dict[str, tuple[float | None, int]] = {}
        metrics: dict[str, float] = {}
        for f in group:
            tasks.update(f.tasks)
            metrics.update(f.metrics)
        cats = category_scores({t: s for t, (s, _) in tasks.items()}, {t: n for t, (_, n) in tasks.items()})
        for f in reversed(group):  # the later file's stored score wins here too
            for c in cats:
                if not f.tasks and c.score is None:
                    c.score = f.categories.get(c.name)
        checkpoint = next((f.checkpoint for f in reversed(group) if f.checkpoint and f.checkpoint.final),
                          group[-1].checkpoint)
        models.append(ModelScores(key, checkpoint, {c.name: c.score for c in cats}, overall(cats), metrics))
    _label(models)
    return models


def _suffix(paths: list[str]) -> list[str]:
    """For each path, its shortest tail of path components that no other path in the list ends with."""
    parts = [Path(p).parts for p in paths]
    out = []
    for i, p in enumerate(parts):
        others = [q for j, q in enumerate(parts) if j != i]
        k = next((k for k in range(1, len(p) + 1) if all(q[-k:] != p[-k:] for q in others)), len(p))
        out.append("/".join(p[-k:]).replace("//", "/"))
    return out


def _label(models: list[ModelScores]) -> None:
    """Set each model's legend label: "sft step 40" / "ppo final" from its checkpoint, else the shortest
    distinguishing tail of its path; models that would still share a label get their path tails added."""
    paths = [m.checkpoint.path if m.checkpoint else m.key[0] for m in models]
    tails = _suffix(paths)
    for m, tail in zip(models, tails):
        m.label = m.checkpoint.label if m.checkpoint else tail
    by_label: dict[str, list[int]] = {}
    for i, m in enumerate(models):
        by_label.setdefault(m.label, []).append(i)
    for same in by_label.values():
        if len(same) > 1:
            for i, tail in zip(same, _suffix([paths[i] for i in same])):
                models[i].label = f"{models[i].label} ({tail})" if models[i].checkpoint else tail


def load(results: list[str | Path]) -> list[ModelScores]:
    """Read and merge results files: one ModelScores per evaluated model."""
    return merge([read_results(p) for p in results])


def _cell(value: float | None) -> str:
    return "missing" if value is None else f"{value:.2f}"


def table(results: list[str | Path]) -> str:
    """A Markdown table: one row per model (its files merged), one column per category, then Overall."""
    names = list(CATEGORIES)
    lines = ["| model | " + " | ".join(names) + " | Overall |", "|---" * (len(names) + 2) + "|"]
    for m in load(results):
        cells = [_cell(m.categories[n]) for n in names]
        lines.append(f"| {m.label} | " + " | ".join(cells) + f" | {_cell(m.overall)} |")
    return "\n".join(lines) + "\n"


def html_table(models: list[ModelScores]) -> str:
    """An HTML table: stage, step, every suite metric seen, each category, overall ("missing" where absent);
    first a model column when some label says more than stage and step (a model path, two runs' checkpoints)."""
    metric_names = sorted({k for m in models for k in m.metrics})
    named = any(m.checkpoint is None or m.label != m.checkpoint.label for m in models)
    head = ["model"] * named + ["stage", "step", *metric_names, *CATEGORIES, "overall"]
    rows = []
    for m in models:
        c = m.checkpoint
        step = "" if c is None else ("final" if c.step is None else f"{c.step}{' (final)' if c.final else ''}")
        metrics = [f"{m.metrics[k]:.4g}" if k in m.metrics else "missing" for k in metric_names]
        cells = [m.label] * named + [c.stage if c else "", step, *metrics,
                                     *(_cell(m.categories[n]) for n in CATEGORIES), _cell(m.overall)]
        rows.append("<tr>" + "".join(f"<td{' class=missing' if x == 'missing' else ''}>{html.escape(x)}</td>"
                                     for x in cells) + "</tr>")
    # a long metric name may break after its underscores rather than widen its column
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h).replace('_', '_<wbr>')}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def radar_figure(models: list[ModelScores]):
    """The matplotlib figure: one closed polygon per model over the categories, markers on every point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(CATEGORIES)
    angles = [2 * math.pi * i / len(names) for i in range(len(names))]
    fig, ax = plt.subplots(figsize=(6.5, 6.5), subplot_kw={"projection": "polar"})
    for i, m in enumerate(models):
        # close the polygon; a missing category (NaN) leaves a gap rather than a dip to zero, and the
        # markers keep a model with a single category present visible
        ys = [math.nan if m.categories[n] is None else m.categories[n] for n in names + names[:1]]
        ax.plot(angles + angles[:1], ys, marker=MARKERS[i % len(MARKERS)], ms=6, lw=1.6, alpha=0.85, label=m.label)
    ax.set_xticks(angles, names)
    ax.tick_params(axis="x", pad=14)
    ax.set_ylim(0, 100)
    ax.set_title("Category scores (percent)", pad=18)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2 if len(models) > 4 else 1, frameon=False)
    return fig


def radar_png(models: list[ModelScores]) -> bytes:
    import matplotlib.pyplot as plt

    fig = radar_figure(models)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def radar(results: list[str], out: str) -> Path:
    """Draw the category radar chart of one or more results.json files to `out` (.png or .html).

    Files of the same model (same checkpoint, or same model path) are merged into one polygon.
    """
    if not results:
        raise UserError("radar: give at least one results.json")
    models = load(results)
    png = radar_png(models)
    out_path = Path(out)
    if out_path.suffix == ".html":
        img = base64.b64encode(png).decode()
        page = (f"<!doctype html><meta charset='utf-8'><title>OpenHCX evaluation</title>"
                f"<img src='data:image/png;base64,{img}' alt='category radar chart'>{html_table(models)}")
        with atomic_file(out_path, encoding="utf-8") as f:
            f.write(page)
    else:
        with atomic_file(out_path, "wb") as f:
            f.write(png)
    return out_path
