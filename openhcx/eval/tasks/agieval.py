"""AGIEval, English multiple-choice subset, from the authors' `data/v1/<task>.jsonl`: `{passage, question,
options: ["(A)...", ...], label: "A"}`. Prompt in AGIEval's zero-shot form ("Q: ... Answer Choices: ...
A: Among A through E, the answer is"), scoring the letters in parentheses; 0-shot per RECIPE §6.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Item, Task
from openhcx.eval.tasks.files import field, label, read_jsonl

TASKS = ("aqua-rat", "logiqa-en", "lsat-ar", "lsat-lr", "lsat-rc", "sat-en", "sat-en-without-passage", "sat-math")


def load(name: str, root: Path, split: str) -> list[Item]:
    path = root / f"{name}.jsonl"
    items = []
    for n, r in read_jsonl(path):
        opts = tuple(field(path, n, r, "options"))
        letters = tuple(chr(65 + i) for i in range(len(opts)))
        stem = " ".join(x for x in (r.get("passage") or "", field(path, n, r, "question")) if x)
        query = f"Q: {stem} Answer Choices: {' '.join(opts)}\nA: Among A through {letters[-1]}, the answer is"
        texts = tuple(o[3:].strip() if o[:1] == "(" and o[2:3] == ")" else o for o in opts)
        items.append(Item(query=query, choices=tuple(f"({x})" for x in letters),
                          gold=label(path, n, str(field(path, n, r, "label")), {x: i for i, x in enumerate(letters)}),
                          question=stem, options=texts))
    return items


for _t in TASKS:
    REGISTRY.add(Task(f"agieval_{_t.replace('-', '_')}", "agieval", partial(load, _t), eval_split="test",
                      metrics=("acc", "acc_norm")), "agieval")
