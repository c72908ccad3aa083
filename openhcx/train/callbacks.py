"""What a person watches during training: a progress bar, a metrics file and the loss curve.

Each is a callback on the one loop and acts on rank 0 only. Not here: checkpoints (checkpoint.py) and
MLflow (openhcx.pipeline.tracking).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from openhcx.io import atomic_file
from openhcx.train.trainer import Callback, StepMetrics, Trainer


def read_metrics(path: str | Path) -> list[dict]:
    """Complete lines of a metrics file (a killed run may leave half a line at the end)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class MetricsLog(Callback):
    """One JSON line per step; on resume, lines past the restored step (work that was lost) are dropped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.world.is_main:
            return
        kept = [row for row in read_metrics(self.path) if row["step"] <= trainer.step]
        with atomic_file(self.path, encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in kept)

    def on_step_end(self, trainer: Trainer, metrics: StepMetrics) -> None:
        if trainer.world.is_main:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(metrics)) + "\n")


class ProgressBar(Callback):
    """tqdm bar over optimizer steps with the latest loss, learning rate, throughput and MFU.

    Only on a terminal: tqdm hides itself when stderr is not one (CI, a log file), so logs stay readable.
    """

    def __init__(self):
        self.bar = None

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.world.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=trainer.config.steps, initial=trainer.step, unit="step", dynamic_ncols=True,
                            disable=None)

    def on_step_end(self, trainer: Trainer, metrics: StepMetrics) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics.loss:.4f}", lr=f"{metrics.lr:.2e}", gnorm=f"{metrics.grad_norm:.2f}",
                                 tok_s=f"{metrics.tokens_per_s:,.0f}", mfu=f"{metrics.mfu:.1%}", refresh=False)
            self.bar.update(1)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_loss(rows: list[dict], png: str | Path, title: str = "training loss") -> None:
    """Training loss against step, with the context-length switch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    switch = next((r["step"] for r, prev in zip(rows[1:], rows) if r["seq_len"] != prev["seq_len"]), None)
    if switch is not None:
        ax.axvline(switch, color="grey", ls="--", lw=1, label=f"context {rows[-1]['seq_len']}")
        ax.legend()
    ax.set(xlabel="step", ylabel="loss (nats per token)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(png, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


class LossCurve(Callback):
    """Draws the whole run's loss (resumed parts included) from the metrics file when training ends."""

    def __init__(self, metrics: str | Path, png: str | Path, title: str = "training loss"):
        self.metrics, self.png, self.title = Path(metrics), Path(png), title

    def on_train_end(self, trainer: Trainer) -> None:
        rows = read_metrics(self.metrics) if trainer.world.is_main else []
        if rows:
            plot_loss(rows, self.png, self.title)
