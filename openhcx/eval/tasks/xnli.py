"""Cross-lingual NLI: XNLI (`XNLI-1.0/xnli.{dev,test}.tsv`, one file for 15 languages, column `language`)
and the Korean KorNLI set (kakaobrain/KorNLI `xnli.{dev,test}.ko.tsv`). Scored as lm-evaluation-harness's
`xnli_*`: empty context, each choice is the whole sentence "premise, right? Yes|Also|No, hypothesis"
(Korean: "맞죠? 예|또한|아니요"). 5 shots per RECIPE §6, drawn from the dev split.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Item, Task
from openhcx.eval.tasks.files import label, read_tsv

LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}
WORDS = {"en": ("right?", "Yes", "Also", "No"), "ko": ("맞죠?", "예", "또한", "아니요"),
         "de": ("richtig?", "Ja", "Auch", "Nein"), "fr": ("correct?", "Oui", "Aussi", "Non")}


def _item(lang: str, premise: str, hypothesis: str, gold: int) -> Item:
    right, *answers = WORDS[lang]
    choices = tuple(f"{premise}, {right} {a}, {hypothesis}" for a in answers)
    return Item(query="", choices=choices, gold=gold, question=f"{premise}\n{hypothesis}", options=tuple(answers))


def xnli(lang: str, root: Path, split: str) -> list[Item]:
    path = root / "XNLI-1.0" / f"xnli.{split}.tsv"
    return [_item(lang, r["sentence1"], r["sentence2"], label(path, n, r["gold_label"], LABELS))
            for n, r in read_tsv(path, ("language", "gold_label", "sentence1", "sentence2")) if r["language"] == lang]


def kornli(root: Path, split: str) -> list[Item]:
    path = root / f"xnli.{split}.ko.tsv"
    return [_item("ko", r["sentence1"], r["sentence2"], label(path, n, r["gold_label"], LABELS))
            for n, r in read_tsv(path, ("sentence1", "sentence2", "gold_label"))]


for _lang in ("en", "de", "fr"):
    REGISTRY.add(Task(f"xnli_{_lang}", "xnli", partial(xnli, _lang), eval_split="test", fewshot_split="dev", shots=5,
                      metrics=("acc",)), "xnli")
REGISTRY.add(Task("kornli", "kornli", kornli, eval_split="test", fewshot_split="dev", shots=5, metrics=("acc",)),
             "xnli")
