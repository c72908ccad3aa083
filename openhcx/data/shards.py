"""Corpus + tokenizer -> token shards (encode, FIM, mix), and the resumable loader that packs them.

The third arrow of the flow (RECIPE.md section 4, DESIGN.md). `build_shards` streams the corpus label by
label, applies document-level joint PSM/SPM FIM (openhcx.data.fim) to training documents, interleaves the
labels so each one's token count follows its mixture weight, and appends every document, terminated by
<|endoftext|>, to flat binary shards `{split}/NNNNN.bin` (little-endian, the manifest's dtype). Splits:

- train: mixed, with FIM. The label furthest below its weight goes next, so shares hold at every point of
  the stream. The build stops once every label was read in full at least once (or at `max_tokens`); a label
  that runs out before then is read again, up to `max_repeats` passes, after which its share falls short.
- heldout: every held-out document of the mixture's labels, once, without FIM (clean perplexity).
- heldout_fim: the held-out code documents, every one a FIM sample, for infilling loss; their text parts go
  to `infill.jsonl` ({"prefix", "middle", "suffix", "mode"}) for infilling exact-match.

`TokenLoader` reads a split back as (inputs, targets, doc_ids) batches. The stream is cut into chunks of
`chunk_tokens`; each epoch visits the chunks in a seeded order, and windows of seq_len+1 tokens (stride
seq_len) are read consecutively from that reordered stream. The cursor is a token offset, so seq_len may
change between calls and a saved state resumes the exact batches.

Not here: tokenizing rules (openhcx.tokenizer), cleaning (openhcx.data.corpus), context-level FIM, and
any torch Dataset/DataLoader machinery: a batch is a few memmap slices.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import zlib
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator

import numpy as np
from tqdm import tqdm

from openhcx.data.cluster import Cluster, Task, connected, run_tasks, summaries_table, work_folder
from openhcx.data.corpus import iter_documents, read_shard
from openhcx.data.fim import EOT_ID, FimConfig, FimSample, draw, layout
from openhcx.io import UserError, atomic_dir, write_manifest
from openhcx.tokenizer.tokenizer import Mode, Tokenizer

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "heldout", "heldout_fim")
CODE_LABEL = "code"
"""The corpus label whose held-out documents become the infilling set."""
_BATCH_CHARS = 1 << 18
"""Characters encoded per tokenizer call: amortises the analyzer's worker pool, bounds memory."""
_WRITE_BUFFER = 1 << 20


@dataclass
class LabelCounts:
    """What one label contributed to one split."""

    documents: int = 0
    tokens: int = 0
    fim: int = 0
    """Documents turned into FIM samples."""
    spm: int = 0
    """FIM samples in SPM layout (the rest are PSM)."""
    passes: float = 0.0
    """Documents written over the label's documents in the split: above 1 means repeated."""
    share: float = 0.0
    """Achieved share of the split's tokens."""
    target_share: float | None = None
    """The mixture weight, normalised (train only)."""


@dataclass
class ShardFile:
    file: str
    tokens: int


@dataclass
class SplitCounts:
    """A split's totals, its measured FIM rates, its labels and its shard files."""

    documents: int = 0
    tokens: int = 0
    fim: int = 0
    spm: int = 0
    fim_rate: float = 0.0
    """FIM samples over documents: compare with the configured rate."""
    spm_share: float = 0.0
    """SPM samples over FIM samples: compare with the configured spm_rate."""
    labels: dict[str, LabelCounts] = field(default_factory=dict)
    shards: list[ShardFile] = field(default_factory=list)


# ---------------------------------------------------------------- building


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id: uint16 up to 65,536 ids, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _corpus_manifest(corpus: Path) -> dict:
    path = corpus / "manifest.json"
    if not path.is_file():
        raise UserError(f"{corpus}: not a corpus directory (no manifest.json)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("stage") != "corpus":
        raise UserError(f"{path}: stage is '{manifest.get('stage')}', not corpus")
    return manifest


def mixture_weights(mixture: dict[str, float] | None, labels: dict[str, dict]) -> dict[str, float]:
    """Normalised weights per label; None weighs every corpus label equally (the report's thirds)."""
    mixture = dict.fromkeys(labels, 1.0) if mixture is None else mixture
    if not mixture:
        raise UserError("mixture: empty (name at least one label)")
    for label, weight in mixture.items():
        if label not in labels:
            raise UserError(f"mixture.{label}: label not in the corpus (it has {', '.join(labels)})")
        if not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight > 0):
            raise UserError(f"mixture.{label}: weight {weight!r} must be a positive number")
        if labels[label].get("train", 0) == 0:
            raise UserError(f"mixture.{label}: the corpus has no train documents with this label")
    total = sum(mixture.values())
    return {label: weight / total for label, weight in mixture.items()}


def repeated(corpus: Path, split: str, label: str, limit: int) -> Iterator[tuple[int, int, str]]:
    """(pass, position in the pass, text) of one label's documents, read again from the start as often as
    needed for `limit` documents."""
    taken, passes = 0, 0
    while taken < limit:
        before = taken
        for index, doc in enumerate(iter_documents(corpus, split, [label])):
            if taken == limit:
                return
            taken += 1
            yield passes, index, doc.text
        if taken == before:
            return
        passes += 1


Plan = Callable[[int, int, str], FimSample]


def planner(seed: int, split: str, label: str, config: FimConfig | None) -> Plan:
    """How each document of (split, label) is laid out: plain without a config, else a FIM draw from a stream
    of its own, seeded by (seed, split, label, pass, position). Draws thus depend neither on how the labels
    interleave nor on which worker encodes which file."""
    if config is None:
        return lambda passes, index, text: FimSample("plain", text)
    key = [seed, SPLITS.index(split), zlib.crc32(label.encode("utf-8"))]
    return lambda passes, index, text: draw(text, np.random.default_rng([*key, passes, index]), config)


def encoded(docs: Iterator[tuple[int, int, str]], plan: Plan, tok: Tokenizer, mode: Mode, workers: int,
            dtype: np.dtype) -> Iterator[tuple[FimSample, np.ndarray]]:
    """(sample, training ids) per document; the parts of a batch of documents go to the tokenizer in one call."""
    while batch := _take_chars(docs, _BATCH_CHARS):
        samples = [plan(*doc) for doc in batch]
        ids = tok.encode_batch([part for s in samples for part in s.parts()], mode, workers)
        start = 0
        for sample in samples:
            n = len(sample.parts())
            yield sample, np.asarray(layout(sample.mode, ids[start : start + n]), dtype=dtype)
            start += n


def _take_chars(docs: Iterator[tuple[int, int, str]], limit: int) -> list[tuple[int, int, str]]:
    """The next documents up to `limit` characters in all (at least one, unless `docs` is exhausted)."""
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc[-1])
        if size >= limit:
            break
    return batch


def mixed(
    streams: dict[str, Iterator[tuple[FimSample, np.ndarray]]],
    weights: dict[str, float],
    full_pass: dict[str, int],
    max_tokens: int | None,
) -> Iterator[tuple[str, FimSample, np.ndarray]]:
    """Interleave label streams by token share: the label furthest below its weight goes next.

    Stops when every label still flowing has given `full_pass[label]` documents (all of it, once), or at
    the first document boundary at or after `max_tokens`.
    """
    tokens = dict.fromkeys(streams, 0)
    docs = dict.fromkeys(streams, 0)
    active = list(streams)
    while any(docs[label] < full_pass[label] for label in active):
        if max_tokens is not None and sum(tokens.values()) >= max_tokens:
            return
        label = min(active, key=lambda l: tokens[l] / weights[l])
        item = next(streams[label], None)
        if item is None:
            active.remove(label)
            continue
        tokens[label] += len(item[1])
        docs[label] += 1
        yield label, *item


class _ShardWriter:
    """Appends token arrays to `NNNNN.bin` files of `shard_tokens` tokens each (the last one shorter)."""

    def __init__(self, directory: Path, shard_tokens: int):
        self.directory, self.shard_tokens = directory, shard_tokens
        self.shards: list[ShardFile] = []
        self._file: IO[bytes] | None = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._file is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                name = f"{len(self.shards):05d}.bin"
                self._file = open(self.directory / name, "wb", buffering=_WRITE_BUFFER)
                self.shards.append(ShardFile(f"{self.directory.name}/{name}", 0))
            shard = self.shards[-1]
            head, ids = ids[: self.shard_tokens - shard.tokens], ids[self.shard_tokens - shard.tokens :]
            self._file.write(head.tobytes())
            shard.tokens += len(head)
            if shard.tokens == self.shard_tokens:
                self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _write_split(
    items: Iterator[tuple[str, FimSample, np.ndarray]],
    directory: Path,
    shard_tokens: int,
    counts: SplitCounts,
    total: int | None = None,
) -> None:
    writer = _ShardWriter(directory, shard_tokens)
    try:
        with tqdm(desc=directory.name, total=total, unit=" tok", unit_scale=True, disable=None) as bar:
            for label, sample, ids in items:
                writer.write(ids)
                c = counts.labels[label]
                c.documents += 1
                c.tokens += len(ids)
                c.fim += sample.mode != "plain"
                c.spm += sample.mode == "spm"
                bar.update(len(ids))
    finally:
        writer.close()
    counts.shards = writer.shards
    for c in counts.labels.values():
        counts.documents, counts.tokens = counts.documents + c.documents, counts.tokens + c.tokens
        counts.fim, counts.spm = counts.fim + c.fim, counts.spm + c.spm
    counts.fim_rate = counts.fim / counts.documents if counts.documents else 0.0
    counts.spm_share = counts.spm / counts.fim if counts.fim else 0.0
    for c in counts.labels.values():
        c.share = c.tokens / counts.tokens if counts.tokens else 0.0


def build_shards(
    corpus: str,
    tokenizer: str,
    out: str,
    mixture: dict[str, float] | None = None,
    fim: FimConfig = FimConfig(),
    mode: Mode = "exact",
    workers: int = 1,
    seed: int = 0,
    shard_tokens: int = 100_000_000,
    max_tokens: int | None = None,
    max_repeats: float = 4.0,
    overwrite: bool = False,
    cluster: Cluster | None = None,
) -> dict:
    """Encode a corpus into token shards: FIM on training documents, labels mixed by token share.

    Every document ends with <|endoftext|>. The train split interleaves the labels so each one's share of
    tokens follows `mixture` and stops once every label was read in full (or at `max_tokens`); a label
    that runs out first is repeated up to `max_repeats` passes. The heldout split holds the held-out
    documents without FIM; heldout_fim and infill.jsonl hold the held-out code documents as FIM samples.
    The directory appears only when everything succeeded.

    Args:
        corpus: Corpus directory written by `openhcx corpus build`.
        tokenizer: Tokenizer directory written by `openhcx tokenizer train`.
        out: Output directory: `{train,heldout,heldout_fim}/NNNNN.bin`, infill.jsonl, manifest.json.
        mixture: Weight per corpus label, e.g. {ko: 1, en: 1, code: 1}; normalised. Labels left out are
            not used. Default: every corpus label weighs the same.
        fim: Fill-in-the-middle rate, SPM share and split rule for training documents.
        mode: Tokenizer encode mode: exact (morpheme cuts, as in training) or portable.
        workers: Processes for Korean morpheme analysis in exact mode.
        seed: Seed of the FIM draws.
        shard_tokens: Tokens per shard file.
        max_tokens: Stop the train split at the first document boundary at or after this many tokens.
        max_repeats: Most passes over one label's training documents when it is upsampled (at least 1).
        overwrite: Replace `out` if it exists (swapped in only once the new shards are complete).
        cluster: Encode on Ray, one task per corpus file (and per pass of an upsampled label); default: this
            process. The shards are byte for byte those of the single-machine build; a rerun after a crash
            runs only unfinished tasks (docs/scale.md).

    Returns:
        The manifest written to `out/manifest.json`: tokenizer sha256 and vocabulary size, token dtype,
        and per split the documents, tokens, measured FIM rate and SPM share, per-label counts (achieved
        share, passes) and shard files.
    """
    corpus_dir, tok_dir = Path(corpus), Path(tokenizer)
    labels = _corpus_manifest(corpus_dir)["labels"]
    weights = mixture_weights(mixture, labels)
    for name, value in (("workers", workers), ("shard_tokens", shard_tokens), ("max_repeats", max_repeats)):
        if value < 1:
            raise UserError(f"{name}: {value} must be at least 1")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"max_tokens: {max_tokens} must be at least 1")
    if mode not in ("exact", "portable"):
        raise UserError(f"mode: '{mode}' is not exact or portable")
    tok = Tokenizer.load(tok_dir)
    dtype = token_dtype(tok.vocab_size)
    config = {"mixture": weights, "fim": asdict(fim), "mode": mode, "seed": seed, "shard_tokens": shard_tokens,
              "max_tokens": max_tokens, "max_repeats": max_repeats}
    inputs = {"corpus": str(corpus_dir), "tokenizer": str(tok_dir)}
    plans = {"train": fim, "heldout": None, "heldout_fim": dataclasses.replace(fim, rate=1.0)}
    n_docs = {split: {label: labels[label].get(split, 0) for label in weights} for split in ("train", "heldout")}
    limits = {"train": {l: int(np.ceil(max_repeats * n)) for l, n in n_docs["train"].items()},
              "heldout": n_docs["heldout"], "heldout_fim": n_docs["heldout"]}
    tok_info = {"sha256": sha256_file(tok_dir / "tokenizer.json"), "vocab_size": tok.vocab_size,
                "morpheme_aware": tok.morpheme_aware}
    if cluster is None:
        def stream(split: str, label: str) -> Iterator[tuple[FimSample, np.ndarray]]:
            source = "train" if split == "train" else "heldout"
            plan = planner(seed, split, label, plans[split])
            return encoded(repeated(corpus_dir, source, label, limits[split][label]), plan, tok, mode, workers, dtype)

        with atomic_dir(out, overwrite=overwrite) as tmp:
            manifest = _write_splits(tmp, stream, weights, n_docs, max_tokens, shard_tokens, dtype, config, inputs,
                                     tok_info)
    else:
        manifest = _build_on_cluster(corpus_dir, tok_dir, out, overwrite, cluster, weights, n_docs, limits, plans,
                                     seed, mode, dtype, max_tokens, shard_tokens, config, inputs, tok_info)
    splits = manifest["splits"]
    print(f"shards: {out} (train {splits['train']['tokens']:,} tokens in {len(splits['train']['shards'])} shard(s), "
          f"FIM rate {splits['train']['fim_rate']:.2f}; held out {splits['heldout']['tokens']:,} tokens)")
    return manifest


def _write_splits(tmp: Path, stream: Callable[[str, str], Iterator[tuple[FimSample, np.ndarray]]],
                  weights: dict[str, float], n_docs: dict, max_tokens: int | None, shard_tokens: int,
                  dtype: np.dtype, config: dict, inputs: dict, tok_info: dict, **extra) -> dict:
    """Mix, write and count the three splits from `stream(split, label)`, then the manifest."""
    splits = {split: SplitCounts() for split in SPLITS}
    splits["train"].labels = {label: LabelCounts(target_share=w) for label, w in weights.items()}
    splits["heldout"].labels = {label: LabelCounts() for label in weights}
    infill_labels = [CODE_LABEL] if CODE_LABEL in weights else []
    splits["heldout_fim"].labels = {label: LabelCounts() for label in infill_labels}
    train = mixed({l: stream("train", l) for l in weights}, weights, n_docs["train"], max_tokens)
    _write_split(train, tmp / "train", shard_tokens, splits["train"], max_tokens)
    heldout = ((l, *item) for l in weights for item in stream("heldout", l))
    _write_split(heldout, tmp / "heldout", shard_tokens, splits["heldout"])
    with open(tmp / "infill.jsonl", "w", encoding="utf-8") as f:
        infill = ((l, *item) for l in infill_labels for item in stream("heldout_fim", l))
        _write_split(_recorded(infill, f), tmp / "heldout_fim", shard_tokens, splits["heldout_fim"])
    for split in ("train", "heldout"):
        for label, c in splits[split].labels.items():
            c.passes = c.documents / n_docs[split][label] if n_docs[split][label] else 0.0
    for label, c in splits["heldout_fim"].labels.items():
        c.passes = splits["heldout"].labels[label].passes
    return write_manifest(
        tmp, stage="shards", config=config, inputs=inputs, tokenizer=tok_info, dtype=dtype.str, eot_id=EOT_ID,
        infill={"file": "infill.jsonl", "documents": splits["heldout_fim"].documents},
        splits={split: asdict(counts) for split, counts in splits.items()}, **extra,
    )


# ---------------------------------------------------------------- on a cluster

MODES = ("plain", "psm", "spm")


class _MissingPass(Exception):
    """The mixture reached a pass of a label that is not encoded yet."""

    def __init__(self, label: str, passes: int):
        self.label, self.passes = label, passes


def _task_key(split: str, label: str, file: int, passes: int = 0) -> str:
    return f"{split}-{label}-{passes}-{file:06d}"


def _encode_file(args: tuple, out: Path) -> dict:
    """A cluster task: one corpus file, one pass, encoded to ids.bin (the training ids of its documents, one
    after the other), docs.npy (each document's token count and layout) and, for heldout_fim, infill.jsonl."""
    corpus, tokenizer, name, split, label, passes, first, fim, seed, mode, dtype = args
    tok = _tokenizer(tokenizer)
    docs = ((passes, first + i, doc.text) for i, doc in enumerate(read_shard(Path(corpus) / name)))
    lengths, modes = [], []
    with open(out / "ids.bin", "wb", buffering=_WRITE_BUFFER) as f, ExitStack() as stack:
        infill = stack.enter_context(open(out / "infill.jsonl", "w", encoding="utf-8")) if split == "heldout_fim" else None
        items = ((label, *item) for item in encoded(docs, planner(seed, split, label, fim), tok, mode, 1,
                                                     np.dtype(dtype)))
        for _, sample, ids in _recorded(items, infill) if infill else items:
            f.write(ids.tobytes())
            lengths.append(len(ids))
            modes.append(MODES.index(sample.mode))
    np.save(out / "docs.npy", np.array([lengths, modes], dtype=np.int64).T.reshape(-1, 2))
    return {"documents": len(lengths), "tokens": int(sum(lengths))}


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str) -> Tokenizer:
    return Tokenizer.load(path)  # once per worker process: tasks run one after another in the same one


def _build_on_cluster(corpus_dir: Path, tok_dir: Path, out: str, overwrite: bool, cluster: Cluster, weights: dict,
                      n_docs: dict, limits: dict, plans: dict, seed: int, mode: Mode, dtype: np.dtype,
                      max_tokens: int | None, shard_tokens: int, config: dict, inputs: dict, tok_info: dict) -> dict:
    """Encode every needed (file, pass) as a task, then mix and write from the tasks' outputs, as the
    single-machine build does from its own encoding. Which passes an upsampled label needs shows only once
    earlier passes are encoded (documents' lengths decide the mix), so passes beyond the first are added in
    rounds, each a dry run of the mix over what is encoded."""
    if Path(out).exists() and not overwrite:
        raise UserError(f"{out}: output already exists (pass overwrite=true to replace it)")
    manifest = _corpus_manifest(corpus_dir)
    if "documents" not in manifest:
        raise UserError(f"{corpus_dir}/manifest.json: no per-file document counts (a corpus built before they "
                        "were recorded); rebuild the corpus to encode it on a cluster")
    files = {}  # (split, label) -> [(name, documents, first index)]
    for split, source in (("train", "train"), ("heldout", "heldout"), ("heldout_fim", "heldout")):
        for label in weights if split != "heldout_fim" else [l for l in weights if l == CODE_LABEL]:
            names, counts = manifest["shards"][source].get(label, []), manifest["documents"][source].get(label, [])
            firsts = np.cumsum([0, *counts])[:-1]
            files[split, label] = list(zip(names, counts, (int(f) for f in firsts)))

    def tasks_for(split: str, label: str, passes: int) -> list[Task]:
        return [Task(_task_key(split, label, i, passes), (corpus_dir / name).stat().st_size,
                     (str(corpus_dir), str(tok_dir), name, split, label, passes, first, plans[split], seed, mode,
                      dtype.str))
                for i, (name, n, first) in enumerate(files[split, label])]

    work = work_folder(cluster, out)
    job = {"config": config, "corpus": str(corpus_dir), "corpus_created": manifest["created"],
           "tokenizer": tok_info["sha256"]}
    tasks = [t for (split, label) in files for t in tasks_for(split, label, 0)]
    encoded_passes = {label: 1 for label in weights}

    def stream(split: str, label: str) -> Iterator[tuple[FimSample, np.ndarray]]:
        return _task_stream(work, files[split, label], split, label, limits[split][label],
                            encoded_passes[label] if split == "train" else 1, dtype)

    with connected(cluster):
        while True:
            summaries = run_tasks("shards", _encode_file, tasks, work, cluster, job)
            try:  # a dry run of the mix: lengths only (memory-mapped slices are not read)
                for _ in mixed({l: stream("train", l) for l in weights}, weights, n_docs["train"], max_tokens):
                    pass
            except _MissingPass as missing:
                tasks += tasks_for("train", missing.label, missing.passes)
                encoded_passes[missing.label] = missing.passes + 1
                continue
            break
    with atomic_dir(out, overwrite=overwrite) as tmp:
        result = _write_splits(tmp, stream, weights, n_docs, max_tokens, shard_tokens, dtype, config, inputs,
                               tok_info, tasks=summaries_table(summaries))
    shutil.rmtree(work, ignore_errors=True)
    return result


def _task_stream(work: Path, files: list[tuple[str, int, int]], split: str, label: str, limit: int, passes: int,
                 dtype: np.dtype) -> Iterator[tuple[FimSample, np.ndarray]]:
    """The (sample, ids) of one label's documents from encoded tasks, pass after pass, up to `limit`;
    raises _MissingPass where the next pass is not encoded. Samples carry their layout, and for heldout_fim
    their text parts (the infill set)."""
    taken, p = 0, 0
    while taken < limit and any(n for _, n, _ in files):
        if p == passes:
            raise _MissingPass(label, p)
        for i, _ in enumerate(files):
            task = work / "tasks" / _task_key(split, label, i, p)
            ids = np.memmap(task / "ids.bin", dtype=dtype, mode="r") if (task / "ids.bin").stat().st_size else []
            docs = np.load(task / "docs.npy")
            records = open(task / "infill.jsonl", encoding="utf-8") if split == "heldout_fim" else None
            start = 0
            for length, m in docs:
                if taken == limit:
                    break
                sample = FimSample(**json.loads(next(records))) if records else FimSample(MODES[m], "")
                yield sample, ids[start:start + length]
                start += length
                taken += 1
            if records:
                records.close()
            if taken == limit:
                return
        p += 1


def _recorded(items, f: IO[str]):
    """Pass items through, writing each FIM sample's text parts as one JSON line."""
    for label, sample, ids in items:
        record = {"prefix": sample.prefix, "middle": sample.middle, "suffix": sample.suffix, "mode": sample.mode}
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        yield label, sample, ids


# ---------------------------------------------------------------- reading back


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{shard_dir}: not a shard directory (no manifest.json)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("stage") != "shards":
        raise UserError(f"{path}: stage is '{manifest.get('stage')}', not shards")
    return manifest


def check_compatible(shard_dir: str | Path, tokenizer_dir: str | Path) -> None:
    """Raise UserError unless the shards were encoded with this very tokenizer.json (sha256)."""
    built = read_manifest(shard_dir)["tokenizer"]["sha256"]
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: tokenizer.json not found")
    have = sha256_file(path)
    if have != built:
        raise UserError(
            f"{Path(shard_dir) / 'manifest.json'}: shards were encoded with a tokenizer of sha256 {built[:16]}..., "
            f"but {path} has sha256 {have[:16]}...; rebuild the shards with this tokenizer"
        )


@dataclass
class Batch:
    """One rank's share of a training step."""

    inputs: "torch.Tensor"
    """(B, T) int64 token ids."""
    targets: "torch.Tensor"
    """(B, T) int64: the next token of every input."""
    doc_ids: "torch.Tensor"
    """(B, T) int64: runs of equal ids, one per packed document within a row. A document's run ends with
    its <|endoftext|>; a new run also starts where the window crosses into another chunk."""


class TokenLoader:
    """Batches of packed windows from one split of a shard directory, resumable to the token.

    Each epoch reads the split's chunks of `chunk_tokens` tokens in an order drawn from (seed, epoch), and
    cuts that reordered stream into consecutive windows of seq_len+1 tokens, stride seq_len. A step takes
    batch_size * world_size windows in a row; rank r gets rows r*batch_size to (r+1)*batch_size, so the
    ranks' batches stacked in rank order are the single-process batch. Windows never wrap an epoch's end:
    the few tokens left over start the next epoch afresh.
    """

    def __init__(
        self, shard_dir: str | Path, split: str = "train", seed: int = 0, rank: int = 0, world_size: int = 1,
        chunk_tokens: int = 1 << 16,
    ):
        manifest = read_manifest(shard_dir)
        if split not in manifest["splits"]:
            raise UserError(f"split: '{split}' not in {shard_dir} (it has {', '.join(manifest['splits'])})")
        if not 0 <= rank < world_size:
            raise UserError(f"rank: {rank} is not in [0, world_size={world_size})")
        if chunk_tokens < 1:
            raise UserError(f"chunk_tokens: {chunk_tokens} must be at least 1")
        dtype = np.dtype(manifest["dtype"])
        shards = manifest["splits"][split]["shards"]
        self._maps = [np.memmap(Path(shard_dir) / s["file"], dtype=dtype, mode="r") for s in shards]
        self._starts = np.cumsum([0] + [len(m) for m in self._maps])
        self.tokens = int(self._starts[-1])
        if self.tokens == 0:
            raise UserError(f"{shard_dir}: split '{split}' holds no tokens")
        self.split, self.seed, self.chunk_tokens = split, seed, chunk_tokens
        self.rank, self.world_size = rank, world_size
        self.eot_id = manifest["eot_id"]
        self.epoch, self.offset = 0, 0
        self._orders: dict[int, np.ndarray] = {}

    # The state is global (not per rank): resuming with another world size keeps the same global batches.
    def state_dict(self) -> dict:
        return {"split": self.split, "seed": self.seed, "chunk_tokens": self.chunk_tokens, "tokens": self.tokens,
                "epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        for key in ("split", "seed", "chunk_tokens", "tokens"):
            if state.get(key) != getattr(self, key):
                raise UserError(f"loader state: {key} is {state.get(key)!r}, this loader has {getattr(self, key)!r}")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def next_batch(self, batch_size: int, seq_len: int) -> Batch:
        import torch

        if batch_size < 1 or seq_len < 1:
            raise UserError(f"batch_size {batch_size} and seq_len {seq_len} must be at least 1")
        if seq_len + 1 > self.tokens:
            raise UserError(f"seq_len: {seq_len} + 1 tokens exceed the {self.tokens} tokens of split '{self.split}'")
        rows = []
        for i in range(batch_size * self.world_size):
            if self.offset + seq_len + 1 > self.tokens:
                self.epoch, self.offset = self.epoch + 1, 0
            if i // batch_size == self.rank:
                rows.append(self._window(self.epoch, self.offset, seq_len + 1))
            self.offset += seq_len
        windows = np.stack([w for w, _ in rows]).astype(np.int64)
        starts = np.stack([s for _, s in rows])
        inputs, targets = windows[:, :-1], windows[:, 1:]
        starts[:, 1:] |= inputs[:, :-1] == self.eot_id
        doc_ids = np.cumsum(starts, axis=1)
        return Batch(torch.from_numpy(inputs.copy()), torch.from_numpy(targets.copy()), torch.from_numpy(doc_ids))

    def _order(self, epoch: int) -> np.ndarray:
        """Chunk ids in the epoch's order: the full chunks shuffled, then the short last one, if any."""
        if epoch not in self._orders:
            full = self.tokens // self.chunk_tokens
            order = np.random.default_rng([self.seed, epoch]).permutation(full)
            if self.tokens % self.chunk_tokens:
                order = np.append(order, full)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = order
        return self._orders[epoch]

    def _window(self, epoch: int, offset: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [offset, offset+length) of the epoch's reordered stream, and where new chunks start."""
        order, C = self._order(epoch), self.chunk_tokens
        tokens = np.empty(length, dtype=self._maps[0].dtype)
        starts = np.zeros(length - 1, dtype=bool)
        pos = 0
        while pos < length:
            chunk, within = divmod(offset + pos, C)
            n = min(C - within, length - pos)
            if pos and within == 0 and pos < length - 1:
                starts[pos] = True
            self._read(int(order[chunk]) * C + within, tokens[pos : pos + n])
            pos += n
        return tokens, starts

    def _read(self, start: int, out: np.ndarray) -> None:
        """Fill `out` with the split's tokens from global position `start`, across shard files."""
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos = 0
        while pos < len(out):
            begin = start + pos - int(self._starts[shard])
            piece = self._maps[shard][begin : begin + len(out) - pos]
            out[pos : pos + len(piece)] = piece
            pos += len(piece)
            shard += 1
