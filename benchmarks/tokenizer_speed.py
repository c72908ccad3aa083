"""Encode throughput, side by side in one process.

1. Portable mode (tokenizer.json through our wrapper, ids as lists) against a stock HF byte-level BPE
   (`tokenizers.ByteLevelBPETokenizer`, ids as lists too) trained on the same corpus at the same vocabulary size:
   MB/s of UTF-8 input.
2. Exact mode, the Korean analyzer spread over 1..N worker processes: characters per second and scaling.
Prints medians over --repeats runs and the ratios. Usage:
    python benchmarks/tokenizer_speed.py --tokenizer runs/demo/tokenizer --corpus runs/demo/corpus
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from itertools import islice

from tokenizers import ByteLevelBPETokenizer

from openhcx.data.corpus import iter_documents
from openhcx.tokenizer.tokenizer import SPECIAL_TOKENS, Tokenizer


def timed(fn, repeats: int) -> float:
    return side_by_side([fn], repeats)[0]


def side_by_side(fns, repeats: int) -> list[float]:
    """Median seconds of each function, run alternately so machine noise hits all of them alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default="runs/demo/tokenizer")
    ap.add_argument("--corpus", default="runs/demo/corpus")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--exact-chars", type=int, default=300_000, help="Korean characters for the exact-mode runs")
    ap.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    ours = Tokenizer.load(args.tokenizer)
    texts = [d.text for d in iter_documents(args.corpus, "train")]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    stock = ByteLevelBPETokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        stock.train_from_iterator(texts, vocab_size=ours.vocab_size, min_frequency=2,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False)
        stock.save(os.path.join(tmp, "stock.json"))
    print(f"corpus: {len(texts)} documents, {mb:.2f} MB; vocab {ours.vocab_size} (stock {stock.get_vocab_size()})")
    ours_s, stock_s = side_by_side(
        [lambda: ours.encode_batch(texts, "portable"), lambda: [e.ids for e in stock.encode_batch(texts)]], args.repeats)
    print(f"portable (ours)      {mb / ours_s:8.2f} MB/s")
    print(f"stock HF byte-level  {mb / stock_s:8.2f} MB/s")
    print(f"ratio ours/stock     {stock_s / ours_s:8.2f}x  (goal >= 0.9x)")

    korean, chars = [], 0
    for d in iter_documents(args.corpus, "train", ["ko"]):
        korean.append(d.text)
        chars += len(d.text)
        if chars >= args.exact_chars:
            break
    print(f"exact mode on {len(korean)} Korean documents, {chars:,} characters")
    base = None
    for workers in range(1, args.max_workers + 1):
        s = timed(lambda: ours.encode_batch(korean, "exact", workers=workers), max(1, args.repeats // 2))
        base = base or s
        print(f"exact, {workers} worker(s)   {chars / s:10,.0f} chars/s  scaling {base / s:.2f}x")
    s = timed(lambda: ours.encode_batch(korean, "portable"), args.repeats)
    print(f"portable, same text  {chars / s:10,.0f} chars/s")


if __name__ == "__main__":
    main()
