"""Category tables and the report's Figure 1: a radar chart of category scores, one polygon per model.

Reads `results.json` files written by `evaluate`. A category a model was not evaluated on is drawn as
a gap on its polygon and printed as "missing" in the table, never as zero. Output is PNG, or HTML
(the chart embedded beside the table) when the path ends in .html. Not here: computing scores.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from openhcx.eval.categories import CATEGORIES
from openhcx.io import UserError, atomic_file


def load_categories(path: str | Path) -> tuple[str, dict[str, float | None], float | None]:
    """(model label, category -> score or None, overall) from one results.json."""
    path = Path(path)
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
        cats = {c["name"]: c["score"] for c in res["categories"]}
        return Path(res["model"]).name or res["model"], cats, res.get("overall")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not an evaluation results.json ({e})") from None


def table(results: list[str]) -> str:
    """A Markdown table: one row per results file, one column per category, then Overall."""
    names = list(CATEGORIES)
    lines = ["| model | " + " | ".join(names) + " | Overall |", "|---" * (len(names) + 2) + "|"]
    for path in results:
        label, cats, ovr = load_categories(path)
        cells = ["missing" if cats.get(n) is None else f"{cats[n]:.2f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'missing' if ovr is None else f'{ovr:.2f}'} |")
    return "\n".join(lines) + "\n"


def _figure(results: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(CATEGORIES)
    angles = [2 * math.pi * i / len(names) for i in range(len(names))]
    fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"projection": "polar"})
    for path in results:
        label, cats, _ = load_categories(path)
        vals = [cats.get(n) for n in names]
        # close the polygon; a missing category (NaN) leaves a gap rather than a dip to zero
        ys = [float("nan") if v is None else v for v in vals + vals[:1]]
        ax.plot(angles + angles[:1], ys, marker="o", label=label)
    ax.set_xticks(angles, names)
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", bbox_to_anchor=(1.25, -0.05))
    ax.set_title("Category scores")
    return fig


def radar(results: list[str], out: str) -> Path:
    """Draw the category radar chart of one or more results.json files to `out` (.png or .html)."""
    if not results:
        raise UserError("radar: give at least one results.json")
    fig = _figure(results)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    out_path = Path(out)
    if out_path.suffix == ".html":
        img = base64.b64encode(buf.getvalue()).decode()
        page = (f"<!doctype html><meta charset='utf-8'><title>OpenHCX evaluation</title>"
                f"<img src='data:image/png;base64,{img}'><pre>{html.escape(table(results))}</pre>")
        with atomic_file(out_path, encoding="utf-8") as f:
            f.write(page)
    else:
        with atomic_file(out_path, "wb") as f:
            f.write(buf.getvalue())
    return out_path
