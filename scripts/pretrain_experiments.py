"""Learning evidence for pretraining on the demo run: held-out bits per byte, FIM infilling, tokenizer ablation.

Reads a run directory made by `openhcx run --recipe recipes/tiny.yaml --out runs/demo` (corpus, tokenizer,
tokenizer-plain-bpe, shards) and writes under <run>/experiments:

- shards-nofim/ (morpheme-aware tokenizer, fim.rate 0) and shards-plain-bpe/ (plain byte-level BPE, the
  recipe's FIM defaults), built once;
- one `openhcx pretrain` run per (shards, seed): the same tiny model, steps, batch and seq_len;
- results.json, and the markdown tables printed at the end.

Measured:
1. bits per byte of the held-out documents per corpus label (ko, en, code): summed next-token loss in bits
   over each document's tokens and its closing <|endoftext|>, divided by the document's UTF-8 bytes; the
   unigram baseline is a token unigram model (add-one smoothing) fitted on the same shards' train split,
   scored on the same tokens;
2. fill-in-the-middle on held-out code, model trained with FIM against the same model trained without:
   greedy PSM infilling exact match on the shards' infill.jsonl (random middles) and on single lines
   (each line's text is the middle), and bits per byte of the true middle given the PSM prompt;
3. the tokenizer ablation: morpheme-aware against plain BPE of equal vocabulary, same steps x batch x
   seq_len (so the same FLOPs, but not the same bytes: tokens per byte are reported), over several seeds.

Usage (3 to 10 minutes per training run on 2 shared CPU cores; runs whose model exists are reused;
--report prints the tables of the runs done so far):
    python scripts/pretrain_experiments.py --run runs/demo
Not a benchmark harness: one fixed small protocol, stated in docs/pretraining.md and docs/tokenizer.md.
"""

from __future__ import annotations

import argparse
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
from openhcx.data.shards import build_shards
from openhcx.model.generate import FimTokens, Sampling, infill, psm_prompt
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
    exact_match: float
    tasks: int
    line_exact_match: float
    line_tasks: int
    middle_bpb: float


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
    """Prefix and suffix windows around the gap, the scored middle ids, and the bytes they stand for."""
    prefix, middle, suffix = tok.encode_batch([task["prefix"], task["middle"], task["suffix"]])
    scored = middle[:MIDDLE_TOKENS] + ([EOT_ID] if len(middle) <= MIDDLE_TOKENS else [])
    size = sum(b for i, b in zip(scored, tok.token_bytes(scored)) if i >= NUM_RESERVED)
    return prefix[-PREFIX_TOKENS:], suffix[:SUFFIX_TOKENS], scored, size


@torch.no_grad()
def infill_scores(model: Path, tokenizer: Path, random_middles: list[dict], lines: list[dict]) -> Infill:
    net, config = load_checkpoint(model)
    net.eval()
    tok = Tokenizer.load(tokenizer)

    def exact(tasks: list[dict], budget: int) -> float:
        hits = 0
        for task in tasks:
            prefix, suffix, _, _ = psm(tok, task)
            got = infill(net, prefix, suffix, FIM, Sampling(max_new_tokens=budget), decode=tok.decode)
            hits += got.text.strip() == task["middle"].strip()
        return hits / len(tasks)

    prompts, middles, sizes = [], [], []
    for task in random_middles + lines:
        prefix, suffix, scored, size = psm(tok, task)
        prompts.append(psm_prompt(prefix, suffix, FIM))
        middles.append(scored)
        sizes.append(size)
    bits = token_bits(net, [p + m for p, m in zip(prompts, middles)], [len(p) for p in prompts], config.max_seq_len)
    return Infill(exact_match=exact(random_middles, 64), tasks=len(random_middles),
                  line_exact_match=exact(lines, 24), line_tasks=len(lines), middle_bpb=sum(bits) / sum(sizes))


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.3f} ± {half:.3f}" if len(values) > 1 else f"{mean:.3f}"


def tables(results: dict) -> str:
    """Markdown tables of whatever runs results.json holds so far."""
    runs, out = results["runs"], []
    if "morph-seed0" in runs:
        m0 = runs["morph-seed0"]["heldout"]
        out += ["### Held-out bits per byte (morpheme-aware tokenizer, FIM shards, seed 0)", "",
                "| label | tokens | bytes | tiny model | unigram baseline |", "|---|---|---|---|---|"]
        out += [f"| {l} | {m0['tokens'][l]:,} | {m0['bytes'][l]:,} | {m0['bpb'][l]:.3f} | "
                f"{m0['unigram_bpb'][l]:.3f} |" for l in LABELS]
    fim_runs = [(n, t) for n, t in (("morph-seed0", "FIM rate 0.5"), ("morph-nofim-seed0", "FIM rate 0")) if n in runs]
    if fim_runs:
        out += ["", "### Fill-in-the-middle on held-out code (seed 0)", "",
                "| training data | infill.jsonl exact match | single-line exact match | middle bits per byte |",
                "|---|---|---|---|"]
    for name, title in fim_runs:
        f = runs[name]["infill"]
        out.append(f"| {title} | {f['exact_match']:.3f} ({f['tasks']}) | {f['line_exact_match']:.3f} "
                   f"({f['line_tasks']}) | {f['middle_bpb']:.3f} |")
    out += ["", "### Tokenizer ablation (mean ± half-range over seeds)", "",
            "| tokenizer | ko bpb | en bpb | code bpb | ko bytes/token | en bytes/token | code bytes/token |",
            "|---|---|---|---|---|---|---|"]
    for variant in ("morph", "plain-bpe"):
        seeds = [r for k, r in runs.items() if k.startswith(variant + "-seed")]
        if not seeds:
            continue
        h = seeds[0]["heldout"]
        cells = [spread([r["heldout"]["bpb"][l] for r in seeds]) for l in LABELS]
        cells += [f"{h['bytes'][l] / h['tokens'][l]:.2f}" for l in LABELS]
        out.append(f"| {variant} ({len(seeds)} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo", help="run directory of `openhcx run --recipe recipes/tiny.yaml`")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=Protocol.steps)
    ap.add_argument("--report", action="store_true", help="only print the tables of the runs done so far")
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(args.run)
    out = run / "experiments"
    if args.report:
        print(tables(json.loads((out / "results.json").read_text())))
        return
    protocol = Protocol(steps=args.steps)
    variants = build_if_missing(run, out)
    first, *more = args.seeds
    plan = [("morph", first), ("morph-nofim", first), ("plain-bpe", first)]
    plan += [(v, s) for s in more for v in ("morph", "plain-bpe")]
    random_middles, lines = infill_tasks(run / "shards", run / "corpus")
    results = {"protocol": asdict(protocol), "runs": {}}
    for variant, seed in plan:
        shards, tokenizer = variants[variant]
        name = f"{variant}-seed{seed}"
        model = train(shards, tokenizer, out / name, seed, protocol)
        entry = {"heldout": asdict(heldout(model, tokenizer, shards, run / "corpus"))}
        if variant.startswith("morph") and seed == first:
            entry["infill"] = asdict(infill_scores(model, tokenizer, random_middles, lines))
        entry["final_loss"] = json.loads((model / "manifest.json").read_text())["final_loss"]
        results["runs"][name] = entry
        print(name, json.dumps(entry), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print(tables(results))


if __name__ == "__main__":
    main()
