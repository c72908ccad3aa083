"""Conversations for supervised fine-tuning: read, validate, render to (ids, mask), show.

RECIPE §5: a conversation opens with its system message or, without one, the Korean preamble, then "\\n",
then `<|user|>...<|endofturn|>` / `<|assistant|>...<|endofturn|>` turns. `render` gives exactly the ids of
`CHAT_TEMPLATE` through transformers' `apply_chat_template`, with one deliberate difference: special-token
strings inside message content stay plain text (no injection). The loss mask is 1 on assistant content and on
each assistant turn's closing `<|endofturn|>` (the model must learn to stop), 0 everywhere else.
Readers take chat `messages` jsonl, Alpaca, ShareGPT and question/answer CSV files; a bad record is a
`BadRecord` naming file:line, or is counted and skipped with `skip_bad=True`.

Not here: batching by length (the SFT trainer), preference pairs (preference.py), prompt scoring (align/).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Iterator, Literal, Sequence, TypeVar

from openhcx.io import UserError, require_file, text_lines
from openhcx.tokenizer.tokenizer import ASSISTANT, DEFAULT_PREAMBLE, ENDOFTURN, NUM_RESERVED, USER, Mode, Tokenizer

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
Format = Literal["auto", "chat", "alpaca", "sharegpt", "qa-csv"]
T = TypeVar("T")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass
class Conversation:
    messages: list[Message]
    source: str = ""
    """Where it was read ("file:line"), so later errors can name the record."""


@dataclass
class Sample:
    """A rendered conversation: what the SFT trainer consumes."""

    ids: list[int]
    mask: list[int]
    source: str = ""


@dataclass
class Loaded(Generic[T]):
    records: list[T]
    skipped: Counter = field(default_factory=Counter)
    """Bad records skipped under `skip_bad=True`, by reason (see `BadRecord.reason`)."""


class BadRecord(UserError):
    """One record a user must fix; `reason` is a short key (`unknown_role`, `too_long`, ...) used for counts."""

    def __init__(self, reason: str, detail: str, where: str = ""):
        super().__init__(f"{where}: {detail}" if where else detail)
        self.reason, self.detail, self.where = reason, detail, where

    def at(self, where: str) -> "BadRecord":
        return BadRecord(self.reason, self.detail, where)


# ---- validation -------------------------------------------------------------------------------------------


def check_turns(messages: Sequence[Message], last: str = "assistant") -> None:
    """An optional leading system message, then user/assistant turns alternating from user, ending with `last`."""
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise BadRecord("unknown_role", f"message {i}: unknown role {m.role!r} (system, user or assistant)")
    turns = messages[1:] if messages and messages[0].role == "system" else messages
    if not turns:
        raise BadRecord("no_turns", "no user or assistant message")
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            where = "only the first message may be system" if m.role == "system" else f"expected {expected}"
            raise BadRecord("turn_order", f"message {i + len(messages) - len(turns)}: {m.role} turn, {where}")
    if turns[-1].role != last:
        raise BadRecord(f"not_ending_with_{last}", f"conversation ends with {turns[-1].role}, not {last}")


def check_conversation(messages: Sequence[Message]) -> None:
    """What SFT needs: well-ordered turns ending with a non-empty assistant answer."""
    check_turns(messages, "assistant")
    for i, m in enumerate(messages):
        if m.role == "assistant" and not m.content.strip():
            raise BadRecord("empty_assistant", f"message {i}: empty assistant turn")


# ---- rendering --------------------------------------------------------------------------------------------


def _pieces(messages: Sequence[Message], tokenizer: Tokenizer, mode: Mode) -> Iterator[tuple[list[int], int]]:
    """(ids, trained) pieces in template order; text is encoded one message at a time, as HF does between specials."""
    system = messages[0].content if messages and messages[0].role == "system" else None
    turns = messages[1:] if system is not None else messages
    texts = [(DEFAULT_PREAMBLE if system is None else system) + "\n"] + [m.content for m in turns]
    encoded = tokenizer.encode_batch(texts, mode)
    user, assistant, end = (tokenizer.id(t) for t in (USER, ASSISTANT, ENDOFTURN))
    yield encoded[0], 0
    for m, ids in zip(turns, encoded[1:]):
        trained = int(m.role == "assistant")
        yield [assistant if trained else user], 0
        yield ids + [end], trained


def render(conversation: Conversation | Sequence[Message], tokenizer: Tokenizer,
           mode: Mode = "exact") -> tuple[list[int], list[int]]:
    """(ids, mask) of a conversation ending with an assistant turn; mask marks what SFT trains on."""
    messages = conversation.messages if isinstance(conversation, Conversation) else conversation
    check_turns(messages, "assistant")
    ids: list[int] = []
    mask: list[int] = []
    for piece, trained in _pieces(messages, tokenizer, mode):
        ids += piece
        mask += [trained] * len(piece)
    return ids, mask


def render_prompt(messages: Sequence[Message], tokenizer: Tokenizer, mode: Mode = "exact") -> list[int]:
    """Ids of a conversation ending with a user turn, plus `<|assistant|>`: the generation prompt."""
    check_turns(messages, "user")
    return [i for piece, _ in _pieces(messages, tokenizer, mode) for i in piece] + [tokenizer.id(ASSISTANT)]


def tokenize(conversations: Sequence[Conversation], tokenizer: Tokenizer, max_tokens: int | None = None,
             mode: Mode = "exact", skip_bad: bool = False) -> Loaded[Sample]:
    """Render every conversation; one over `max_tokens` is a `too_long` BadRecord naming its length and the limit."""
    out: Loaded[Sample] = Loaded([])
    for conv in conversations:
        try:
            ids, mask = render(conv, tokenizer, mode)
            if max_tokens is not None and len(ids) > max_tokens:
                raise BadRecord("too_long", f"conversation is {len(ids)} tokens, longer than the limit of {max_tokens}")
        except BadRecord as e:
            if not skip_bad:
                raise e.at(conv.source) from None
            out.skipped[e.reason] += 1
            continue
        out.records.append(Sample(ids, mask, conv.source))
    return out


def show(ids: Sequence[int], mask: Sequence[int], tokenizer: Tokenizer, color: bool = False) -> str:
    """The rendered tokens as text: trained runs bracketed ⟦...⟧, or green (trained) and red (not) with `color`.

    Tokens are separated by "·" so boundaries show; a token holding part of a UTF-8 character is joined
    with the next ones until the character is whole. Newlines show as "↵".
    """
    out: list[str] = []
    pending, prev = b"", 0
    for i, (tok, m) in enumerate(zip(ids, mask)):
        if not pending and (m != prev or (color and i == 0)):
            out.append(("\x1b[32m" if m else "\x1b[31m") if color else ("⟦" if m else "⟧"))
            prev = m
        pending += _token_bytes(tokenizer, tok)
        try:
            text = pending.decode("utf-8")
        except UnicodeDecodeError:
            if len(pending) < 4 and i + 1 < len(ids):
                continue
            text = pending.decode("utf-8", errors="backslashreplace")
        out.append(text.replace("\n", "↵") + "·")
        pending = b""
    if color:
        out.append("\x1b[0m")
    elif prev:
        out.append("⟧")
    return "".join(out)


def _token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    token = tokenizer.hf.id_to_token(token_id)
    return token.encode() if token_id < NUM_RESERVED else bytes(_BYTE_TABLE[c] for c in token)


def _byte_table() -> dict[str, int]:
    """GPT-2's byte-to-symbol map, inverted: printable bytes stand for themselves, the rest shift above 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_TABLE = _byte_table()


# ---- reading ----------------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> Iterator[tuple[str, object]]:
    """("file:line", parsed JSON or a BadRecord for a malformed line) for every non-blank line."""
    path = require_file(path)
    for n, line in text_lines(path):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"{path}:{n}", BadRecord("malformed_json", f"malformed JSON ({e.msg} at column {e.colno})")


def field_of(obj: object, key: str, kind: type | tuple[type, ...], default: object = ...) -> object:
    """obj[key] checked for type: a missing or mistyped field is a BadRecord naming the key."""
    if not isinstance(obj, dict):
        raise BadRecord("wrong_type", f"record is a JSON {type(obj).__name__}, not an object")
    if key not in obj:
        if default is not ...:
            return default
        raise BadRecord("missing_field", f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadRecord("wrong_type", f"field {key!r} is {type(value).__name__}, expected {names}")
    return value


def messages_of(items: object, key: str = "messages", role_key: str = "role", content_key: str = "content",
                roles: dict[str, str] | None = None) -> list[Message]:
    """A JSON list of {role, content} objects as Messages; `roles` renames roles (ShareGPT's human/gpt)."""
    if not isinstance(items, list):
        raise BadRecord("wrong_type", f"field {key!r} is {type(items).__name__}, expected list")
    out = []
    for i, item in enumerate(items):
        try:
            role = field_of(item, role_key, str)
            content = field_of(item, content_key, str)
        except BadRecord as e:
            raise BadRecord(e.reason, f"{key}[{i}]: {e.detail}") from None
        if roles is not None:
            if role not in roles:
                raise BadRecord("unknown_role", f"{key}[{i}]: unknown {role_key} {role!r} ({', '.join(roles)})")
            role = roles[role]
        out.append(Message(role, content))
    return out


def from_chat(obj: object) -> list[Message]:
    return messages_of(field_of(obj, "messages", list))


def from_alpaca(obj: object) -> list[Message]:
    """instruction (+ "\\n\\n" + input when non-empty) -> output; an optional `system` string leads."""
    instruction = field_of(obj, "instruction", str)
    extra = field_of(obj, "input", str, "")
    output = field_of(obj, "output", str)
    system = field_of(obj, "system", str, "")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return ([Message("system", system)] if system else []) + [Message("user", user), Message("assistant", output)]


def from_sharegpt(obj: object) -> list[Message]:
    return messages_of(field_of(obj, "conversations", list), "conversations", "from", "value", SHAREGPT_ROLES)


PARSERS: dict[str, Callable[[object], list[Message]]] = {
    "chat": from_chat, "alpaca": from_alpaca, "sharegpt": from_sharegpt,
}


def detect_format(path: Path) -> str:
    """qa-csv for .csv files, else from the keys of the first parsable record."""
    if path.suffix == ".csv":
        return "qa-csv"
    for where, obj in read_jsonl(path):
        if isinstance(obj, dict):
            for fmt, key in (("chat", "messages"), ("sharegpt", "conversations"), ("alpaca", "instruction")):
                if key in obj:
                    return fmt
            raise UserError(f"{where}: cannot tell the format: no 'messages', 'conversations' or 'instruction' field")
    raise UserError(f"{path}: no JSON object to tell the format from")


def read_qa_csv(path: str | Path, question: str = "Q", answer: str = "A") -> Iterator[tuple[str, object]]:
    """("file:line", messages or BadRecord) for each row of a question/answer CSV, one user and one assistant turn."""
    path = require_file(path)
    reader = csv.DictReader(line for _, line in text_lines(path))
    missing = [c for c in (question, answer) if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{path}:1: missing column {missing[0]!r} (columns: {reader.fieldnames})")
    start = 2
    for row in reader:
        where, start = f"{path}:{start}", reader.line_num + 1
        if row[answer] is None or row[question] is None:
            yield where, BadRecord("missing_field", "row has fewer columns than the header")
        else:
            yield where, [Message("user", row[question]), Message("assistant", row[answer])]


def read_conversations(path: str | Path, format: Format = "auto", skip_bad: bool = False,
                       question: str = "Q", answer: str = "A") -> Loaded[Conversation]:
    """Every valid conversation of a chat/Alpaca/ShareGPT jsonl(.gz) or Q/A CSV file.

    A bad record raises BadRecord "file:line: ..." unless `skip_bad`, which counts it by reason instead.
    `question`/`answer` name the CSV columns.
    """
    path = require_file(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "qa-csv":
        records: Iterator[tuple[str, object]] = read_qa_csv(path, question, answer)
        parse: Callable[[object], list[Message]] = lambda m: m  # noqa: E731 (rows arrive as messages)
    elif fmt in PARSERS:
        records, parse = read_jsonl(path), PARSERS[fmt]
    else:
        raise UserError(f"unknown conversation format {fmt!r} (auto, chat, alpaca, sharegpt, qa-csv)")
    out: Loaded[Conversation] = Loaded([])
    for where, obj in records:
        try:
            if isinstance(obj, BadRecord):
                raise obj
            messages = parse(obj)
            check_conversation(messages)
        except BadRecord as e:
            if not skip_bad:
                raise e.at(where) from None
            out.skipped[e.reason] += 1
            continue
        out.records.append(Conversation(messages, where))
    return out


def to_json(messages: Sequence[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]
