"""KMMLU (45 subjects) from the authors' CSVs: `<Subject>-{dev,test}.csv`, header
`question,answer,A,B,C,D,Category,Human Accuracy`, answers 1-4. Prompt as lm-evaluation-harness's
`kmmlu` (note its full-width colon in `정답：`); 5 random dev shots per RECIPE §6.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Item, Task
from openhcx.eval.tasks.files import field, label, read_csv_dicts
from openhcx.eval.tasks.mmlu import lettered

SUBJECTS = (
    "Accounting Agricultural-Sciences Aviation-Engineering-and-Maintenance Biology Chemical-Engineering Chemistry "
    "Civil-Engineering Computer-Science Construction Criminal-Law Ecology Economics Education Electrical-Engineering "
    "Electronics-Engineering Energy-Management Environmental-Science Fashion Food-Processing "
    "Gas-Technology-and-Engineering Geomatics Health Industrial-Engineer Information-Technology "
    "Interior-Architecture-and-Design Korean-History Law Machine-Design-and-Manufacturing Management "
    "Maritime-Engineering Marketing Materials-Engineering Math Mechanical-Engineering Nondestructive-Testing Patent "
    "Political-Science-and-Sociology Psychology Public-Safety Railway-and-Automotive-Engineering Real-Estate "
    "Refrigerating-Machinery Social-Welfare Taxation Telecommunications-and-Wireless-Technology"
).split()


def load(subject: str, root: Path, split: str) -> list[Item]:
    path = root / f"{subject}-{split}.csv"
    items = []
    for n, r in read_csv_dicts(path, ("question", "answer", "A", "B", "C", "D")):
        options = tuple(field(path, n, r, k) for k in "ABCD")
        q = r["question"]
        items.append(Item(query=lettered(q, options, "정답："), choices=("A", "B", "C", "D"),
                          gold=label(path, n, r["answer"], {"1": 0, "2": 1, "3": 2, "4": 3}),
                          question=q, options=options))
    return items


for _s in SUBJECTS:
    REGISTRY.add(Task(name=f"kmmlu_{_s.lower().replace('-', '_')}", family="kmmlu", load=partial(load, _s),
                      eval_split="test", fewshot_split="dev", shots=5, metrics=("acc",), answer_prompt="정답："),
                 "kmmlu")
