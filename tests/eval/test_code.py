"""Code benchmarks: pass@k against its closed form, HumanEval's canonical solutions passing and bare prompts
failing through the sandbox, a K-HumanEval-style file read from its own folder, and MBPP's 3-shot prompt and
scoring end to end through the harness on a hand-written fixture in MBPP's format."""

from __future__ import annotations

import json
import os
import re
from math import comb
from pathlib import Path
from types import SimpleNamespace

import pytest

from openhcx.eval.cache import Cache
from openhcx.eval.generation import cut_at_stop
from openhcx.eval.harness import Scoring, prepare, run_generation_task
from openhcx.eval.tasks import REGISTRY
from openhcx.eval.tasks.code import HUMANEVAL_STOP, load_humaneval, load_mbpp, pass_at_k
from openhcx.io import UserError

MBPP = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks" / "mbpp"
CTX = SimpleNamespace(workers=os.cpu_count() or 1, progress=False)


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c/n
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(12, 2, 10) == pytest.approx(1 - 1 / 66)  # 1 - C(10,10)/C(12,10)
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)  # 1 - C(199,100)/C(200,100) = 100/200
    assert pass_at_k(20, 0, 10) == 0.0
    assert pass_at_k(20, 11, 10) == 1.0  # fewer than k wrong samples: every draw of k holds a right one
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)


def test_pass_at_k_matches_the_closed_form():
    for n in range(1, 31):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


@pytest.mark.slow  # 2 x 164 programs through the sandbox: 10-30 s on two shared cores
def test_humaneval_canonical_solutions_pass_and_bare_prompts_fail(shared_path):
    path = shared_path("benchmarks", "humaneval", "HumanEval.jsonl.gz")
    task = REGISTRY.tasks["humaneval"]
    items = task.load(path.parent, task.eval_split)
    assert len(items) == 164 and items[0].get("task_id") == "HumanEval/0"
    canonical = task.score(items, [[it.target] for it in items], CTX)
    assert sum(r["pass@1"] for r in canonical) / len(items) == 1.0, [r["reason"] for r in canonical if r["passed"] < 1]
    bare = task.score(items, [[""] for _ in items], CTX)
    assert sum(r["pass@1"] for r in bare) == 0.0
    assert {r["status"][0] for r in bare} == {"failed"}


def korean_problem(task_id: str, name: str, body: str) -> dict:
    prompt = f'def {name}(xs: list) -> int:\n    """정수 목록에서 짝수의 개수를 반환합니다.\n    >>> {name}([1, 2, 4])\n    2\n    """\n'
    test = f"def check(candidate):\n    assert candidate([1, 2, 4]) == 2\n    assert candidate([]) == 0\n"
    return {"task_id": task_id, "prompt": prompt, "entry_point": name, "canonical_solution": body, "test": test}


def test_k_humaneval_reads_its_own_folder_and_pass10_counts_samples(tmp_path):
    folder = tmp_path / "k_humaneval"
    folder.mkdir()
    body = "    return sum(1 for x in xs if x % 2 == 0)\n"
    rows = [korean_problem("KoHumanEval/0", "count_even", body)]
    (folder / "ko_humaneval.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    task = REGISTRY.tasks["k_humaneval"]
    items, reqs, shots = prepare(task, data={"k_humaneval": str(folder)})
    assert shots == 0 and reqs[0][0].context == rows[0]["prompt"]  # 0-shot: the prompt is the file's prompt
    assert task.score(items, [[body]], CTX)[0]["pass@1"] == 1.0

    pass10 = REGISTRY.tasks["humaneval_pass10"]
    samples = [body, body] + ["    return 0\n"] * 10  # n = 12, c = 2
    record = pass10.score(items, [samples], CTX)[0]
    assert record["passed"] == 2 and record["status"].count("passed") == 2
    assert record["reason"][2] == "AssertionError"
    assert record["pass@1"] == pytest.approx(2 / 12) and record["pass@10"] == pytest.approx(1 - 1 / 66)


def test_humaneval_tasks_are_registered_as_the_paper_decodes():
    greedy, sampled = REGISTRY.tasks["humaneval"], REGISTRY.tasks["humaneval_pass10"]
    assert greedy.family == sampled.family == "humaneval" and REGISTRY.tasks["k_humaneval"].family == "k_humaneval"
    assert greedy.output == "generate" and greedy.shots == 0 and greedy.primary == "pass@1"
    assert greedy.generation.stop == HUMANEVAL_STOP == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    assert (greedy.generation.temperature, greedy.generation.samples) == (0.0, 1)
    assert (sampled.generation.temperature, sampled.generation.samples) == (0.8, 20)
    assert sampled.metrics == ("pass@1", "pass@10")
    assert set(REGISTRY.groups["code"]) == {"humaneval", "k_humaneval", "mbpp"}


def test_humaneval_loader_names_the_file_at_fault(tmp_path):
    with pytest.raises(UserError, match="expected one HumanEval-format file.*found none"):
        load_humaneval(tmp_path, "test")
    row = korean_problem("X/0", "f", "    return 1\n")
    del row["test"]
    (tmp_path / "a.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=r"a\.jsonl:1: missing field 'test'"):
        load_humaneval(tmp_path, "test")
    (tmp_path / "b.jsonl.gz").write_bytes(b"")
    with pytest.raises(UserError, match="found a.jsonl, b.jsonl.gz"):
        load_humaneval(tmp_path, "test")


def test_mbpp_splits_follow_the_published_task_ids():
    assert [it.get("task_id") for it in load_mbpp(MBPP, "test")] == [11, 12, 13, 14]
    assert [it.get("task_id") for it in load_mbpp(MBPP, "fewshot")] == [2, 3, 4]
    assert [it.get("task_id") for it in load_mbpp(MBPP, "train")] == [601]
    with pytest.raises(UserError, match="unknown split 'dev'"):
        load_mbpp(MBPP, "dev")


def test_mbpp_prompt_is_three_shot_as_in_the_paper():
    task = REGISTRY.tasks["mbpp"]
    items, reqs, shots = prepare(task, data={"mbpp": str(MBPP)})
    assert shots == 3
    shot_2 = ("You are an expert Python programmer, and here is your task: Write a function to return the sum of "
              "the squares of a list of integers. Your code should pass these tests:\n\n"
              "assert sum_of_squares([1, 2, 3]) == 14\nassert sum_of_squares([]) == 0\n"
              "assert sum_of_squares([-4, 5]) == 41\n[BEGIN]\n"
              "def sum_of_squares(nums):\r\n  return sum(x * x for x in nums)\n[DONE]\n\n")
    context = reqs[0][0].context
    assert context.startswith(shot_2)
    assert context.count("[BEGIN]\n") == 4 and context.count("\n[DONE]\n\n") == 3
    assert context.index("is_palindrome") < context.index("count_vowels") < context.index("second_largest")
    assert context.endswith(items[0].query) and items[0].query.endswith(
        "assert second_largest([-1, -2]) == -2\n[BEGIN]\n")


class Scripted:
    """A generator that answers each MBPP prompt with a chosen program, then the rest of a rambling reply, cut
    at the request's stop sequences as a real generator does."""

    fingerprint = "scripted"

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def generate(self, requests):
        for i, r in enumerate(requests):
            name = next(n for n in self.answers if n in r.prompt.rsplit("[DONE]", 1)[-1])
            yield i, [cut_at_stop(self.answers[name] + "\n[DONE]\n\nYou are an expert", r.stop)]


def test_mbpp_scored_end_to_end_through_the_harness():
    task = REGISTRY.tasks["mbpp"]
    references = {re.search(r"def (\w+)", it.target)[1]: it.target.removesuffix("\n[DONE]")
                  for it in load_mbpp(MBPP, "test")}
    answers = {**references, "reverse_words": "def reverse_words(s):\n    return s[::-1]"}  # one wrong program
    result, records = run_generation_task(Scripted(answers), task, Scoring(2, False, Cache()),
                                          data={"mbpp": str(MBPP)})
    assert [r["pass@1"] for r in records] == [1.0, 0.0, 1.0, 1.0]  # 13 passes only with its test_setup_code
    assert records[1]["reason"] == ["AssertionError"]
    assert result.metrics["pass@1"] == 0.75 and result.primary == "pass@1"
