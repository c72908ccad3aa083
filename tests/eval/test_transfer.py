"""Cross-lingual transfer (RECIPE §6): per-language SFT runs and the train-in-X / test-in-Y matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openhcx.eval.transfer import language_of, split_by_language, transfer
from openhcx.io import UserError
from openhcx.pipeline.suites import Suite, lm_figures

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
SFT = {"epochs": 1, "max_tokens": 512, "lr": 2e-3, "heldout_fraction": 0.1, "checkpoint_every": 1000,
       "mlflow": False, "progress": False}


def _subset(src: Path, dst: Path, per_lang: int, lang) -> Path:
    """The first `per_lang` records of each language."""
    kept, seen = [], {"ko": 0, "en": 0}
    for line in src.read_text(encoding="utf-8").splitlines():
        x = lang(json.loads(line))
        if seen.get(x, per_lang) < per_lang:
            seen[x] += 1
            kept.append(line)
    dst.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return dst


def test_language_of_reads_checks_then_hangul():
    assert language_of({"checks": [{"lang": "en"}], "messages": [{"role": "user", "content": "안녕하세요"}]}) == "en"
    assert language_of({"messages": [{"role": "user", "content": "서울의 인구는 얼마인가요?"}]}) == "ko"
    assert language_of({"messages": [{"role": "user", "content": "What is the population of Seoul?"}]}) == "en"


@pytest.mark.slow
def test_matrix_scores_each_model_on_each_language_and_reruns_reuse_the_models(tiny_lm, tmp_path):
    data = _subset(DEMO / "sft.jsonl", tmp_path / "sft.jsonl", 24, language_of)
    heldout = _subset(DEMO / "heldout_prompts.jsonl", tmp_path / "heldout.jsonl", 4, lambda r: r["lang"])
    out = tmp_path / "transfer"
    res = transfer(str(tiny_lm), str(data), str(heldout), str(out), sft=SFT, max_new_tokens=6, prompt_limit=4)
    assert json.loads((out / "transfer.json").read_text(encoding="utf-8")) == res
    assert set(res["perf"]) == {"ko", "en"} and all(set(row) == {"ko", "en"} for row in res["perf"].values())
    # each cell is the held-out scorer of model X on language Y's prompts
    ko_on_en, _ = lm_figures(str(out / "sft-ko" / "model"), Suite(prompts=str(out / "data" / "heldout.en.jsonl"),
                                                                   prompt_limit=4, max_new_tokens=6), "cpu")
    assert res["perf"]["ko"]["en"] == pytest.approx(ko_on_en["heldout_score"])
    for x in ("ko", "en"):
        for y in ("ko", "en"):
            expected = res["perf"][x][y] / res["perf"][y][y]
            assert res["transfer"][x][y] == pytest.approx(expected)
    # the Korean model was trained on Korean conversations only
    lines = (out / "data" / "sft.ko.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 24 and all(language_of(json.loads(x)) == "ko" for x in lines)
    # a rerun reuses the finished SFT runs and gives the same matrix
    manifest = (out / "sft-en" / "manifest.json").read_bytes()
    assert transfer(str(tiny_lm), str(data), str(heldout), str(out), sft=SFT, max_new_tokens=6,
                    prompt_limit=4)["perf"] == res["perf"]
    assert (out / "sft-en" / "manifest.json").read_bytes() == manifest


def test_bad_input_is_named(tmp_path):
    only_en = tmp_path / "en.jsonl"
    only_en.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                {"role": "assistant", "content": "Hello"}]}) + "\n")
    with pytest.raises(UserError, match=r"en\.jsonl: no conversations in language 'ko'"):
        split_by_language(str(only_en), ["ko", "en"], tmp_path / "out")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(only_en.read_text() + "{not json\n")
    with pytest.raises(UserError, match=r"broken\.jsonl:2"):
        split_by_language(str(broken), ["en"], tmp_path / "out")
    with pytest.raises(UserError, match="sft.out"):
        transfer("base", str(only_en), "h.jsonl", str(tmp_path / "t"), sft={"out": "x"})
