"""Resumable request cache: an append-only JSON Lines file keyed by request hash.

Each finished batch is appended and fsync'ed, so an evaluation killed at any point reruns with the same
command and recomputes only what is missing. A torn last line (killed mid-write) is ignored on read
and sealed off before the next append. Not a general key-value store: no deletion, no compaction.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def request_key(fingerprint: str, *parts) -> str:
    blob = json.dumps([fingerprint, *parts], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Cache:
    """In-memory dict backed by `path` when given (no file: nothing persists)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.data: dict[str, object] = {}
        if self.path and self.path.exists():
            raw = self.path.read_bytes()
            for line in raw.split(b"\n"):
                try:
                    key, value = json.loads(line)
                except ValueError:
                    continue  # empty or torn line
                self.data[key] = value
            if raw and not raw.endswith(b"\n"):
                with open(self.path, "ab") as f:
                    f.write(b"\n")

    def get(self, key: str):
        return self.data.get(key)

    def put_many(self, entries: dict[str, object]) -> None:
        self.data.update(entries)
        if not self.path or not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = "".join(json.dumps([k, v], ensure_ascii=False) + "\n" for k, v in entries.items())
        with open(self.path, "ab") as f:
            f.write(blob.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
