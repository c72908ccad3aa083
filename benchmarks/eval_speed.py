"""Evaluation throughput: lm-evaluation-harness's HF backend and ours, side by side, same model and files.

Both score the same tasks, items, shots and seed on one already-loaded model (loading is not timed),
one task at a time on each side, then the script checks the scores agree (per-choice log-likelihood
difference, acc and acc_norm) and prints seconds and the speed-up per task and in all. Needs `lm-eval`
(a test dependency).
--cases short: KoBEST (one task per choice count) and 5-shot MMLU geography, prompts of a few hundred tokens.
--cases long: 5-shot MMLU's longest subjects (European history, law: 2-4k tokens) and Korean prompts of
4-6k tokens, each a passage of KoCoNovel (../shared/corpora) with "which of these words occurs in it?" and
four one-letter options, written in MMLU's file format so both harnesses read them with the same prompt.

    python benchmarks/eval_speed.py [--cases short|long] [--model PATH] [--limit 40] [--batch-size 8]
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

import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
from functools import partial  # noqa: E402

from openhcx.eval.backends import HFBackend, load_hf  # noqa: E402
from openhcx.eval.harness import run_task  # noqa: E402
from openhcx.eval.tasks import REGISTRY, mmlu  # noqa: E402

# (our task, lm-eval config builder, shots); one KoBEST task per choice count, MMLU with its five shots
SHORT = [
    ("kobest_copa", lambda b, w: lmeval_ref.kobest_config("copa", b, w, 0), 0),
    ("kobest_hellaswag", lambda b, w: lmeval_ref.kobest_config("hellaswag", b, w, 0), 0),
    ("kobest_boolq", lambda b, w: lmeval_ref.kobest_config("boolq", b, w, 0), 0),
    ("mmlu_high_school_geography", lambda b, w: lmeval_ref.mmlu_config("high_school_geography", b, w, 5), 5),
]
LONG = [
    ("mmlu_high_school_european_history",
     lambda b, w: lmeval_ref.mmlu_config("high_school_european_history", b, w, 5), 5),
    ("mmlu_professional_law", lambda b, w: lmeval_ref.mmlu_config("professional_law", b, w, 5), 5),
    ("mmlu_korean_long", lambda b, w: lmeval_ref.mmlu_config("korean_long", w / "korean_long", w, 0), 0),
]


def korean_long(corpora: Path, out: Path, items: int = 60, chars: tuple[int, int] = (2000, 2900), seed: int = 0) -> Path:
    """MMLU-format files (header, answers 0-3) of Korean passages of 2,000-2,900 characters from KoCoNovel (4-6k
    SmolLM2 tokens), each asking which of four words occurs in it; the other three come from other novels and do
    not occur in this one."""
    novels = sorted((corpora / "koconovel" / "data" / "jsonl").glob("*/text.jsonl"))
    texts = ["\n".join(json.loads(x)["text"] for x in p.read_text(encoding="utf-8").splitlines()) for p in novels]
    rng, rows = random.Random(seed), []
    while len(rows) < items:
        k, size = rng.randrange(len(texts)), rng.randint(*chars)
        if len(texts[k]) < size:
            continue
        start = rng.randrange(len(texts[k]) - size + 1)
        passage = texts[k][start:start + size]
        inside = sorted(set(re.findall(r"[가-힣]{3,}", passage)))
        others = sorted({w for j, t in enumerate(texts) if j != k for w in re.findall(r"[가-힣]{3,}", t[:4000])}
                        - set(re.findall(r"[가-힣]{3,}", texts[k])))
        if not inside or len(others) < 3:
            continue
        options = [rng.choice(inside), *rng.sample(others, 3)]
        order = rng.sample(range(4), 4)
        rows.append([f"{passage}\n\n다음 중 위 글에 나오는 낱말은 무엇입니까?", *(options[i] for i in order),
                     str(order.index(0))])
    for split, part in (("dev", rows[:5]), ("test", rows[5:])):
        path = out / "mmlu" / split / f"korean_long_{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([mmlu.HEADER, *part])
    return out


def our_task(name: str):
    if name != "mmlu_korean_long":
        return REGISTRY.tasks[name]
    return dataclasses.replace(REGISTRY.tasks["mmlu_abstract_algebra"], name=name,
                               load=partial(mmlu.load, "korean_long"),
                               description="The following are multiple choice questions (with answers) about korean long.\n\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="short", choices=["short", "long"])
    ap.add_argument("--model", default=str(smollm2_gguf()))
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval's batch size")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="our token budget per batch")
    ap.add_argument("--work", default="/tmp/openhcx-eval-speed")
    args = ap.parse_args()
    bench, work = shared_benchmarks(), Path(args.work)
    cases = SHORT if args.cases == "short" else LONG
    if args.cases == "long":
        korean_long(bench.parent / "corpora", work / "korean_long")
    model, tok = load_hf(args.model)
    configs = [build(bench, work) for _, build, _ in cases]

    ref, ours, s_ref, s_ours = {}, {}, {}, {}  # results and seconds per task, each task timed on its own
    for (name, _, _), config in zip(cases, configs):
        t = time.perf_counter()
        ref.update(lmeval_ref.run_lmeval(model, tok, [config], limit=args.limit, batch_size=args.batch_size))
        s_ref[name] = time.perf_counter() - t

    backend = HFBackend(model, tok, "bench", batch_tokens=args.batch_tokens)
    for name, _, k in cases:
        t = time.perf_counter()
        ours[name] = run_task(backend, our_task(name), shots=k, limit=args.limit,
                              data_root=work / "korean_long" if name == "mmlu_korean_long" else bench)
        s_ours[name] = time.perf_counter() - t
    t_ref, t_ours = sum(s_ref.values()), sum(s_ours.values())

    items = 0
    print(f"model {args.model}\n{'task':34} {'items':>5} {'prompt tokens':>15} {'acc (both)':>10} {'acc_norm':>9} "
          f"{'max |dLL|':>10} {'lm-eval s':>9} {'ours s':>7} {'ratio':>6}")
    for name, _, k in cases:
        _, recs = ours[name]
        lengths = sorted(len(tok(s["arguments"][0][0])["input_ids"]) for s in ref[name]["samples"])
        n = len(recs)
        items += n
        acc = sum(r["acc"] for r in recs) / n
        acc_norm = sum(r["acc_norm"] for r in recs) / n
        dll = max(abs(a - b) for r, s in zip(recs, ref[name]["samples"]) for a, b in zip(r["lls"], s["lls"]))
        same = acc == ref[name]["acc"] and acc_norm == ref[name]["acc_norm"]
        span = f"{lengths[0]}-{lengths[-1]}"
        print(f"{name:34} {n:5d} {span:>15} {acc:10.4f} {acc_norm:9.4f} {dll:10.2e} {s_ref[name]:9.1f} "
              f"{s_ours[name]:7.1f} {s_ref[name] / s_ours[name]:5.2f}x{'' if same else '  MISMATCH'}")
    print(f"lm-eval HF backend (batch {args.batch_size}): {t_ref:7.1f} s  {items / t_ref:6.2f} items/s")
    print(f"openhcx (batch tokens {args.batch_tokens}):   {t_ours:7.1f} s  {items / t_ours:6.2f} items/s")
    print(f"speed-up: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
