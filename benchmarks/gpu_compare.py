"""The comparisons of benchmarks/gpu_check.sh: runs (losses and weights of uninterrupted and resumed runs), HF
parity of a checkpoint in bf16, and FSDP2 `fully_shard` against the plain model for a few bf16 steps.

FSDP2 is applied to a one-rank process group here (nccl on CUDA), so it runs on a single GPU; `openhcx pretrain`
wraps only when there are several ranks (tests/test_distributed.py checks 2 ranks on CPU).
Usage: python benchmarks/gpu_compare.py runs A A2 B | parity MODEL DEVICE | fsdp DEVICE PRESET
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def runs(a: str, a2: str, b: str) -> None:
    m = {p: [json.loads(x) for x in open(f"{p}/metrics.jsonl")] for p in (a, a2, b)}
    print("resumed run's steps:", [r["step"] for r in m[b]] == list(range(1, len(m[a]) + 1)) and "1..N, each once")
    for other in (a2, b):
        d = [abs(x["loss"] - y["loss"]) for x, y in zip(m[a], m[other])]
        x, y = load_file(f"{a}/model/model.safetensors"), load_file(f"{other}/model/model.safetensors")
        w = max((x[k].float() - y[k].float()).abs().max().item() for k in x)
        print(f"{a} vs {other}: loss max abs diff {max(d):.4g}, final {m[a][-1]['loss']:.4f} vs "
              f"{m[other][-1]['loss']:.4f}; weights max abs diff {w:.4g}")
    steady = sorted(m[a][2:], key=lambda r: r["tokens_per_s"])[len(m[a][2:]) // 2]
    print(f"{a}: median step {steady['tokens_per_s']:,.0f} tokens/s, mfu {steady['mfu']:.3f}")


def parity(path: str, device: str) -> None:
    from transformers import AutoModelForCausalLM

    from openhcx.model.hf import load_checkpoint

    ids = torch.randint(10, 1000, (4, 256), device=device)
    with torch.no_grad():
        ours = load_checkpoint(path, dtype=torch.bfloat16, device=device)[0].eval()(ids).float()
        fp32 = load_checkpoint(path, dtype=torch.float32, device=device)[0].eval()(ids).float()
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()(ids).logits.float()
    print(f"bf16 logits, ours vs HF: max abs diff {(ours - hf).abs().max():.4g} (ours bf16 vs fp32 "
          f"{(ours - fp32).abs().max():.4g}, largest logit {fp32.abs().max():.3g}); same argmax at "
          f"{(ours.argmax(-1) == hf.argmax(-1)).float().mean():.1%} of positions")


def fsdp(device: str, preset: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from openhcx.model.transformer import Transformer, model_config

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    losses = {}
    for mode in ("plain", "fsdp2"):
        torch.manual_seed(0)
        model = Transformer(model_config(preset, vocab_size=16000)).to(device)
        if mode == "fsdp2":
            for block in model.model.layers:
                fully_shard(block)
            fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
        g, losses[mode] = torch.Generator().manual_seed(1), []
        for _ in range(5):
            ids = torch.randint(0, 16000, (4, 512), generator=g).to(device)
            with torch.autocast(device, dtype=torch.bfloat16):
                logits = model(ids[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[mode].append(round(loss.item(), 6))
    print(f"5 bf16 steps of {preset}: plain {losses['plain']}, fsdp2 {losses['fsdp2']}, "
          f"{'identical' if losses['plain'] == losses['fsdp2'] else 'DIFFERENT'}")
    dist.destroy_process_group()


if __name__ == "__main__":
    {"runs": runs, "parity": parity, "fsdp": fsdp}[sys.argv[1]](*sys.argv[2:])
