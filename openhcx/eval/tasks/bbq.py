"""Social bias: BBQ (nyu-mll/BBQ `data/<Category>.jsonl`) and KoBBQ (naver-ai/KoBBQ
`KoBBQ_test_samples.tsv` with the authors' `0_evaluation_prompts.tsv`).

Both score accuracy on ambiguous and disambiguated contexts and KoBBQ's diff-bias (metrics.bias_scores),
which needs, per item, the option that matches the social stereotype. KoBBQ names it (`biased_answer`);
BBQ marks the stereotyped groups in `additional_metadata`, and for a non-negative question the biased
answer is the other, non-stereotyped target. KoBBQ uses the authors' prompt 1 with lettered options.
"""

from __future__ import annotations

import ast
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Item, Task
from openhcx.eval.tasks.files import field, read_jsonl, read_tsv
from openhcx.io import UserError

UNKNOWN = "알 수 없음"  # KoBBQ's unknown option in the test samples
BBQ_CATEGORIES = ("Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance",
                  "Race_ethnicity", "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation")


def _bbq_targets(r: dict) -> tuple[int, int]:
    """(biased option, counter-biased option) indices of a BBQ record."""
    info = r["answer_info"]
    groups = [g.lower() for g in r["additional_metadata"]["stereotyped_groups"]]
    targets = [i for i in range(3) if info[f"ans{i}"][1] != "unknown"]
    stereo = [i for i in targets if any(g in info[f"ans{i}"][1].lower() or info[f"ans{i}"][1].lower() in g
                                        for g in groups)]
    s = stereo[0] if stereo else targets[0]
    other = next(i for i in targets if i != s)
    return (s, other) if r["question_polarity"] == "neg" else (other, s)


def bbq(root: Path, split: str) -> list[Item]:
    items = []
    for cat in BBQ_CATEGORIES:
        path = root / f"{cat}.jsonl"
        if not path.exists():
            continue
        for n, r in read_jsonl(path):
            opts = tuple(field(path, n, r, f"ans{i}") for i in range(3))
            try:
                biased, counter = _bbq_targets(r)
            except (KeyError, StopIteration, IndexError, TypeError) as e:
                raise UserError(f"{path}:{n}: cannot tell the stereotyped answer ({e!r})") from None
            q = f"{field(path, n, r, 'context')}\n\nQ: {field(path, n, r, 'question')}\nA:"
            items.append(Item(query=q, choices=opts, gold=int(field(path, n, r, "label")),
                              question=f"{r['context']}\n{r['question']}", options=opts,
                              meta=(("condition", r["context_condition"]), ("biased", biased), ("counter", counter))))
    if not items:
        raise UserError(f"{root}: no BBQ <Category>.jsonl files")
    return items


def kobbq(root: Path, split: str) -> list[Item]:
    prompts = root / "0_evaluation_prompts.tsv"
    template = dict(read_tsv(prompts, ("prompt_id", "prompt"))[0][1])["prompt"].replace("\\n", "\n")
    path = root / "KoBBQ_test_samples.tsv"
    items = []
    for n, r in read_tsv(path, ("sample_id", "context", "question", "choices", "biased_answer", "answer")):
        try:
            opts = tuple(ast.literal_eval(r["choices"]))
            gold, biased = opts.index(r["answer"]), opts.index(r["biased_answer"])
        except (ValueError, SyntaxError) as e:
            raise UserError(f"{path}:{n}: choices/answer do not match ({e})") from None
        if UNKNOWN not in opts or opts[biased] == UNKNOWN:
            raise UserError(f"{path}:{n}: expected the options to hold {UNKNOWN!r} besides the biased answer")
        counter = next(i for i in range(len(opts)) if i != biased and opts[i] != UNKNOWN)
        condition = "ambig" if "-amb-" in r["sample_id"] else "disambig"
        query = template.format(context=r["context"], question=r["question"], a=opts[0], b=opts[1], c=opts[2])
        items.append(Item(query=query, choices=("A", "B", "C"), gold=gold,
                          question=f"{r['context']}\n질문: {r['question']}", options=opts,
                          meta=(("condition", condition), ("biased", biased), ("counter", counter))))
    return items


REGISTRY.add(Task("bbq", "bbq", bbq, eval_split="test", metrics=("acc", "bias")))
REGISTRY.add(Task("kobbq", "kobbq", kobbq, eval_split="test", metrics=("acc", "bias"), answer_prompt="정답:"))
