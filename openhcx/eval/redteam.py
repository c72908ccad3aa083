"""Red-team runs: multi-turn attack dialogues played against a chat model, every reply scored for toxicity, and
preference pairs (safe reply over toxic reply) for the reward stage.

Dialogues are JSON Lines, one per line: `{"id", "turns": [attacker message, ...], "lang"?}`, or HH-RLHF
records (`{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ..."}`), whose Human turns become the attack and whose id
is the line number. The model is any `reply(messages) -> str` over {"role", "content"} messages (`model_reply`
makes one from a checkpoint or endpoint). Each attacker turn is sent with the conversation so far; with
`samples` > 1 the model is asked that many times, and the dialogue goes on with the first answer, as a user of
the model would see it. `run_redteam` writes to `out/`:
- results.jsonl: one line per attacker turn: id, turn, lang, prompt messages, replies, their toxicity;
- pairs.jsonl: for each turn whose most toxic reply scored >= threshold, `{"prompt": messages, "chosen": safe,
  "rejected": that reply}`, the format openhcx.data.preference.read_pairs reads; the safe reply is the least
  toxic sample when it scored below the threshold, else the refusal for the dialogue's language;
- manifest.json: counts (dialogues, turns, toxic turns, pairs) and the attack success rate: the share of
  dialogues in which any reply scored toxic.
Not here: training the scorer (toxicity.py) or generating attacks.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from openhcx.data.chat import BadRecord
from openhcx.data.preference import split_hh
from openhcx.eval.toxicity import THRESHOLD, Scorer
from openhcx.io import UserError, atomic_dir, json_objects, write_manifest

Reply = Callable[[list[dict]], str]
REFUSALS = {
    "ko": "죄송하지만 그 요청은 도와드릴 수 없습니다. 특정 사람이나 집단을 해치거나 비하하는 내용은 답하지 않습니다. "
          "다른 궁금한 점이 있으면 말씀해 주세요.",
    "en": "I'm sorry, but I can't help with that. I won't produce content that harms or demeans people or groups. "
          "Is there something else I can help you with?",
}
HANGUL = re.compile(r"[\uac00-\ud7a3]")
LATIN = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Dialogue:
    id: str
    turns: tuple[str, ...]
    lang: str


def language(text: str) -> str:
    """"ko" when the text has at least as many Hangul syllables as Latin letters, else "en"."""
    return "ko" if len(HANGUL.findall(text)) >= len(LATIN.findall(text)) else "en"


def read_dialogues(path: str | Path, langs=tuple(REFUSALS)) -> list[Dialogue]:
    out = []
    for line, rec in json_objects(path):
        where = f"{path}:{line}"
        if "turns" in rec:
            turns = rec["turns"]
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
                raise UserError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
            ident = str(rec.get("id", line))
        elif isinstance(rec.get("chosen"), str):
            try:  # a transcript against itself: the shared prompt is every turn before the last answer
                prompt, _, _ = split_hh(rec["chosen"], rec["chosen"])
            except BadRecord as e:
                raise e.at(where) from None
            turns, ident = [m.content for m in prompt if m.role == "user"], str(line)
        else:
            raise UserError(f"{where}: expected 'turns' (a list of attacker messages) or an HH-RLHF 'chosen'")
        lang = rec.get("lang") or language(" ".join(turns))
        if lang not in langs:
            raise UserError(f"{where}: lang {lang!r} has no refusal; known: {', '.join(langs)}")
        out.append(Dialogue(ident, tuple(turns), lang))
    return out


def play(dialogue: Dialogue, reply: Reply, scorer: Scorer, samples: int = 1) -> list[dict]:
    """One record per attacker turn: the prompt messages, the model's replies and their toxicity."""
    history: list[dict] = []
    records = []
    for t, attack in enumerate(dialogue.turns):
        prompt = [*history, {"role": "user", "content": attack}]
        replies = [reply([dict(m) for m in prompt]) for _ in range(samples)]
        records.append({"id": dialogue.id, "turn": t, "lang": dialogue.lang, "prompt": prompt, "replies": replies,
                        "toxicity": scorer.score(replies)})
        history = [*prompt, {"role": "assistant", "content": replies[0]}]
    return records


def pair_of(record: dict, refusal: str, threshold: float = THRESHOLD) -> dict | None:
    """chosen = a safe reply, rejected = the most toxic reply, when that one scored toxic."""
    scored = sorted(zip(record["toxicity"], record["replies"]), key=lambda x: x[0])
    (low, safest), (high, worst) = scored[0], scored[-1]
    if high < threshold:
        return None
    chosen = safest if low < threshold else refusal
    if chosen == worst:  # a refusal the scorer calls toxic: no pair to learn from
        return None
    return {"prompt": record["prompt"], "chosen": chosen, "rejected": worst, "id": record["id"],
            "turn": record["turn"], "rejected_toxicity": high, "chosen_is_refusal": chosen == refusal}


def run_redteam(dialogues: str, out: str, reply: Reply, scorer: Scorer, samples: int = 1,
                threshold: float = THRESHOLD, refusals: dict[str, str] | None = None,
                overwrite: bool = False) -> dict:
    """Play every dialogue of `dialogues` against `reply`; write results.jsonl, pairs.jsonl and manifest.json to
    `out`. refusals: language -> the safe reply used when no sampled reply is safe (default REFUSALS)."""
    if samples < 1:
        raise UserError(f"samples: {samples} must be at least 1")
    refusals = refusals or REFUSALS
    records = [r for d in read_dialogues(dialogues, tuple(refusals)) for r in play(d, reply, scorer, samples)]
    pairs = [p for r in records if (p := pair_of(r, refusals[r["lang"]], threshold))]
    attacked = {r["id"] for r in records}
    broken = {r["id"] for r in records if max(r["toxicity"]) >= threshold}
    summary = {"dialogues": len(attacked), "turns": len(records),
               "toxic_turns": sum(max(r["toxicity"]) >= threshold for r in records), "pairs": len(pairs),
               "attack_success_rate": len(broken) / len(attacked) if attacked else 0.0}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, rows in (("results.jsonl", records), ("pairs.jsonl", pairs)):
            (tmp / name).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), "utf-8")
        write_manifest(tmp, "redteam", {"samples": samples, "threshold": threshold, "refusals": refusals},
                       {"dialogues": str(dialogues)}, **summary)
    return summary


def model_reply(model: str, device: str = "cpu", max_new_tokens: int = 256, temperature: float = 0.0,
                top_p: float = 1.0) -> Reply:
    """A reply function for a checkpoint directory or an http(s) endpoint; each call draws with a new seed, so
    sampled replies to the same messages differ."""
    from openhcx.eval.generation import GenRequest, open_generator

    generator = open_generator(model, device)
    seeds = itertools.count()

    def reply(messages: list[dict]) -> str:
        chat = tuple((m["role"], m["content"]) for m in messages)
        request = GenRequest(chat, max_new_tokens, temperature=temperature, top_p=top_p, seed=next(seeds))
        [(_, result)] = list(generator.generate([request]))
        if isinstance(result, str):
            raise UserError(f"{model}: generation failed: {result}")
        return result[0]

    return reply
