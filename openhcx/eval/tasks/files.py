"""Readers for benchmark files exactly as their authors ship them, with errors naming file and line.

Lines come from openhcx.io.text_lines (gzip or not, byte order mark dropped, bad UTF-8 named by line).
TSV is split on tabs with no quoting (KoBEST and KoBBQ quote nothing and contain stray quotes), CRLF
endings are tolerated; CSV goes through the csv module; JSON Lines are parsed line by line.
Not here: any benchmark-specific field mapping (that lives in each family's module).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from openhcx.io import UserError, json_objects, require_file, text_lines


def _lines(path: Path) -> Iterator[str]:
    """The file's lines with their endings, as the csv module wants them."""
    return (line for _, line in text_lines(require_file(path, "benchmark file")))


def read_tsv(path: str | Path, required: tuple[str, ...] = ()) -> list[tuple[int, dict[str, str]]]:
    """Rows as (line number, {header: value}); every row must have as many fields as the header."""
    path = Path(path)
    lines = [line.rstrip("\r\n") for line in _lines(path)] or [""]
    header = lines[0].split("\t")
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(f"{path}:1: header lacks column(s) {missing} (found {header})")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise UserError(f"{path}:{n}: expected {len(header)} tab-separated fields, found {len(fields)}")
        rows.append((n, dict(zip(header, fields))))
    return rows


def read_csv(path: str | Path, width: int) -> list[tuple[int, list[str]]]:
    """Rows as (line number, fields); each row must have `width` fields."""
    path = Path(path)
    rows = []
    reader = csv.reader(_lines(path))
    start = 1
    for fields in reader:
        if fields and len(fields) != width:
            raise UserError(f"{path}:{start}: expected {width} comma-separated fields, found {len(fields)}")
        if fields:
            rows.append((start, fields))
        start = reader.line_num + 1
    return rows


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    return list(json_objects(require_file(path, "benchmark file")))


def field(path: Path, line: int, row: dict, key: str):
    """row[key], or an error naming the file, line and missing key."""
    try:
        return row[key]
    except KeyError:
        raise UserError(f"{path}:{line}: missing field {key!r}") from None


def label(path: Path, line: int, value: str, mapping: dict[str, int]) -> int:
    try:
        return mapping[value.strip()]
    except KeyError:
        raise UserError(f"{path}:{line}: unexpected label {value!r} (expected one of {sorted(mapping)})") from None


def read_csv_dicts(path: str | Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """A CSV with a header row, as (line number, {column: value}); `required` columns must be present."""
    path = Path(path)
    rows = read_csv(path, width=len(_header(path)))
    header = rows[0][1] if rows else []
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(f"{path}:1: header lacks column(s) {missing} (found {header})")
    return [(n, dict(zip(header, fields))) for n, fields in rows[1:]]


def _header(path: Path) -> list[str]:
    return next(csv.reader(_lines(path)), [])


def read_records(root: Path, stem: str) -> list[tuple[Path, int, dict]]:
    """Records of `<stem>.jsonl`, or of the Hub's `<stem>-*.parquet` shards, as (file, line or row, record)."""
    jsonl = root / f"{stem}.jsonl"
    if jsonl.exists():
        return [(jsonl, n, r) for n, r in read_jsonl(jsonl)]
    shards = sorted(root.glob(f"{stem}-*.parquet"))
    if not shards:
        raise UserError(f"{jsonl}: benchmark file not found (nor {stem}-*.parquet)")
    import pyarrow.parquet as pq

    return [(p, i + 1, r) for p in shards for i, r in enumerate(pq.read_table(p).to_pylist())]
