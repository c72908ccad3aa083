"""ARC Easy and Challenge from AI2's release: `ARC-{Easy,Challenge}/ARC-*-{Train,Dev,Test}.jsonl`, answer
keys A-E or 1-5. Prompt `Question: ...\nAnswer:` scoring the option texts, as lm-evaluation-harness;
25 shots per RECIPE §6. Not here: the report's option shuffling for ARC (options keep file order).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Item, Task
from openhcx.eval.tasks.files import field, label, read_jsonl


def load(level: str, root: Path, split: str) -> list[Item]:
    path = root / f"ARC-{level}" / f"ARC-{level}-{split.capitalize()}.jsonl"
    items = []
    for n, r in read_jsonl(path):
        q = field(path, n, r, "question")
        texts = tuple(c["text"] for c in q["choices"])
        keys = {c["label"]: i for i, c in enumerate(q["choices"])}
        items.append(Item(query=f"Question: {q['stem']}\nAnswer:", choices=texts,
                          gold=label(path, n, field(path, n, r, "answerKey"), keys), question=q["stem"], options=texts))
    return items


for _level in ("Easy", "Challenge"):
    REGISTRY.add(Task(f"arc_{_level.lower()}", "arc", partial(load, _level), eval_split="test", fewshot_split="train",
                      shots=25), "arc")
