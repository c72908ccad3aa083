"""HAE-RAE Bench 1.0: six areas (general knowledge, history, loan words, rare words, standard
nomenclature, reading comprehension), each `<area>.jsonl` or the Hub's `<area>-*.parquet`, with the
options written into `query` and `answer` as "(A)".."(E)". Prompt and choices as lm-evaluation-harness's
`haerae_*`; 0-shot per RECIPE §6.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Item, Task
from openhcx.eval.tasks.files import field, label, read_records

AREAS = ("general_knowledge", "history", "loan_words", "rare_words", "standard_nomenclature",
         "reading_comprehension")
LETTERS = ("(A)", "(B)", "(C)", "(D)", "(E)")


def load(area: str, root: Path, split: str) -> list[Item]:
    items = []
    for path, n, r in read_records(root, area):
        gold = label(path, n, str(field(path, n, r, "answer")), {x: i for i, x in enumerate(LETTERS)})
        items.append(Item(query=field(path, n, r, "query"), choices=LETTERS, gold=gold))
    return items


for _a in AREAS:
    REGISTRY.add(Task(name=f"haerae_{_a}", family="haerae", load=partial(load, _a), eval_split="test",
                      fewshot_split="test", shots=0, answer_prompt="정답:"), "haerae")
