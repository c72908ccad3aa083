"""PPO resumes mid-run: a `ppo` process killed with SIGKILL after a checkpoint, then resumed, ends bit for bit
where an uninterrupted run ends (weights, metrics rows, held-out evaluations); a corrupted newest checkpoint
falls back to the one before; a run refuses to mix with an earlier one's checkpoints; every checkpoint is
announced to the callbacks once it is complete. All on CPU, where the kernels are deterministic."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openhcx.io import UserError
from openhcx.model.generate import Sampling
from openhcx.model.hf import load_checkpoint, save_checkpoint
from openhcx.model.transformer import ModelConfig, Transformer
from openhcx.train.checkpoint import checkpoints, problem
from openhcx.train.ppo import (
    HeldoutSet, PPOCheckpoints, PPOConfig, PPOLearner, PPORun, ppo, prompt_batches, read_heldout,
)
from openhcx.train.rollout import RolloutProducer, RolloutWorker

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "episodes_per_s"}  # the only fields two identical runs may disagree on
STEPS = 9  # checkpoints at 2, 4, 6, 8 and the last update, 9; held-out evaluations at 0, 3, 6, 9


@pytest.fixture(scope="module")
def models(demo_tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny SFT model and reward model over the demo tokenizer (as in test_ppo.py)."""
    from openhcx.tokenizer.tokenizer import Tokenizer

    vocab = Tokenizer.load(demo_tokenizer).vocab_size
    config = ModelConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=256,
                         pad_token_id=1)
    tmp = tmp_path_factory.mktemp("ppo-resume-models")
    torch.manual_seed(0)
    sft = save_checkpoint(Transformer(config), config, tmp / "sft", tokenizer_dir=demo_tokenizer)
    scalar = config.replace(head="scalar")
    rm = save_checkpoint(Transformer(scalar), scalar, tmp / "rm", tokenizer_dir=demo_tokenizer)
    (rm / "reward_norm.json").write_text(json.dumps({"mean": 0.5, "std": 2.0, "clip": 3.0, "reference": "test",
                                                     "count": 1}))
    return sft, rm


def arguments(models, out: Path, **changes) -> dict:
    """The `ppo` arguments of these tests: lag 1, so a producer thread samples ahead of the learner."""
    sft, rm = models
    return dict(sft=str(sft), reward=str(rm), prompts=[str(ROOT / "data/demo/sft.jsonl")], out=str(out),
                heldout=str(ROOT / "data/demo/heldout_prompts.jsonl"), steps=STEPS, batch_size=4, minibatch_size=2,
                epochs=1, max_new_tokens=8, eval_every=3, eval_prompts=4, lr=1e-3, lag=1, checkpoint_every=2,
                keep_checkpoints=2, progress=False, mlflow=False) | changes


@pytest.fixture(scope="module")
def uninterrupted(models, one_thread, tmp_path_factory) -> Path:
    """One thread, as in the killed process: a different thread count may sum in a different order."""
    out = tmp_path_factory.mktemp("ppo-uninterrupted") / "run"
    ppo(**arguments(models, out))
    return out


def rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def assert_same_result(out: Path, reference: Path) -> None:
    got, want = load_file(str(out / "model/model.safetensors")), load_file(str(reference / "model/model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert rows(out) == rows(reference) and [r["step"] for r in rows(out)] == list(range(1, STEPS + 1))
    assert (out / "heldout.jsonl").read_text() == (reference / "heldout.jsonl").read_text()
    summary = ("steps", "stopped_early", "best_step", "heldout_first", "heldout_best")
    manifest, expected = (json.loads((d / "manifest.json").read_text()) for d in (out, reference))
    assert {k: manifest[k] for k in summary} == {k: expected[k] for k in summary}


def test_a_killed_run_resumes_to_the_uninterrupted_result(models, uninterrupted, tmp_path, capsys):
    out = tmp_path / "run"
    script = "import json, sys, torch; torch.set_num_threads(1); from openhcx.train.ppo import ppo; " \
             "ppo(**json.loads(sys.argv[1]))"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(arguments(models, out))], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        while not checkpoints(out / "checkpoints"):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no handler, no cleanup
    finally:
        proc.wait()
        log.close()
    assert proc.returncode == -9
    saved = [int(p.name.removeprefix("step-")) for p in checkpoints(out / "checkpoints")]
    assert saved and max(saved) < STEPS and not (out / "model").exists()  # killed mid-run

    path = ppo(**arguments(models, out))
    assert_same_result(out, uninterrupted)
    # the summary line: this call's figures, read from the whole run's metrics and evaluations
    metrics = rows(out)
    evals = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    best = max(evals, key=lambda e: (e["constraints"], e["step"]))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"ppo: {path} ({STEPS} updates, resumed at step {max(saved)}, reward "
                           f"{metrics[0]['reward']:.3f} -> {metrics[-1]['reward']:.3f}, KL {metrics[-1]['kl']:.3f}, "
                           f"held-out {best['constraints']:.3f} at step {best['step']}, "), line
    assert [int(p.name[5:]) for p in checkpoints(out / "checkpoints")] == [8, 9]  # keep_checkpoints=2
    assert not list((out / "checkpoints").glob(".step-*"))  # a half-written one from the kill is gone


def test_a_corrupted_newest_checkpoint_falls_back_to_the_one_before(models, uninterrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out, ignore=shutil.ignore_patterns("model"))
    for name in ("manifest.json", "heldout.jsonl"):  # what only a finished run has
        (out / name).unlink()
    newest = out / "checkpoints" / f"step-{STEPS:08d}"
    state = newest / "trainer/value_optimizer.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF
    state.write_bytes(bytes(data))
    assert problem(newest) is not None
    with pytest.warns(UserWarning, match=f"{newest}: not a valid checkpoint .*value_optimizer"):
        ppo(**arguments(models, out))
    assert_same_result(out, uninterrupted)  # from step 8 (and its row 9 dropped, then written again)
    assert problem(newest) is None  # the last update saved again


def test_a_run_does_not_mix_with_earlier_checkpoints(models, uninterrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out, ignore=shutil.ignore_patterns("model"))
    with pytest.raises(UserError, match="holds checkpoints of an earlier run; pass resume=true"):
        ppo(**arguments(models, out, resume=False))
    with pytest.raises(UserError, match=r"step-00000009: written with lr=0.001, this run has lr=0.002"):
        ppo(**arguments(models, out, lr=2e-3))
    with pytest.raises(UserError, match="checkpoint_every=-1: must be at least 0"):
        ppo(**arguments(models, tmp_path / "other", checkpoint_every=-1))


# ---- the loop itself, on 32-token models ---------------------------------------------------------------------

TINY = ModelConfig(vocab_size=32, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=64)


class FavourSeven:
    """Reward: the share of token 7 in the last 8 tokens."""

    def score(self, ids_batch):
        raw = torch.tensor([sum(t == 7 for t in seq[-8:]) / 8 for seq in ids_batch])
        return raw, raw


class Recorder:
    """Every callback call, in order; checks that an announced checkpoint is complete."""

    def __init__(self):
        self.calls: list[tuple] = []

    def on_train_start(self, run):
        self.calls.append(("start", run.step))

    def on_step_end(self, run, row):
        self.calls.append(("step", row.step))

    def log(self, values, step):
        self.calls.append(("log", step, sorted(values)))

    def on_checkpoint(self, run, path):
        assert problem(path) is None and load_checkpoint(path)[1] == TINY
        self.calls.append(("checkpoint", run.step, Path(path).name))

    def on_train_end(self, run):
        self.calls.append(("end", run.step))


def tiny_run(root: Path, lag: int, every: int, recorder: Recorder | None = None) -> PPORun:
    torch.manual_seed(0)
    policy, value = Transformer(TINY), Transformer(TINY.replace(head="scalar"))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, 32, (5,), generator=g).tolist() for _ in range(16)]
    config = PPOConfig(steps=10, batch_size=4, minibatch_size=2, epochs=2, lr=3e-3, value_lr=1e-3, kl_target=1.0)
    worker = RolloutWorker(copy.deepcopy(policy), copy.deepcopy(policy).requires_grad_(False), FavourSeven(),
                           Sampling(max_new_tokens=8, temperature=1.0), pad_id=0, greedy=True)
    producer = RolloutProducer(worker, prompt_batches(prompts, config.batch_size, config.seed), lag=lag)
    records = read_heldout(str(ROOT / "data/demo/heldout_prompts.jsonl"))[:3]
    heldout = HeldoutSet(records, prompts[:3], lambda ids: " ".join("가나" if t % 2 else "ab" for t in ids), (), 0, 6)
    return PPORun(PPOLearner(policy, value, config), producer, heldout, eval_every=2, patience=2,
                  callbacks=[recorder] if recorder else [],
                  checkpoints=PPOCheckpoints(root, every, keep=10, model_config=TINY, tokenizer_dir=None,
                                             run_config={}, inputs={}))


@pytest.mark.parametrize("lag", [0, 2])
def test_the_loop_resumes_exactly_from_its_checkpoints(tmp_path, lag):
    """Each checkpoint restores all the state the rest of the run reads: weights, both optimizers, minibatch
    order, the KL controller (adaptive here), early stopping and, with lag 2, the two older policies the
    producer still samples with."""
    full = tiny_run(tmp_path / "full", lag, every=1).fit()
    # patience 2 stops it at step 8, after the best evaluation at 4 and a worse one at 6: resumed from steps
    # 6 and 7, the run must remember both, and the best policy
    assert (full.steps, full.stopped_early, full.best_step) == (8, True, 4)
    root = tmp_path / "full"
    assert len(checkpoints(root)) == full.steps
    for done in (2, 6, 7):
        path = root / f"step-{done:08d}"
        trainer = sorted(p.name for p in (path / "trainer").glob("*.safetensors") if "optimizer" not in p.name)
        assert trainer == ["best_policy.safetensors"] * (done > 4) + [
            f"sampler-{v:08d}.safetensors" for v in range(max(1, done - lag), done)] + ["value.safetensors"]
        run = tiny_run(tmp_path / path.name, lag, every=1)
        run.restore(path)
        rest = run.fit()
        assert [vars(m) | dict.fromkeys(TIMING) for m in rest.metrics] == \
            [vars(m) | dict.fromkeys(TIMING) for m in full.metrics[done:]]
        assert rest.evaluations == full.evaluations and rest.best_step == full.best_step
        assert all(torch.equal(rest.policy_state[k], v) for k, v in full.policy_state.items())


def test_every_checkpoint_is_announced_once_complete(tmp_path):
    recorder = Recorder()
    result = tiny_run(tmp_path / "every2", lag=1, every=2, recorder=recorder).fit()
    last = result.steps
    saved = [c for c in recorder.calls if c[0] == "checkpoint"]
    assert saved == [("checkpoint", s, f"step-{s:08d}") for s in sorted({*range(2, last + 1, 2), last})]
    # each announcement follows its step's row; held-out values are logged at the evaluation's step
    steps = [c for c in recorder.calls if c[0] in ("step", "checkpoint")]
    assert all(steps[steps.index(c) - 1] == ("step", c[1]) for c in saved)
    assert [c[1] for c in recorder.calls if c[0] == "log"] == [e["step"] for e in result.evaluations]
    assert recorder.calls[-1] == ("end", last)
    assert [c[2] for c in recorder.calls if c[0] == "log"][0] == [
        "heldout_constraints", "heldout_length_chars", "heldout_repetition_rate", "heldout_score"]

    only_last = Recorder()
    tiny_run(tmp_path / "every0", lag=1, every=0, recorder=only_last).fit()
    assert [c for c in only_last.calls if c[0] == "checkpoint"] == [("checkpoint", last, f"step-{last:08d}")]
