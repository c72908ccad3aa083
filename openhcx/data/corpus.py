"""Raw text -> corpus: read labelled sources, clean, scrub PII, filter, split, write shards.

The first arrow of the flow (RECIPE.md section 1). Sources are txt, jsonl, jsonl.gz or parquet files,
directories or globs, each tagged with a segment label (ko, en, code, ...). Everything streams: one
document is in memory at a time and shards are written as documents arrive, so memory stays flat
however large the input. The output directory holds `{train,heldout}/<label>-NNNNN.jsonl.gz` shards
of {"text", "label", "source"} records and a manifest with per-source and per-label counts.

Not here: deduplication (the recipe has none beyond dropping repetitive documents), language
identification, upsampling or mixing the segments (the shard-building stage does that).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import re
import shutil
import unicodedata
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

from tqdm import tqdm

from openhcx.data.cluster import Cluster, Task, run_tasks, summaries_table, work_folder
from openhcx.data.filters import RULES, FilterConfig, Keywords, rejection
from openhcx.data.pii import scrub_pii
from openhcx.io import UserError, atomic_dir, json_objects, text_lines, write_manifest

log = logging.getLogger(__name__)

FORMATS = ("txt", "jsonl", "jsonl.gz", "parquet")
SPLITS = ("train", "heldout")
_SUFFIXES = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".jsonl.gz": "jsonl.gz",
    ".ndjson.gz": "jsonl.gz",
    ".json.gz": "jsonl.gz",
    ".parquet": "parquet",
}
_LABEL = re.compile(r"[\w+][\w.+-]*")
_PARQUET_BATCH_ROWS = 1024  # rows converted to Python strings at a time
_PARQUET_READ_BUFFER = 1 << 20  # bytes arrow reads from disk at a time


@dataclass
class Source:
    """One input of the corpus: where the text is and which segment it belongs to."""

    path: str
    """A file, a directory (all non-hidden files below it) or a glob (`data/**/*.jsonl.gz`)."""
    label: str
    """Segment label written with every document and used in shard names: ko, en, code, ja, ..."""
    text_field: str = "text"
    """The JSON key or parquet column holding the text (jsonl, jsonl.gz, parquet)."""
    format: str = "auto"
    """txt, jsonl, jsonl.gz, parquet, or auto: decided per file by its suffix. jsonl and txt files
    are decompressed transparently when they are gzipped."""
    split_blank_lines: bool = False
    """txt only: one document per blank-line-separated paragraph instead of one per file."""


@dataclass
class Document:
    """A corpus record: the text, its segment label and the file it came from."""

    text: str
    label: str
    source: str


@dataclass
class Counts:
    """What happened to the documents of one source, one label or the whole corpus."""

    read: int = 0
    """Documents read from the files."""
    kept: int = 0
    """Documents that passed every filter (= train + heldout)."""
    train: int = 0
    heldout: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))
    """Documents dropped, by the first filter rule they failed (see filters.RULES)."""
    emails: int = 0
    """E-mail addresses scrubbed in kept documents."""
    phones: int = 0
    """Phone numbers scrubbed in kept documents."""
    chars: int = 0
    """Characters of kept documents."""

    def add(self, other: "Counts") -> None:
        for name in ("read", "kept", "train", "heldout", "emails", "phones", "chars"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for rule, n in other.dropped.items():
            self.dropped[rule] += n


# ---------------------------------------------------------------- reading


def source_files(source: Source) -> list[Path]:
    """The files a source names, sorted so every run reads them in the same order."""
    path = Path(source.path)
    if glob.has_magic(source.path):
        files = sorted(Path(p) for p in glob.glob(source.path, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"{source.path}: no files match this pattern")
        return files
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise UserError(f"{path}: directory holds no files")
        return files
    if not path.exists():
        raise UserError(f"{path}: source not found")
    return [path]


def file_format(path: Path, declared: str) -> str:
    """The declared format, or for `auto` the one the file's suffix names."""
    if declared != "auto":
        if declared not in FORMATS:
            raise UserError(f"{path}: unknown format '{declared}' (expected auto or one of {', '.join(FORMATS)})")
        return declared
    name = path.name.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    raise UserError(
        f"{path}: unknown format (suffix not one of {', '.join(_SUFFIXES)}); set the source's format or use a glob"
    )


def read_txt(path: Path, split_blank_lines: bool = False) -> Iterator[str]:
    """The whole file as one document, or each blank-line-separated paragraph."""
    lines: list[str] = []
    for _, line in text_lines(path):
        if split_blank_lines and not line.strip():
            if lines:
                yield "".join(lines)
                lines = []
        else:
            lines.append(line)
    if lines:
        yield "".join(lines)


def read_jsonl(path: Path, text_field: str = "text") -> Iterator[str]:
    """The text field of every JSON line; blank lines are skipped."""
    for lineno, record in json_objects(path):
        if text_field not in record:
            raise UserError(f"{path}:{lineno}: missing text field '{text_field}' (keys: {', '.join(record)})")
        text = record[text_field]
        if not isinstance(text, str):
            raise UserError(f"{path}:{lineno}: text field '{text_field}' is {type(text).__name__}, not a string")
        yield text


def read_parquet(path: Path, text_field: str = "text") -> Iterator[str]:
    """The text column of every row, reading one record batch of that column at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # No pre-buffering and a bounded read buffer: otherwise arrow holds a whole row group (by
        # default, the whole file) in memory however small the batches.
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_PARQUET_READ_BUFFER)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise UserError(f"{path}: missing text field '{text_field}' (columns: {', '.join(schema.names)})")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise UserError(f"{path}: text field '{text_field}' has type {kind}, not string")
    row = 0
    with parquet:
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
            for value in batch.column(0).to_pylist():
                row += 1
                if value is None:
                    raise UserError(f"{path}: row {row}: missing text field '{text_field}' (null)")
                if isinstance(value, bytes):
                    try:
                        value = value.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise UserError(f"{path}: row {row}: not valid UTF-8 (byte offset {e.start})") from None
                yield value


def read_file(path: Path, source: Source) -> Iterator[str]:
    """The raw text of every document in one file of a source."""
    fmt = file_format(path, source.format)
    if fmt == "txt":
        return read_txt(path, source.split_blank_lines)
    if fmt == "parquet":
        return read_parquet(path, source.text_field)
    return read_jsonl(path, source.text_field)


# ---------------------------------------------------------------- cleaning and splitting

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """NFC-normalise (decomposed Hangul jamo become syllables), unify newlines, drop control characters."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text).strip()


def in_heldout(text: str, fraction: float) -> bool:
    """Stable split: the same text lands in the same split on every run and machine."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


# ---------------------------------------------------------------- writing


class _Shards:
    """Gzipped JSONL shards of one split and label, a new file every `shard_docs` documents."""

    def __init__(self, directory: Path, label: str, shard_docs: int):
        self.directory, self.label, self.shard_docs = directory, label, shard_docs
        self.files: list[str] = []
        self.documents: list[int] = []
        self._file: IO[str] | None = None

    def write(self, doc: Document) -> None:
        if self._file is None or self.documents[-1] == self.shard_docs:
            self.close()
            name = f"{self.label}-{len(self.files):05d}.jsonl.gz"
            self.directory.mkdir(parents=True, exist_ok=True)
            # Level 3: most of level 9's ratio on text at several times the speed.
            self._file = gzip.open(self.directory / name, "wt", encoding="utf-8", compresslevel=3)
            self.files.append(f"{self.directory.name}/{name}")
            self.documents.append(0)
        self._file.write(json.dumps(asdict(doc), ensure_ascii=False) + "\n")
        self.documents[-1] += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _ShardSet:
    """One _Shards writer per (split, label), opened on first use."""

    def __init__(self, root: Path, shard_docs: int):
        self.root, self.shard_docs = root, shard_docs
        self.writers: dict[tuple[str, str], _Shards] = {}

    def write(self, split: str, doc: Document) -> None:
        key = (split, doc.label)
        if key not in self.writers:
            self.writers[key] = _Shards(self.root / split, doc.label, self.shard_docs)
        self.writers[key].write(doc)

    def files(self, split: str) -> dict[str, list[str]]:
        return {label: w.files for (sp, label), w in sorted(self.writers.items()) if sp == split}

    def documents(self, split: str) -> dict[str, list[int]]:
        return {label: w.documents for (sp, label), w in sorted(self.writers.items()) if sp == split}

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _validate(sources: list[Source], heldout_fraction: float, shard_docs: int) -> None:
    if not sources:
        raise UserError("sources: no sources given")
    for i, source in enumerate(sources):
        if not _LABEL.fullmatch(source.label):
            raise UserError(f"sources[{i}].label: '{source.label}' must be letters, digits, '_', '+', '.', '-'")
        if source.format != "auto" and source.format not in FORMATS:
            raise UserError(f"sources[{i}].format: unknown format '{source.format}' (expected auto or one of {', '.join(FORMATS)})")
    if not 0.0 <= heldout_fraction < 1.0:
        raise UserError(f"heldout_fraction: {heldout_fraction} is not in [0, 1)")
    if shard_docs < 1:
        raise UserError(f"shard_docs: {shard_docs} must be at least 1")


def _clean(docs: Iterable[Document], source: Source, filters: FilterConfig, keywords: Keywords,
           heldout_fraction: float, shards: _ShardSet) -> Counts:
    """Clean, scrub, filter and split documents of one source into `shards`: the rules of this stage, which
    the single-machine build and every cluster task run alike."""
    counts = Counts()
    code = source.label == "code"
    for doc in docs:
        counts.read += 1
        scrubbed = scrub_pii(clean_text(doc.text))
        text = scrubbed.text.strip()  # a number removed at the very end leaves a space behind
        reason = rejection(text, filters, keywords, code=code)
        if reason is not None:
            counts.dropped[reason] += 1
            continue
        split = "heldout" if in_heldout(text, heldout_fraction) else "train"
        shards.write(split, Document(text, doc.label, doc.source))
        counts.kept += 1
        setattr(counts, split, getattr(counts, split) + 1)
        counts.emails += scrubbed.emails
        counts.phones += scrubbed.phones
        counts.chars += len(text)
    return counts


def _documents(source: Source, files: list[Path]) -> Iterator[Document]:
    return (Document(text, source.label, str(path)) for path in files for text in read_file(path, source))


def _clean_file(args: tuple, out: Path) -> dict:
    """A cluster task: one input file into corpus shards of its own under `out`."""
    source, path, filters, heldout_fraction, shard_docs = args
    shards = _ShardSet(out, shard_docs)
    try:
        counts = _clean(_documents(source, [Path(path)]), source, filters, Keywords.load(filters), heldout_fraction,
                        shards)
    finally:
        shards.close()
    return {"counts": asdict(counts), "files": {split: shards.files(split) for split in SPLITS},
            "documents": {split: shards.documents(split) for split in SPLITS}}


def build_corpus(
    sources: list[Source],
    out: str,
    filters: FilterConfig = FilterConfig(),
    heldout_fraction: float = 0.01,
    shard_docs: int = 10000,
    overwrite: bool = False,
    cluster: Cluster | None = None,
) -> dict:
    """Build a corpus directory from raw sources: clean, scrub PII, filter, split, shard.

    Every document is NFC-normalised and stripped, has its e-mail local parts and phone numbers
    scrubbed (openhcx.data.pii), then goes through the filters (openhcx.data.filters) on the text
    that would be written. Kept documents go to `heldout` when a hash of their text falls under
    `heldout_fraction`, else to `train`, so the split is the same on every run. The directory
    appears only when everything succeeded.

    Args:
        sources: The inputs, each with its segment label (see Source).
        out: Output corpus directory: `{train,heldout}/<label>-NNNNN.jsonl.gz` and manifest.json.
        filters: Filter thresholds and keyword lists.
        heldout_fraction: Share of kept documents set aside for evaluation, in [0, 1).
        shard_docs: Documents per shard file.
        overwrite: Replace `out` if it exists (it is swapped only after the new corpus is complete).
        cluster: Run one task per input file on Ray (docs/scale.md); default: this process. The corpus
            holds the same documents in the same order with the same counts; only where shard files end
            differs (each input file starts new ones). A rerun after a crash runs only unfinished tasks.

    Returns:
        The manifest written to `out/manifest.json`, with per-source, per-label and total counts:
        documents read, kept, sent to train and heldout, dropped by each filter, e-mails and phone
        numbers scrubbed, and characters kept.
    """
    _validate(sources, heldout_fraction, shard_docs)
    keywords = Keywords.load(filters)
    # Missing paths and unknown formats fail before any work is done.
    files = [source_files(s) for s in sources]
    for source, paths in zip(sources, files):
        for path in paths:
            file_format(path, source.format)
    config = {"sources": [asdict(s) for s in sources], "filters": asdict(filters),
              "heldout_fraction": heldout_fraction, "shard_docs": shard_docs}
    inputs = {s.path: {"files": len(fs), "bytes": sum(f.stat().st_size for f in fs)} for s, fs in zip(sources, files)}
    if cluster is not None:
        return _build_on_cluster(sources, files, out, config, inputs, filters, heldout_fraction, shard_docs,
                                 overwrite, cluster)
    with atomic_dir(out, overwrite=overwrite) as tmp, ExitStack() as stack:
        shards = _ShardSet(tmp, shard_docs)
        stack.callback(shards.close)
        per_source = []
        for source, paths in zip(sources, files):
            docs = tqdm(_documents(source, paths), desc=f"{source.label}: {source.path}", unit=" docs", disable=None)
            per_source.append(_clean(docs, source, filters, keywords, heldout_fraction, shards))
        shards.close()
        manifest = _write_manifest(tmp, out, sources, per_source, config, inputs,
                                   {split: shards.files(split) for split in SPLITS},
                                   {split: shards.documents(split) for split in SPLITS})
    return manifest


def _build_on_cluster(sources, files, out, config, inputs, filters, heldout_fraction, shard_docs, overwrite,
                      cluster: Cluster) -> dict:
    if Path(out).exists() and not overwrite:
        raise UserError(f"{out}: output already exists (pass overwrite=true to replace it)")
    tasks = [Task(f"{i:03d}-{j:06d}", path.stat().st_size, (source, str(path), filters, heldout_fraction, shard_docs),
                  stamp=[str(path), path.stat().st_size, path.stat().st_mtime_ns])
             for i, (source, paths) in enumerate(zip(sources, files)) for j, path in enumerate(paths)]
    work = work_folder(cluster, out)
    summaries = run_tasks("corpus", _clean_file, tasks, work, cluster, {"config": config})
    with atomic_dir(out, overwrite=overwrite) as tmp:
        per_source = [Counts() for _ in sources]
        names = {split: {} for split in SPLITS}
        documents = {split: {} for split in SPLITS}
        for task in tasks:  # in input order: the documents keep the single-machine build's order
            summary, index = summaries[task.key], int(task.key.split("-")[0])
            counts = Counts(**summary["counts"])
            per_source[index].add(counts)
            for split in SPLITS:
                for label, shard_files in summary["files"][split].items():
                    for name, n in zip(shard_files, summary["documents"][split][label]):
                        listed = names[split].setdefault(label, [])
                        target = f"{split}/{label}-{len(listed):05d}.jsonl.gz"
                        (tmp / split).mkdir(exist_ok=True)
                        (work / "tasks" / task.key / name).rename(tmp / target)
                        listed.append(target)
                        documents[split].setdefault(label, []).append(n)
        ordered = {split: dict(sorted(names[split].items())) for split in SPLITS}
        manifest = _write_manifest(tmp, out, sources, per_source, config, inputs, ordered,
                                   {split: dict(sorted(documents[split].items())) for split in SPLITS},
                                   tasks=summaries_table(summaries))
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def _write_manifest(tmp: Path, out: str, sources: list[Source], per_source: list[Counts], config: dict,
                    inputs: dict, shards: dict, documents: dict, **extra) -> dict:
    labels: dict[str, Counts] = {}
    totals = Counts()
    for source, counts in zip(sources, per_source):
        if counts.read == 0:
            raise UserError(f"{source.path}: no documents (the files are empty)")
        log.info("%s (%s): read %d, kept %d", source.path, source.label, counts.read, counts.kept)
        labels.setdefault(source.label, Counts()).add(counts)
        totals.add(counts)
    if totals.kept == 0:
        dropped = ", ".join(f"{rule}: {n}" for rule, n in totals.dropped.items() if n)
        raise UserError(f"{out}: all {totals.read} documents were dropped by the filters ({dropped})")
    write_manifest(
        tmp,
        stage="corpus",
        config=config,
        inputs=inputs,
        sources=[{**asdict(s), **asdict(c)} for s, c in zip(sources, per_source)],
        labels={label: asdict(c) for label, c in sorted(labels.items())},
        totals=asdict(totals),
        shards=shards,
        documents=documents,
        **extra,
    )
    print(f"corpus: {out} ({totals.kept:,} of {totals.read:,} documents kept: {totals.train:,} train, "
          f"{totals.heldout:,} held out; {totals.chars:,} characters)")
    return json.loads((tmp / "manifest.json").read_text(encoding="utf-8"))  # as written: lists, not tuples


# ---------------------------------------------------------------- reading a corpus back


def iter_documents(corpus_dir: str | Path, split: str = "train", labels: Iterable[str] | None = None) -> Iterator[Document]:
    """Stream the documents of a corpus built by build_corpus, label by label, shard by shard."""
    corpus_dir = Path(corpus_dir)
    manifest_path = corpus_dir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{corpus_dir}: not a corpus directory (no manifest.json)")
    if split not in SPLITS:
        raise UserError(f"split: '{split}' is not one of {', '.join(SPLITS)}")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("stage") != "corpus":
        raise UserError(f"{manifest_path}: stage is '{manifest.get('stage')}', not corpus")
    known = list(manifest["labels"])
    wanted = known if labels is None else list(labels)
    unknown = [label for label in wanted if label not in known]
    if unknown:
        raise UserError(f"labels: {', '.join(unknown)} not in {corpus_dir} (it has {', '.join(known)})")
    for label in wanted:
        for name in manifest["shards"][split].get(label, []):
            yield from read_shard(corpus_dir / name)


def read_shard(path: Path) -> Iterator[Document]:
    """The documents of one corpus shard file."""
    for lineno, line in text_lines(path):
        try:
            yield Document(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as e:
            raise UserError(f"{path}:{lineno}: corrupt corpus record ({e})") from None
