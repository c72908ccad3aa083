"""Document quality filters: too short, repetitive, too many advertising or hate-speech passages.

RECIPE.md section 1 names what to drop but not how; the repetition rules follow the Gopher rules
(Rae et al. 2021, "Scaling Language Models", appendix A) with their published thresholds. Words are
whitespace-separated tokens, which for Korean means eojeol (word + attached particles): coarser than
English words, so the same thresholds are slightly more lenient on Korean. The length and keyword
thresholds are OpenHCX's own defaults (the report gives none). Each rule is a pure function;
`rejection` applies them in a fixed order and names the first that fails, so every dropped document
is counted under exactly one rule.

Not here: deduplication across documents, language identification, model-based quality scoring.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import Iterator, Sequence

from openhcx.io import UserError

KEYWORDS_DIR = Path(__file__).resolve().parent / "keywords"

# Rule names, in the order `rejection` applies them; they key the manifest's drop counts.
RULES = (
    "too_short",
    "duplicate_lines",
    "duplicate_line_chars",
    "top_ngram",
    "duplicate_ngram",
    "advertising",
    "hate_speech",
)


def _default_lists(kind: str) -> list[str]:
    return [str(KEYWORDS_DIR / f"{kind}_ko.txt"), str(KEYWORDS_DIR / f"{kind}_en.txt")]


@dataclass
class FilterConfig:
    """Thresholds of the document filters; a document is dropped when a measure exceeds its maximum."""

    min_chars: int = 100
    """Documents with fewer characters (after cleaning and PII scrubbing) are dropped."""
    max_duplicate_line_fraction: float = 0.30
    """Share of non-empty lines that repeat an earlier line of the same document."""
    max_duplicate_line_char_fraction: float = 0.20
    """Share of characters (of non-empty lines) that sit in lines repeating an earlier line."""
    max_top_ngram_char_fraction: tuple[float, float, float] = (0.20, 0.18, 0.16)
    """For n = 2, 3, 4: share of word characters covered by the most frequent n-gram's occurrences."""
    max_duplicate_ngram_char_fraction: tuple[float, float, float, float, float, float] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)
    """For n = 5..10: share of word characters inside n-grams that occurred earlier in the document."""
    ad_keyword_files: list[str] = field(default_factory=lambda: _default_lists("ads"))
    """Advertising keyword lists (UTF-8, one keyword per line, `#` comments); default: the shipped Korean
    and English lists in openhcx/data/keywords/."""
    max_ad_passage_fraction: float = 0.30
    """Share of passages (sentences within lines) containing an advertising keyword."""
    hate_keyword_files: list[str] = field(default_factory=lambda: _default_lists("hate"))
    """Hate-speech keyword lists, same format; default: the shipped Korean and English lists."""
    max_hate_passage_fraction: float = 0.10
    """Share of passages containing a hate-speech keyword."""


@dataclass(frozen=True)
class KeywordList:
    """Keywords of one or more list files, compiled for matching."""

    words: tuple[str, ...]
    """Lower-cased keywords: a cheap substring test that skips the regex for most documents."""
    pattern: re.Pattern
    """Matches any keyword, honouring ASCII word boundaries (see load_keywords)."""

    def passage_fraction(self, text: str) -> float:
        """Share of passages (see `passages`) containing at least one keyword."""
        lower = text.lower()
        if not any(word in lower for word in self.words):
            return 0.0
        parts = passages(text)
        return sum(1 for p in parts if self.pattern.search(p)) / len(parts)


def load_keywords(paths: Sequence[str | Path]) -> KeywordList | None:
    """The keywords of the list files (UTF-8, one per line, `#` comments); None when there are none.

    Keywords that begin or end with an ASCII letter or digit only match on that side's word boundary
    ("spic" must not match "spicy"); Korean keywords match as substrings, because particles attach
    to words ("출장안마를"). Matching ignores case.
    """
    words: set[str] = set()
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise UserError(f"{path}: keyword list not found") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: keyword list is not valid UTF-8 ({e.reason})") from None
        words.update(line.strip().lower() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not words:
        return None
    # Longest first, so a phrase wins over its own prefix when both are listed.
    ordered = sorted(words, key=len, reverse=True)
    return KeywordList(tuple(ordered), re.compile("|".join(map(_keyword_regex, ordered)), re.IGNORECASE))


def _keyword_regex(keyword: str) -> str:
    ascii_word = re.compile(r"[A-Za-z0-9]")
    before = r"(?<![A-Za-z0-9])" if ascii_word.match(keyword[0]) else ""
    after = r"(?![A-Za-z0-9])" if ascii_word.match(keyword[-1]) else ""
    return before + re.escape(keyword) + after


@dataclass(frozen=True)
class Keywords:
    """The compiled keyword lists of one FilterConfig."""

    ads: KeywordList | None
    hate: KeywordList | None

    @classmethod
    def load(cls, config: FilterConfig) -> "Keywords":
        return cls(load_keywords(config.ad_keyword_files), load_keywords(config.hate_keyword_files))


def duplicate_line_fractions(text: str) -> tuple[float, float]:
    """(share of lines, share of line characters) in non-empty lines repeating an earlier line."""
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_lines = dup_chars = 0
    for line in lines:
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        else:
            seen.add(line)
    return dup_lines / len(lines), dup_chars / sum(map(len, lines))


def top_ngram_char_fraction(words: Sequence[str], n: int) -> float:
    """Share of word characters covered by all occurrences of the most frequent n-gram.

    Among equally frequent n-grams the one with most characters counts, so the result does not
    depend on word order. An n-gram seen only once is not repetition, so it scores 0.
    """
    total = sum(map(len, words))
    if len(words) < n or total == 0:
        return 0.0
    counts = Counter(_ngrams(words, n))
    count = max(counts.values())
    if count < 2:
        return 0.0
    chars = max(sum(map(len, ngram)) for ngram, c in counts.items() if c == count)
    return min(1.0, chars * count / total)


def duplicate_ngram_char_fraction(words: Sequence[str], n: int) -> float:
    """Share of word characters inside n-gram occurrences that repeat an earlier n-gram.

    Each word counts once however many duplicate n-grams overlap it.
    """
    total = sum(map(len, words))
    if len(words) < n or total == 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    covered = bytearray(len(words))
    mark = b"\x01" * n
    for i, ngram in enumerate(_ngrams(words, n)):
        if ngram in seen:
            covered[i : i + n] = mark
        else:
            seen.add(ngram)
    return sum(compress(map(len, words), covered)) / total


def _ngrams(words: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    return zip(*(words[i:] for i in range(n)))


_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def passages(text: str) -> list[str]:
    """Sentences within non-empty lines: documents often hold a whole paragraph on one line."""
    return [s for line in text.split("\n") for s in _SENTENCE_END.split(line.strip()) if s]


def rejection(text: str, config: FilterConfig, keywords: Keywords, code: bool = False) -> str | None:
    """Name of the first rule (see RULES) the document fails, or None to keep it.

    Code documents (`code=True`) are judged only by `too_short` and `hate_speech`. The other rules
    judge prose and misfire on source code: closing braces and `return` lines repeat, identifiers
    repeat as n-grams, and ad words such as "free" or "click" are ordinary identifiers.
    """
    if len(text) < config.min_chars:
        return "too_short"
    if not code:
        lines, chars = duplicate_line_fractions(text)
        if lines > config.max_duplicate_line_fraction:
            return "duplicate_lines"
        if chars > config.max_duplicate_line_char_fraction:
            return "duplicate_line_chars"
        words = [w.lower() for w in text.split()]
        for n, limit in enumerate(config.max_top_ngram_char_fraction, start=2):
            if top_ngram_char_fraction(words, n) > limit:
                return "top_ngram"
        for n, limit in enumerate(config.max_duplicate_ngram_char_fraction, start=5):
            fraction = duplicate_ngram_char_fraction(words, n)
            if fraction > limit:
                return "duplicate_ngram"
            if fraction == 0.0:
                break  # no repeated n-gram, so no repeated longer one either
        if keywords.ads and keywords.ads.passage_fraction(text) > config.max_ad_passage_fraction:
            return "advertising"
    if keywords.hate and keywords.hate.passage_fraction(text) > config.max_hate_passage_fraction:
        return "hate_speech"
    return None
