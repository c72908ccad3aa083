"""IFEval: 541 prompts with verifiable instructions ("answer in fewer than 5 sentences", "no commas"), 0-shot.

File as google-research publishes it: `input_data.jsonl`, one record a line {key, prompt, instruction_id_list,
kwargs}. The prompt goes to the model as a chat turn and is decoded greedily up to 1280 tokens (lm-eval's
settings); every checker is built at load time, so a bad instruction id or kwargs, or a missing langdetect,
stops the run before any decoding. Metrics: prompt-level accuracy (all of a prompt's instructions followed)
and instruction-level accuracy (over all instructions of the run, not averaged per prompt), strict and loose.
Not here: the checkers and what strict and loose mean (eval/ifeval.py).
"""

from __future__ import annotations

from pathlib import Path

from openhcx.eval.ifeval import LANGUAGE_CHECKS, build_checker, grade, language_detector_factory
from openhcx.eval.tasks import REGISTRY, Generation, Item, ScoreContext, Task
from openhcx.eval.tasks.files import read_jsonl
from openhcx.io import UserError

PROMPT_METRICS = ("prompt_level_strict_acc", "prompt_level_loose_acc")
INSTRUCTION_METRICS = {"inst_level_strict_acc": "strict_followed", "inst_level_loose_acc": "loose_followed"}


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def load(folder: Path, split: str) -> list[Item]:
    path = folder / "input_data.jsonl"
    items = []
    for line, rec in read_jsonl(path):
        key = rec.get("key", f"at line {line}")
        ids, kwargs, prompt = rec.get("instruction_id_list"), rec.get("kwargs"), rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(ids, list) or not ids:
            raise UserError(f"{path}:{line}: record {key} needs a prompt and a non-empty instruction_id_list")
        if not isinstance(kwargs, list) or len(kwargs) != len(ids):
            raise UserError(f"{path}:{line}: record {key}: kwargs must be a list with one object per instruction")
        for instruction_id, kw in zip(ids, kwargs):
            build_checker(key, instruction_id, kw)
        frozen = tuple(tuple((k, _frozen(v)) for k, v in kw.items() if v is not None) for kw in kwargs)
        items.append(Item(query=prompt, choices=(), gold=0, meta=(
            ("key", key), ("instruction_id_list", tuple(ids)), ("kwargs", frozen))))
    if any(i in LANGUAGE_CHECKS for item in items for i in item.get("instruction_id_list")):
        language_detector_factory()  # a missing langdetect stops the run now, not after decoding
    return items


def score(items: list[Item], completions: list[list[str]], ctx: ScoreContext) -> list[dict]:
    """Per item: the prompt-level verdicts (0/1), the share of its instructions followed, and the counts the
    run's instruction-level accuracy is summed from."""
    records = []
    for item, answers in zip(items, completions):
        key = item.get("key")
        ids, kwargs = item.get("instruction_id_list"), item.get("kwargs")
        checkers = [build_checker(key, i, dict(kw)) for i, kw in zip(ids, kwargs)]
        strict, loose = grade(checkers, answers[0] if answers else "")
        n = len(checkers)
        records.append({
            "key": key, "instructions": n, "strict_followed": sum(strict), "loose_followed": sum(loose),
            "prompt_level_strict_acc": float(all(strict)), "prompt_level_loose_acc": float(all(loose)),
            "inst_level_strict_acc": sum(strict) / n, "inst_level_loose_acc": sum(loose) / n,
            "follow_strict": strict, "follow_loose": loose,
        })
    return records


def aggregate(records: list[dict]) -> dict[str, float]:
    """Prompt-level: mean over prompts. Instruction-level: instructions followed / instructions, over the run."""
    if not records:
        return {}
    out = {m: sum(r[m] for r in records) / len(records) for m in PROMPT_METRICS}
    total = sum(r["instructions"] for r in records)
    out |= {m: sum(r[field] for r in records) / total for m, field in INSTRUCTION_METRICS.items()}
    return out


REGISTRY.add(Task(
    name="ifeval", family="ifeval", load=load, eval_split="train",
    metrics=("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"),
    primary="prompt_level_strict_acc", output="generate",
    generation=Generation(max_new_tokens=1280, chat=True), score=score, aggregate=aggregate,
))
