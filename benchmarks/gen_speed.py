"""Generation throughput on GSM8K: lm-evaluation-harness's HF backend and ours, same model, prompts and settings.

Both decode the same 8-shot GSM8K prompts greedily with the task's stop sequences and token budget: lm-eval
through `HFLM.generate_until` (transformers' `generate`), ours through the harness's `LocalGenerator` (our
Transformer with its KV-cache decoder, left-padded batches under a token budget), on one safetensors directory
(a GGUF is imported first, as `openhcx import-hf` does). Loading is not timed. The
script counts generated tokens with the model's tokenizer, prints tokens/s for each and the speed-up, and
checks that the extracted answers (strict and flexible) are identical item by item.

    python benchmarks/gen_speed.py [--limit 32] [--batch-size 8] [--batch-tokens 16384]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.eval.conftest import shared_benchmarks, smollm2_gguf  # noqa: E402

from openhcx.eval.backends import load_hf  # noqa: E402
from openhcx.eval.generation import GenRequest, LocalGenerator  # noqa: E402
from openhcx.eval.harness import prepare  # noqa: E402
from openhcx.eval.tasks import REGISTRY  # noqa: E402
from openhcx.model.hf import import_hf  # noqa: E402


def lmeval_generate(model, tok, prompts: list[str], until: list[str], max_new: int, batch_size: int) -> list[str]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    reqs = [Instance(request_type="generate_until", doc={}, idx=i,
                     arguments=(p, {"until": until, "max_gen_toks": max_new, "do_sample": False}))
            for i, p in enumerate(prompts)]
    return lm.generate_until(reqs, disable_tqdm=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(smollm2_gguf()), help="a .gguf file or a HF model directory")
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval's batch size")
    ap.add_argument("--batch-tokens", type=int, default=16384, help="our token budget per batch")
    args = ap.parse_args()
    task = REGISTRY.tasks["gsm8k"]
    items, reqs, _ = prepare(task, limit=args.limit, data_root=shared_benchmarks())
    prompts = [r[0].context for r in reqs]
    gen = task.generation
    with tempfile.TemporaryDirectory() as tmp:  # one safetensors directory both sides load: the same weights
        ckpt = args.model
        if Path(args.model).suffix == ".gguf":
            ckpt = str(Path(tmp) / "model")
            import_hf(args.model, ckpt)
        model, tok = load_hf(ckpt)
        ours_gen = LocalGenerator(ckpt, batch_tokens=args.batch_tokens)
        ours_gen.load()
        t = time.perf_counter()
        got = dict(ours_gen.generate([GenRequest(p, gen.max_new_tokens, gen.stop) for p in prompts]))
        t_ours = time.perf_counter() - t
    ours = [got[i][0] for i in range(len(prompts))]
    t = time.perf_counter()
    ref = lmeval_generate(model, tok, prompts, list(gen.stop), gen.max_new_tokens, args.batch_size)
    t_ref = time.perf_counter() - t

    def tokens(texts):
        return sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in texts)

    records_ours = task.score(items, [[x] for x in ours], None)
    records_ref = task.score(items, [[x] for x in ref], None)
    fields = ["strict", "flexible"]  # the answers GSM8K's two metrics compare with the gold
    same_answers = sum(all(a.get(k) == b.get(k) for k in fields) for a, b in zip(records_ours, records_ref))
    same_text = sum(a == b for a, b in zip(ours, ref))
    print(f"model {args.model}; {len(prompts)} GSM8K 8-shot prompts, greedy, max {gen.max_new_tokens} new tokens")
    print(f"identical extracted answers: {same_answers}/{len(prompts)}; identical completions: "
          f"{same_text}/{len(prompts)} (fields compared: {', '.join(fields)})")
    n_ref, n_ours = tokens(ref), tokens(ours)
    print(f"lm-eval HF backend (batch {args.batch_size}): {t_ref:7.1f} s  {n_ref / t_ref:7.1f} tokens/s")
    print(f"openhcx (batch tokens {args.batch_tokens}): {t_ours:7.1f} s  {n_ours / t_ours:7.1f} tokens/s")
    print(f"speed-up (tokens/s): {(n_ours / t_ours) / (n_ref / t_ref):.2f}x")


if __name__ == "__main__":
    main()
