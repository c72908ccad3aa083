"""Evaluation throughput: lm-evaluation-harness's HF backend and ours, side by side, same model and files.

Both score the same tasks, items, shots and seed on one already-loaded model (loading is not timed),
then the script checks the scores agree (per-choice log-likelihood difference, acc and acc_norm) and
prints seconds, items per second and the speed-up. Needs `lm-eval` (a test dependency).

    python benchmarks/eval_speed.py [--model PATH] [--limit 40] [--batch-size 8] [--batch-tokens 4096]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.eval import lmeval_ref  # noqa: E402  (the offline lm-eval configs the parity tests use)
from tests.eval.conftest import shared_benchmarks, smollm2_gguf  # noqa: E402

from openhcx.eval.backends import HFBackend, load_hf  # noqa: E402
from openhcx.eval.harness import run_task  # noqa: E402
from openhcx.eval.tasks import REGISTRY  # noqa: E402

# (our task, lm-eval config builder, shots); one KoBEST task per choice count, MMLU with its five shots
CASES = [
    ("kobest_copa", lambda b, w: lmeval_ref.kobest_config("copa", b, w, 0), 0),
    ("kobest_hellaswag", lambda b, w: lmeval_ref.kobest_config("hellaswag", b, w, 0), 0),
    ("kobest_boolq", lambda b, w: lmeval_ref.kobest_config("boolq", b, w, 0), 0),
    ("mmlu_high_school_geography", lambda b, w: lmeval_ref.mmlu_config("high_school_geography", b, w, 5), 5),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(smollm2_gguf()))
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval's batch size")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="our token budget per batch")
    ap.add_argument("--work", default="/tmp/openhcx-eval-speed")
    args = ap.parse_args()
    bench, work = shared_benchmarks(), Path(args.work)
    model, tok = load_hf(args.model)
    configs = [build(bench, work) for _, build, _ in CASES]

    t = time.perf_counter()
    ref = lmeval_ref.run_lmeval(model, tok, configs, limit=args.limit, batch_size=args.batch_size)
    t_ref = time.perf_counter() - t

    backend = HFBackend(model, tok, "bench", batch_tokens=args.batch_tokens)
    t = time.perf_counter()
    ours = {name: run_task(backend, REGISTRY.tasks[name], shots=k, limit=args.limit, data_root=bench)
            for name, _, k in CASES}
    t_ours = time.perf_counter() - t

    items = 0
    print(f"model {args.model}\n{'task':32} {'items':>5} {'acc (both)':>10} {'acc_norm':>9} {'max |dLL|':>10}")
    for name, _, k in CASES:
        _, recs = ours[name]
        n = len(recs)
        items += n
        acc = sum(r["acc"] for r in recs) / n
        acc_norm = sum(r["acc_norm"] for r in recs) / n
        dll = max(abs(a - b) for r, s in zip(recs, ref[name]["samples"]) for a, b in zip(r["lls"], s["lls"]))
        same = acc == ref[name]["acc"] and acc_norm == ref[name]["acc_norm"]
        print(f"{name:32} {n:5d} {acc:10.4f} {acc_norm:9.4f} {dll:10.2e}{'' if same else '  MISMATCH'}")
    print(f"lm-eval HF backend (batch {args.batch_size}): {t_ref:7.1f} s  {items / t_ref:6.2f} items/s")
    print(f"openhcx (batch tokens {args.batch_tokens}):   {t_ours:7.1f} s  {items / t_ours:6.2f} items/s")
    print(f"speed-up: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
