"""Exact resume after SIGKILL, and fallback past a truncated or corrupted newest checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openhcx.io import UserError
from openhcx.train.checkpoint import latest_valid
from openhcx.train.pretrain import pretrain

try:
    from test_distributed import LAUNCH, losses
    from test_trainer import args, data  # noqa: F401 (the `data` fixture)
except ImportError:  # tests/ collected as a package
    from tests.test_distributed import LAUNCH, losses
    from tests.test_trainer import args, data  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "out"
    pretrain(**settings(data, out))
    return out


def settings(data: dict, out: Path) -> dict:
    return args(data, out, steps=30, checkpoint_every=5, keep_checkpoints=3, long_seq_len=64, long_fraction=0.2)


def test_killed_run_resumes_bit_for_bit(data, uninterrupted, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "launch.py").write_text(LAUNCH)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "launch.py"), json.dumps(settings(data, out))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step-00000010").is_dir() and time.monotonic() < deadline:
        time.sleep(0.005)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive, "the run finished before it could be killed"
    resumed_from = int(latest_valid(out / "checkpoints").name.removeprefix("step-"))
    assert 10 <= resumed_from < 30
    pretrain(**settings(data, out))
    assert losses(out) == losses(uninterrupted)  # every step, bit for bit
    w1, w2 = load_file(uninterrupted / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_broken_newest_checkpoint_is_named_and_skipped(data, uninterrupted, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    root = out / "checkpoints"
    assert [p.name for p in sorted(root.iterdir())] == ["step-00000020", "step-00000025", "step-00000030"]
    assert {json.loads((p / "manifest.json").read_text())["stage"] for p in root.iterdir()} == {"pretrain-checkpoint"}
    weights = root / "step-00000030" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    optimizer = root / "step-00000025" / "trainer" / "optimizer.safetensors"
    raw = bytearray(optimizer.read_bytes())
    raw[-7] ^= 0xFF  # one flipped bit pattern in the moments
    optimizer.write_bytes(bytes(raw))
    (root / ".step-00000035.tmp-x").mkdir()  # what a killed writer leaves: never a candidate
    with pytest.warns(UserWarning) as caught:
        assert latest_valid(root) == root / "step-00000020"
    messages = [str(w.message) for w in caught]
    assert "step-00000030" in messages[0] and "model.safetensors does not match its sha256" in messages[0]
    assert "step-00000025" in messages[1] and "trainer/optimizer.safetensors" in messages[1]

    with pytest.warns(UserWarning) as caught:
        pretrain(**settings(data, out))  # resumes from step 20 and redoes 21..30
    assert [m for m in ("step-00000030", "step-00000025") if any(m in str(w.message) for w in caught)] == [
        "step-00000030", "step-00000025"]
    assert losses(out) == losses(uninterrupted)
    assert not (root / ".step-00000035.tmp-x").exists()
    assert latest_valid(root) == root / "step-00000030"


def test_no_valid_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    broken = tmp_path / "step-00000005"
    broken.mkdir()
    with pytest.warns(UserWarning, match="manifest.json is missing"), pytest.raises(UserError, match="none of the 1"):
        latest_valid(tmp_path)
