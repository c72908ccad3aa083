"""Continuous batching: one decoding loop that admits new requests into the running batch between steps.

The engine owns one KV cache of `max_batch` rows. Occupied rows are always rows 0..n-1, and every step runs
the model on those rows only (`KVCache.rows`). All rows end at one shared write offset, as in
openhcx.model.generate's left-padded batches: a newly admitted prompt is written so that it ends where the
others end (the slots before it marked unused), so a step feeds every row its last token in one (n, 1) pass.
Between steps the loop
- retires rows that finished or whose client went away, moving the last occupied row into the freed one;
- admits every waiting request that fits (prompts of like length prefill together in one left-padded pass, up
  to a token budget between two steps);
- compacts the cache when the shared offset runs far past the longest row (one copy shifting every row left).
RoPE positions count each row's own real tokens, so a request decodes as it would alone; with one request at a
time its tokens equal openhcx.model.generate's exactly.

Each request keeps its own sampling settings and random generator (seeded requests repeat whatever else runs)
and gets its text through `on_event`, called on the engine's thread. Anything that produces token ids and
consumes events can use it: the HTTP server here and the harness's greedy generation (openhcx.eval.generation);
docs/serve.md says what PPO rollouts would take.
Not here: paged attention, prefix sharing, chunked prefill, speculative decoding (vLLM and SGLang have them).
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from openhcx.chat import TextStream
from openhcx.io import UserError
from openhcx.model.generate import Completion, Sampling, argmax, finish_text, next_tokens, record_token
from openhcx.model.transformer import KVCache, Transformer, decoding_head

log = logging.getLogger(__name__)

# A prompt this long prefills in a pass of its own: one row already fills the matmuls, and alone it needs no
# padding mask, so attention takes the causal kernel that skips the future (6 prompts of about 1,700 tokens:
# 11.3 s one by one against 18.2 s left-padded together; 8 of 400: 3.2 s against 3.8 s; 8 of 150: 1.4 s
# against 1.2 s, measured on 2 CPU cores with a 135M model).
PREFILL_ALONE = 256


@dataclass
class Event:
    """What one step did for one request: new text, and on the last event why it ended."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None  # "stop", "length", "cancelled", or "error" (then `text` says why)


@dataclass(eq=False)
class Request:
    """One sequence to decode: prompt ids, its sampling settings, and where its events go."""

    prompt: list[int]
    sampling: Sampling
    on_event: Callable[[Event], None]
    stream: bool = True  # an event per piece of text; otherwise one event with the whole text at the end
    cancelled: bool = False
    completion: Completion = field(default_factory=lambda: Completion([], None, "length"))
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # tokens so far, for a repetition penalty
    text: TextStream | None = None
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """Free the request's row at the next step (a client that went away)."""
        self.cancelled = True

    @property
    def greedy(self) -> bool:
        return self.sampling.greedy and self.sampling.repetition_penalty == 1.0


def check_request(prompt: list[int], sampling: Sampling, max_context: int, closed: bool) -> None:
    """Why an engine would refuse this request (UserError), checked where it is submitted."""
    if not prompt:
        raise UserError("the prompt encodes to no tokens")
    if len(prompt) >= max_context:
        raise UserError(f"the prompt has {len(prompt)} tokens; this server's context is {max_context}, "
                        "prompt and completion together")
    if sampling.max_new_tokens < 1:
        raise UserError("max_tokens: at least 1")
    if closed:
        raise UserError("the engine is shut down")


class Engine:
    """Decodes every submitted request in one batch that grows and shrinks between steps.

    max_batch: rows decoded together (the KV cache holds this many sequences).
    max_context: tokens per sequence, prompt plus completion (default: the model's max_seq_len).
    prefill_tokens: most prompt tokens (padded) prefilled between two steps; prompts of very different lengths
    go in separate forward passes (at most a quarter padding), and a prompt of PREFILL_ALONE tokens or more, or
    longer than the budget, goes alone.
    background: run the loop in a thread of its own; otherwise the caller runs it (`run`). On CPU, torch's
    OpenMP matmuls run several times slower outside the main thread (a second thread team contends with the
    first: 8-row products measured at 170 against 16 us on 2 cores), so `openhcx serve` runs the loop on the
    main thread of a process of its own (openhcx.serve.process), the HTTP server in another process.
    """

    def __init__(self, model: Transformer, decode: Callable[[list[int]], str], *, max_batch: int = 16,
                 max_context: int | None = None, prefill_tokens: int = 8192, pad_id: int = 0,
                 background: bool = True):
        config = model.config
        if config.head != "lm":
            raise UserError("serving needs a language-model head, not a scalar head")
        if max_batch < 1:
            raise UserError(f"max_batch={max_batch}: at least 1")
        self.max_context = min(max_context or config.max_seq_len, config.max_seq_len)
        if self.max_context < 2:
            raise UserError(f"max_context={max_context}: at least 2 tokens")
        self.model, self.decode, self.max_batch = model, decode, max_batch
        self.prefill_tokens, self.pad_id = prefill_tokens, pad_id
        weight = model.lm_head.weight
        self.device, dtype = weight.device, weight.dtype
        self.cache = KVCache(config, max_batch, self.max_context, self.device, dtype)
        # As generate() does: the head laid out for few-row products on CPU; one row has its own layout there.
        self.heads = {}
        if self.device.type == "cpu":
            self.heads = {1: decoding_head(weight, 1), max_batch: decoding_head(weight, max_batch)}
        self.rows: list[Request] = []  # occupied cache rows, in order
        self.length = 0  # the shared write offset: every row's tokens end here
        self.waiting: deque[Request] = deque()
        self.inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self.counters = {"steps": 0, "prefills": 0, "generated_tokens": 0, "compactions": 0, "errors": 0,
                         "busy_s": 0.0, "prefill_s": 0.0}  # time at work (not waiting for it); of which prefilling
        self._closed = False
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self.run, name="openhcx-engine", daemon=True)
            self._thread.start()

    @property
    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.cache.k, *self.cache.v))

    def submit(self, prompt: list[int], sampling: Sampling, on_event: Callable[[Event], None],
               stream: bool = True) -> Request:
        """Queue a prompt; `on_event` gets its text as it comes (`stream`) or all at once, ending with an event
        that has a finish_reason."""
        check_request(prompt, sampling, self.max_context, self._closed)
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(62)
        request = Request(list(prompt), sampling, on_event, stream,
                          generator=None if sampling.greedy else torch.Generator().manual_seed(seed),
                          text=TextStream(self.decode, sampling.stop_ids, sampling.stop_strings))
        self.inbox.put(request)
        return request

    def stats(self) -> dict:
        """Occupied rows, queued requests, the shared offset and the counters: what /health reports."""
        return {"running": len(self.rows), "waiting": len(self.waiting) + self.inbox.qsize(),
                "max_batch": self.max_batch, "cache_offset": self.length, **self.counters}

    def close(self, timeout: float = 10) -> None:
        """Stop the loop (safe from a signal handler); what is still running or waiting gets an error event."""
        self._closed = True
        self.inbox.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- the loop (engine thread) -----------------------------------------------------------------------------

    def run(self, after: Callable[[], None] | None = None) -> None:
        """The decoding loop, until `close`. `after` is called after every pass of the loop and once at the end,
        on this thread: where a caller delivers a pass's events together (openhcx.serve.process)."""
        for _ in self.passes():
            if after is not None:
                after()

    def passes(self) -> Iterator[None]:
        """The decoding loop as an iterator: it yields after every pass and once at the end, so a caller on this
        thread can hand on what the pass finished (the harness's `LocalGenerator` yields answers as they end)."""
        while not self._closed:
            self._take(block=not self.rows and not self.waiting)
            self._pass()
            yield
        while not self.inbox.empty():  # requests submitted as the loop stopped end too (and no wake-up is left)
            if (request := self.inbox.get()) is not None:
                self.waiting.append(request)
        for request in [*self.rows, *self.waiting]:
            request.on_event(Event("the server is shutting down", len(request.completion.ids), "error"))
        self.rows, self.waiting, self.length = [], deque(), 0
        yield

    @torch.inference_mode()
    def _pass(self) -> None:
        """Retire, admit, step: one pass of the loop."""
        start = time.perf_counter()
        try:
            self._retire()
            admitted = time.perf_counter()
            self._admit()
            self.counters["prefill_s"] += time.perf_counter() - admitted
            if self.rows:
                self._step()
            self.counters["busy_s"] += time.perf_counter() - start
        except Exception as e:  # a failed step fails its requests, never the server
            log.exception("decoding step failed")
            self.counters["errors"] += 1
            for request in [*self.rows]:
                request.on_event(Event(f"decoding failed: {type(e).__name__}: {e}", len(request.completion.ids),
                                       "error"))
            self.rows, self.length = [], 0

    def _take(self, block: bool) -> None:
        while True:
            try:
                request = self.inbox.get(block=block)
            except queue.Empty:
                return
            if request is None:
                return
            self.waiting.append(request)
            block = False

    def _retire(self) -> None:
        """Free the rows of cancelled requests (finished ones leave in `_emit`); each gets a last event."""
        for i in reversed(range(len(self.rows))):
            if self.rows[i].cancelled:
                self._cancelled(self.rows[i])
                self._free(i)
        if any(r.cancelled for r in self.waiting):
            for r in self.waiting:
                if r.cancelled:
                    self._cancelled(r)
            self.waiting = deque(r for r in self.waiting if not r.cancelled)

    @staticmethod
    def _cancelled(request: Request) -> None:
        request.on_event(Event("", len(request.completion.ids), "cancelled"))

    def _free(self, i: int) -> None:
        last = len(self.rows) - 1
        if i != last:  # the last occupied row moves into the freed one: occupied rows stay 0..n-1
            c, used = self.cache, self.length
            for t in (*c.k, *c.v):
                t[i, :, :used] = t[last, :, :used]
            c.valid[i, :used], c.real[i] = c.valid[last, :used], c.real[last]
            self.rows[i] = self.rows[last]
        self.rows.pop()
        if not self.rows:
            self.length = 0

    def _admit(self) -> None:
        """Prefill waiting prompts, group by group, until the rows are full or this pass's token budget is spent.

        Every waiting prompt that fits joins before the next step: a request left waiting through a step is a
        client whose row stays empty for it (at 8 concurrent clients a quarter of one prompt's life was spent
        so). The budget bounds how long the running rows wait for the prefills.
        """
        budget = self.prefill_tokens
        while self.waiting and len(self.rows) < self.max_batch:
            group = self._group(budget)
            if not group:
                return
            budget -= max(len(r.prompt) for r in group) * len(group)
            self._prefill(group)

    def _group(self, budget: int) -> list[Request]:
        """Waiting prompts to prefill in one left-padded pass within `budget` padded tokens (the first prompt of
        a pass goes whatever its length; a long one goes alone)."""
        group: list[Request] = []
        while self.waiting and len(self.rows) + len(group) < self.max_batch:
            if group and max(len(group[0].prompt), len(self.waiting[0].prompt)) >= PREFILL_ALONE:
                break
            lengths = [len(r.prompt) for r in [*group, self.waiting[0]]]
            padded = max(lengths) * len(lengths)
            # A prompt joins the group while the padded pass stays within budget and wastes at most a quarter of
            # its tokens on padding: prefill is compute-bound, so padding costs what real tokens cost.
            if padded > budget and (group or budget < self.prefill_tokens):
                break
            if group and padded > 1.25 * sum(lengths):
                break
            group.append(self.waiting.popleft())
        return group

    def _prefill(self, group: list[Request]) -> None:
        width = max(len(r.prompt) for r in group)
        if width > self.length:  # shift the running rows right so the new prompts end where they end
            self._shift(0, width - self.length, self.length)
            self.length = width
        n, k, start = len(self.rows), len(group), self.length - width
        c = self.cache
        ids = torch.full((k, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(k, width, dtype=torch.bool)
        for row, r in enumerate(group):
            ids[row, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[row, width - len(r.prompt):] = True
        # Prefill into a cache of their own, as generate() would, then copy into place: attention then spans the
        # prompts only, not the running rows' history before them (50 tokens after a 300-token offset: 4.2 ms
        # against 2.8 ms), and the prompts' numerics are generate()'s.
        try:
            fresh = KVCache(self.model.config, k, width, self.device, c.k[0].dtype)
            fresh.head = self._head(k)
            logits = self.model(ids.to(self.device), attn_mask=mask.to(self.device), cache=fresh,
                                last_only=True)[:, -1]
        except Exception as e:  # out of memory, say: these prompts fail; the running rows are untouched
            log.exception("prefill failed")
            self.counters["errors"] += 1
            for r in group:
                r.on_event(Event(f"prefill failed: {type(e).__name__}: {e}", 0, "error"))
            return
        for big, small in zip((*c.k, *c.v), (*fresh.k, *fresh.v)):
            big[n:n + k, :, start:self.length] = small
        c.valid[n:n + k, :start] = False
        c.valid[n:n + k, start:self.length] = fresh.valid
        c.real[n:n + k] = fresh.real
        self.rows += group
        self.counters["prefills"] += 1
        for r in group:
            if r.seen is None and r.sampling.repetition_penalty != 1.0:
                r.seen = torch.zeros(1, self.model.config.vocab_size, dtype=torch.bool, device=self.device)
                r.seen[0, torch.tensor(r.prompt, device=self.device)] = True
        self._emit(list(range(n, n + k)), logits)

    def _step(self) -> None:
        n = len(self.rows)
        if self.length >= self.max_context or 2 * self._longest() < self.length:
            self._compact()
        c = self.cache
        c.valid[:n, self.length] = True  # the slot this step writes (it may hold a flag from an earlier row)
        feed = torch.tensor([r.completion.ids[-1] for r in self.rows], device=self.device)[:, None]
        view = c.rows(n, length=self.length, padded=not bool(c.valid[:n, :self.length].all()), head=self._head(n))
        logits = self.model(feed, cache=view, last_only=True)[:, -1]
        self.length += 1
        self.counters["steps"] += 1
        self._emit(list(range(n)), logits)

    def _head(self, rows: int) -> torch.Tensor | None:
        """The output head's decoding layout for this many rows (CPU), as generate() picks it."""
        return self.heads.get(1 if rows == 1 else self.max_batch)

    def _longest(self) -> int:
        """Cached tokens of the longest row: its prompt and every token fed back so far."""
        return max(len(r.prompt) + len(r.completion.ids) - 1 for r in self.rows)

    def _compact(self) -> None:
        keep = self._longest()
        self._shift(self.length - keep, 0, keep)
        self.length = keep
        self.counters["compactions"] += 1

    def _shift(self, src: int, dst: int, count: int) -> None:
        """Move slots [src, src+count) of every occupied row to [dst, dst+count); slots before dst become unused."""
        n, c = len(self.rows), self.cache
        if n == 0 or count == 0:
            return
        for t in (*c.k, *c.v):
            t[:n, :, dst:dst + count] = t[:n, :, src:src + count].clone()
        c.valid[:n, dst:dst + count] = c.valid[:n, src:src + count].clone()
        c.valid[:n, :dst] = False

    def _emit(self, rows: list[int], logits: torch.Tensor) -> None:
        """Choose each row's next token, send its text, and retire the rows that ended."""
        chosen: dict[int, int] = {}
        greedy = [i for i in rows if self.rows[i].greedy]
        if len(greedy) == len(rows):  # the common case needs no gather (a copy of every row's logits)
            chosen.update(zip(rows, argmax(logits).tolist()))
        elif greedy:
            picked = argmax(logits[[i - rows[0] for i in greedy]])
            chosen.update(zip(greedy, picked.tolist()))
        for i in rows:
            r = self.rows[i]
            if not r.greedy:
                token = next_tokens(logits[i - rows[0]][None], r.seen, r.sampling, r.generator)
                if r.seen is not None:
                    r.seen[0, token] = True
                chosen[i] = int(token[0])
        ended = []
        for i in rows:
            r, token = self.rows[i], chosen[i]
            going = record_token(r.completion, i, token, r.sampling, self.decode, None)
            done = r.completion.ids
            if going and (len(done) >= r.sampling.max_new_tokens or len(r.prompt) + len(done) >= self.max_context):
                going = False  # finish_reason stays "length"
            if going:
                delta = r.text.push(token) if r.stream else ""
                if delta:
                    r.on_event(Event(delta, len(done)))
            else:  # the rest of the final text (cut before a stop string, without a stop id)
                final = finish_text(r.completion, self.decode)
                r.on_event(Event(r.text.finish(final) if r.stream else final, len(done), r.completion.finish_reason))
                ended.append(i)
        self.counters["generated_tokens"] += len(rows)
        for i in reversed(ended):
            self._free(i)
