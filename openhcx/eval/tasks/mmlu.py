"""MMLU (57 subjects): `dev/<subject>_dev.csv` for shots, `test/<subject>_test.csv` for scoring.

Reads both the official hendrycks CSVs (no header, answers A-D) and the common re-export with a header
`question,choice0..choice3,answer` and answers 0-3; the header decides. Prompt, description and the
five canonical dev shots (first five, in order) follow lm-evaluation-harness's `mmlu_<subject>`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Item, Task
from openhcx.eval.tasks.files import label, read_csv

SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting "
    "professional_law professional_medicine professional_psychology public_relations security_studies "
    "sociology us_foreign_policy virology world_religions"
).split()
HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
LETTERS = ("A", "B", "C", "D")


def lettered(question: str, options: tuple[str, ...], answer_prompt: str = "Answer:") -> str:
    """The MMLU-style prompt: question, options as `A. ...` lines, then the answer cue."""
    lines = [question.strip()] + [f"{LETTERS[i] if i < 4 else chr(65 + i)}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + f"\n{answer_prompt}"


def load(subject: str, root: Path, split: str) -> list[Item]:
    path = root / split / f"{subject}_{split}.csv"
    rows = read_csv(path, width=6)
    answers = {L: i for i, L in enumerate(LETTERS)}
    if rows and rows[0][1] == HEADER:
        rows, answers = rows[1:], {str(i): i for i in range(4)}
    items = []
    for n, (q, *opts, ans) in rows:
        options = tuple(opts)
        items.append(
            Item(
                query=lettered(q, options),
                choices=LETTERS,
                gold=label(path, n, ans, answers),
                question=q,
                options=options,
            )
        )
    return items


for _s in SUBJECTS:
    REGISTRY.add(
        Task(
            name=f"mmlu_{_s}",
            family="mmlu",
            load=partial(load, _s),
            eval_split="test",
            fewshot_split="dev",
            shots=5,
            sampler="first_n",
            description=f"The following are multiple choice questions (with answers) about {_s.replace('_', ' ')}.\n\n",
            metrics=("acc",),
        ),
        "mmlu",
    )
