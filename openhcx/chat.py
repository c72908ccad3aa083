"""Terminal front ends for any checkpoint: `openhcx generate` (prompts in, completions out) and `openhcx chat`.

Both load a HF Llama directory into our Transformer and decode with openhcx.model.generate, so what a user
sees is exactly what the library computes. The text side comes from the directory itself: an OpenHCX
tokenizer (its special tokens sit at the fixed ids 0..31) encodes with our Tokenizer and renders chats with
`render_prompt`; any other tokenizer goes through transformers' AutoTokenizer and its chat template.
A single prompt and every chat reply stream to the terminal token by token.

Not here: serving over HTTP (openhcx.serve), batching across users, and conversation files (openhcx.data.chat
reads those for training).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence, TextIO

from openhcx.io import UserError, require_file
from openhcx.model.generate import Completion, FimTokens, Sampling, psm_prompt
from openhcx.model.generate import generate as decode_ids
from openhcx.model.hf import DTYPES, load_checkpoint
from openhcx.model.transformer import Transformer
from openhcx.tokenizer.tokenizer import (
    ENDOFTURN, EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, NUM_RESERVED, PAD, SPECIAL_TOKENS, Tokenizer,
)

# Sentinel spellings: ours, then StarCoder's (SmolLM2 and other code models use those).
FIM_NAMES = {"prefix": (FIM_PREFIX, "<fim_prefix>"), "suffix": (FIM_SUFFIX, "<fim_suffix>"),
             "middle": (FIM_MIDDLE, "<fim_middle>")}
END_OF_TURN_NAMES = (ENDOFTURN, "<|im_end|>", "<|eot_id|>", "<end_of_turn>")
COMMANDS = ("/reset", "/exit")


@dataclass(frozen=True)
class TextCodec:
    """Everything the front ends need from a tokenizer, whichever library provides it."""

    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    chat_prompt: Callable[[list[dict]], list[int]]
    """messages ({"role", "content"}, ending with a user turn) -> ids ending with the assistant's opening."""
    end_ids: tuple[int, ...]
    """Ids that end a document (plain generation and infill stop here)."""
    turn_end_ids: tuple[int, ...]
    """Ids that end an assistant turn (chat stops here): end-of-turn tokens and end ids."""
    pad_id: int
    fim: FimTokens | None
    kind: str  # "openhcx" or "transformers"


def is_openhcx_tokenizer(directory: Path) -> bool:
    """An OpenHCX tokenizer keeps its special tokens at ids 0..31 (our manifest alone is not in checkpoints)."""
    from tokenizers import Tokenizer as HFTokenizer

    path = directory / "tokenizer.json"
    if not path.is_file():
        return False
    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception:  # tokenizers raises a bare Exception; transformers may still read the directory
        return False
    return [hf.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(NUM_RESERVED))


def openhcx_codec(directory: Path) -> TextCodec:
    from openhcx.data.chat import Message, render_prompt

    tok = Tokenizer.load(directory)

    def chat_prompt(messages: list[dict]) -> list[int]:
        return render_prompt([Message(m["role"], m["content"]) for m in messages], tok)

    eot = tok.id(EOT)
    fim = FimTokens(tok.id(FIM_PREFIX), tok.id(FIM_SUFFIX), tok.id(FIM_MIDDLE), eot)
    return TextCodec(encode=tok.encode, decode=tok.decode, chat_prompt=chat_prompt, end_ids=(eot,),
                     turn_end_ids=(tok.id(ENDOFTURN), eot), pad_id=tok.id(PAD), fim=fim, kind="openhcx")


def template_ids(tok, messages: list[dict], special: re.Pattern | None) -> list[int]:
    """The ids of `tok`'s chat template for `messages` (ending with the assistant's opening), where only the
    template's own special tokens are special: "<|im_end|>" in a message stays text.

    `special` matches the tokenizer's special token strings (None: it has none). Contents without any give the
    ids of the rendered text, as transformers tokenizes it. Otherwise the template is rendered again with each
    content replaced by a mark; the text between the template's own special tokens, with the contents put back
    at their marks, is encoded with split_special_tokens. A template that changes contents (`| trim`,
    `.split(...)`) cannot be cut this way: such messages are refused (UserError naming the first message that
    holds a special token string).
    """
    def render(msgs: list[dict]) -> str:
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def as_text(text: str) -> list[int]:
        return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    text = render(messages)
    plain = tok(text, add_special_tokens=False)["input_ids"]
    held = [(i, hit.group()) for i, m in enumerate(messages) if special and (hit := special.search(m["content"]))]
    if not held:
        return plain
    contents = {str(i): m["content"] for i, m in enumerate(messages)}
    marked = render([{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)])  # private-use marks
    # Even pieces are the template's text, odd ones the index of the message whose content stands there.
    pieces = re.split("\ue000(\\d+)\ue001", marked)
    ids, run = [], ""
    for k, piece in enumerate(pieces):
        for j, part in enumerate([contents[piece]] if k % 2 else special.split(piece)):  # text, special, text, ...
            if j % 2:
                ids += as_text(run) + [tok.convert_tokens_to_ids(part)]
                run = ""
            else:
                run += part
    ids += as_text(run)
    joined = "".join(contents[p] if k % 2 else p for k, p in enumerate(pieces))
    if joined != text or tok.decode(ids) != tok.decode(plain):
        i, token = held[0]
        raise UserError(f"messages[{i}]: holds the special token {token!r}, which this chat template cannot keep "
                        "as text (it changes message contents); remove it from the message")
    return ids


def transformers_codec(directory: Path, eos_ids: Sequence[int]) -> TextCodec:
    """AutoTokenizer from the directory; `eos_ids` from config.json / generation_config.json.

    Text never becomes a special token: `encode` keeps special token strings as text (a BOS the tokenizer adds
    is still added), and chat prompts hold special ids only where the template writes them (`template_ids`).
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{directory}: no tokenizer transformers can load ({e})") from e
    vocab = tok.get_vocab()
    specials = sorted((t.content for t in tok.added_tokens_decoder.values() if t.special), key=len, reverse=True)
    special = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None

    def first_known(names: Iterable[str]) -> int | None:
        return next((vocab[n] for n in names if n in vocab), None)

    def chat_prompt(messages: list[dict]) -> list[int]:
        if not tok.chat_template:
            raise UserError(f"{directory}: the tokenizer has no chat template (tokenizer_config.json chat_template)")
        return template_ids(tok, messages, special)

    ends = tuple(dict.fromkeys([*eos_ids, *([tok.eos_token_id] if tok.eos_token_id is not None else [])]))
    turn_end = first_known(END_OF_TURN_NAMES)
    sentinels = {part: first_known(names) for part, names in FIM_NAMES.items()}
    fim = None
    if None not in sentinels.values() and ends:
        fim = FimTokens(sentinels["prefix"], sentinels["suffix"], sentinels["middle"], ends[0])
    pad = tok.pad_token_id if tok.pad_token_id is not None else (ends[0] if ends else 0)
    return TextCodec(
        encode=lambda text: tok(text, split_special_tokens=True)["input_ids"],
        decode=lambda ids: tok.decode(ids, skip_special_tokens=False),
        chat_prompt=chat_prompt, end_ids=ends,
        turn_end_ids=tuple(dict.fromkeys(([turn_end] if turn_end is not None else []) + list(ends))),
        pad_id=pad, fim=fim, kind="transformers",
    )


def _eos_ids(directory: Path) -> list[int]:
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = directory / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            ids += value if isinstance(value, list) else [value] if value is not None else []
    return list(dict.fromkeys(ids))


def load(model: str, device: str = "cpu", dtype: str | None = None) -> tuple[Transformer, TextCodec]:
    """Model (eval mode) and text codec of a checkpoint directory."""
    directory = require_file(model, "model directory")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    net, _ = load_checkpoint(directory, dtype=DTYPES[dtype] if dtype else None, device=device)
    return net.eval(), load_codec(directory)


def load_codec(model: str | Path) -> TextCodec:
    """The text codec of a checkpoint directory (its tokenizer and chat template), without the weights."""
    directory = require_file(model, "model directory")
    return openhcx_codec(directory) if is_openhcx_tokenizer(directory) else transformers_codec(
        directory, _eos_ids(directory))


@dataclass
class TextStream:
    """A completion's text as its tokens arrive, in pieces that never have to be taken back.

    Text is held back while it ends inside a UTF-8 character (decodes to U+FFFD) or could be the start of
    a stop string; stop ids give no text. The terminal front ends and the server stream through this.
    """

    decode: Callable[[list[int]], str]
    stop_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    given: str = ""

    def push(self, token: int) -> str:
        """The new text that `token` makes safe to show ("" if none)."""
        if token in self.stop_ids:
            return ""
        self.ids.append(token)
        text = self.decode(self.ids)
        safe = len(text.rstrip("\ufffd"))
        hold = max((len(s) - 1 for s in self.stop_strings), default=0)
        return self._give(text[: min(safe, len(text) - hold)])

    def finish(self, final: str) -> str:
        """What was held back of the completion's final text (cut at any stop string)."""
        return self._give(final if final.startswith(self.given) else self.given)

    def _give(self, text: str) -> str:
        if len(text) > len(self.given) and text.startswith(self.given):
            delta, self.given = text[len(self.given):], text
            return delta
        return ""


class Streamer:
    """Writes one row's text to a terminal as its tokens arrive (`on_token` of openhcx.model.generate)."""

    def __init__(self, codec: TextCodec, out: TextIO, stop_ids: tuple[int, ...], stop_strings: tuple[str, ...] = ()):
        self.text, self.out = TextStream(codec.decode, stop_ids, stop_strings), out

    def __call__(self, row: int, token: int) -> None:
        self._write(self.text.push(token))

    def finish(self, final: str) -> None:
        self._write(self.text.finish(final) + "\n")

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()


def generate(
    model: str,
    prompt: list[str],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop: list[str] | None = None,
    seed: int | None = None,
    infill_suffix: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> list[Completion]:
    """Continue each prompt with a checkpoint and print the completions (a single prompt streams).

    With `infill_suffix`, each prompt is the code before a gap and the suffix the code after it: the model
    writes the middle from a PSM fill-in-the-middle prompt and stops at its end-of-text token.

    Args:
        model: Checkpoint directory (ours, or any HF Llama directory with safetensors and a tokenizer).
        prompt: Prompts, decoded in one left-padded batch.
        max_new_tokens: Most tokens to add to each prompt (prompt plus completion stay within the context).
        temperature: 0 decodes greedily; above 0 samples.
        top_k: Sample among the k most likely tokens (0: all).
        top_p: Sample from the smallest set of tokens whose probability reaches top_p.
        repetition_penalty: Above 1 discourages tokens already in the prompt or the completion.
        stop: Strings that end a completion (cut before them).
        seed: Seed for sampling; the same seed repeats the same completions.
        infill_suffix: Text after the gap: fill in the middle between each prompt and this suffix.
        device: Torch device, e.g. cpu or cuda.
        dtype: Weight dtype (float32, bfloat16, float16); default: as saved.
    """
    return run_generate(*load(model, device, dtype), prompt, Sampling(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, stop_strings=tuple(stop or ()), seed=seed,
    ), infill_suffix, sys.stdout)


def run_generate(net: Transformer, codec: TextCodec, prompts: Sequence[str], sampling: Sampling,
                 infill_suffix: str | None, out: TextIO) -> list[Completion]:
    if not prompts:
        raise UserError("prompt: give at least one prompt")
    if infill_suffix is None:
        ids = [codec.encode(p) for p in prompts]
    else:
        if codec.fim is None:
            raise UserError("infill_suffix: this tokenizer has no fill-in-the-middle tokens (<|fim_prefix|> ...)")
        suffix = codec.encode(infill_suffix)
        ids = [psm_prompt(codec.encode(p), suffix, codec.fim) for p in prompts]
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
        raise UserError(f"prompt[{empty[0]}]: encodes to no tokens (give some text)")
    sampling = replace(sampling, stop_ids=tuple(dict.fromkeys((*sampling.stop_ids, *codec.end_ids))))
    streamer = Streamer(codec, out, sampling.stop_ids, sampling.stop_strings) if len(prompts) == 1 else None
    done = decode_ids(net, ids, sampling, decode=codec.decode, on_token=streamer, pad_id=codec.pad_id)
    if streamer is not None:
        streamer.finish(done[0].text)
    else:
        for i, c in enumerate(done):
            out.write(f"=== {i} ({c.finish_reason})\n{c.text}\n")
        out.flush()
    return done


@dataclass
class Turn:
    """One exchange as the model saw it: the rendered prompt and the reply."""

    prompt_ids: list[int]
    reply: Completion


def chat(
    model: str | None = None,
    server: str | None = None,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 0.9,
    repetition_penalty: float = 1.1,
    seed: int | None = None,
    show_prompt: bool = False,
    device: str = "cpu",
    dtype: str | None = None,
) -> None:
    """Talk to a checkpoint, or to a model behind an OpenAI-compatible server: each line read from stdin is a user
    turn, each reply streams back.

    `/reset` starts a new conversation, `/exit` (or end of input) quits. Works with piped input too.

    Args:
        model: Checkpoint directory (ours, or any HF Llama directory with safetensors and a tokenizer); with
            `server`, the served model's name (default: the first the server lists).
        server: Base URL of an OpenAI-compatible server (`openhcx serve`, vLLM, ...), e.g. http://127.0.0.1:8000;
            its API key from $OPENAI_API_KEY.
        system: System message; default: the tokenizer's chat template default (ours: the Korean preamble).
        max_new_tokens: Most tokens per reply.
        temperature: 0 decodes greedily; above 0 samples.
        top_k: Sample among the k most likely tokens (0: all).
        top_p: Sample from the smallest set of tokens whose probability reaches top_p.
        repetition_penalty: Above 1 discourages repeating tokens.
        seed: Seed for sampling: the same seed and input give the same conversation.
        show_prompt: Write each turn's prompt token ids and reply ids to stderr as one JSON line (local only).
        device: Torch device, e.g. cpu or cuda.
        dtype: Weight dtype (float32, bfloat16, float16); default: as saved.
    """
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        repetition_penalty=repetition_penalty, seed=seed)
    tty = sys.stdin.isatty()
    if server is None and model is None:
        raise UserError("model: give a checkpoint directory (or --server URL)")
    if tty:
        print("/reset starts over, /exit quits", file=sys.stderr)
    mark = "> " if tty else ""
    if server is not None:
        run_remote_chat(server, model, sys.stdin, sys.stdout, sampling, system, prompt_mark=mark)
    else:
        net, codec = load(model, device, dtype)
        run_chat(net, codec, sys.stdin, sys.stdout, sampling, system, prompt_mark=mark,
                 log=sys.stderr if show_prompt else None)


Reply = Callable[[list[dict]], "str | None"]
"""history (ending with a user turn) -> the streamed reply's text, or None when it does not fit the context
(after dropping what it may of the history, in place)."""


def chat_loop(lines: Iterable[str], out: TextIO, reply: Reply, system: str | None, prompt_mark: str) -> None:
    """Read user turns, answer each with `reply`, keep the history; `/reset` and `/exit` are commands."""
    start = [{"role": "system", "content": system}] if system is not None else []
    history = list(start)
    out.write(prompt_mark)
    out.flush()
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            history = list(start)
            out.write("(new conversation)\n")
        elif text.strip():
            history.append({"role": "user", "content": text})
            answer = reply(history)
            if answer is None:
                history.pop()
            else:
                history.append({"role": "assistant", "content": answer})
        out.write(prompt_mark)
        out.flush()


def run_chat(net: Transformer, codec: TextCodec, lines: Iterable[str], out: TextIO, sampling: Sampling,
             system: str | None = None, prompt_mark: str = "", log: TextIO | None = None) -> list[Turn]:
    """The chat loop over any line source, decoding locally; returns the turns it ran."""
    sampling = replace(sampling, stop_ids=codec.turn_end_ids)
    keep = int(system is not None)
    reserve = min(sampling.max_new_tokens, net.config.max_seq_len // 4)
    turns = []

    def reply(history: list[dict]) -> str | None:
        ids = fit_context(codec, history, net.config.max_seq_len - reserve, keep)
        if ids is None:
            out.write(f"(message too long for the {net.config.max_seq_len}-token context)\n")
            return None
        streamer = Streamer(codec, out, sampling.stop_ids)
        done = decode_ids(net, [ids], sampling, decode=codec.decode, on_token=streamer, pad_id=codec.pad_id)[0]
        streamer.finish(done.text)
        turns.append(Turn(ids, done))
        if log is not None:
            log.write(json.dumps({"prompt_ids": ids, "reply_ids": done.ids}) + "\n")
            log.flush()
        return done.text

    chat_loop(lines, out, reply, system, prompt_mark)
    return turns


def run_remote_chat(server: str, model: str | None, lines: Iterable[str], out: TextIO, sampling: Sampling,
                    system: str | None = None, prompt_mark: str = "", api_key: str | None = None) -> None:
    """The chat loop against an OpenAI-compatible server, streaming each reply; a history the server finds too long
    for its context loses its oldest exchanges first, as locally."""
    import os

    import openai

    client = openai.OpenAI(base_url=server.rstrip("/") + "/v1", max_retries=1,
                           api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none")
    try:
        name = model or client.models.list().data[0].id
    except (openai.OpenAIError, IndexError) as e:
        raise UserError(f"{server}: cannot list its models ({e})") from e
    extra = {k: v for k, v in (("top_k", sampling.top_k), ("repetition_penalty", sampling.repetition_penalty))
             if v != Sampling.__dataclass_fields__[k].default}  # extensions vLLM and openhcx serve accept
    keep = int(system is not None)

    def reply(history: list[dict]) -> str | None:
        while True:
            try:
                stream = client.chat.completions.create(
                    model=name, messages=history, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                    top_p=sampling.top_p, seed=sampling.seed, stream=True, extra_body=extra or None)
                parts = []
                for chunk in stream:
                    piece = chunk.choices[0].delta.content if chunk.choices else None
                    if piece:
                        out.write(piece)
                        out.flush()
                        parts.append(piece)
                out.write("\n")
                return "".join(parts)
            except openai.BadRequestError as e:
                if getattr(e, "code", None) != "context_length_exceeded":
                    raise UserError(f"{server}: {e.message}") from e
                if len(history) - keep <= 1:
                    out.write("(message too long for the server's context)\n")
                    return None
                del history[keep:keep + 2]
            except openai.OpenAIError as e:
                raise UserError(f"{server}: {e}") from e

    chat_loop(lines, out, reply, system, prompt_mark)


def fit_context(codec: TextCodec, history: list[dict], limit: int, keep: int) -> list[int] | None:
    """The prompt of `history`, dropping the oldest exchanges (after the first `keep` messages) until it
    fits in `limit` tokens; None when even the last user message alone does not fit."""
    while True:
        ids = codec.chat_prompt(history)
        if len(ids) <= limit:
            return ids
        if len(history) - keep <= 1:
            return None
        del history[keep:keep + 2]
