"""MLflow tracking for training runs: parameters, per-step metrics, checkpoint events, the loss curve.

By default the store is embedded: a SQLite file in the run's output directory, nothing to start or reach over
the network (view it with `mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db`). MLFLOW_TRACKING_URI
points every run at a shared server instead. A resumed run continues the same MLflow run (its id is kept in
the output directory). Uses MlflowClient with explicit run ids, never MLflow's global active run.
Not here: evaluation results and the stage-to-stage pipeline (they log through the same functions).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from openhcx.io import write_json
from openhcx.train.trainer import Callback, StepMetrics, Trainer

RUN_FILE = "mlflow_run.json"


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


class MLflowLogger(Callback):
    """Logs on rank 0; `run_file` remembers the MLflow run so a resume appends to it."""

    def __init__(self, out: str | Path, experiment: str, run_name: str, params: dict, artifacts: tuple = ()):
        self.out, self.experiment, self.run_name, self.params = Path(out), experiment, run_name, params
        self.artifacts = [Path(a) for a in artifacts]
        self.client = self.run_id = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.world.is_main:
            return
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri(self.out))
        run_file = self.out / RUN_FILE
        if run_file.is_file():
            self.run_id = json.loads(run_file.read_text(encoding="utf-8"))["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            self.experiment, artifact_location=(self.out / "mlartifacts").resolve().as_uri())
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat_params(self.params).items()])
        write_json(run_file, {"run_id": self.run_id, "tracking_uri": tracking_uri(self.out)})

    def on_step_end(self, trainer: Trainer, metrics: StepMetrics) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {k: v for k, v in vars(metrics).items() if k != "step"}
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, metrics.step) for k, v in values.items()])

    def on_checkpoint(self, trainer: Trainer, path) -> None:
        if self.client is not None:
            self.client.set_tag(self.run_id, "last_checkpoint", str(path))

    def on_train_end(self, trainer: Trainer) -> None:
        if self.client is None:
            return
        for artifact in self.artifacts:
            if artifact.is_file():
                self.client.log_artifact(self.run_id, str(artifact))
        self.client.set_terminated(self.run_id)
