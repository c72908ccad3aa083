"""Fill-in-the-middle: pinned PSM/SPM layouts, split rules, measured rates, lossless parts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from openhcx.data.fim import (
    EOT_ID,
    MID_ID,
    PRE_ID,
    SUF_ID,
    FimConfig,
    FimSample,
    cut,
    draw,
    layout,
    psm,
    random_cuts,
    spm,
    thirds_cuts,
)
from openhcx.io import UserError
from openhcx.tokenizer.tokenizer import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, Tokenizer


def test_sentinels_are_the_tokenizer_ids(demo_tokenizer):
    tok = Tokenizer.load(demo_tokenizer)
    assert (EOT_ID, PRE_ID, MID_ID, SUF_ID) == (0, 5, 6, 7)
    assert [tok.hf.token_to_id(t) for t in (EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)] == [0, 5, 6, 7]


def test_psm_and_spm_layouts_pinned():
    prefix, middle, suffix = [100, 101], [200], [300, 301, 302]
    assert psm(prefix, middle, suffix) == [5, 100, 101, 7, 300, 301, 302, 6, 200, 0]
    assert spm(prefix, middle, suffix) == [5, 7, 300, 301, 302, 6, 100, 101, 200, 0]
    assert layout("psm", [prefix, middle, suffix]) == [5, 100, 101, 7, 300, 301, 302, 6, 200, 0]
    assert layout("spm", [prefix, middle, suffix]) == [5, 7, 300, 301, 302, 6, 100, 101, 200, 0]
    assert layout("plain", [[100, 101]]) == [100, 101, 0]
    # Empty parts keep every sentinel: the model always sees the full frame.
    assert psm([], [], []) == [5, 7, 6, 0]
    assert spm([], [], []) == [5, 7, 6, 0]


def test_worked_example_of_the_docstring(demo_tokenizer):
    tok = Tokenizer.load(demo_tokenizer)
    text = "def add(a, b):"
    prefix, middle, suffix = cut(text, 4, 11)
    assert (prefix, middle, suffix) == ("def ", "add(a, ", "b):")
    enc = [tok.encode(p, "exact") for p in (prefix, middle, suffix)]
    ids = layout("psm", enc)
    assert ids == [5, *enc[0], 7, *enc[2], 6, *enc[1], 0]
    assert tok.decode(ids) == "<|fim_prefix|>def <|fim_suffix|>b):<|fim_middle|>add(a, <|endoftext|>"
    ids = layout("spm", enc)
    assert ids == [5, 7, *enc[2], 6, *enc[0], *enc[1], 0]
    assert tok.decode(ids) == "<|fim_prefix|><|fim_suffix|>b):<|fim_middle|>def add(a, <|endoftext|>"


def test_thirds_split_is_exact():
    assert thirds_cuts("abcdefghi") == (3, 6)
    assert cut("abcdefghij", *thirds_cuts("abcdefghij")) == ("abc", "def", "ghij")
    assert cut("가나다라마바", *thirds_cuts("가나다라마바")) == ("가나", "다라", "마바")
    assert cut("ab", *thirds_cuts("ab")) == ("", "a", "b")
    rng = np.random.default_rng(0)
    samples = [draw("abcdefghi", rng, FimConfig(rate=1.0, split="thirds")) for _ in range(50)]
    assert {(s.prefix, s.middle, s.suffix) for s in samples} == {("abc", "def", "ghi")}
    assert {s.mode for s in samples} == {"psm", "spm"}


def within_binomial(k: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(k - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("rate, spm_rate", [(0.5, 0.5), (0.3, 0.8), (0.9, 0.1)])
def test_measured_fim_rate_and_spm_share_match_the_config(rate, spm_rate):
    rng = np.random.default_rng(1)
    config = FimConfig(rate=rate, spm_rate=spm_rate)
    n = 4000
    modes = [draw(f"document number {i}", rng, config).mode for i in range(n)]
    fim = sum(m != "plain" for m in modes)
    spm_count = sum(m == "spm" for m in modes)
    assert within_binomial(fim, n, rate), (fim, n * rate)
    assert within_binomial(spm_count, fim, spm_rate), (spm_count, fim * spm_rate)
    print(f"rate {rate}: measured {fim / n:.4f}; spm {spm_rate}: measured {spm_count / fim:.4f}")


def test_rate_zero_and_one():
    rng = np.random.default_rng(2)
    assert {draw("text", rng, FimConfig(rate=0.0)).mode for _ in range(200)} == {"plain"}
    assert {draw("text", rng, FimConfig(rate=1.0, spm_rate=1.0)).mode for _ in range(200)} == {"spm"}
    assert {draw("text", rng, FimConfig(rate=1.0, spm_rate=0.0)).mode for _ in range(200)} == {"psm"}


def test_random_cuts_are_uniform_and_sorted():
    # Two uniform offsets in [0, L], sorted: every part has the same expected length, about L/3.
    rng = np.random.default_rng(3)
    L, n = 99, 4000
    cuts = np.array([random_cuts("x" * L, rng) for _ in range(n)])
    assert (cuts[:, 0] <= cuts[:, 1]).all() and cuts.min() == 0 and cuts.max() == L
    lengths = np.stack([cuts[:, 0], cuts[:, 1] - cuts[:, 0], L - cuts[:, 1]], axis=1)
    e_min = L * (2 * L + 1) / (6 * (L + 1))  # E[min of two uniforms on 0..L] = 32.835
    assert np.allclose(lengths.mean(axis=0), [e_min, L - 2 * e_min, e_min], atol=1.5), lengths.mean(axis=0)
    assert (cuts[:, 0] == cuts[:, 1]).mean() == pytest.approx(1 / (L + 1), abs=0.01)


def test_draws_are_reproducible():
    texts = [f"def f{i}(x):\n    return x + {i}\n" for i in range(300)]
    a = [draw(t, np.random.default_rng(7), FimConfig()) for t in texts]
    b = [draw(t, np.random.default_rng(7), FimConfig()) for t in texts]
    c = [draw(t, np.random.default_rng(8), FimConfig()) for t in texts]
    assert a == b and a != c


MIXED = (
    "서울특별시에서 홍길동이 왔어요 😀 ok\n"
    "naïve café — 東京 e\u0301\n"
    "    return {'키': 값}  # 주석 🇰🇷\n"
)


@pytest.mark.parametrize("mode", ["exact", "portable"])
def test_character_split_is_lossless(demo_tokenizer, mode):
    tok = Tokenizer.load(demo_tokenizer)
    rng = np.random.default_rng(4)
    config = FimConfig(rate=1.0)
    for _ in range(30):
        sample = draw(MIXED, rng, config)
        assert "".join(sample.parts()) == MIXED
        enc = [tok.encode(part, mode) for part in sample.parts()]
        # Each part decodes to itself: no character was cut into bytes.
        assert [tok.decode(ids) for ids in enc] == list(sample.parts())
        assert [sum(tok.token_bytes(ids)) for ids in enc] == [len(p.encode()) for p in sample.parts()]
        ids = layout(sample.mode, enc)
        assert ids.count(EOT_ID) == 1 and ids[-1] == EOT_ID
        assert unfim(ids, tok) == MIXED


def unfim(ids: list[int], tok: Tokenizer) -> str:
    """The document back from a PSM or SPM sample (the test's independent reading of the layout)."""
    body = ids[:-1]
    assert body[0] == PRE_ID
    mid = body.index(MID_ID)
    if body[1] == SUF_ID and SUF_ID not in body[2:]:  # SPM (or PSM with an empty prefix: the same ids)
        suffix, rest = body[2:mid], body[mid + 1 :]
        return tok.decode(rest) + tok.decode(suffix)
    suf = body.index(SUF_ID)
    return tok.decode(body[1:suf]) + tok.decode(body[mid + 1 :]) + tok.decode(body[suf + 1 : mid])


def test_plain_sample_has_the_whole_text():
    assert FimSample("plain", "abc").parts() == ("abc",)
    assert FimSample("psm", "a", "b", "c").parts() == ("a", "b", "c")


@pytest.mark.parametrize(
    "kwargs, key",
    [({"rate": 1.5}, "fim.rate"), ({"spm_rate": -0.1}, "fim.spm_rate"), ({"split": "halves"}, "fim.split")],
)
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(UserError, match=key):
        FimConfig(**kwargs)
