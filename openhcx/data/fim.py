"""Joint PSM and SPM fill-in-the-middle (Bavarian et al. 2022, "Efficient Training of Language Models to
Fill in the Middle"), applied to one document at a time before packing (RECIPE.md section 4).

A document chosen for FIM (probability `FimConfig.rate`) is cut at two character positions into prefix,
middle and suffix. The cut points are drawn uniformly at random and sorted (either may be 0 or the length,
so any part may be empty), or, with `split="thirds"`, fixed at the first, second and last third as in the
HyperCLOVA X report's footnote. Cutting Python strings cuts between code points, so no character is ever
split into bytes. Each part is encoded on its own, then the ids are laid out with the sentinels:

    PSM  <PRE> Enc(prefix) <SUF> Enc(suffix) <MID> Enc(middle) <EOT>
    SPM  <PRE> <SUF> Enc(suffix) <MID> Enc(prefix) Enc(middle) <EOT>

SPM here is the variant the paper uses when it trains PSM and SPM jointly, not the naive
<SUF> Enc(suffix) <PRE> Enc(prefix) <MID> Enc(middle): every FIM sample opens with <PRE>, the suffix is
given first (so at inference the suffix's KV cache survives edits to the prefix), and after <MID> the
prefix runs straight into the middle like ordinary left-to-right text, which is what lets the two modes
help each other. A FIM document still ends with exactly one <EOT>, the document terminator; a plain
document is Enc(text) <EOT>. Which FIM documents use SPM: probability `FimConfig.spm_rate`.

Worked example, "def add(a, b):" cut at characters 4 and 11 (prefix "def ", middle "add(a, ", suffix
"b):"), sentinel ids <EOT>=0, <PRE>=5, <MID>=6, <SUF>=7:

    PSM  [5] + Enc("def ") + [7] + Enc("b):") + [6] + Enc("add(a, ") + [0]
    SPM  [5, 7] + Enc("b):") + [6] + Enc("def ") + Enc("add(a, ") + [0]

Not here: reading, mixing or packing documents (openhcx.data.shards), context-level FIM (the recipe
transforms whole documents), and inference prompts (openhcx.model.generate builds those).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from openhcx.io import UserError
from openhcx.tokenizer.tokenizer import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS

EOT_ID = SPECIAL_TOKENS.index(EOT)
PRE_ID = SPECIAL_TOKENS.index(FIM_PREFIX)
MID_ID = SPECIAL_TOKENS.index(FIM_MIDDLE)
SUF_ID = SPECIAL_TOKENS.index(FIM_SUFFIX)

FimMode = Literal["plain", "psm", "spm"]


@dataclass(frozen=True)
class FimConfig:
    """How documents are turned into fill-in-the-middle samples."""

    rate: float = 0.5
    """Probability that a document is transformed (the paper's default 0.5; 0 turns FIM off)."""
    spm_rate: float = 0.5
    """Probability that a transformed document uses SPM rather than PSM (joint training: 0.5)."""
    split: Literal["random", "thirds"] = "random"
    """random: two uniform character positions, sorted (the paper); thirds: first, second and last
    third of the document (the HyperCLOVA X report's footnote)."""

    def __post_init__(self):
        for name in ("rate", "spm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"fim.{name}: {value} is not in [0, 1]")
        if self.split not in ("random", "thirds"):
            raise UserError(f"fim.split: '{self.split}' is not random or thirds")


@dataclass(frozen=True)
class FimSample:
    """One document's draw: its layout and the texts to encode. For plain, prefix is the whole text."""

    mode: FimMode
    prefix: str
    middle: str = ""
    suffix: str = ""

    def parts(self) -> tuple[str, ...]:
        """The texts to encode, in document order."""
        return (self.prefix,) if self.mode == "plain" else (self.prefix, self.middle, self.suffix)


def cut(text: str, start: int, end: int) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of `text` cut at character offsets start <= end."""
    return text[:start], text[start:end], text[end:]


def random_cuts(text: str, rng: np.random.Generator) -> tuple[int, int]:
    """Two character offsets in [0, len(text)] drawn uniformly and sorted."""
    a, b = sorted(int(x) for x in rng.integers(0, len(text) + 1, size=2))
    return a, b


def thirds_cuts(text: str) -> tuple[int, int]:
    """Offsets that end the first and the second third (floor): "abcdefghij" -> 3, 6."""
    return len(text) // 3, 2 * len(text) // 3


def draw(text: str, rng: np.random.Generator, config: FimConfig) -> FimSample:
    """Decide whether and how `text` becomes a FIM sample; reproducible for a seeded `rng`."""
    if not rng.random() < config.rate:
        return FimSample("plain", text)
    start, end = random_cuts(text, rng) if config.split == "random" else thirds_cuts(text)
    mode: FimMode = "spm" if rng.random() < config.spm_rate else "psm"
    return FimSample(mode, *cut(text, start, end))


def psm(prefix: list[int], middle: list[int], suffix: list[int]) -> list[int]:
    """<PRE> prefix <SUF> suffix <MID> middle <EOT>."""
    return [PRE_ID, *prefix, SUF_ID, *suffix, MID_ID, *middle, EOT_ID]


def spm(prefix: list[int], middle: list[int], suffix: list[int]) -> list[int]:
    """<PRE> <SUF> suffix <MID> prefix middle <EOT> (the paper's SPM variant for joint training)."""
    return [PRE_ID, SUF_ID, *suffix, MID_ID, *prefix, *middle, EOT_ID]


def layout(mode: FimMode, encoded: list[list[int]]) -> list[int]:
    """The training ids of one document from its encoded parts (as `FimSample.parts()` lists them)."""
    if mode == "plain":
        return [*encoded[0], EOT_ID]
    return (psm if mode == "psm" else spm)(*encoded)

