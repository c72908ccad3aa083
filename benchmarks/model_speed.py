"""Training and generation speed of our Transformer against transformers' LlamaForCausalLM, side by side.

Both models get the same config, the same weights, batch, dtype, device and thread count, in one process,
run alternately so machine noise hits both alike. Measured:
1. training tokens/s: forward + cross-entropy + backward + AdamW step on (batch, seq) random tokens;
2. KV-cache greedy generation tokens/s at batch 1 and 8 (our `generate` vs HF `generate(do_sample=False)`).
Prints medians over --repeats runs and the ratio ours/HF. Usage:
    python benchmarks/model_speed.py --preset tiny --threads 2
    python benchmarks/model_speed.py --preset 125m --device cuda --dtype bfloat16 --batch 8 --seq 1024
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from openhcx.model.generate import Sampling, generate
from openhcx.model.hf import hf_config
from openhcx.model.transformer import Transformer, model_config


def side_by_side(fns, repeats: int, device: str) -> list[float]:
    """Median seconds of each function after one warm-up call each, run alternately."""
    times = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def train_step(model, optimizer, ids, vocab: int, hf: bool):
    def step():
        logits = model(ids[:, :-1]).logits if hf else model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def report(what: str, units: float, ours_s: float, hf_s: float) -> None:
    print(f"{what:<28} ours {units / ours_s:12,.0f} tok/s   HF {units / hf_s:12,.0f} tok/s   "
          f"ratio {hf_s / ours_s:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab-size", type=int, default=None, help="override the preset's vocabulary")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens for generation")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    config = model_config(args.preset, max_seq_len=max(args.seq, args.prompt + args.new_tokens) + 1, **overrides)
    ours = Transformer(config).to(device=args.device, dtype=dtype)
    theirs = LlamaForCausalLM(LlamaConfig(**hf_config(config, dtype))).to(device=args.device, dtype=dtype)
    theirs.load_state_dict(ours.state_dict(), strict=False)  # HF's rotary buffer is not in our state dict
    print(f"preset {args.preset}: {config.num_params() / 1e6:.1f}M parameters, {args.dtype} on {args.device}, "
          f"{torch.get_num_threads()} threads, HF attention {theirs.config._attn_implementation}")

    vocab = config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq + 1), device=args.device)
    steps = [train_step(m, torch.optim.AdamW(m.parameters(), lr=1e-4), ids, vocab, hf)
             for m, hf in ((ours, False), (theirs, True))]
    ours.train(), theirs.train()
    report(f"train b{args.batch} x {args.seq}", args.batch * args.seq, *side_by_side(steps, args.repeats, args.device))

    ours.eval(), theirs.eval()
    sampling = Sampling(max_new_tokens=args.new_tokens)
    for batch in (1, 8):
        prompts = torch.randint(1, vocab, (batch, args.prompt), device=args.device)
        lists = prompts.tolist()

        def run_ours():
            generate(ours, lists, sampling)

        @torch.no_grad()
        def run_hf():
            theirs.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new_tokens,
                            min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

        report(f"generate b{batch}, {args.new_tokens} new", batch * args.new_tokens,
               *side_by_side([run_ours, run_hf], args.repeats, args.device))


if __name__ == "__main__":
    main()
