"""Translation tasks: FLORES-200 En/Ja/Zh <-> Ko, and the Korean parallel corpora's news and JHE sets (En <-> Ko).

Prompt, one shot: "English: {source}\\nKorean: {reference}\\n\\nEnglish: {source}\\nKorean:"; the shot is
the first pair of the dev split, so every prompt is reproducible. Greedy decoding stops at the line's end;
the completion's first line is the hypothesis. Scored at corpus level by translation.corpus_metrics
(chrF primary, BLEU per tokenisation; see openhcx/eval/translation.py for why those).

Files, as shipped. FLORES-200 (family folder `flores200`): `<split>/<lang>.<split>` (the released
flores200_dataset, alone or with that folder name above it, e.g. `devtest/kor_Hang.devtest`), FLORES+ text
`<floresp-v2.0*>/<split>/<split>.<lang>` and FLORES+ parquet `<split>/<lang>.parquet` (column `text`, rows
ordered by `id`); FLORES+ names Mandarin `cmn_Hans` where FLORES-200 has `zho_Hans`. Korean parallel corpora
(family `korean-parallel-corpora`, jungyeul/korean-parallel-corpora as cloned; it lives with the corpora,
so point `data={"korean-parallel-corpora": ...}` at it): news `korean-english-news-v1/
korean-english-park.{dev,test}.tar.gz` (or the two files it holds, extracted beside it) and JHE
`korean-english-jhe/jhe-koen-{dev,eval}.{ko,en}`.
Not here: metrics and file readers (openhcx/eval/translation.py).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Generation, Item, ScoreContext, Task
from openhcx.eval.translation import (aligned, corpus_metrics, metric_names, read_lines, read_parallel,
                                      read_parallel_tar)
from openhcx.io import UserError

NAMES = {"en": "English", "ko": "Korean", "ja": "Japanese", "zh": "Chinese"}
FLORES_CODES = {"en": ("eng_Latn",), "ko": ("kor_Hang",), "ja": ("jpn_Jpan",), "zh": ("zho_Hans", "cmn_Hans")}


def items(pairs: list[tuple[str, str]], src: str, tgt: str) -> list[Item]:
    return [Item(query=f"{NAMES[src]}: {s}\n{NAMES[tgt]}:", choices=(), gold=0, target=t,
                 meta=(("source", s), ("reference", t), ("target_lang", tgt))) for s, t in pairs]


def flores_candidates(folder: Path, split: str, code: str) -> list[Path]:
    return [folder / split / f"{code}.{split}", folder / "flores200_dataset" / split / f"{code}.{split}",
            folder / split / f"{split}.{code}", *sorted(folder.glob(f"floresp-v2*/{split}/{split}.{code}")),
            folder / split / f"{code}.parquet"]


def flores_lines(folder: Path, split: str, lang: str) -> tuple[str, list[str]]:
    """(file, sentences) of one language and split, in whichever FLORES layout the folder has."""
    tried = [p for code in FLORES_CODES[lang] for p in flores_candidates(folder, split, code)]
    path = next((p for p in tried if p.is_file()), None)
    if path is None:
        raise UserError(f"{folder}: no FLORES {split} file for {NAMES[lang]}; looked for "
                        + ", ".join(str(p.relative_to(folder)) for p in tried))
    if path.suffix != ".parquet":
        return str(path), read_lines(path)
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise UserError(f"{path}: no column 'text' (found {table.column_names})")
    if "id" in table.column_names:
        table = table.sort_by("id")
    return str(path), [str(x) for x in table.column("text").to_pylist()]


def flores(src: str, tgt: str, folder: Path, split: str) -> list[Item]:
    return items(aligned(flores_lines(folder, split, src), flores_lines(folder, split, tgt)), src, tgt)


def news(src: str, tgt: str, folder: Path, split: str) -> list[Item]:
    base = folder / "korean-english-news-v1"
    stem = f"korean-english-park.{split}"
    if (base / f"{stem}.{src}").is_file():
        pairs = read_parallel(base / f"{stem}.{src}", base / f"{stem}.{tgt}")
    else:
        pairs = read_parallel_tar(base / f"{stem}.tar.gz", f"{stem}.{src}", f"{stem}.{tgt}")
    return items(pairs, src, tgt)


def jhe(src: str, tgt: str, folder: Path, split: str) -> list[Item]:
    base = folder / "korean-english-jhe"
    return items(read_parallel(base / f"jhe-koen-{split}.{src}", base / f"jhe-koen-{split}.{tgt}"), src, tgt)


def score(items: list[Item], completions: list[list[str]], ctx: ScoreContext) -> list[dict]:
    """Per-item fields for corpus_metrics: the completion's first line is the hypothesis."""
    return [{"source": it.get("source"), "reference": it.get("reference"), "target_lang": it.get("target_lang"),
             "hypothesis": c[0].strip().split("\n")[0].strip() if c else ""}
            for it, c in zip(items, completions)]


def task(name: str, family: str, load, eval_split: str, tgt: str) -> Task:
    return Task(name=name, family=family, load=load, eval_split=eval_split, fewshot_split="dev", shots=1,
                sampler="first_n", metrics=metric_names(tgt), primary="chrf", output="generate",
                generation=Generation(max_new_tokens=256, stop=("\n",)), score=score, aggregate=corpus_metrics)


for _x in ("en", "ja", "zh"):
    for _src, _tgt in ((_x, "ko"), ("ko", _x)):
        REGISTRY.add(task(f"flores_{_src}_{_tgt}", "flores200", partial(flores, _src, _tgt), "devtest", _tgt),
                     "flores200")
for _src, _tgt in (("en", "ko"), ("ko", "en")):
    REGISTRY.add(task(f"news_{_src}_{_tgt}", "korean-parallel-corpora", partial(news, _src, _tgt), "test", _tgt),
                 "translation")
    REGISTRY.add(task(f"jhe_{_src}_{_tgt}", "korean-parallel-corpora", partial(jhe, _src, _tgt), "eval", _tgt),
                 "translation")
