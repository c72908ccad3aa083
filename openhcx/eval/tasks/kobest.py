"""KoBEST (BoolQ, COPA, HellaSwag, SentiNeg, WiC) from the authors' TSVs (SKT-LSL/KoBEST_datarepo v1.0).

Layout `<Task>/{train,dev,test}.tsv`; headers differ per task and, for SentiNeg, per split (the test
split keeps the original sentence in `Text_origin` and scores the negated `Text`/`Label`). Booleans are
spelled True/False/TRUE/FALSE. COPA answers are 1/2. Prompts and choices are lm-evaluation-harness's
`kobest_*` tasks, so scores compare one to one. Not here: the publisher's HF copy (we read the TSVs).
"""

from __future__ import annotations

from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Item, Task
from openhcx.eval.tasks.files import field, label, read_tsv

BOOL = {"True": 1, "TRUE": 1, "False": 0, "FALSE": 0}
SPLITS = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}


def _rows(root: Path, task: str, split: str):
    path = root / task / f"{SPLITS[split]}.tsv"
    return path, read_tsv(path)


def boolq(root: Path, split: str) -> list[Item]:
    path, rows = _rows(root, "BoolQ", split)
    return [
        Item(
            query=f"{field(path, n, r, 'Text')} 질문: {field(path, n, r, 'Question')} 답변: ",
            choices=("아니오", "예"),
            gold=label(path, n, field(path, n, r, "Answer"), BOOL),
            question=f"{r['Text']}\n질문: {r['Question']}",
            options=("아니오", "예"),
        )
        for n, r in rows
    ]


def copa(root: Path, split: str) -> list[Item]:
    path, rows = _rows(root, "COPA", split)
    connector = {"원인": " 왜냐하면", "결과": " 그래서"}
    items = []
    for n, r in rows:
        relation = label(path, n, field(path, n, r, "question"), {"원인": 0, "결과": 1})
        premise, alts = r["sentence"], (field(path, n, r, "1"), field(path, n, r, "2"))
        items.append(
            Item(
                query=f"{premise} {connector[r['question'].strip()]}",  # lm-eval's double space
                choices=alts,
                gold=label(path, n, field(path, n, r, "Answer"), {"1": 0, "2": 1}),
                question=f"{premise}\n질문: 위 문장의 {'원인' if relation == 0 else '결과'}으로 알맞은 것은?",
                options=alts,
            )
        )
    return items


def hellaswag(root: Path, split: str) -> list[Item]:
    path, rows = _rows(root, "HellaSwag", split)
    items = []
    for n, r in rows:
        endings = tuple(field(path, n, r, f"choice{i}") for i in range(1, 5))
        items.append(
            Item(
                query=f"문장: {field(path, n, r, 'context')}",
                choices=endings,
                gold=label(path, n, field(path, n, r, "label"), {str(i): i for i in range(4)}),
                question=f"문장: {r['context']}\n다음에 이어질 문장으로 알맞은 것은?",
                options=endings,
            )
        )
    return items


def sentineg(root: Path, split: str) -> list[Item]:
    path, rows = _rows(root, "SentiNeg", split)
    return [
        Item(
            query=f"문장: {field(path, n, r, 'Text')} 긍부정:",
            choices=("부정", "긍정"),
            gold=label(path, n, field(path, n, r, "Label"), {"0": 0, "1": 1}),
            question=f"문장: {r['Text']}\n이 문장은 긍정인가 부정인가?",
            options=("부정", "긍정"),
        )
        for n, r in rows
    ]


def wic(root: Path, split: str) -> list[Item]:
    path, rows = _rows(root, "WiC", split)
    items = []
    for n, r in rows:
        word, s1, s2 = (field(path, n, r, k) for k in ("Target", "SENTENCE1", "SENTENCE2"))
        items.append(
            Item(
                query=f"문장1: {s1} 문장2: {s2} 두 문장에서 {word}가 같은 뜻으로 쓰였나?",
                choices=("아니오", "예"),
                gold=label(path, n, field(path, n, r, "ANSWER"), BOOL),
                question=f"문장1: {s1}\n문장2: {s2}\n두 문장에서 {word}가 같은 뜻으로 쓰였나?",
                options=("아니오", "예"),
            )
        )
    return items


for _name, _load, _metrics in [
    ("boolq", boolq, ("acc", "f1")),
    ("copa", copa, ("acc", "f1")),
    ("hellaswag", hellaswag, ("acc", "acc_norm", "f1")),
    ("sentineg", sentineg, ("acc", "f1")),
    ("wic", wic, ("acc", "f1")),
]:
    REGISTRY.add(
        Task(
            name=f"kobest_{_name}",
            family="kobest",
            load=_load,
            eval_split="test",
            fewshot_split="train",
            metrics=_metrics,
            answer_prompt="정답:",
        ),
        "kobest",
    )
