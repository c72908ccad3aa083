"""What a training stage reports: MLflow exactly once across a crash and resume, lineage and parent tags, the
closing summary line, and no progress bars off a terminal. Real runs against a real SQLite MLflow store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from openhcx.io import UserError, code_version
from openhcx.train.pretrain import pretrain
from openhcx.train.sft import sft
from openhcx.train.trainer import Trainer

try:
    from test_trainer import args, data  # noqa: F401 (the `data` fixture)
except ImportError:  # tests/ collected as a package
    from tests.test_trainer import args, data  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


class Crash(Exception):
    """Stands for a kill: the process stops between two steps, whatever it had not written is lost."""


def crash_at(monkeypatch, step: int) -> None:
    """The next run stops before training step `step + 1` (every later run trains normally)."""
    train_step = Trainer.train_step

    def stopping(self):
        if self.step == step:
            monkeypatch.setattr(Trainer, "train_step", train_step)
            raise Crash
        return train_step(self)

    monkeypatch.setattr(Trainer, "train_step", stopping)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A shared SQLite store (as the recipe runner sets it) holding the recipe's parent run."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("recipe", artifact_location=(tmp_path / "mlartifacts").as_uri())
    parent = client.create_run(experiment, run_name="recipe").info.run_id
    monkeypatch.setenv("OPENHCX_MLFLOW_PARENT_RUN", parent)
    return client, parent


def stage_runs(client, stage: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`openhcx.stage` = '{stage}'")


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_crashed_pretraining_resumes_into_one_mlflow_run_with_every_step_once(data, store, tmp_path, monkeypatch):
    client, parent = store
    out = tmp_path / "base"
    settings = args(data, out, steps=10, checkpoint_every=4, mlflow=True, experiment="pretrain")
    crash_at(monkeypatch, 6)
    with pytest.raises(Crash):
        pretrain(**settings)
    [run] = stage_runs(client, "pretrain")
    assert run.info.status == "RUNNING"
    # Written up to the checkpoint at step 4; steps 5 and 6 died with the process and are trained again.
    assert [s for s, _ in history(client, run.info.run_id, "loss")] == [1, 2, 3, 4]

    pretrain(**settings)
    [run] = stage_runs(client, "pretrain")
    metrics = rows(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(1, 11))
    for key in ("loss", "lr", "grad_norm", "tokens", "mfu"):
        assert history(client, run.info.run_id, key) == [(r["step"], float(r[key])) for r in metrics], key
    assert run.info.status == "FINISHED" and run.data.params["steps"] == "10"
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert run.info.experiment_id == client.get_run(parent).info.experiment_id  # nested under the recipe run
    assert tags["openhcx.stage"] == "pretrain" and tags["openhcx.output"] == str(out.resolve())
    assert tags["openhcx.input.tokenizer"] == str(Path(data["tokenizer"]).resolve())
    assert tags["openhcx.input.shards"] == str(Path(data["shards"]).resolve())
    assert tags["openhcx.code_version"] == code_version()
    assert tags["last_checkpoint"] == str(out / "checkpoints" / "step-00000010")
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["loss.png", "manifest.json"]
    logged = client.download_artifacts(run.info.run_id, "manifest.json", str(tmp_path))
    assert json.loads(Path(logged).read_text()) == json.loads((out / "manifest.json").read_text())


def test_mlflow_turned_on_for_a_resume_receives_the_steps_before_it(data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPENHCX_MLFLOW_PARENT_RUN", raising=False)
    out = tmp_path / "base"
    crash_at(monkeypatch, 6)
    with pytest.raises(Crash):
        pretrain(**args(data, out, steps=8, checkpoint_every=4))
    pretrain(**args(data, out, steps=8, checkpoint_every=4, mlflow=True, experiment="pretrain"))
    from mlflow.tracking import MlflowClient

    from openhcx.pipeline.tracking import tracking_uri

    client = MlflowClient(tracking_uri(out))
    [run] = stage_runs(client, "pretrain")
    assert "mlflow.parentRunId" not in run.data.tags
    assert history(client, run.info.run_id, "loss") == [(r["step"], r["loss"]) for r in rows(out / "metrics.jsonl")]


def test_unknown_parent_run_is_named(data, store, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENHCX_MLFLOW_PARENT_RUN", "0123456789abcdef")
    with pytest.raises(UserError, match="OPENHCX_MLFLOW_PARENT_RUN=0123456789abcdef: no such MLflow run"):
        pretrain(**args(data, tmp_path / "base", steps=2, mlflow=True))


def test_sft_summary_line_heldout_metrics_once_and_no_bars_off_a_terminal(tiny_lm, store, tmp_path, monkeypatch,
                                                                          capsys):
    client, _ = store
    data = tmp_path / "sft.jsonl"
    lines = (ROOT / "data/demo/sft.jsonl").read_text(encoding="utf-8").splitlines()[:120]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "sft"
    kwargs = dict(epochs=1, max_tokens=768, lr=3e-3, min_lr=3e-4, warmup_steps=2, heldout_fraction=0.1,
                  eval_every=3, checkpoint_every=5, peak_flops=1e9, experiment="sft")
    crash_at(monkeypatch, 7)
    with pytest.raises(Crash):
        sft(str(tiny_lm), [str(data)], str(out), progress=False, **kwargs)
    assert capsys.readouterr().out == ""  # no summary for a run that did not finish
    for progress in (False, True):  # resume and finish; then run again, finding nothing left to train
        path = sft(str(tiny_lm), [str(data)], str(out), progress=progress, **kwargs)
        printed = capsys.readouterr()
        m = json.loads((out / "manifest.json").read_text())
        assert m["steps"] > 7
        assert re.fullmatch(rf"sft: {re.escape(str(path))} \({m['steps']} steps, loss {m['final_loss']:.2f}, "
                            rf"held-out loss {m['heldout_loss_start']:.2f} -> {m['heldout_loss_end']:.2f}, \d+ s\)\n",
                            printed.out)
        assert printed.err == ""  # stderr is not a terminal here: no progress bar, not even a finished one

    [run] = stage_runs(client, "sft")
    evals = rows(out / "eval.jsonl")  # 0, 3 before the crash; 5 again on resume (restored step), 6, 9, ... last
    assert [r["step"] for r in evals][:4] == [0, 3, 5, 6]
    assert history(client, run.info.run_id, "heldout_loss") == [(r["step"], r["loss"]) for r in evals]
    assert history(client, run.info.run_id, "loss") == [(r["step"], r["loss"]) for r in rows(out / "metrics.jsonl")]
    assert run.data.tags["openhcx.input.data"] == json.dumps([str(data.resolve())])
    assert run.data.tags["openhcx.input.base"] == str(Path(tiny_lm).resolve())
