"""CLIcK (Cultural and Linguistic Intelligence in Korean) from the authors' JSON files: each a list of
`{id, paragraph, question, choices, answer}` where `answer` is the text of the right choice and CSAT
items have five choices. Prompt as lm-evaluation-harness's `click_*`; 0-shot per RECIPE §6.
"""

from __future__ import annotations

import json
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Item, Task
from openhcx.io import UserError


def _prompt(paragraph: str, question: str, opts: list[str]) -> str:
    head = "주어진 맥락을 천천히 읽고, 질문에 대한 적절한 정답을" if paragraph else "주어진 질문을 천천히 읽고, 적절한 정답을"
    ctx = f"맥락: {paragraph}\n" if paragraph else ""
    return (f"{head} A, B, C, D 중에 골라 알파벳 하나로 답하시오.\n\n{ctx}질문: {question}\n보기:\n"
            f"A:{opts[0]}, B: {opts[1]}, C: {opts[2]}, D: {opts[3]}\n정답:")


def load(root: Path, split: str) -> list[Item]:
    items = []
    for path in sorted(root.rglob("*.json")):
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise UserError(f"{path}: invalid JSON ({e})") from None
        for i, r in enumerate(records):
            try:
                opts, answer = r["choices"], r["answer"]
                letters = ("A", "B", "C", "D", "E") if "CSAT" in r["id"] else ("A", "B", "C", "D")
                gold = opts.index(answer)
                query = _prompt(r["paragraph"], r["question"], opts)
            except (KeyError, ValueError, IndexError, TypeError) as e:
                raise UserError(f"{path}: record {i}: malformed CLIcK item ({e!r})") from None
            items.append(Item(query=query, choices=letters, gold=gold, question=r["question"], options=tuple(opts),
                              meta=(("id", r["id"]),)))
    if not items:
        raise UserError(f"{root}: no CLIcK *.json files")
    return items


REGISTRY.add(Task(name="click", family="click", load=load, eval_split="test", answer_prompt="정답:"))
