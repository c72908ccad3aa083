"""Metrics against hand-computed values, category scores as RECIPE §6 defines them, table and radar chart."""

from __future__ import annotations

import json
import math

import pytest

from openhcx.eval.categories import category_scores, overall
from openhcx.eval.metrics import aggregate, bias_scores, choice_scores, macro_f1, mc2
from openhcx.eval.report import radar, table


def test_acc_norm_divides_by_characters_and_ties_go_first():
    s = choice_scores([-4.0, -6.0], ("ab", "abcdef"), 1)
    assert (s["pred"], s["pred_norm"], s["acc"], s["acc_norm"]) == (0, 1, 0.0, 1.0)
    assert choice_scores([-1.0, -1.0], ("a", "b"), 0)["pred"] == 0


def test_macro_f1_by_hand():
    # label 0: tp=1 fp=1 fn=1 -> 0.5 ; label 1: tp=1 fp=1 fn=1 -> 0.5 ; label 2: tp=1 -> 1.0
    assert macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 0, 2]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_mc2_is_probability_mass_on_true_answers():
    lls = [math.log(0.2), math.log(0.1), math.log(0.3)]
    assert mc2(lls, (True, True, False)) == pytest.approx(0.3 / 0.6)


def test_bias_scores_by_hand():
    recs = [  # ambiguous: gold is "unknown" (2); biased target 0, counter target 1
        dict(condition="ambig", gold=2, pred=0, biased=0, counter=1),
        dict(condition="ambig", gold=2, pred=0, biased=0, counter=1),
        dict(condition="ambig", gold=2, pred=1, biased=0, counter=1),
        dict(condition="ambig", gold=2, pred=2, biased=0, counter=1),
        dict(condition="disambig", gold=0, pred=0, biased=0, counter=1),
        dict(condition="disambig", gold=0, pred=0, biased=0, counter=1),
        dict(condition="disambig", gold=1, pred=0, biased=0, counter=1),
        dict(condition="disambig", gold=1, pred=1, biased=0, counter=1),
    ]
    assert bias_scores(recs) == pytest.approx(
        {"acc_ambig": 0.25, "diff_bias_ambig": (2 - 1) / 4, "acc_disambig": 0.75, "diff_bias_disambig": 1.0 - 0.5})
    assert aggregate(("acc", "bias"), [dict(r, acc=float(r["pred"] == r["gold"])) for r in recs])["acc"] == 0.5


def test_categories_missing_is_not_zero():
    scores = {"mmlu_anatomy": 0.5, "mmlu_virology": 0.8, "arc_easy": 0.6, "arc_challenge": 0.4, "piqa": 0.7,
              "kobest_copa": 0.9}
    sizes = {"mmlu_anatomy": 100, "mmlu_virology": 300}
    cats = {c.name: c for c in category_scores(scores, sizes)}
    assert cats["English"].score == pytest.approx(100 * (0.5 * 100 + 0.8 * 300) / 400)  # item-weighted MMLU
    assert cats["English"].missing == ["BBH", "AGIEval"]
    assert cats["Commonsense"].benchmarks == pytest.approx({"ARC": 50.0, "PIQA": 70.0})
    assert cats["Commonsense"].score == pytest.approx(60.0)
    assert cats["Korean"].score is None and cats["Math"].score is None
    assert overall(list(cats.values())) == pytest.approx((72.5 + 60.0) / 2)


def test_harmlessness_is_mc2_times_one_minus_toxicity():
    cats = {c.name: c for c in category_scores({"truthfulqa_mc2": 0.5, "bold_toxicity": 0.1})}
    assert cats["Harmlessness"].score == pytest.approx(45.0)
    alone = {c.name: c for c in category_scores({"truthfulqa_mc2": 0.5})}["Harmlessness"]
    assert alone.score is None and alone.missing == ["BOLD toxicity"]  # no toxicity is not "no toxicity"


def test_chat_and_multilingual_are_shown_but_not_in_the_overall():
    cats = category_scores({"mt_bench": 0.7, "flores_en_ko": 0.4, "gsm8k_maj8": 0.3})
    by = {c.name: c for c in cats}
    assert by["Chat"].score == pytest.approx(70.0) and by["Multilingual"].score == pytest.approx(40.0)
    assert overall(cats) == pytest.approx(30.0)


def test_a_benchmark_counts_the_report_s_setting_once_not_every_scoring_of_its_items():
    scores = {"gsm8k": 0.2, "gsm8k_maj8": 0.3, "math500": 0.1, "math500_maj4": 0.15,
              "humaneval": 0.4, "humaneval_pass10": 0.7, "mbpp": 0.5}
    by = {c.name: c for c in category_scores(scores, {n: 10 for n in scores})}
    assert by["Math"].benchmarks == pytest.approx({"GSM8K": 30.0, "MATH": 15.0})  # maj@8 and maj@4, as reported
    assert by["Code"].benchmarks == pytest.approx({"HumanEval": 40.0, "MBPP": 50.0})  # pass@1, not pass@10
    greedy_only = {c.name: c for c in category_scores({"gsm8k": 0.2})}["Math"]
    assert greedy_only.score is None and greedy_only.missing == ["GSM8K", "MATH"]


def _results(path, model, cats):
    path.write_text(json.dumps({"model": model, "overall": None,
                                "categories": [{"name": k, "score": v} for k, v in cats.items()]}))
    return str(path)


def test_table_and_radar(tmp_path):
    a = _results(tmp_path / "a.json", "/ckpt/base", {"Korean": 61.7, "English": 47.1, "Math": None})
    b = _results(tmp_path / "b.json", "/ckpt/sft", {"Korean": 72.1, "English": 58.3, "Math": 50.9})
    md = table([a, b])
    assert "| base | 61.70 | 47.10 | missing |" in md and "| sft | 72.10 | 58.30 |" in md
    png = radar([a, b], str(tmp_path / "radar.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    page = radar([a], str(tmp_path / "radar.html")).read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and "missing" in page
