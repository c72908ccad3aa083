"""Tokenizer report in the spirit of the HyperCLOVA X report's Table 1.

Tokens per document and per 1,000 characters on held-out Korean, English and code, for ours (exact and
portable), a plain byte-level BPE of the same size trained on the same corpus, and the real reference
tokenizers available offline; plus how our token boundaries line up with Korean morpheme boundaries.
Not a benchmark of speed: that lives in benchmarks/tokenizer_speed.py.
"""

from __future__ import annotations

import bisect
import functools
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from openhcx.io import atomic_file, write_json, write_manifest
from openhcx.tokenizer.morphemes import HANGUL, WORD, morpheme_cuts, split_at
from openhcx.tokenizer.tokenizer import Tokenizer


@dataclass
class Alignment:
    """Counts behind the two boundary shares, summed over documents."""

    morpheme_cuts: int = 0  # morpheme boundaries inside Korean words
    cuts_kept: int = 0  # ... that are also token boundaries (no token crosses them)
    token_cuts: int = 0  # token boundaries inside Korean words
    token_cuts_on_morphemes: int = 0  # ... that fall on a morpheme boundary
    # The other token cuts, by where they fall: why a share below 100% does not mean merges crossed morphemes.
    off_inside_characters: int = 0  # inside one character's UTF-8 bytes (a syllable the vocabulary lacks)
    off_beside_other_scripts: int = 0  # next to a Latin letter, digit or symbol (e.g. inside "DateValue가")

    def add(self, other: "Alignment") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    @property
    def recall(self) -> float:
        """Share of morpheme boundaries the tokenizer keeps (1.0: no token spans two morphemes)."""
        return self.cuts_kept / self.morpheme_cuts if self.morpheme_cuts else float("nan")

    @property
    def precision(self) -> float:
        """Share of token boundaries inside Korean words that fall on morpheme boundaries."""
        return self.token_cuts_on_morphemes / self.token_cuts if self.token_cuts else float("nan")

    @property
    def off_between_syllables(self) -> int:
        """Token cuts between two Hangul syllables of one morpheme (a word the vocabulary holds only in parts)."""
        return (self.token_cuts - self.token_cuts_on_morphemes - self.off_inside_characters
                - self.off_beside_other_scripts)


def alignment(text: str, token_bytes: list[int], cuts: list[int] | None = None) -> Alignment:
    """Compare token boundaries (from per-token byte lengths) with morpheme cuts, in byte offsets."""
    cuts = morpheme_cuts(text) if cuts is None else cuts
    char_to_byte = [0, *accumulate(len(c.encode()) for c in text)]
    cut_bytes = {char_to_byte[c] for c in cuts}
    spans = [(char_to_byte[m.start()], char_to_byte[m.end()]) for m in WORD.finditer(text) if HANGUL.search(m.group())]
    starts = [a for a, _ in spans]
    token_cuts = set(accumulate(token_bytes[:-1]))

    def in_korean_word(b: int) -> bool:
        i = bisect.bisect_right(starts, b) - 1
        return i >= 0 and spans[i][0] < b < spans[i][1]

    inside = [b for b in token_cuts if in_korean_word(b)]
    byte_to_char = {b: i for i, b in enumerate(char_to_byte)}
    off = [b for b in inside if b not in cut_bytes]
    mid_char = [b for b in off if b not in byte_to_char]
    other = [b for b in off if b in byte_to_char
             and not (HANGUL.match(text[byte_to_char[b] - 1]) and HANGUL.match(text[byte_to_char[b]]))]
    return Alignment(len(cut_bytes), len(cut_bytes & token_cuts), len(inside), len(inside) - len(off),
                     len(mid_char), len(other))


@dataclass
class Row:
    name: str
    vocab_size: int
    tokens: dict[str, int] = field(default_factory=dict)  # per label
    alignment: Alignment | None = None


def measure(
    docs: dict[str, list[str]], encoders: dict[str, tuple[int, Callable[[str], list[int]]]]
) -> list[Row]:
    rows = []
    for name, (vocab, encode) in encoders.items():
        row = Row(name, vocab)
        for label, texts in docs.items():
            bar = tqdm(texts, desc=f"{name}/{label}", leave=False, disable=None)
            row.tokens[label] = sum(len(encode(t)) for t in bar)
        rows.append(row)
    return rows


def tokenizer_report(
    tokenizer: str,
    corpus: str,
    baseline: str | None = None,
    refs_dir: str = ".cache/refs",
    labels: list[str] | None = None,
    max_docs: int = 1000,
    out: str | None = None,
) -> dict:
    """Print (and optionally write) the tokenizer report.

    Args:
        tokenizer: Our tokenizer directory (from `openhcx tokenizer train`).
        corpus: Corpus directory whose held-out split is measured.
        baseline: A plain byte-level BPE directory trained on the same corpus at the same vocabulary size.
        refs_dir: Folder with the reference tokenizer files (see README); missing ones are listed, not hidden.
        labels: Corpus labels to measure (default: every label in the held-out split).
        max_docs: At most this many held-out documents per label.
        out: Write report.md and report.json into this directory.
    """
    from openhcx.data.corpus import iter_documents
    from openhcx.tokenizer.references import load_references

    docs: dict[str, list[str]] = defaultdict(list)
    for d in iter_documents(corpus, "heldout", labels):
        if len(docs[d.label]) < max_docs:
            docs[d.label].append(d.text)
    ours = Tokenizer.load(tokenizer)
    cuts = functools.lru_cache(maxsize=None)(morpheme_cuts)  # the analyzer is the slow part: run it once

    def exact(text: str) -> list[int]:
        return ours.encode_pieces(split_at(text, cuts(text))) if ours.morpheme_aware else ours.encode(text)

    encoders = {
        "OpenHCX exact": (ours.vocab_size, exact),
        "OpenHCX portable": (ours.vocab_size, lambda t: ours.encode(t, "portable")),
    }
    base = Tokenizer.load(baseline) if baseline else None
    if base:
        encoders["plain byte-level BPE"] = (base.vocab_size, lambda t: base.encode(t, "portable"))
    refs, missing = load_references(refs_dir)
    encoders.update({r.name: (r.vocab_size, r.encode) for r in refs})
    rows = measure(docs, encoders)

    for row, tok in zip(rows, [ours, ours, base] if base else [ours, ours]):
        row.alignment = Alignment()
        encode = encoders[row.name][1]
        for text in docs.get("ko", []):
            row.alignment.add(alignment(text, tok.token_bytes(encode(text)), cuts(text)))

    chars = {label: sum(map(len, texts)) for label, texts in docs.items()}
    result = {
        "tokenizer": tokenizer, "corpus": corpus, "baseline": baseline,
        "documents": {k: len(v) for k, v in docs.items()}, "characters": chars,
        "rows": [dict(asdict(r), alignment_recall=r.alignment and r.alignment.recall,
                      alignment_precision=r.alignment and r.alignment.precision,
                      alignment_off_between_syllables=r.alignment and r.alignment.off_between_syllables)
                 for r in rows],
        "missing_references": missing,
    }
    text = render(rows, docs, chars, missing)
    print(text)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "report.json", result)
        with atomic_file(Path(out) / "report.md", encoding="utf-8") as f:
            f.write(text)
        # last, like every artifact's: a report directory with its manifest is complete
        write_manifest(out, "tokenizer-report", {"refs_dir": refs_dir, "labels": labels, "max_docs": max_docs},
                       {"tokenizer": tokenizer, "corpus": corpus, "baseline": baseline},
                       documents=result["documents"], tokenizers=len(rows),
                       tokens_per_1k_chars={r.name: round(1000 * sum(r.tokens.values()) / max(sum(chars.values()), 1),
                                                          1) for r in rows})
    print(f"tokenizer report: {Path(out) / 'report.md' if out else 'not written (no out)'} ({len(rows)} tokenizers on "
          f"{sum(map(len, docs.values())):,} held-out documents; {rows[0].name}: "
          f"{1000 * sum(rows[0].tokens.values()) / max(sum(chars.values()), 1):.1f} tokens per 1k characters)")
    return result


def render(rows: list[Row], docs: dict[str, list[str]], chars: dict[str, int], missing: dict[str, str]) -> str:
    labels = list(docs)
    ref = rows[0]
    head = ["tokenizer (vocab)"] + [f"{l} tok/doc (ratio)" for l in labels] + [f"{l} tok/1k chars" for l in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        per_doc = [f"{r.tokens[l] / len(docs[l]):.1f} ({r.tokens[l] / max(ref.tokens[l], 1):.2f})" for l in labels]
        per_k = [f"{1000 * r.tokens[l] / chars[l]:.1f}" for l in labels]
        lines.append(f"| {r.name} ({r.vocab_size:,}) | " + " | ".join(per_doc + per_k) + " |")
    lines += ["", "Held-out documents: " + ", ".join(f"{l} {len(docs[l])} ({chars[l]:,} chars)" for l in labels), ""]
    lines += ["| tokenizer | morpheme boundaries kept (no token crosses one) | token boundaries inside Korean "
              "words on a morpheme boundary | the others: inside a character / beside Latin, digits, symbols / "
              "between syllables of one morpheme |", "|---|---|---|---|"]
    for r in rows:
        if r.alignment:
            a = r.alignment
            lines.append(f"| {r.name} | {a.recall:.4%} ({a.cuts_kept:,}/{a.morpheme_cuts:,}) | "
                         f"{a.precision:.4%} ({a.token_cuts_on_morphemes:,}/{a.token_cuts:,}) | "
                         f"{a.off_inside_characters:,} / {a.off_beside_other_scripts:,} / "
                         f"{a.off_between_syllables:,} |")
    if missing:
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in missing.items())]
    return "\n".join(lines) + "\n"
