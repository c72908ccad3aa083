"""Training and generation speed of our Transformer against transformers' LlamaForCausalLM, side by side.

Both models get the same config, the same weights, batch, dtype, device and thread count, in one process,
run alternately so machine noise hits both alike. Measured:
1. training tokens/s: forward + cross-entropy + backward + AdamW step on (batch, seq) random tokens. Ours
   takes its loss as `openhcx pretrain` does (fused head + cross-entropy inside forward); HF takes the faster
   of its two natural steps (`labels=`, or logits then fp32 `F.cross_entropy`), both timed and printed.
   Same torch AdamW settings on both sides, nothing compiled;
2. KV-cache greedy generation tokens/s at batch 1 and 8 (our `generate` vs HF `generate(do_sample=False)`).
Prints medians over --repeats runs, the ratio ours/HF, and the FLOP/s each achieves against this machine's
measured matmul peak (training: 6N + attention per token, PaLM convention; generation: 2N per token, the
forward matmuls only). Times are elapsed time; --clock cpu times this process's CPU time instead, which on
a shared machine leaves out the time other jobs hold the core. --profile adds the operators where a
training step spends its time. Usage:
    python benchmarks/model_speed.py --preset tiny --threads 1 --repeats 7
    python benchmarks/model_speed.py --preset tiny --threads 1 --repeats 7 --clock cpu
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
from openhcx.train.trainer import measured_peak_flops


def side_by_side(fns, repeats: int, device: str, clock=time.perf_counter) -> list[float]:
    """Median seconds of each function after one warm-up call each, run alternately."""
    times = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            if device == "cuda":
                torch.cuda.synchronize()
            start = clock()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            t.append(clock() - start)
    return [statistics.median(t) for t in times]


def train_step(model, optimizer, ids, loss):
    """One optimizer step: `loss(model, inputs, targets)` gives the mean loss over the batch's tokens."""

    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(model, inputs, targets).backward()
        optimizer.step()

    return step


def ours_loss(model, inputs, targets):
    """Our training loss exactly as `openhcx pretrain` takes it: the fused head + cross-entropy in forward."""
    total, count = model(inputs, targets=targets)
    return total / count


def hf_labels_loss(model, inputs, targets):
    """HF's own loss path (labels, already shifted)."""
    return model(inputs, labels=targets, shift_labels=targets, use_cache=False).loss


def hf_logits_loss(model, inputs, targets):
    """HF logits, then fp32 cross-entropy."""
    logits = model(inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def report(what: str, units: float, ours_s: float, hf_s: float, flops_per_unit: float, peak: float) -> None:
    ours, hf = units / ours_s, units / hf_s
    print(f"{what:<28} ours {ours:10,.0f} tok/s ({ours * flops_per_unit / 1e9:6.2f} GFLOP/s, "
          f"{100 * ours * flops_per_unit / peak:4.1f}% of peak)   HF {hf:10,.0f} tok/s "
          f"({hf * flops_per_unit / 1e9:6.2f} GFLOP/s)   ratio {hf_s / ours_s:5.2f}x", flush=True)


def profile(steps, names, rows: int = 12) -> None:
    """The operators where each model's training step spends its own CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for step, name in zip(steps, names):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(f"--- {name}: top operators by self CPU time over 3 training steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


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
    ap.add_argument("--profile", action="store_true", help="print the top operators of a training step")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: elapsed time; cpu: this process's CPU time (CPU only), which leaves out the time "
                         "other jobs on a shared machine hold the core")
    args = ap.parse_args()
    if args.clock == "cpu" and args.device != "cpu":
        ap.error("--clock cpu times CPU work: use it with --device cpu")

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    config = model_config(args.preset, max_seq_len=max(args.seq, args.prompt + args.new_tokens) + 1, **overrides)
    ours = Transformer(config).to(device=args.device, dtype=dtype)
    theirs = LlamaForCausalLM(LlamaConfig(**hf_config(config, dtype))).to(device=args.device, dtype=dtype)
    theirs.load_state_dict(ours.state_dict(), strict=False)  # HF's rotary buffer is not in our state dict
    peak = measured_peak_flops(torch.device(args.device))
    print(f"preset {args.preset}: {config.num_params() / 1e6:.1f}M parameters, {args.dtype} on {args.device}, "
          f"{torch.get_num_threads()} threads, HF attention {theirs.config._attn_implementation}, "
          f"peak {peak / 1e9:.1f} GFLOP/s, {args.clock} clock")

    vocab = config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq + 1), device=args.device)
    losses, models = (ours_loss, hf_labels_loss, hf_logits_loss), (ours, theirs, theirs)
    with torch.no_grad():  # same weights, same tokens: the three losses agree, or the timing means nothing
        start = [loss(m, ids[:, :-1].contiguous(), ids[:, 1:].contiguous()).item() for loss, m in zip(losses, models)]
    assert max(start) - min(start) < 1e-4 * max(start), start
    # Fused AdamW on both sides: what `openhcx pretrain` uses and HF Trainer's default on torch >= 2.8.
    steps = [train_step(m, torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True), ids, loss)
             for m, loss in zip(models, losses)]
    ours.train(), theirs.train()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ours_s, labels_s, logits_s = side_by_side(steps, args.repeats, args.device, clock)
    print(f"HF training step: labels= {args.batch * args.seq / labels_s:,.0f} tok/s, logits + F.cross_entropy "
          f"{args.batch * args.seq / logits_s:,.0f} tok/s; the faster one is compared")
    report(f"train b{args.batch} x {args.seq}", args.batch * args.seq, ours_s, min(labels_s, logits_s),
           config.flops_per_token(args.seq), peak)
    if args.profile:
        profile((steps[0], steps[1] if labels_s <= logits_s else steps[2]), ("ours", "HF"))

    ours.eval(), theirs.eval()
    theirs.load_state_dict(ours.state_dict(), strict=False)  # training moved both apart: equal weights again
    sampling = Sampling(max_new_tokens=args.new_tokens)
    for batch in (1, 8):
        prompts = torch.randint(1, vocab, (batch, args.prompt), device=args.device)
        lists = prompts.tolist()

        def run_ours():
            return [c.ids for c in generate(ours, lists, sampling)]

        @torch.no_grad()
        def run_hf():
            out = theirs.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new_tokens,
                                  min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
            return out[:, args.prompt:].tolist()

        # Same work on both sides: every row runs the full token budget, and greedy picks agree.
        ours_ids, hf_ids = run_ours(), run_hf()
        assert all(len(row) == args.new_tokens for row in ours_ids + hf_ids)
        agree = sum(a == b for a, b in zip(ours_ids, hf_ids))
        print(f"generate b{batch}: {agree}/{batch} rows identical to HF's greedy tokens")

        report(f"generate b{batch}, {args.new_tokens} new", batch * args.new_tokens,
               *side_by_side([run_ours, run_hf], args.repeats, args.device, clock), config.flops_per_token(1) / 3,
               peak)


if __name__ == "__main__":
    main()
