"""Preference pairs for the reward model: read, validate, group by prompt, render.

Two record shapes, told apart per record:
- `{"prompt", "chosen", "rejected"}`: prompt a string (one user turn) or a message list ending with a user
  turn; chosen/rejected strings or a one-message assistant list;
- HH-RLHF transcripts `{"chosen", "rejected"}`: "\\n\\nHuman: ...\\n\\nAssistant: ..." strings sharing every turn
  but the last. The shared prompt is the longest common prefix that ends at an "\\n\\nAssistant:" marker; what
  follows it on each side is that side's response. (In harmless-base/test 5 of 2312 pairs have one side run
  on for extra turns after the shared prompt; that text stays part of its response, as the raters saw it.)
A pair whose chosen and rejected are identical teaches nothing and is a BadRecord; an empty response is
allowed (HH-RLHF prefers an empty answer to a harmful one 4 times in harmless-base/test).
RECIPE §5 puts all comparisons of one prompt in one reward-model step: `group_by_prompt`.

Not here: batching and the ranking loss (train/), reward normalisation (the reward stage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from openhcx.data.chat import (BadRecord, Loaded, Message, check_turns, field_of, messages_of, read_jsonl,
                               render)
from openhcx.tokenizer.tokenizer import Mode, Tokenizer

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Message, ...]
    """Optional system message, then turns ending with the user turn both responses answer."""
    chosen: str
    rejected: str
    source: str = ""


@dataclass
class PromptGroup:
    """Every comparison of one prompt: the reward model sees them in the same optimisation step."""

    prompt: tuple[Message, ...]
    pairs: list[PreferencePair]


def split_hh(chosen: str, rejected: str) -> tuple[tuple[Message, ...], str, str]:
    """HH-RLHF transcripts -> (shared prompt turns, chosen response, rejected response)."""
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.startswith(HUMAN):
            raise BadRecord("not_hh", f"{side} does not start with {HUMAN!r}")
    end = chosen.rfind(ASSISTANT)
    while end != -1 and not rejected.startswith(chosen[: end + len(ASSISTANT)]):
        end = chosen.rfind(ASSISTANT, 0, end)
    if end == -1:
        raise BadRecord("prompt_mismatch", "chosen and rejected share no prompt (they differ in the first turn)")
    prompt = _hh_turns(chosen[:end])
    cut = end + len(ASSISTANT)
    return prompt, chosen[cut:].strip(), rejected[cut:].strip()


def _hh_turns(transcript: str) -> tuple[Message, ...]:
    """Human/Assistant turns; consecutive turns of one speaker (a few in HH-RLHF) are joined by a blank line."""
    parts = _TURN.split(transcript)
    messages: list[Message] = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if messages and messages[-1].role == role:
            messages[-1] = Message(role, f"{messages[-1].content}\n\n{text.strip()}")
        else:
            messages.append(Message(role, text.strip()))
    return tuple(messages)


def _response(obj: object, key: str) -> str:
    value = field_of(obj, key, (str, list))
    if isinstance(value, str):
        return value
    messages = messages_of(value, key)
    if len(messages) != 1 or messages[0].role != "assistant":
        raise BadRecord("wrong_type", f"field {key!r} must be a string or a list of one assistant message")
    return messages[0].content


def pair_from_record(obj: object) -> PreferencePair:
    """One JSON record (either shape) as a validated pair."""
    if isinstance(obj, dict) and "prompt" not in obj and isinstance(obj.get("chosen"), str):
        prompt, chosen, rejected = split_hh(obj["chosen"], field_of(obj, "rejected", str))
    else:
        raw = field_of(obj, "prompt", (str, list))
        prompt = (Message("user", raw),) if isinstance(raw, str) else tuple(messages_of(raw, "prompt"))
        chosen, rejected = _response(obj, "chosen"), _response(obj, "rejected")
    check_turns(prompt, "user")
    if chosen == rejected:
        raise BadRecord("identical", "chosen and rejected responses are identical")
    return PreferencePair(prompt, chosen, rejected)


def read_pairs(path: str | Path, skip_bad: bool = False) -> Loaded[PreferencePair]:
    """Every valid pair of a jsonl(.gz) file; a bad one raises "file:line: ..." unless `skip_bad` counts it."""
    out: Loaded[PreferencePair] = Loaded([])
    for where, obj in read_jsonl(path):
        try:
            if isinstance(obj, BadRecord):
                raise obj
            pair = pair_from_record(obj)
        except BadRecord as e:
            if not skip_bad:
                raise e.at(where) from None
            out.skipped[e.reason] += 1
            continue
        out.records.append(PreferencePair(pair.prompt, pair.chosen, pair.rejected, where))
    return out


def group_by_prompt(pairs: Sequence[PreferencePair]) -> list[PromptGroup]:
    """Pairs with the same prompt (every message equal) together, groups in order of first appearance."""
    groups: dict[tuple[Message, ...], PromptGroup] = {}
    for pair in pairs:
        groups.setdefault(pair.prompt, PromptGroup(pair.prompt, [])).pairs.append(pair)
    return list(groups.values())


def render_pair(pair: PreferencePair, tokenizer: Tokenizer, mode: Mode = "exact") -> tuple[list[int], list[int]]:
    """Ids of prompt + chosen and prompt + rejected, each ending with the response's `<|endofturn|>`."""
    chosen, _ = render([*pair.prompt, Message("assistant", pair.chosen)], tokenizer, mode)
    rejected, _ = render([*pair.prompt, Message("assistant", pair.rejected)], tokenizer, mode)
    return chosen, rejected
