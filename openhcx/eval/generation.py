"""Generators for generation tasks: a local checkpoint through the KV-cache decoder, or an OpenAI-compatible endpoint.

A `GenRequest` is one prompt (plain text, or a chat as (role, content) pairs) with its decoding settings and
`n` samples. `LocalGenerator` decodes greedy requests of the same settings, longest prompt first, by continuous
batching in the serving engine (openhcx.serve.engine) under a token budget; sampled requests decode their `n`
samples together with openhcx.model.generate and a seed taken from the request, so a sample never depends on
which other prompts were decoded beside it (a resumed run draws the same samples). `OpenAIGenerator` sends
requests through the official `openai` client, several in flight. A request that fails (server down, timeout,
bad reply, a failed prefill or step) comes back as an error string for that request instead of stopping the run.
Not here: prompts, few-shot assembly, caching (harness.py) or scoring (tasks/).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from openhcx.io import UserError

Chat = tuple[tuple[str, str], ...]  # ((role, content), ...), ending with a user turn


@dataclass(frozen=True)
class GenRequest:
    prompt: str | Chat
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0

    def settings(self) -> tuple:
        return (self.max_new_tokens, self.stop, self.temperature, self.top_p)


Result = list[str] | str  # n completions, or why the request failed


class Generator(Protocol):
    fingerprint: str  # identifies the model and its numerics; part of every cache key

    def generate(self, requests: list[GenRequest]) -> Iterator[tuple[int, Result]]: ...


def request_seed(*parts) -> int:
    """A stable 31-bit seed from the request's own content (prompt, settings, sample round)."""
    blob = json.dumps(parts, ensure_ascii=False, default=str).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") >> 1


class LocalGenerator:
    """A checkpoint directory (ours, or any HF Llama directory with safetensors), loaded on first use."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str | None = None, batch_tokens: int = 16384):
        from openhcx.eval.backends import _files_fingerprint

        self.path, self.device, self.dtype, self.batch_tokens = str(path), device, dtype, batch_tokens
        if not Path(path).exists():
            raise UserError(f"{path}: model not found (expected a checkpoint directory)")
        self.fingerprint = f"gen:{_files_fingerprint(Path(path))}:{dtype or 'saved'}:{device}"
        self._model = None

    def load(self):
        if self._model is None:
            from openhcx.chat import load

            self._model = load(self.path, self.device, self.dtype)
        return self._model

    def encode(self, req: GenRequest) -> tuple[list[int], tuple[int, ...]]:
        """Prompt ids (left-truncated to leave room for the answer) and the ids that end the answer."""
        net, codec = self.load()
        if isinstance(req.prompt, str):
            ids, ends = codec.encode(req.prompt), codec.end_ids
        else:
            ids, ends = codec.chat_prompt([{"role": r, "content": c} for r, c in req.prompt]), codec.turn_end_ids
        room = net.config.max_seq_len - req.max_new_tokens
        if room < 1:
            raise UserError(f"max_new_tokens={req.max_new_tokens} leaves no room for a prompt in "
                            f"max_seq_len={net.config.max_seq_len}")
        return ids[-room:], ends

    def generate(self, requests: list[GenRequest]) -> Iterator[tuple[int, Result]]:
        from openhcx.model.generate import Sampling, generate

        net, codec = self.load()
        encoded = [self.encode(r) for r in requests]
        greedy = [i for i, r in enumerate(requests) if r.temperature == 0]
        for i in (i for i, r in enumerate(requests) if r.temperature > 0):  # each request alone: seeded rows
            r = requests[i]
            sampling = Sampling(r.max_new_tokens, r.temperature, top_p=r.top_p, stop_ids=encoded[i][1],
                                stop_strings=r.stop, seed=r.seed)
            done = generate(net, [encoded[i][0]] * r.n, sampling, decode=codec.decode, pad_id=codec.pad_id)
            yield i, [c.text for c in done]
        groups: dict[tuple, list[int]] = {}
        for i in greedy:
            groups.setdefault((requests[i].settings(), encoded[i][1]), []).append(i)
        for ((max_new, stop, _, _), ends), members in groups.items():
            members.sort(key=lambda i: -len(encoded[i][0]))  # longest first: a new prompt never widens the cache
            for i, result in self._continuous(net, codec, [encoded[i][0] for i in members],
                                              Sampling(max_new, 0.0, stop_ids=ends, stop_strings=stop)):
                yield members[i], result * requests[members[i]].n if isinstance(result, list) else result

    def _continuous(self, net, codec, prompts: list[list[int]], sampling) -> Iterator[tuple[int, Result]]:
        """Greedy prompts through the serving engine, run on this thread: a row that stops takes the next prompt
        at once, where a fixed batch would carry it to the longest answer (GSM8K, 16 prompts: 77 s against 129 s).
        Rows times context stay within the token budget; each answer ([text], or why it failed) comes back as it
        ends."""
        from openhcx.serve.engine import Engine

        context = min(net.config.max_seq_len, max(len(p) for p in prompts) + sampling.max_new_tokens)
        rows = max(1, min(len(prompts), self.batch_tokens // context))
        engine = Engine(net, codec.decode, max_batch=rows, max_context=context, prefill_tokens=self.batch_tokens,
                        pad_id=codec.pad_id, background=False)
        ended: list[tuple[int, Result]] = []

        def on_event(i: int, event) -> None:  # without streaming, the one event is the last: text or why it failed
            ended.append((i, event.text if event.finish_reason == "error" else [event.text]))

        for i, p in enumerate(prompts):
            engine.submit(p, sampling, lambda e, i=i: on_event(i, e), stream=False)
        left = len(prompts)
        for _ in engine.passes():
            left -= len(ended)
            yield from ended
            ended.clear()
            if not left:
                engine.close()


class OpenAIGenerator:
    """An OpenAI-compatible server: `/v1/completions` for text prompts, `/v1/chat/completions` for chats."""

    def __init__(self, base_url: str, model: str = "default", api_key: str | None = None, timeout: float = 600,
                 retries: int = 2, workers: int = 8):
        import openai

        self.base_url, self.model, self.workers = base_url.rstrip("/"), model, workers
        self.client = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key or "none", timeout=timeout,
                                    max_retries=retries)
        self.fingerprint = f"openai:{self.base_url}:{model}"

    def generate(self, requests: list[GenRequest]) -> Iterator[tuple[int, Result]]:
        with ThreadPoolExecutor(self.workers) as pool:
            yield from enumerate(pool.map(self._one, requests))

    def _one(self, req: GenRequest) -> Result:
        import openai

        # The API takes at most 4 stops; top_p=1 is the default and is left out (TGI refuses it).
        args = dict(model=self.model, max_tokens=req.max_new_tokens, temperature=req.temperature,
                    n=req.n, seed=req.seed, stop=list(req.stop[:4]) or None)
        if req.top_p < 1:
            args["top_p"] = req.top_p
        try:
            if isinstance(req.prompt, str):
                reply = self.client.completions.create(prompt=req.prompt, **args)
            else:
                chat = [{"role": r, "content": c} for r, c in req.prompt]
                reply = self.client.chat.completions.create(messages=chat, **args)
        except openai.OpenAIError as e:
            return f"{self.base_url}: {type(e).__name__}: {str(e)[:300]}"
        try:  # the client does not validate replies
            texts = [c.text if isinstance(req.prompt, str) else c.message.content for c in reply.choices]
        except (AttributeError, TypeError):
            texts = None
        if not isinstance(texts, list) or len(texts) != req.n or any(not isinstance(t, str) for t in texts):
            return f"{self.base_url}: expected {req.n} text completion(s), got {str(reply)[:200]}"
        return [cut_at_stop(t, req.stop) for t in texts]  # servers honour only the first 4 stops


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    hits = [text.index(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else text


def open_generator(model: str, device: str = "cpu", dtype: str | None = None,
                   batch_tokens: int = 16384) -> Generator:
    """`http(s)://host[:port]#name` -> OpenAIGenerator (key from OPENAI_API_KEY); else a local checkpoint."""
    import os

    if model.startswith(("http://", "https://")):
        url, _, name = model.partition("#")
        return OpenAIGenerator(url, name or "default", os.environ.get("OPENAI_API_KEY"))
    return LocalGenerator(model, device, dtype, batch_tokens)

