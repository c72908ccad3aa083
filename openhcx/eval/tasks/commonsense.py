"""English commonsense sets from their authors' releases, prompted as lm-evaluation-harness does.

HellaSwag `hellaswag_{train,val}.jsonl` (rowanz; WikiHow bracket artifacts cleaned as lm-eval does),
Winogrande `{train_xl,dev}.jsonl` (answer "1"/"2"; partial scoring: each option completes the
sentence up to the blank and the rest is scored), PIQA `{train,valid}.jsonl` with `*-labels.lst`,
CommonsenseQA `{train,dev}_rand_split.jsonl`. Shots per RECIPE §6: HellaSwag 5, Winogrande 5, PIQA 0, CSQA 5.
"""

from __future__ import annotations

import re
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Item, Task
from openhcx.eval.tasks.files import field, label, read_jsonl
from openhcx.eval.tasks.mmlu import lettered
from openhcx.io import UserError, require_file, text_lines


def _clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag(root: Path, split: str) -> list[Item]:
    path = root / f"hellaswag_{split}.jsonl"
    items = []
    for n, r in read_jsonl(path):
        ctx = field(path, n, r, "ctx_a") + " " + field(path, n, r, "ctx_b").capitalize()
        endings = tuple(_clean(e) for e in field(path, n, r, "endings"))
        q = _clean(field(path, n, r, "activity_label") + ": " + ctx)
        items.append(Item(query=q, choices=endings, gold=label(path, n, str(r["label"]), {str(i): i for i in range(4)}),
                          question=q, options=endings))
    return items


def winogrande(root: Path, split: str) -> list[Item]:
    path = root / f"{split}.jsonl"
    items = []
    for n, r in read_jsonl(path):
        s = field(path, n, r, "sentence")
        if "_" not in s:
            raise UserError(f"{path}:{n}: sentence has no blank '_'")
        i = s.index("_")
        opts = (field(path, n, r, "option1"), field(path, n, r, "option2"))
        items.append(Item(query="", choices=opts, gold=label(path, n, str(field(path, n, r, "answer")), {"1": 0, "2": 1}),
                          contexts=tuple(s[:i] + o for o in opts), target=s[i + 1:].strip(),
                          question=s, options=opts))
    return items


def piqa(root: Path, split: str) -> list[Item]:
    path, labels = root / f"{split}.jsonl", require_file(root / f"{split}-labels.lst")
    golds = [gold for _, line in text_lines(labels) for gold in line.split()]
    rows = read_jsonl(path)
    if len(golds) != len(rows):
        raise UserError(f"{labels}: {len(golds)} labels for {len(rows)} questions in {path}")
    items = []
    for (n, r), g in zip(rows, golds):
        sols = (field(path, n, r, "sol1"), field(path, n, r, "sol2"))
        q = field(path, n, r, "goal")
        items.append(Item(query=f"Question: {q}\nAnswer:", choices=sols, gold=label(labels, n, g, {"0": 0, "1": 1}),
                          question=q, options=sols))
    return items


def commonsense_qa(root: Path, split: str) -> list[Item]:
    path = root / f"{split}_rand_split.jsonl"
    items = []
    for n, r in read_jsonl(path):
        q = field(path, n, r, "question")
        texts = tuple(c["text"] for c in q["choices"])
        keys = [c["label"] for c in q["choices"]]
        query = "Question: " + lettered(q["stem"], texts)
        items.append(Item(query=query, choices=tuple(keys),
                          gold=label(path, n, field(path, n, r, "answerKey"), {k: i for i, k in enumerate(keys)}),
                          question=q["stem"], options=texts))
    return items


REGISTRY.add(Task("hellaswag", "hellaswag", hellaswag, eval_split="val", fewshot_split="train", shots=5))
REGISTRY.add(Task("winogrande", "winogrande", winogrande, eval_split="dev", fewshot_split="train_xl", shots=5,
                  metrics=("acc",)))
REGISTRY.add(Task("piqa", "piqa", piqa, eval_split="valid", fewshot_split="train", shots=0))
REGISTRY.add(Task("commonsense_qa", "commonsense_qa", commonsense_qa, eval_split="dev", fewshot_split="train",
                  shots=5, metrics=("acc",)))
