"""`openhcx report --run RUN`: the run's report, RUN/report.html with its figures in RUN/report/*.png.

One page a person opens from disk (no server, no JavaScript, no external URLs): the stages found with
the key figures of their manifests, loss curves of the training stages with their in-loop held-out
curves, PPO curves, the tokenizer table, a table of every evaluated checkpoint and the category radar
chart. The page is derived from the run directory alone, so it can be rebuilt at any time, even while
a stage is still writing; a section whose inputs are absent says "not run". Not here: computing any
score (the stages and openhcx.eval do), tracking (MLflow).
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import math
import re
from pathlib import Path

from openhcx.eval.report import Checkpoint, ModelScores, html_table, merge, radar_png, read_results
from openhcx.io import UserError, atomic_dir, atomic_file, text_lines

STAGES = ("corpus", "tokenizer", "tokenizer-plain-bpe", "tokenizer-report", "shards", "base", "sft", "reward", "ppo")
TRAINING = ("base", "sft", "reward")  # stages drawn as loss curves; PPO has its own figure
RADAR_CHECKPOINTS = 3  # intermediate checkpoints drawn beside the final models (more crowd the chart)
HOUSEKEEPING = {"stage", "created", "code_version", "config", "inputs", "model", "files"}
MAX_FIGURES = 12  # manifest figures shown per stage in the overview

NOT_RUN = "<p class=notrun>not run</p>"
CSS = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:85%}td,th{border:1px solid #ccc;padding:2px 5px;
text-align:left;vertical-align:top}td:first-child{white-space:nowrap}td.missing,.notrun{color:#888;font-style:italic}
img{max-width:100%}h2{border-bottom:1px solid #ddd;margin-top:1.5em}.wide{overflow-x:auto}"""


def read_rows(path: Path, numbers: tuple[str, ...]) -> list[dict]:
    """Rows of a JSON Lines file a stage writes as it runs ([] when absent). A last line without its newline
    is a write in progress and is left out; any other bad line is a UserError naming file, line and key."""
    rows: list[dict] = []
    if not path.is_file():
        return rows
    for lineno, line in text_lines(path):
        if not line.endswith("\n"):
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path}:{lineno}: malformed JSON ({e})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for key in numbers:
            if isinstance(row.get(key), bool) or not isinstance(row.get(key), (int, float)):
                raise UserError(f"{path}:{lineno}: key {key!r} missing or not a number")
        rows.append(row)
    return rows


def read_manifest(directory: Path) -> dict | None:
    path = directory / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: expected a JSON object")
    return manifest


def _number(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"


def key_figures(manifest: dict) -> list[tuple[str, str]]:
    """A manifest's results: its scalar entries and those one level down ("totals.kept"), not config or inputs."""
    def scalar(v) -> bool:
        return isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= 80)

    out = []
    for k, v in manifest.items():
        if k in HOUSEKEEPING:
            continue
        if isinstance(v, dict):
            out += [(f"{k}.{k2}", _number(v2)) for k2, v2 in v.items() if scalar(v2)]
        elif scalar(v):
            out.append((k, _number(v)))
    return out


def overview(run: Path) -> str:
    rows = []
    for stage in STAGES:
        directory = run / stage
        manifest = read_manifest(directory) if directory.is_dir() else None
        if not directory.is_dir():
            figures = "<span class=notrun>not run</span>"
        elif manifest is None:
            figures = "<span class=notrun>no manifest.json (not finished)</span>"
        else:
            pairs = key_figures(manifest)
            figures = ", ".join(f"{html.escape(k)} {html.escape(v)}" for k, v in pairs[:MAX_FIGURES])
            if len(pairs) > MAX_FIGURES:
                figures += f", and {len(pairs) - MAX_FIGURES} more in {html.escape(stage)}/manifest.json"
        rows.append(f"<tr><td>{html.escape(stage)}</td><td>{figures}</td></tr>")
    return "<table><tr><th>stage</th><th>key figures (manifest.json)</th></tr>" + "".join(rows) + "</table>"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def loss_figure(stage: str, rows: list[dict], evals: list[dict]) -> bytes:
    """Training loss against step; the in-loop held-out loss (and a reward model's pairwise accuracy) over it;
    for pretraining, the step where the context grows."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2, label="training loss")
    # SFT and reward batches are padded to their longest example, so their seq_len changes every step
    switch = stage == "base" and next(
        (r["step"] for r, prev in zip(rows[1:], rows) if r.get("seq_len") != prev.get("seq_len")), None)
    if switch:
        ax.axvline(switch, color="grey", ls="--", lw=1, label=f"context {rows[-1]['seq_len']}")
    held = [e for e in evals if isinstance(e.get("loss"), (int, float))]
    if held:
        ax.plot([e["step"] for e in held], [e["loss"] for e in held], "o-", ms=4, lw=1.2, label="held-out loss")
    ax.set(xlabel="step", ylabel="loss", title=f"{stage}: loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    acc = [e for e in evals if isinstance(e.get("accuracy"), (int, float))]
    if acc:
        ax2 = ax.twinx()
        ax2.plot([e["step"] for e in acc], [e["accuracy"] for e in acc], "s--", ms=4, color="tab:green",
                 label="held-out pairwise accuracy")
        ax2.set(ylabel="accuracy", ylim=(0, 1))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    # below the axes: inside, the legend would hide the end of a curve (where a reader looks first)
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(labels), fontsize=8,
              frameon=False)
    return _png(fig)


def ppo_figure(rows: list[dict], heldout: list[dict]) -> bytes:
    """Four panels against PPO step: reward, KL to the reference, response length, held-out score."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    steps = [r["step"] for r in rows]
    (a, b), (c, d) = axes
    a.plot(steps, [r["reward"] for r in rows], label="normalised (trained on)")
    a.plot(steps, [r["reward_raw"] for r in rows], label="reward model output")
    a.set(title="reward", ylabel="mean per response")
    b.plot(steps, [r["kl"] for r in rows])
    b.set(title="KL to the reference policy", ylabel="per response (summed)")
    c.plot(steps, [r["response_length"] for r in rows])
    c.set(title="response length", ylabel="tokens", xlabel="step")
    if heldout:
        hs = [h["step"] for h in heldout]
        d.plot(hs, [h["constraints"] for h in heldout], "o-", ms=4, label="constraints (early stopping)")
        d.plot(hs, [h["score"] for h in heldout], "s-", ms=4, label="total score")
        d.legend(fontsize=8)
    else:
        d.text(0.5, 0.5, "no heldout.jsonl", ha="center", va="center", transform=d.transAxes, color="grey")
    d.set(title="held-out score", xlabel="step")
    a.legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def tokenizer_table(path: Path) -> str:
    """RUN/tokenizer-report/report.json as the report's Table 1: tokens per document and per 1k characters."""
    if not path.is_file():
        return NOT_RUN
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
        labels, docs, chars = list(rep["documents"]), rep["documents"], rep["characters"]
        ref = rep["rows"][0]["tokens"]
        head = ["tokenizer", "vocab"] + [f"{l} tokens/doc (ratio)" for l in labels] + \
            [f"{l} tokens/1k chars" for l in labels] + ["morpheme boundaries kept", "token cuts on morpheme boundaries"]
        body = []
        for r in rep["rows"]:
            t = r["tokens"]
            cells = [r["name"], f"{r['vocab_size']:,}"]
            cells += [f"{t[l] / docs[l]:.1f} ({t[l] / max(ref[l], 1):.2f})" for l in labels]
            cells += [f"{1000 * t[l] / chars[l]:.1f}" for l in labels]
            cells += [_share(r.get("alignment_recall")), _share(r.get("alignment_precision"))]
            body.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
        missing = rep.get("missing_references") or {}
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError) as e:
        raise UserError(f"{path}: not a tokenizer report.json ({type(e).__name__}: {e})") from None
    note = ("<p>Held-out documents: " + html.escape(", ".join(f"{l} {docs[l]:,} ({chars[l]:,} chars)" for l in labels))
            + "</p>")
    if missing:
        note += "<p>Not measured: " + html.escape("; ".join(f"{k}: {v}" for k, v in missing.items())) + "</p>"
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(body)
            + "</table>" + note)


def _share(x) -> str:
    return "" if not isinstance(x, (int, float)) or math.isnan(x) else f"{x:.2%}"


def evaluations(run: Path) -> list[ModelScores]:
    """The evaluations' results (RUN/evals/<stage>/step-N/ and RUN/evals/final/<stage>/), merged per
    checkpoint and ordered by stage, then step, final last.

    Deeper results.json files are the harness's own (the same task scores) and are not read again. A file
    under evals/final/<stage>/ scores that stage's final model; one that names no checkpoint gets the one
    its place in the run directory implies."""
    files = []
    for path in sorted((run / "evals").glob("*/*/results.json")):
        f = read_results(path)
        group, name = path.parent.parent.name, path.parent.name
        if group == "final":
            ckpt = f.checkpoint or Checkpoint(name, None, str((run / name / "model").resolve()))
            f.checkpoint = dataclasses.replace(ckpt, final=True)
        elif f.checkpoint is None and (m := re.fullmatch(r"step-(\d+)", name)):
            f.checkpoint = Checkpoint(group, int(m[1]), str((path.parent / "model").resolve()))
        files.append(f)
    order = {s: i for i, s in enumerate(STAGES)}

    def rank(m: ModelScores):
        c = m.checkpoint
        if c is None:
            return (len(order) + 1, 0, 0, m.label)
        return (order.get(c.stage, len(order)), c.final or c.step is None, c.step or 0, m.label)

    return sorted(merge(files), key=rank)


def radar_selection(models: list[ModelScores]) -> list[ModelScores]:
    """The final model of each stage, and at most RADAR_CHECKPOINTS others spread over the rest, among the
    models with at least one category score."""
    scored = [m for m in models if any(v is not None for v in m.categories.values())]
    final = {m.key for m in scored if m.checkpoint and (m.checkpoint.final or m.checkpoint.step is None)}
    rest = [m.key for m in scored if m.key not in final]
    if len(rest) > RADAR_CHECKPOINTS:
        last = len(rest) - 1
        rest = [rest[round(i * last / (RADAR_CHECKPOINTS - 1))] for i in range(RADAR_CHECKPOINTS)]
    return [m for m in scored if m.key in final or m.key in rest]


def build_report(run: str) -> Path:
    """Write RUN/report.html and RUN/report/*.png from the run directory (sections with no inputs say "not run").

    Args:
        run: The run directory (`openhcx run --out RUN`).
    """
    root = Path(run)
    if not root.is_dir():
        raise UserError(f"{root}: run directory not found")
    pngs: dict[str, bytes] = {}
    sections = [("Overview", overview(root))]

    curves = []
    for stage in TRAINING:
        rows = read_rows(root / stage / "metrics.jsonl", ("step", "loss"))
        evals = read_rows(root / stage / "eval.jsonl", ("step",))
        if rows:
            pngs[f"loss-{stage}.png"] = loss_figure(stage, rows, evals)
            curves.append(f"<h3>{stage}</h3><img src='report/loss-{stage}.png' alt='{stage} loss curve'>")
        else:
            curves.append(f"<h3>{stage}</h3>{NOT_RUN}")
    sections.append(("Loss curves", "".join(curves)))

    ppo_rows = read_rows(root / "ppo" / "metrics.jsonl", ("step", "reward", "reward_raw", "kl", "response_length"))
    heldout = read_rows(root / "ppo" / "heldout.jsonl", ("step", "constraints", "score"))
    if ppo_rows:
        pngs["ppo.png"] = ppo_figure(ppo_rows, heldout)
        sections.append(("PPO", "<img src='report/ppo.png' alt='PPO reward, KL, length and held-out score'>"))
    else:
        sections.append(("PPO", NOT_RUN))

    sections.append(("Tokenizer", tokenizer_table(root / "tokenizer-report" / "report.json")))

    models = evaluations(root)
    sections.append(("Evaluated checkpoints", f"<div class=wide>{html_table(models)}</div>" if models else NOT_RUN))
    drawn = radar_selection(models)
    if drawn:
        pngs["radar.png"] = radar_png(drawn)
        note = "Drawn: " + ", ".join(m.label for m in drawn) + "."
        drawn_keys = {m.key for m in drawn}
        others = [m.label for m in models if m.key not in drawn_keys]
        if others:
            note += " In the table only: " + ", ".join(others) + "."
        sections.append(("Category radar", f"<p>{html.escape(note)}</p>"
                                           "<img src='report/radar.png' alt='category radar chart'>"))
    elif models:
        sections.append(("Category radar", "<p class=notrun>no evaluated model has a category score (their suites "
                                           "ran no benchmark tasks)</p>"))
    else:
        sections.append(("Category radar", NOT_RUN))

    with atomic_dir(root / "report", overwrite=True) as tmp:
        for name, data in pngs.items():
            (tmp / name).write_bytes(data)
    page = (f"<!doctype html><html lang=en><head><meta charset='utf-8'><title>OpenHCX run report: "
            f"{html.escape(root.resolve().name)}</title><style>{CSS}</style></head><body>"
            f"<h1>OpenHCX run report: {html.escape(str(root.resolve()))}</h1>"
            + "".join(f"<section id='{re.sub(r'[^a-z]+', '-', t.lower())}'><h2>{t}</h2>{body}</section>"
                      for t, body in sections)
            + "</body></html>\n")
    out = root / "report.html"
    with atomic_file(out, encoding="utf-8") as f:
        f.write(page)
    return out
