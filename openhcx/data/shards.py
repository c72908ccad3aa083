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
import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator

import numpy as np
from tqdm import tqdm

from openhcx.data.corpus import iter_documents
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


def repeated(corpus: Path, split: str, label: str, limit: int) -> Iterator[str]:
    """The texts of one label, read again from the start as often as needed for `limit` documents."""
    taken = 0
    while taken < limit:
        before = taken
        for doc in iter_documents(corpus, split, [label]):
            if taken == limit:
                return
            taken += 1
            yield doc.text
        if taken == before:
            return


def encoded(
    texts: Iterator[str], plan: Callable[[str], FimSample], tok: Tokenizer, mode: Mode, workers: int, dtype: np.dtype
) -> Iterator[tuple[FimSample, np.ndarray]]:
    """(sample, training ids) per text; the parts of a batch of documents go to the tokenizer in one call."""
    while batch := _take_chars(texts, _BATCH_CHARS):
        samples = [plan(text) for text in batch]
        ids = tok.encode_batch([part for s in samples for part in s.parts()], mode, workers)
        start = 0
        for sample in samples:
            n = len(sample.parts())
            yield sample, np.asarray(layout(sample.mode, ids[start : start + n]), dtype=dtype)
            start += n


def _take_chars(texts: Iterator[str], limit: int) -> list[str]:
    """The next texts up to `limit` characters in all (at least one text, unless `texts` is exhausted)."""
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
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


def _label_rng(seed: int, split: str, label: str) -> np.random.Generator:
    """One stream per (split, label): a label's FIM draws do not depend on how the labels interleave."""
    return np.random.default_rng([seed, SPLITS.index(split), zlib.crc32(label.encode("utf-8"))])


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
    tok_sha = sha256_file(tok_dir / "tokenizer.json")

    def stream(split: str, label: str, limit: int, plan: Callable[[str], FimSample]):
        return encoded(repeated(corpus_dir, split, label, limit), plan, tok, mode, workers, dtype)

    def fim_plan(split: str, label: str, config: FimConfig) -> Callable[[str], FimSample]:
        rng = _label_rng(seed, split, label)
        return lambda text: draw(text, rng, config)

    def plain(text: str) -> FimSample:
        return FimSample("plain", text)

    splits = {split: SplitCounts() for split in SPLITS}
    splits["train"].labels = {label: LabelCounts(target_share=w) for label, w in weights.items()}
    splits["heldout"].labels = {label: LabelCounts() for label in weights}
    infill_labels = [CODE_LABEL] if CODE_LABEL in weights else []
    splits["heldout_fim"].labels = {label: LabelCounts() for label in infill_labels}
    n_docs = {split: {label: labels[label].get(split, 0) for label in weights} for split in ("train", "heldout")}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        train = mixed(
            {l: stream("train", l, int(np.ceil(max_repeats * n_docs["train"][l])), fim_plan("train", l, fim))
             for l in weights},
            weights, n_docs["train"], max_tokens,
        )
        _write_split(train, tmp / "train", shard_tokens, splits["train"], max_tokens)
        heldout = ((l, *item) for l in weights for item in stream("heldout", l, n_docs["heldout"][l], plain))
        _write_split(heldout, tmp / "heldout", shard_tokens, splits["heldout"])
        infill_config = dataclasses.replace(fim, rate=1.0)
        with open(tmp / "infill.jsonl", "w", encoding="utf-8") as f:
            infill = (
                (l, *item)
                for l in infill_labels
                for item in stream("heldout", l, n_docs["heldout"][l], fim_plan("heldout_fim", l, infill_config))
            )
            _write_split(_recorded(infill, f), tmp / "heldout_fim", shard_tokens, splits["heldout_fim"])
        for split in ("train", "heldout"):
            for label, c in splits[split].labels.items():
                c.passes = c.documents / n_docs[split][label] if n_docs[split][label] else 0.0
        for label, c in splits["heldout_fim"].labels.items():
            c.passes = splits["heldout"].labels[label].passes
        manifest = write_manifest(
            tmp,
            stage="shards",
            config={
                "mixture": weights,
                "fim": asdict(fim),
                "mode": mode,
                "seed": seed,
                "shard_tokens": shard_tokens,
                "max_tokens": max_tokens,
                "max_repeats": max_repeats,
            },
            inputs={"corpus": str(corpus_dir), "tokenizer": str(tok_dir)},
            tokenizer={"sha256": tok_sha, "vocab_size": tok.vocab_size, "morpheme_aware": tok.morpheme_aware},
            dtype=dtype.str,
            eot_id=EOT_ID,
            infill={"file": "infill.jsonl", "documents": splits["heldout_fim"].documents},
            splits={split: asdict(counts) for split, counts in splits.items()},
        )
    print(f"shards: {out} (train {splits['train'].tokens:,} tokens in {len(splits['train'].shards)} shard(s), "
          f"FIM rate {splits['train'].fim_rate:.2f}; held out {splits['heldout'].tokens:,} tokens)")
    return manifest


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
