"""Scaling of the data stages: the single-machine path against a local Ray instance with 1 and 2 workers.

Splits the demo corpus into `--files` input files per label (tasks need files to spread), then times, on the
same inputs:
- the corpus stage (clean, scrub, filter, split, write): characters read per second;
- exact-mode encoding, the shard stage on the Korean label (morpheme analysis, BPE, FIM, write): characters
  encoded per second;
each with the single-machine path and on Ray with 1 and 2 worker CPUs. Ray is started before the clock (its
start-up, about 4 s here, is a fixed cost per job). The first run is reported apart: it pays each worker's
start (Python imports, Kiwi's model, the tokenizer), once per worker per job, which a job of hours does not
notice and this 8-second one does; the timed runs that follow start with every process's memory of analysed
lines emptied, so none encodes text again from an earlier run's memory. Outputs are checked
equal to the single-machine build's. Prints the median of `--runs` runs and each ratio to the single path.

    python benchmarks/data_scale.py [--runs 3] [--files 8] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import ray  # noqa: E402
from test_cluster import same_shards, split_demo  # noqa: E402  (the tests' input splitter and equality check)

from openhcx.data.cluster import Cluster  # noqa: E402
from openhcx.data.corpus import build_corpus  # noqa: E402
from openhcx.data.shards import build_shards  # noqa: E402
from openhcx.tokenizer import morphemes  # noqa: E402
from openhcx.tokenizer.train import train_tokenizer  # noqa: E402


def input_chars(sources) -> int:
    total = 0
    for source in sources:
        for path in Path(source.path).parent.glob(Path(source.path).name):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                total += sum(len(json.loads(line)["text"]) for line in f)
    return total


@ray.remote(num_cpus=1)
def forget(workers: int) -> None:
    from openhcx.tokenizer import morphemes  # the worker's own module, not a pickled copy of the driver's

    morphemes._remembered_cuts.cache_clear()
    time.sleep(0.5 + 0.1 * workers)  # held, so that the others land on other workers


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="data-scale-"))
    try:
        sizes = {label: (10**6, args.files) for label in ("ko", "en", "code")}  # every demo document
        sources = split_demo(tmp / "in", sizes)
        chars = input_chars(sources)
        corpus = tmp / "corpus"
        manifest = build_corpus(sources, str(corpus), shard_docs=200)
        tok = train_tokenizer(str(corpus), str(tmp / "tok"), vocab_size=8000, max_docs=800)
        ko_chars = manifest["labels"]["ko"]["chars"]
        shard_options = dict(mixture={"ko": 1}, max_repeats=1.0, shard_tokens=10**6, overwrite=True)
        results = {"corpus": {}, "encode": {}}

        def clear_caches(workers: int) -> None:
            """Forget analysed lines here and in each Ray worker (n tasks held together land on n workers): a
            worker that kept them from an earlier run would encode the same text again from memory."""
            morphemes._remembered_cuts.cache_clear()
            if workers:
                ray.get([forget.remote(workers) for _ in range(workers)])

        def run(name: str, cluster: Cluster | None) -> tuple[float, float]:
            return (timed(lambda: build_corpus(sources, str(tmp / f"c-{name}"), shard_docs=200, overwrite=True,
                                               cluster=cluster)),
                    timed(lambda: build_shards(str(corpus), str(tok), str(tmp / f"s-{name}"), cluster=cluster,
                                               **shard_options)))

        def measure(name: str, workers: int) -> None:
            """Warm workers (one untimed run loads Python, Kiwi and the tokenizer in each, a cost paid once per
            worker per job), then timed runs with the line caches emptied."""
            cluster = Cluster() if workers else None
            morphemes._remembered_cuts.cache_clear()  # training the tokenizer above analysed some of these lines
            if workers:
                ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False, log_to_driver=False,
                         object_store_memory=100 << 20)
            try:
                cold = run(name, cluster)
                times = []
                for _ in range(args.runs):
                    clear_caches(workers)
                    times.append(run(name, cluster))
            finally:
                if workers:
                    ray.shutdown()
            for stage, total, first, rest in (("corpus", chars, cold[0], [t[0] for t in times]),
                                              ("encode", ko_chars, cold[1], [t[1] for t in times])):
                results[stage][name] = (total / statistics.median(rest), total / first)

        measure("single", 0)
        reference = json.loads((tmp / "s-single/manifest.json").read_text(encoding="utf-8"))
        for n in args.workers:
            measure(f"ray-{n}", n)
            same_shards(reference, json.loads((tmp / f"s-ray-{n}/manifest.json").read_text(encoding="utf-8")),
                        tmp / "s-single", tmp / f"s-ray-{n}")
        print(f"\ninputs: {chars:,} characters in {3 * args.files} files; Korean encoded: {ko_chars:,} characters; "
              f"median of {args.runs} runs")
        print(f"{'stage':<8} {'path':<8} {'chars/s':>10} {'vs single':>10} {'first run':>10} {'vs single':>10}")
        for stage, rates in results.items():
            for name, (rate, cold) in rates.items():
                print(f"{stage:<8} {name:<8} {rate:>10,.0f} {rate / rates['single'][0]:>9.2f}x {cold:>10,.0f} "
                      f"{cold / rates['single'][1]:>9.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
