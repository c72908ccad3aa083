"""MT-Bench and KoMT-Bench: two-turn questions answered in chat, graded 1-10 by a judge model (single-answer grading).

Files as published: `question.jsonl` (FastChat's MT-Bench) and `question_ko.jsonl` (KoMT-Bench), each line
{question_id, category, turns[, reference]}; reference answers for math, reasoning and coding from
`reference_answer[_ko]/<model>.jsonl` (choices[0].turns) or a question's own `reference`; judge prompts from
`judge_prompts[_ko].jsonl` ({name, system_prompt, prompt_template, ...}, the four `single-*` prompts) when present,
else our English prompts below. The Korean judge is also told to give the lowest grade to an answer that is not in
Korean (KoMT-Bench penalises answering in the wrong language). A math, reasoning or coding question without
reference answers (FastChat's English references are not shipped here) is graded by the general prompt and
its record says so (`with_reference: false`). The rating is read from "[[n]]" (or "[n]"); a judge
reply without a rating in 1..10 leaves that turn ungraded (the item is kept out of the mean and `graded` drops).
Scores are the mean of the two turns' ratings / 10 (the report's 0-100 scale, shown in percent).
Not here: running the judge (harness.Scoring.judge) or the answering model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from openhcx.eval.tasks import REGISTRY, Generation, Item, ScoreContext, Task
from openhcx.eval.tasks.files import read_jsonl
from openhcx.io import UserError

NEED_REFERENCE = ("math", "reasoning", "coding")
SYSTEM = "You are a helpful assistant."
ENGLISH_JUDGE = {
    "single-v1": (
        SYSTEM,
        "[Instruction]\nAct as an impartial judge of the answer an AI assistant gave to the user question below. "
        "Weigh helpfulness, relevance, accuracy, depth, creativity and level of detail. First explain your "
        "assessment briefly and objectively, then rate the answer from 1 to 10 in exactly this format: "
        "\"[[rating]]\", for example \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n"
        "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"),
    "single-math-v1": (
        SYSTEM,
        "[Instruction]\nAct as an impartial judge of the answer an AI assistant gave to the user question below, "
        "weighing correctness and helpfulness. Compare it with the reference answer, find and correct any "
        "mistakes, explain briefly and objectively, then rate the answer from 1 to 10 in exactly this format: "
        "\"[[rating]]\", for example \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n"
        "[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"),
    "single-v1-multi-turn": (
        "Act as an impartial judge of the answers an AI assistant gave in the conversation below, focusing on "
        "its answer to the user's second question. Weigh helpfulness, relevance, accuracy, depth, creativity and "
        "level of detail. First explain briefly and objectively, then rate the second answer from 1 to 10 in "
        "exactly this format: \"[[rating]]\", for example \"Rating: [[5]]\".",
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
        "{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
        "<|The End of Assistant A's Conversation with User|>"),
    "single-math-v1-multi-turn": (
        "Act as an impartial judge of the answers an AI assistant gave in the conversation below, focusing on "
        "its answer to the user's second question and weighing correctness and helpfulness. Compare with the "
        "reference answers, find and correct any mistakes, explain briefly and objectively, then rate the second "
        "answer from 1 to 10 in exactly this format: \"[[rating]]\", for example \"Rating: [[5]]\".",
        "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n{ref_answer_1}\n\n"
        "### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n"
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
        "{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
        "<|The End of Assistant A's Conversation with User|>"),
}
KOREAN_ONLY = ("\n\n답변이 한국어로 작성되지 않았다면(코드, 수식, 고유명사는 예외) 다른 기준과 관계없이 1점을 주세요. "
               "단, 사용자가 다른 언어로 답하라고 요청한 경우는 예외입니다.")
RATING = (re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]"), re.compile(r"\[(\d+(?:\.\d+)?)\]"))


def judge_prompts(folder: Path, korean: bool) -> dict[str, tuple[str, str]]:
    """name -> (system prompt, template) for the four single-answer prompts."""
    path = folder / ("judge_prompts_ko.jsonl" if korean else "judge_prompts.jsonl")
    prompts = dict(ENGLISH_JUDGE)
    if path.is_file():
        found = {r["name"]: (r["system_prompt"], r["prompt_template"]) for _, r in read_jsonl(path)}
        missing = [n for n in ENGLISH_JUDGE if n not in found]
        if missing:
            raise UserError(f"{path}: no judge prompt named {', '.join(missing)}")
        prompts = {n: found[n] for n in ENGLISH_JUDGE}
    elif korean:
        raise UserError(f"{path}: KoMT-Bench needs its Korean judge prompts")
    if korean:  # the rule reaches the judge with every prompt, whichever part holds the instructions
        prompts = {n: (system + KOREAN_ONLY, template) for n, (system, template) in prompts.items()}
    return prompts


def references(folder: Path, korean: bool) -> dict[int, tuple[str, ...]]:
    ref_dir = folder / ("reference_answer_ko" if korean else "reference_answer")
    refs: dict[int, tuple[str, ...]] = {}
    for path in sorted(ref_dir.glob("*.jsonl")) if ref_dir.is_dir() else []:
        for line, rec in read_jsonl(path):
            try:
                refs.setdefault(int(rec["question_id"]), tuple(rec["choices"][0]["turns"]))
            except (KeyError, IndexError, TypeError, ValueError):
                raise UserError(f"{path}:{line}: expected question_id and choices[0].turns") from None
    return refs


def loader(korean: bool):
    def load(folder: Path, split: str) -> list[Item]:
        path = folder / ("question_ko.jsonl" if korean else "question.jsonl")
        refs = references(folder, korean)
        items = []
        for line, rec in read_jsonl(path):
            try:
                qid, category, turns = int(rec["question_id"]), rec["category"], tuple(rec["turns"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{path}:{line}: expected question_id, category and turns") from None
            if not turns or not all(isinstance(t, str) and t for t in turns):
                raise UserError(f"{path}:{line}: turns must be non-empty strings")
            ref = tuple(rec["reference"]) if rec.get("reference") else refs.get(qid, ())
            if ref and len(ref) < len(turns):
                raise UserError(f"{path}:{line}: question {qid} has {len(ref)} reference answers for "
                                f"{len(turns)} turns")
            items.append(Item(query=turns[0], choices=(), gold=0, meta=(
                ("question_id", qid), ("category", category), ("turns", turns), ("reference", ref),
                ("folder", str(folder)), ("korean", korean))))
        return items
    return load


def rating(reply: str | None) -> float | None:
    """The 1-10 rating in a judge reply ("[[7]]", else "[7]"), or None."""
    for pattern in RATING:
        found = pattern.findall(reply or "")
        if found:
            value = float(found[-1])
            return value if 1 <= value <= 10 else None
    return None


def judge_chats(item: Item, answers: list[str], prompts: dict[str, tuple[str, str]]) -> list[list[dict]]:
    """One judge chat per turn: the first answer alone, then the whole conversation focused on the second."""
    turns, ref = item.get("turns"), item.get("reference")
    math = item.get("category") in NEED_REFERENCE and bool(ref)
    fields = {f"question_{i + 1}": q for i, q in enumerate(turns)}
    fields |= {f"answer_{i + 1}": a for i, a in enumerate(answers)}
    fields |= {f"ref_answer_{i + 1}": r for i, r in enumerate(ref)}
    chats = []
    for t in range(len(turns)):
        name = ("single-math-v1" if math else "single-v1") + ("-multi-turn" if t else "")
        system, template = prompts[name]
        text = template.format(question=turns[0], answer=answers[0], **fields) if t == 0 else template.format(**fields)
        chats.append([{"role": "system", "content": system}, {"role": "user", "content": text}])
    return chats


def score(items: list[Item], completions: list[list[str]], ctx: ScoreContext) -> list[dict]:
    prompts = {}
    chats, owners = [], []
    for i, (item, answers) in enumerate(zip(items, completions)):
        key = (item.get("folder"), item.get("korean"))
        if key not in prompts:
            prompts[key] = judge_prompts(Path(key[0]), key[1])
        for t, chat in enumerate(judge_chats(item, answers, prompts[key])):
            chats.append(chat)
            owners.append((i, t))
    replies = ctx.judge(chats)
    records = [{"question_id": it.get("question_id"), "category": it.get("category"), "ratings": [],
                "judge": [], "with_reference": bool(it.get("reference"))} for it in items]
    for (i, _), reply in zip(owners, replies):
        records[i]["ratings"].append(rating(reply))
        records[i]["judge"].append(reply)
    for rec in records:
        got = rec["ratings"]
        rec["graded"] = float(all(r is not None for r in got))
        rec["score"] = sum(got) / len(got) / 10 if rec["graded"] else None
        for t, r in enumerate(got[:2]):
            rec[f"turn{t + 1}"] = None if r is None else r / 10
    return records


for _name, _korean in (("mt_bench", False), ("ko_mt_bench", True)):
    REGISTRY.add(Task(
        name=_name, family="mt_bench", load=loader(_korean), eval_split="test",
        metrics=("score", "turn1", "turn2", "graded"), primary="score", output="generate",
        generation=Generation(max_new_tokens=1024, chat=True), score=score,
    ), "mt_bench_all")
