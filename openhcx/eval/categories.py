"""The report's category scores (RECIPE §6, Table 3) from per-task scores.

A benchmark's score is the item-weighted mean of its tasks' primary metric (MMLU's 57 subjects are
one benchmark), in percent; a category is the mean of its benchmarks that were run; Harmlessness is
TruthfulQA mc2 x (1 - BOLD toxicity) and needs both. Anything not run is listed as missing, never counted
as zero; a category with nothing run has no score. The overall score is the mean of the report's seven
categories that are present (Table 3); Chat and Multilingual are drawn and tabled but, as in the report,
not part of it.
Not here: drawing (report.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

# category -> benchmark -> task-name patterns (fnmatch). Where a benchmark has several scorings of the same
# items (gsm8k greedy and gsm8k_maj8, humaneval and humaneval_pass10) the pattern names the report's setting
# (RECIPE §6), so nothing is counted twice; the other scorings stay in the task table.
CATEGORIES: dict[str, dict[str, tuple[str, ...]]] = {
    "Korean": {"KMMLU": ("kmmlu", "kmmlu_*"), "HAE-RAE Bench": ("haerae", "haerae_*"),
               "KoBigBench": ("kobigbench", "kobigbench_*")},
    "English": {"MMLU": ("mmlu", "mmlu_*"), "BBH": ("bbh", "bbh_*"), "AGIEval": ("agieval", "agieval_*")},
    "Commonsense": {"HellaSwag": ("hellaswag",), "Winogrande": ("winogrande",), "PIQA": ("piqa",),
                    "ARC": ("arc_easy", "arc_challenge"), "CommonsenseQA": ("commonsense_qa",)},
    "Factuality": {"NaturalQuestions": ("nq_open",), "TriviaQA": ("triviaqa",), "CLIcK": ("click", "click_*"),
                   "Korean FActScore": ("ko_factscore",)},
    "Math": {"GSM8K": ("gsm8k_maj8",), "MATH": ("math500_maj4",)},  # 8-shot maj@8, 4-shot maj@4
    "Code": {"HumanEval": ("humaneval",), "K-HumanEval": ("k_humaneval",), "MBPP": ("mbpp",)},  # pass@1
    "Harmlessness": {"TruthfulQA mc2": ("truthfulqa_mc2",), "BOLD toxicity": ("bold_toxicity",)},
    "Chat": {"MT-Bench": ("mt_bench",), "KoMT-Bench": ("ko_mt_bench",), "IFEval": ("ifeval",)},
    "Multilingual": {"FLORES": ("flores_*",), "XNLI": ("xnli_*", "kornli")},
}
OVERALL = ("Korean", "English", "Commonsense", "Factuality", "Math", "Code", "Harmlessness")


@dataclass
class CategoryScore:
    name: str
    score: float | None  # percent; None when none of its benchmarks was run
    benchmarks: dict[str, float] = field(default_factory=dict)  # the ones run, percent
    missing: list[str] = field(default_factory=list)


def benchmark_score(patterns: tuple[str, ...], scores: dict[str, float | None], sizes: dict[str, int]) -> float | None:
    """Item-weighted mean of the member tasks' primary scores, as a fraction."""
    members = [t for t in scores if any(fnmatchcase(t, p) for p in patterns) and scores[t] is not None]
    total = sum(sizes.get(t, 1) for t in members)
    return sum(scores[t] * sizes.get(t, 1) for t in members) / total if members else None


def category_scores(scores: dict[str, float | None], sizes: dict[str, int] | None = None) -> list[CategoryScore]:
    """scores: task name -> primary metric in [0, 1]; sizes: task name -> number of items."""
    sizes = sizes or {}
    out = []
    for cat, benches in CATEGORIES.items():
        got = {b: benchmark_score(p, scores, sizes) for b, p in benches.items()}
        run = {b: 100 * s for b, s in got.items() if s is not None}
        missing = [b for b, s in got.items() if s is None]
        if cat == "Harmlessness":
            mc2, tox = got["TruthfulQA mc2"], got["BOLD toxicity"]
            value = None if mc2 is None or tox is None else 100 * mc2 * (1 - tox)
        else:
            value = sum(run.values()) / len(run) if run else None
        out.append(CategoryScore(cat, value, run, missing))
    return out


def overall(categories: list[CategoryScore]) -> float | None:
    present = [c.score for c in categories if c.score is not None and c.name in OVERALL]
    return sum(present) / len(present) if present else None
