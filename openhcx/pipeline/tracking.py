"""MLflow tracking for a training stage: parameters, lineage tags, per-step metrics, checkpoint events, the
loss curve and the stage's manifest.

By default the store is embedded: a SQLite file in the run's output directory, nothing to start or reach over
the network (view it with `mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db`). MLFLOW_TRACKING_URI
points every run at a shared server instead. Uses MlflowClient with explicit run ids, never MLflow's global
active run.

Exactly once, across kills and resumes: metrics are buffered and written only up to each checkpoint's step
(the rest when training ends), so MLflow never holds a step that a resume will train again. A resumed run
continues the same MLflow run (its id is kept in `<out>/mlflow_run.json`) and never sends a (metric, step) the
run already has; training resumed from a checkpoint first sends the rows of metrics.jsonl up to that step that
MLflow lacks (a kill between a checkpoint and its flush, or MLflow turned on for the resume).

Lineage: tags `openhcx.stage`, `openhcx.output`, `openhcx.input.<name>` (absolute paths) and
`openhcx.code_version`. With OPENHCX_MLFLOW_PARENT_RUN set (the recipe runner sets it) the stage's run is a
child of that run and lives in the parent's experiment, since MLflow nests runs only within one experiment.
Not here: evaluation results and the stage-to-stage pipeline.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from openhcx.io import UserError, code_version, write_json
from openhcx.train.callbacks import read_metrics
from openhcx.train.trainer import Callback, StepMetrics, Trainer

RUN_FILE = "mlflow_run.json"
PARENT_ENV = "OPENHCX_MLFLOW_PARENT_RUN"


def tracking_uri(out: str | Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store inside `out`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config as MLflow's flat string parameters (`model_config.dim` = "128")."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flat_params(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)[:500]
    return out


def lineage_tags(stage: str, out: Path, inputs: dict) -> dict[str, str]:
    """Where the stage's artifact is and what it was made from; a list of paths is tagged as a JSON list."""
    tags = {"openhcx.stage": stage, "openhcx.output": str(out.resolve()), "openhcx.code_version": code_version()}
    for name, value in inputs.items():
        if isinstance(value, (list, tuple)):
            tags[f"openhcx.input.{name}"] = json.dumps([str(Path(p).resolve()) for p in value])
        elif value is not None:
            tags[f"openhcx.input.{name}"] = str(Path(value).resolve())
    return tags


class MLflowLogger(Callback):
    """Logs on rank 0; `run_file` remembers the MLflow run so a resume appends to it.

    `log(values, step)` buffers any metric (held-out figures, PPO statistics) under the same exactly-once rule
    as the loop's step metrics. After the stage writes its manifest, `on_manifest` attaches it to the run.
    """

    def __init__(self, out: str | Path, experiment: str, run_name: str, params: dict, artifacts: tuple = (),
                 stage: str | None = None, inputs: dict | None = None):
        self.out, self.experiment, self.run_name, self.params = Path(out), experiment, run_name, params
        self.artifacts = [Path(a) for a in artifacts]
        self.tags = lineage_tags(stage or run_name, self.out, inputs or {})
        self.client = self.run_id = None
        self.pending: list = []  # mlflow Metric rows not yet written
        self.seen: set[tuple[str, int]] = set()  # (metric, step) already written or pending

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.world.is_main:
            return
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri(self.out))
        parent = os.environ.get(PARENT_ENV)
        if parent:
            self.tags["mlflow.parentRunId"] = parent
        run_file = self.out / RUN_FILE
        if run_file.is_file():
            self._resume(run_file)
        else:
            self._create(parent)
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])  # a resume refreshes them
        for row in read_metrics(self.out / "metrics.jsonl"):  # training resumed: rows a kill kept from MLflow
            if row["step"] <= trainer.step:
                self.log({k: v for k, v in row.items() if k != "step"}, row["step"])

    def _create(self, parent: str | None) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        if parent:
            try:
                experiment_id = self.client.get_run(parent).info.experiment_id
            except MlflowException:
                raise UserError(f"{PARENT_ENV}={parent}: no such MLflow run in {tracking_uri(self.out)}") from None
        else:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(
                self.experiment, artifact_location=(self.out / "mlartifacts").resolve().as_uri())
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat_params(self.params).items()])
        write_json(self.out / RUN_FILE, {"run_id": self.run_id, "tracking_uri": tracking_uri(self.out)})

    def _resume(self, run_file: Path) -> None:
        from mlflow.exceptions import MlflowException

        self.run_id = json.loads(run_file.read_text(encoding="utf-8"))["run_id"]
        try:
            run = self.client.get_run(self.run_id)
        except MlflowException:
            raise UserError(f"{run_file}: MLflow run {self.run_id} is not in {tracking_uri(self.out)} (was "
                            "MLFLOW_TRACKING_URI changed?); restore that store or delete the file") from None
        self.seen = {(key, m.step) for key in run.data.metrics
                     for m in self.client.get_metric_history(self.run_id, key)}
        self.client.update_run(self.run_id, status="RUNNING")

    def log(self, values: dict[str, float], step: int) -> None:
        """Buffer metrics of `step`: written at the first checkpoint at or after it, or when training ends."""
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in values.items():
            if (key, step) not in self.seen:
                self.seen.add((key, step))
                self.pending.append(Metric(key, float(value), now, step))

    def flush(self, up_to: float) -> None:
        """Write the buffered metrics of steps up to `up_to`."""
        ready = [m for m in self.pending if m.step <= up_to]
        self.pending = [m for m in self.pending if m.step > up_to]
        self.client.log_batch(self.run_id, metrics=ready)

    def on_step_end(self, trainer: Trainer, metrics: StepMetrics) -> None:
        self.log({k: v for k, v in vars(metrics).items() if k != "step"}, metrics.step)

    def on_checkpoint(self, trainer: Trainer, path) -> None:
        if self.client is not None:
            self.flush(trainer.step)
            self.client.set_tag(self.run_id, "last_checkpoint", str(path))

    def on_train_end(self, trainer: Trainer) -> None:
        if self.client is None:
            return
        self.flush(float("inf"))
        for artifact in self.artifacts:
            if artifact.is_file():
                self.client.log_artifact(self.run_id, str(artifact))
        self.client.set_terminated(self.run_id)

    def on_manifest(self, trainer: Trainer, path) -> None:
        if self.client is not None:
            self.client.log_artifact(self.run_id, str(path))
