"""The training loop and `pretrain`: schedules, parameter groups, input checks, a short real run with MLflow."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_shards import split_tokens

from openhcx.io import UserError
from openhcx.model.transformer import model_config
from openhcx.train.pretrain import pretrain
from openhcx.train.trainer import (TrainConfig, lr_at, matmul_flops, measured_peak_flops, param_groups, phase_at,
                                   training_flops)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128, "max_seq_len": 128}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Real shards from a slice of the demo corpus, a 400-token tokenizer, and a second tokenizer."""
    from openhcx.data.corpus import Source, build_corpus
    from openhcx.data.shards import build_shards
    from openhcx.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("pretrain-data")
    for label in ("en", "code"):
        with gzip.open(ROOT / "data/demo/corpus" / f"{label}.jsonl.gz", "rt", encoding="utf-8") as f:
            (root / f"{label}.jsonl").write_text("".join(line for _, line in zip(range(40), f)), encoding="utf-8")
    build_corpus([Source(str(root / f"{l}.jsonl"), l) for l in ("en", "code")], str(root / "corpus"),
                 heldout_fraction=0.1)
    for name, vocab in (("tok", 400), ("other-tok", 380)):
        train_tokenizer(str(root / "corpus"), str(root / name), vocab_size=vocab, morpheme_aware=False)
    build_shards(str(root / "corpus"), str(root / "tok"), str(root / "shards"), mode="portable")
    return {"shards": str(root / "shards"), "tokenizer": str(root / "tok"), "other": str(root / "other-tok")}


def unigram_entropy(shards: str) -> float:
    """Entropy in nats of the training split's token frequencies: what a model that learned only them scores."""
    ids = split_tokens(Path(shards), "train")
    p = np.bincount(ids) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def args(data: dict, out: Path, **changes) -> dict:
    return {"shards": data["shards"], "tokenizer": data["tokenizer"], "out": str(out), "model_overrides": TINY,
            "steps": 6, "batch_size": 4, "micro_batch_size": 2, "seq_len": 32, "lr": 3e-3, "min_lr": 3e-4,
            "warmup_steps": 2, "mlflow": False, "progress": False, "peak_flops": 1e9, **changes}


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    c = TrainConfig(steps=11, batch_size=1, micro_batch_size=1, seq_len=8, lr=1.0, min_lr=0.1, warmup_steps=2)
    assert [lr_at(s, c) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, c) == 1.0
    assert abs(lr_at(6, c) - (0.1 + 0.45 * (1 + math.cos(math.pi / 2)))) < 1e-12  # halfway: 0.55
    assert abs(lr_at(10, c) - 0.1) < 1e-12
    after = [lr_at(s, c) for s in range(2, 11)]
    assert after == sorted(after, reverse=True)


def test_context_schedule_switches_for_the_last_tenth_with_equal_tokens_per_step():
    c = TrainConfig(steps=100, batch_size=64, micro_batch_size=8, seq_len=4096, long_seq_len=32768)
    short, long = phase_at(89, c), phase_at(90, c)
    assert (short.seq_len, short.batch_size, short.micro_batch_size) == (4096, 64, 8)
    assert (long.seq_len, long.batch_size, long.micro_batch_size) == (32768, 8, 1)
    assert short.seq_len * short.batch_size == long.seq_len * long.batch_size
    assert phase_at(99, TrainConfig(steps=100, batch_size=4, micro_batch_size=1, seq_len=8)).seq_len == 8


def test_weight_decay_skips_norms_and_embeddings():
    from openhcx.model.transformer import Transformer

    model = Transformer(model_config("tiny", **TINY, tie_embeddings=True))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in no_decay["params"]} == (
        {"model.embed_tokens.weight", "model.norm.weight"}
        | {f"model.layers.{i}.{n}.weight" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")})
    assert len(decay["params"]) == 2 * 7  # q, k, v, o, gate, up, down per layer; the tied head is the embedding


@pytest.mark.parametrize("change, names", [
    ({"model": "13b"}, "model.preset='13b'"),
    ({"model_overrides": {**TINY, "dimm": 8}}, "model.dimm"),
    ({"seq_len": 256}, "seq_len=256 exceeds model.max_seq_len=128"),
    ({"long_seq_len": 512}, "long_seq_len=512 exceeds model.max_seq_len=128"),
    ({"batch_size": 3}, "batch_size"),
    ({"parallel": "zero3"}, "parallel='zero3'"),
])
def test_bad_settings_are_refused_before_anything_is_written(data, tmp_path, change, names):
    with pytest.raises(UserError, match=names.replace("(", r"\(").replace("[", r"\[")):
        pretrain(**args(data, tmp_path / "out", **change))
    assert not (tmp_path / "out").exists()


def test_shards_of_another_tokenizer_are_refused_naming_both(data, tmp_path):
    with pytest.raises(UserError, match=r"manifest\.json.*other-tok/tokenizer\.json"):
        pretrain(**args(data, tmp_path / "out", tokenizer=data["other"]))
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_key_is_named():
    from openhcx.recipe import stage_args

    with pytest.raises(UserError, match="stepz"):
        stage_args(pretrain, {"stepz": 3}, "recipe.yaml:pretrain", shards="s", tokenizer="t", out="o")


def test_pretrain_learns_and_records_metrics_curve_and_mlflow(data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    model_dir = pretrain(**args(data, out, steps=24, batch_size=8, micro_batch_size=4, lr=1e-2, warmup_steps=3,
                                long_seq_len=64, long_fraction=0.25, checkpoint_every=8, keep_checkpoints=2,
                                mlflow=True, progress=True, experiment="test"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert [r["seq_len"] for r in rows] == [32] * 18 + [64] * 6
    assert all(r["tokens"] == 8 * 32 for r in rows)  # 4 x 64 in the long phase: the same tokens per step
    assert math.log(400) - 0.3 < rows[0]["loss"] < math.log(400) + 0.3  # starts near uniform over 400 ids
    # Learning: by the end of the short phase (the long phase starts higher: new positions) the loss is more than
    # half way from the uniform guess down to the training tokens' unigram entropy (4.8 nats here), whatever the
    # shards' FIM draws made of the documents.
    short_end = sum(r["loss"] for r in rows[15:18]) / 3
    assert short_end < (math.log(400) + unigram_entropy(data["shards"])) / 2
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] and r["grad_norm"] > 0 for r in rows)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000016", "step-00000024"]

    from openhcx.model.hf import load_checkpoint

    model, config = load_checkpoint(model_dir)
    assert config.vocab_size == 400 and config.eos_token_id is not None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and manifest["final_loss"] == rows[-1]["loss"]

    from mlflow.tracking import MlflowClient

    from openhcx.pipeline.tracking import tracking_uri

    assert tracking_uri(out) == f"sqlite:///{out.resolve()}/mlflow.db"
    client = MlflowClient(tracking_uri(out))
    run = client.get_run(json.loads((out / "mlflow_run.json").read_text())["run_id"])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(r["step"], r["loss"]) for r in rows]
    assert run.data.params["lr"] == "0.01" and run.data.params["model_config.dim"] == "64"
    assert run.data.tags["last_checkpoint"].endswith("step-00000024") and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["loss.png", "manifest.json"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(out) == "http://tracking.example:5000"


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                    reason="torch.compile on CPU generates C++ and needs a C++ compiler, none is on PATH")
def test_compiled_blocks_train_to_the_same_losses(data, tmp_path):
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    pretrain(**args(data, plain, steps=4))
    pretrain(**args(data, compiled, steps=4, compile=True))
    losses = [[json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
              for out in (plain, compiled)]
    assert len(losses[1]) == 4 and max(abs(a - b) for a, b in zip(*losses)) < 1e-4


def test_training_flops_count_the_head_on_scored_tokens_and_causal_attention_by_hand():
    # Layers: q, o 64x64 and k, v 64x32 (2 of 4 heads of 16), gate, up, down 64x128: 36,864 weights x 2 layers,
    # 6 FLOPs each per token = 442,368. Attention: 12 x 2 layers x 64 = 1,536 per key, and a causal query of
    # 32 meets (32 + 1) / 2 = 16.5 keys on average. Head: 6 x 400 x 64 = 153,600, on scored tokens only.
    lm = model_config("tiny", **TINY, vocab_size=400)
    assert training_flops(lm, 32, 96, 50) == (442_368 + 1_536 * 16.5) * 96 + 153_600 * 50 == 52_580_352
    # A scalar head (6 x 64) runs on every token, whatever is scored.
    scalar = model_config("tiny", **TINY, vocab_size=400, head="scalar")
    assert training_flops(scalar, 32, 96, 3) == (442_368 + 384 + 1_536 * 16.5) * 96 == 44_937_216


def test_peak_is_measured_with_the_threads_the_run_uses():
    import torch

    cpu = torch.device("cpu")
    assert torch.get_num_threads() == 1  # the module's fixture: a deliberately small thread count
    peak = measured_peak_flops(cpu)
    one_thread = max(matmul_flops(n, torch.float32, cpu) for n in (256, 512))
    # The best over sizes is at least about one size's best, and no multi-threaded figure (2 threads: about 2x).
    assert 0.8 * one_thread <= peak <= 1.5 * one_thread


def test_mfu_against_the_measured_peak_is_a_true_fraction(data, tmp_path):
    out = tmp_path / "run"
    pretrain(**args(data, out, steps=4, peak_flops=None))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(0 < r["mfu"] <= 1 for r in rows)
