"""`pretrain` under torchrun on CPU (gloo): 2 ranks with DDP or FSDP2 reproduce the 1-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

try:
    from test_trainer import args, data  # noqa: F401 (the `data` fixture)
except ImportError:  # tests/ collected as a package
    from tests.test_trainer import args, data  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = "import json, sys\nfrom openhcx.train.pretrain import pretrain\npretrain(**json.loads(sys.argv[1]))\n"


def launch(tmp_path: Path, settings: dict, nproc: int | None = None) -> subprocess.CompletedProcess:
    """Run `pretrain` in a fresh process, under torchrun with `nproc` ranks when given."""
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), json.dumps(settings)]
    if nproc:
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                    "--master_port", str(port)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> Path:
    """One process, the same global batches: 4 sequences of 32 tokens, then 2 of 64 (context schedule)."""
    out = tmp_path_factory.mktemp("one") / "out"
    launch(out.parent, settings(data, out))
    return out


def settings(data: dict, out: Path, **changes) -> dict:
    return args(data, out, long_seq_len=64, long_fraction=1 / 3, micro_batch_size=1, checkpoint_every=0, **changes)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_reproduce_one_process(data, single, tmp_path, parallel):
    out = tmp_path / "out"
    launch(tmp_path, settings(data, out, parallel=parallel), nproc=2)
    one, two = losses(single), losses(out)
    assert len(two) == 6
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5, (one, two)
    # The gathered final weights (FSDP2: from shards) equal the single-process ones up to summation order. Adam
    # divides by the gradient's own size, so an entry whose gradient is near zero (a rare token's embedding) can
    # turn a rounding difference into a visible one: a few such entries may differ by more than 1e-6, none by
    # more than a thirtieth of one step's learning rate.
    w1, w2 = load_file(single / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        diff = (w1[k] - w2[k]).abs()
        assert diff.max().item() < 1e-4, k
        assert (diff > 1e-6).sum().item() <= max(4, diff.numel() // 1000), k
    manifest = json.loads((out / "checkpoints" / "step-00000006" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert {"trainer/rank-0.json", "trainer/rank-1.json"} <= set(manifest["files"])
