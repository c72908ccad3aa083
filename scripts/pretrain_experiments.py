"""Learning evidence for pretraining on the demo run: held-out bits per byte, FIM infilling, tokenizer ablation.

Reads a run directory made by `openhcx run --recipe recipes/tiny.yaml --out runs/demo` (corpus, tokenizer,
tokenizer-plain-bpe, shards) and writes under <run>/experiments:

- shards-nofim/ (morpheme-aware tokenizer, fim.rate 0) and shards-plain-bpe/ (plain byte-level BPE, the
  recipe's FIM defaults), built once;
- one `openhcx pretrain` run per (shards, seed): the same tiny model, steps, batch and seq_len;
- results.json, and the markdown tables printed at the end.
With --steps other than the protocol's 100, runs and results.json go to <run>/experiments/steps<N>.

Measured:
1. bits per byte of the held-out documents per corpus label (ko, en, code): summed next-token loss in bits
   over each document's tokens and its closing <|endoftext|>, divided by the document's UTF-8 bytes; the
   unigram baseline is a token unigram model (add-one smoothing) fitted on the same shards' train split,
   scored on the same tokens;
2. fill-in-the-middle on held-out code, model trained with FIM against the same model trained without:
   greedy PSM infilling exact match and character similarity on the shards' infill.jsonl (random middles)
   and on single lines (each line's text is the middle), and bits per byte of the true middle's tokens
   given the PSM prompt, and given the prefix alone (left to right, no sentinels): the gap between the two
   is what seeing the suffix is worth to the model;
3. the tokenizer ablation: morpheme-aware against plain BPE of equal vocabulary, same steps x batch x
   seq_len (so the same FLOPs, but not the same bytes: the training bytes each run saw are counted by
   replaying its loader), over several seeds.

Usage (3 to 10 minutes per training run on one thread of a shared CPU; runs whose model exists are
reused; --report prints the tables of the runs done so far):
    OMP_NUM_THREADS=1 python scripts/pretrain_experiments.py --run runs/demo --seeds 0 1 2 --fim-seeds 0 1
Not a benchmark harness: one small protocol at two lengths (100 and 400 steps), stated in
docs/pretraining.md and docs/tokenizer.md.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from openhcx.data.corpus import iter_documents
from openhcx.data.fim import EOT_ID, MID_ID, PRE_ID, SUF_ID, FimConfig
from openhcx.data.shards import TokenLoader, build_shards
from openhcx.model.generate import FimTokens, Sampling, infill, psm_prompt
from openhcx.io import write_json
from openhcx.model.hf import load_checkpoint
from openhcx.tokenizer.tokenizer import NUM_RESERVED, Tokenizer
from openhcx.train.pretrain import pretrain

LABELS = ("ko", "en", "code")
FIM = FimTokens(PRE_ID, SUF_ID, MID_ID, EOT_ID)
PREFIX_TOKENS, SUFFIX_TOKENS, MIDDLE_TOKENS = 192, 96, 200  # infill windows: prompt + middle fit 512 tokens
LINES_PER_DOC = 3


@dataclass(frozen=True)
class Protocol:
    steps: int = 100
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 10
    # The tiny preset narrowed to dim 64 (vocabulary 16,000 stays): five runs fit a shared 2-core machine.
    dim: int = 64
    ffn_dim: int = 192


@dataclass
class Heldout:
    """Bits per byte per label, and the tokens and bytes they were measured on."""

    bpb: dict[str, float]
    unigram_bpb: dict[str, float]
    tokens: dict[str, int]
    bytes: dict[str, int]


@dataclass
class Infill:
    """Greedy infilling scores (exact match, mean difflib similarity ratio of the stripped texts) per task
    set; bits per byte of the true middles' tokens over both sets, given the PSM prompt or the prefix; and
    the mean bits of <|endoftext|> right after a whole true middle in PSM: knowing where the middle ends
    is the one thing only FIM training teaches."""

    exact_match: float
    char_similarity: float
    tasks: int
    line_exact_match: float
    line_char_similarity: float
    line_tasks: int
    middle_bpb_psm: float
    middle_bpb_prefix_only: float
    end_bits: float
    end_tasks: int


def build_if_missing(run: Path, out: Path) -> dict[str, tuple[Path, Path]]:
    """(shards, tokenizer) per variant."""
    variants = {"morph": (run / "shards", run / "tokenizer"),
                "morph-nofim": (out / "shards-nofim", run / "tokenizer"),
                "plain-bpe": (out / "shards-plain-bpe", run / "tokenizer-plain-bpe")}
    for name, fim in (("morph-nofim", FimConfig(rate=0.0)), ("plain-bpe", FimConfig())):
        shards, tokenizer = variants[name]
        if not (shards / "manifest.json").is_file():
            build_shards(str(run / "corpus"), str(tokenizer), str(shards), fim=fim, workers=2)
    return variants


def train(shards: Path, tokenizer: Path, out: Path, seed: int, p: Protocol) -> Path:
    if not (out / "model" / "manifest.json").is_file():
        pretrain(str(shards), str(tokenizer), str(out), model="tiny", steps=p.steps, batch_size=p.batch_size,
                 micro_batch_size=p.batch_size, seq_len=p.seq_len, lr=p.lr, min_lr=p.min_lr,
                 warmup_steps=p.warmup_steps, seed=seed, model_overrides={"dim": p.dim, "ffn_dim": p.ffn_dim},
                 checkpoint_every=p.steps, keep_checkpoints=1,
                 mlflow=False, progress=False)
    return out / "model"


def trained_bytes(shards: Path, tokenizer: Path, seed: int, p: Protocol) -> int:
    """UTF-8 bytes behind the target tokens of every training step (sentinels and <|endoftext|> count 0):
    the pretraining loader replayed with the run's seed, batch and seq_len."""
    loader, tok, total = TokenLoader(shards, split="train", seed=seed), Tokenizer.load(tokenizer), 0
    for _ in range(p.steps):
        ids = loader.next_batch(p.batch_size, p.seq_len).targets.flatten().tolist()
        total += sum(b for i, b in zip(ids, tok.token_bytes(ids)) if i >= NUM_RESERVED)
    return total


def unigram_bits(shards: Path, vocab_size: int) -> np.ndarray:
    """-log2 p(token) of an add-one smoothed unigram model fitted on the train split."""
    manifest = json.loads((shards / "manifest.json").read_text())
    counts = np.zeros(vocab_size, dtype=np.float64)
    for shard in manifest["splits"]["train"]["shards"]:
        ids = np.fromfile(shards / shard["file"], dtype=np.dtype(manifest["dtype"]))
        counts += np.bincount(ids, minlength=vocab_size)
    return -np.log2((counts + 1) / (counts.sum() + vocab_size))


@torch.no_grad()
def token_bits(net, sequences: list[list[int]], scored_from: list[int], window: int) -> list[float]:
    """Bits of every token of each sequence from index `scored_from[i]` on, each given all before it within
    non-overlapping windows of `window` predictions (a window sees the previous one's last token)."""
    rows = []  # (sequence index, inputs, targets)
    for i, seq in enumerate(sequences):
        for start in range(0, len(seq) - 1, window):
            piece = seq[start:start + window + 1]
            targets = [t if start + 1 + j >= scored_from[i] else -100 for j, t in enumerate(piece[1:])]
            rows.append((i, piece[:-1], targets))
    totals = [0.0] * len(sequences)
    for b in range(0, len(rows), 16):
        chunk = rows[b:b + 16]
        width = max(len(r[1]) for r in chunk)
        ids = torch.tensor([r[1] + [EOT_ID] * (width - len(r[1])) for r in chunk])
        tgt = torch.tensor([r[2] + [-100] * (width - len(r[2])) for r in chunk])
        logits = net(ids)  # right padding needs no mask
        nats = F.cross_entropy(logits.transpose(1, 2).float(), tgt, ignore_index=-100, reduction="none").sum(-1)
        for (i, _, _), n in zip(chunk, nats.tolist()):
            totals[i] += n / math.log(2)
    return totals


def heldout(model: Path, tokenizer: Path, shards: Path, corpus: Path) -> Heldout:
    net, config = load_checkpoint(model)
    net.eval()
    tok = Tokenizer.load(tokenizer)
    unigram = unigram_bits(shards, config.vocab_size)
    result = Heldout({}, {}, {}, {})
    for label in LABELS:
        texts = [d.text for d in iter_documents(corpus, "heldout", [label])]
        docs = [ids + [EOT_ID] for ids in tok.encode_batch(texts)]
        # A document is predicted from <|endoftext|> on, as after the previous document in training.
        bits = token_bits(net, [[EOT_ID] + d for d in docs], [1] * len(docs), config.max_seq_len)
        size = sum(len(t.encode("utf-8")) for t in texts)
        result.bpb[label] = sum(bits) / size
        result.unigram_bpb[label] = float(sum(unigram[d].sum() for d in docs)) / size
        result.tokens[label] = sum(len(d) for d in docs)
        built = json.loads((shards / "manifest.json").read_text())["splits"]["heldout"]["labels"][label]["tokens"]
        assert result.tokens[label] == built, f"{label}: {result.tokens[label]} tokens here, {built} in {shards}"
        result.bytes[label] = size
    return result


def infill_tasks(shards: Path, corpus: Path) -> tuple[list[dict], list[dict]]:
    """The shards' random-middle infill set, and single-line tasks from the same held-out code."""
    random_middles = [json.loads(line) for line in (shards / "infill.jsonl").read_text().splitlines()]
    lines = []
    for doc in iter_documents(corpus, "heldout", ["code"]):
        text = doc.text
        starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        candidates = [s for s in starts if len(text[s:].split("\n", 1)[0].strip()) >= 4]
        for s in candidates[:: max(1, len(candidates) // LINES_PER_DOC)][:LINES_PER_DOC]:
            line = text[s:].split("\n", 1)[0]
            indent = len(line) - len(line.lstrip())
            lines.append({"prefix": text[: s + indent], "middle": line.strip(),
                          "suffix": text[s + len(line.rstrip()):]})
    return random_middles, lines


def psm(tok: Tokenizer, task: dict) -> tuple[list[int], list[int], list[int], int]:
    """Prefix and suffix windows around the gap, the scored middle ids, and the bytes they stand for.

    The closing <|endoftext|> is not scored: left to right, a suffix follows the middle, not an end."""
    prefix, middle, suffix = tok.encode_batch([task["prefix"], task["middle"], task["suffix"]])
    scored = middle[:MIDDLE_TOKENS]
    size = sum(b for i, b in zip(scored, tok.token_bytes(scored)) if i >= NUM_RESERVED)
    return prefix[-PREFIX_TOKENS:], suffix[:SUFFIX_TOKENS], scored, size


@torch.no_grad()
def infill_scores(model: Path, tokenizer: Path, random_middles: list[dict], lines: list[dict]) -> Infill:
    net, config = load_checkpoint(model)
    net.eval()
    tok = Tokenizer.load(tokenizer)

    def greedy(tasks: list[dict], budget: int) -> tuple[float, float]:
        """Exact match and mean character similarity of the greedy middles."""
        hits, similarity = 0, 0.0
        for task in tasks:
            prefix, suffix, _, _ = psm(tok, task)
            got = infill(net, prefix, suffix, FIM, Sampling(max_new_tokens=budget), decode=tok.decode).text.strip()
            want = task["middle"].strip()
            hits += got == want
            similarity += difflib.SequenceMatcher(None, got, want, autojunk=False).ratio()
        return hits / len(tasks), similarity / len(tasks)

    def middle_bpb(contexts: list[list[int]], middles: list[list[int]], size: int) -> float:
        bits = token_bits(net, [c + m for c, m in zip(contexts, middles)], [len(c) for c in contexts],
                          config.max_seq_len)
        return sum(bits) / size

    windows = [psm(tok, task) for task in random_middles + lines]
    middles, size = [w[2] for w in windows], sum(w[3] for w in windows)
    whole = [psm_prompt(p, s, FIM) + m for (p, s, m, _), t in zip(windows, random_middles + lines)
             if len(m) == len(tok.encode(t["middle"]))]
    end = token_bits(net, [w + [EOT_ID] for w in whole], [len(w) for w in whole], config.max_seq_len)
    exact, similar = greedy(random_middles, 64)
    line_exact, line_similar = greedy(lines, 24)
    return Infill(exact_match=exact, char_similarity=similar, tasks=len(random_middles),
                  line_exact_match=line_exact, line_char_similarity=line_similar, line_tasks=len(lines),
                  middle_bpb_psm=middle_bpb([psm_prompt(p, s, FIM) for p, s, _, _ in windows], middles, size),
                  middle_bpb_prefix_only=middle_bpb([[EOT_ID] + p for p, _, _, _ in windows], middles, size),
                  end_bits=sum(end) / len(end), end_tasks=len(end))


def spread(values: list[float], digits: int = 3) -> str:
    mean = statistics.mean(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def seeds_of(runs: dict, variant: str) -> list[dict]:
    return [r for k, r in runs.items() if k.rsplit("-seed", 1)[0] == variant]


def tables(results: dict) -> str:
    """Markdown tables of whatever runs results.json holds so far."""
    runs, out = results["runs"], []
    morph = [r["heldout"] for r in seeds_of(runs, "morph")]
    if morph:
        h = morph[0]
        out += ["### Held-out bits per byte (morpheme-aware tokenizer, FIM shards)", "",
                "| label | tokens | bytes | tiny model, mean ± half-range | seeds below the baseline "
                "| unigram baseline |", "|---|---|---|---|---|---|"]
        out += [f"| {l} | {h['tokens'][l]:,} | {h['bytes'][l]:,} | {spread([m['bpb'][l] for m in morph])} | "
                f"{sum(m['bpb'][l] < m['unigram_bpb'][l] for m in morph)} of {len(morph)} | "
                f"{h['unigram_bpb'][l]:.3f} |" for l in LABELS]
    fim_runs = [(v, t) for v, t in (("morph", "FIM rate 0.5"), ("morph-nofim", "FIM rate 0"))
                if any("infill" in r for r in seeds_of(runs, v))]
    if fim_runs:
        out += ["", "### Fill-in-the-middle on held-out code (mean ± half-range over seeds)", "",
                "| training data | seeds | infill.jsonl exact match | infill.jsonl char. similarity "
                "| line exact match | line char. similarity | middle bpb, PSM prompt | middle bpb, prefix only "
                "| suffix gain (prefix only - PSM) | bits of the end after the middle | held-out code bpb |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, title in fim_runs:
        rs = [r for r in seeds_of(runs, variant) if "infill" in r]
        f = [r["infill"] for r in rs]
        cells = [f"{spread([x['exact_match'] for x in f])} ({f[0]['tasks']})",
                 spread([x["char_similarity"] for x in f]),
                 f"{spread([x['line_exact_match'] for x in f])} ({f[0]['line_tasks']})",
                 spread([x["line_char_similarity"] for x in f]),
                 spread([x["middle_bpb_psm"] for x in f]), spread([x["middle_bpb_prefix_only"] for x in f]),
                 spread([x["middle_bpb_prefix_only"] - x["middle_bpb_psm"] for x in f], 4),
                 f"{spread([x['end_bits'] for x in f], 2)} ({f[0]['end_tasks']})",
                 spread([r["heldout"]["bpb"]["code"] for r in rs])]
        out.append(f"| {title} | {len(rs)} | " + " | ".join(cells) + " |")
    out += ["", "### Tokenizer ablation (mean ± half-range over seeds; the tokenizer's unigram baseline in brackets)",
            "", "| tokenizer | seeds | ko bpb | en bpb | code bpb | ko bytes/token | en bytes/token | code bytes/token "
            "| training bytes seen |", "|---|---|---|---|---|---|---|---|---|"]
    for variant in ("morph", "plain-bpe"):
        seeds = seeds_of(runs, variant)
        if not seeds:
            continue
        h = seeds[0]["heldout"]
        cells = [f"{spread([r['heldout']['bpb'][l] for r in seeds])} ({h['unigram_bpb'][l]:.3f})" for l in LABELS]
        cells += [f"{h['bytes'][l] / h['tokens'][l]:.2f}" for l in LABELS]
        bytes_seen = [r["trained_bytes"] for r in seeds]
        cells.append(f"{statistics.mean(bytes_seen):,.0f} ({min(bytes_seen):,} to {max(bytes_seen):,})")
        out.append(f"| {variant} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo", help="run directory of `openhcx run --recipe recipes/tiny.yaml`")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the tokenizer ablation")
    ap.add_argument("--fim-seeds", type=int, nargs="+", default=[0], help="seeds of the FIM against no-FIM runs")
    ap.add_argument("--steps", type=int, default=Protocol.steps,
                    help="optimizer steps; other than 100, runs go to <run>/experiments/steps<N>")
    ap.add_argument("--report", action="store_true", help="only print the tables of the runs done so far")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared: one thread per run, one run at a time
    run = Path(args.run)
    shared = run / "experiments"
    # Runs and results of another step count live apart: a finished run is reused by its directory name.
    out = shared if args.steps == Protocol.steps else shared / f"steps{args.steps}"
    if args.report:
        print(tables(json.loads((out / "results.json").read_text())))
        return
    protocol = Protocol(steps=args.steps)
    variants = build_if_missing(run, shared)
    plan = [(v, s) for s in sorted(set(args.seeds) | set(args.fim_seeds))
            for v, wanted in (("morph", True), ("plain-bpe", s in args.seeds), ("morph-nofim", s in args.fim_seeds))
            if wanted]
    random_middles, lines = infill_tasks(run / "shards", run / "corpus")
    results = {"protocol": asdict(protocol), "runs": {}}
    for variant, seed in plan:
        shards, tokenizer = variants[variant]
        name = f"{variant}-seed{seed}"
        model = train(shards, tokenizer, out / name, seed, protocol)
        entry = {"heldout": asdict(heldout(model, tokenizer, shards, run / "corpus"))}
        if variant.startswith("morph") and seed in args.fim_seeds:
            entry["infill"] = asdict(infill_scores(model, tokenizer, random_middles, lines))
        entry["final_loss"] = json.loads((model / "manifest.json").read_text())["final_loss"]
        entry["trained_bytes"] = trained_bytes(shards, tokenizer, seed, protocol)
        results["runs"][name] = entry
        print(name, json.dumps(entry), flush=True)
        write_json(out / "results.json", results)
    print(tables(results))


if __name__ == "__main__":
    main()
