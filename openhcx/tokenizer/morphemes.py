"""Korean morpheme boundaries from kiwipiepy, as cut points in the original text.

Kiwi returns normalised morphemes (했 -> 하 + 었); a tokenizer needs surface pieces that concatenate back to
the input. So a boundary is kept only where no morpheme's surface span straddles it, and only inside words
that contain Hangul: English and code keep the byte-level pre-tokenizer's own splits.
Not a general NLP wrapper: no tags, lemmas or sentence splitting leave this module.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import re
import warnings
from bisect import bisect_left, bisect_right
from typing import Iterable, Iterator

HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff]")
WORD = re.compile(r"\S+")


@functools.lru_cache(maxsize=1)
def analyzer():
    """One Kiwi per process: loading its model takes about a second.

    Single-threaded (num_workers=0): we analyse one line per call, which Kiwi's worker pool does not speed up,
    and the caller holds the GIL while the pool works; in a busy process (a server decoding on the other cores)
    that wait held the GIL for two thirds of the time. Many texts are spread over processes instead
    (`segment_many`). The analysis is the same either way."""
    from kiwipiepy import Kiwi

    with warnings.catch_warnings():  # a note that 0 no longer means "all cores" (since 0.21): single is what we want
        warnings.simplefilter("ignore", DeprecationWarning)
        return Kiwi(num_workers=0)


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Hangul-bearing lines with their offsets; Kiwi is slow and pointless on the rest."""
    start = 0
    for line in text.splitlines(keepends=True):
        if HANGUL.search(line):
            yield start, line
        start += len(line)


def morpheme_cuts(text: str) -> list[int]:
    """Sorted offsets inside Hangul-bearing words where one morpheme ends and the next begins."""
    cuts: list[int] = []
    for offset, line in _lines(text):
        line_cuts = _remembered_cuts(line) if len(line) <= REMEMBER_CHARS else line_morpheme_cuts(line)
        cuts += (offset + p for p in line_cuts)
    return cuts  # lines come in order and their cuts are sorted: sorted, no repeats


def line_morpheme_cuts(line: str) -> tuple[int, ...]:
    """`morpheme_cuts` of one line, by one call to the analyser."""
    spans = [(t.start, t.start + t.len) for t in analyzer().tokenize(line)]
    inside = {p for a, b in spans for p in range(a + 1, b)}
    edges = sorted({p for span in spans for p in span} - inside)
    cuts: list[int] = []
    for word in WORD.finditer(line):
        if HANGUL.search(word.group()):  # the edges strictly inside this word, found by bisection
            cuts += edges[bisect_right(edges, word.start()):bisect_left(edges, word.end())]
    return tuple(cuts)


# Lines up to this long are remembered (16,384 of them, least recently used first out; at most about 20 MB):
# boilerplate repeated across documents (15% of the demo Korean corpus's characters) and a chat's system
# prompt are analysed once per process.
REMEMBER_CHARS = 500
_remembered_cuts = functools.lru_cache(maxsize=16384)(line_morpheme_cuts)


def split_at(text: str, cuts: Iterable[int]) -> list[str]:
    """Cut `text` at the given offsets; the pieces always join back to `text`."""
    pieces, last = [], 0
    for c in cuts:
        pieces.append(text[last:c])
        last = c
    pieces.append(text[last:])
    return [p for p in pieces if p]


def segment(text: str) -> list[str]:
    """Text split at its Korean morpheme boundaries (and nowhere else)."""
    return split_at(text, morpheme_cuts(text))


def segment_many(texts: Iterable[str], workers: int = 1, chunksize: int = 16) -> Iterator[list[str]]:
    """`segment` over many texts, in order, spread over `workers` processes (Kiwi holds the GIL)."""
    if workers <= 1:
        yield from map(segment, texts)
        return
    ctx = mp.get_context("spawn" if mp.get_start_method(allow_none=True) == "spawn" else "fork")
    if ctx.get_start_method() == "fork":
        analyzer()  # load once here; forked workers share it instead of loading their own
    with ctx.Pool(workers) as pool:
        yield from pool.imap(segment, texts, chunksize=chunksize)
