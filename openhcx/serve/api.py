"""The OpenAI-compatible HTTP API over the engine: FastAPI routes, request schemas, limits and errors.

Routes: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (with `suffix`:
fill-in-the-middle through the model's FIM sentinels). Replies, stream chunks (server-sent events ending in
`data: [DONE]`) and errors follow the OpenAI shapes, so the official clients work unchanged. Every refusal is
a 4xx with `{"error": {"message", "type", "param", "code"}}`: a wrong field or type is a 400 naming the field,
a missing or wrong bearer token 401, an unknown model 404, a body over the limit 413, more requests in flight
than allowed 429. A client that goes away (mid-stream or while waiting) cancels its sequences, which frees their
rows at the engine's next step. Text is encoded off the event loop, one prompt at a time; user text never
becomes special tokens (the codecs in openhcx.chat keep special strings as text).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Annotated, Any, AsyncIterator, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from openhcx.chat import TextCodec
from openhcx.io import UserError
from openhcx.model.generate import Sampling, psm_prompt
from openhcx.serve.engine import Engine, Event
from openhcx.serve.process import EngineProcess


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is answered with a 4xx naming it."""

    max_tokens: int = 2048  # most completion tokens per choice
    max_n: int = 8  # most choices (n times the number of prompts) per request
    max_concurrent: int = 64  # requests in flight (decoding or waiting); more get 429
    max_body_bytes: int = 1 << 20
    max_stop: int = 4  # stop strings per request, as OpenAI allows


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


# Where pydantic's error location names a union member ("str", "list[TextPart]") rather than a field.
UNION_TAG = re.compile(r"^(str|int|float|bool|none|list|dict)$|^[\w-]+\[")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---- request schemas (what /openapi.json publishes) --------------------------------------------------------

Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
Stop = str | list[str] | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a 400 naming it, not silently ignored


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class StreamOptions(Strict):
    include_usage: bool = False


class Common(Strict):
    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0  # 0 keeps every token (an extension, as in vLLM)
    repetition_penalty: Annotated[float, Field(ge=0.01, le=10)] = 1.0  # an extension, as in vLLM
    n: Annotated[int, Field(ge=1)] = 1
    stop: Stop = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Literal[0] = 0  # accepted at the default only (use repetition_penalty)
    frequency_penalty: Literal[0] = 0
    user: str | None = None


class ChatRequest(Common):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: Literal[False] | None = None


class CompletionRequest(Common):
    prompt: str | Annotated[list[str], Field(min_length=1)]
    suffix: str | None = None
    echo: Literal[False] = False
    logprobs: None = None
    best_of: Literal[1] | None = None


# ---- the app -----------------------------------------------------------------------------------------------


def build_app(engine: Engine | EngineProcess, codec: TextCodec, model_name: str, limits: Limits = Limits(),
              api_key: str | None = None) -> FastAPI:
    """The ASGI app serving `engine` under `model_name`."""
    app = FastAPI(title="OpenHCX", version="1", docs_url=None, redoc_url=None)
    encoder = ThreadPoolExecutor(1, thread_name_prefix="openhcx-encode")  # tokenizers: one prompt at a time
    mailbox = Mailbox()
    in_flight = [0]
    created = int(time.time())

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer <key>)", code="invalid_api_key")

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body" and not UNION_TAG.match(str(p))]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":  # its location is a character offset, not a field
            message, param = f"the body is not valid JSON ({first.get('msg')} at character {param})", None
        elif first.get("type") == "extra_forbidden":
            message = f"{param}: unrecognized field"
        else:
            message = f"{param or 'body'}: {first.get('msg')}"
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail), "invalid_request_error"), status_code=e.status_code,
                            headers=e.headers)

    @app.exception_handler(Exception)
    async def server_error(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict:
        """Liveness and load: the engine's occupied rows, queue and counters."""
        return {"status": "ok", "model": model_name, "requests": in_flight[0], **engine.stats()}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "openhcx", "max_model_len": engine.max_context}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatRequest, request: Request):
        check_model(body.model)
        refuse_if_full()  # before any encoding work
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": text_of(m)}
                    for m in body.messages]
        prompt = await encode(lambda: codec.chat_prompt(messages), "messages")
        max_tokens = body.max_completion_tokens or body.max_tokens
        return await respond(body, request, [prompt], max_tokens, codec.turn_end_ids, chat=True)

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        refuse_if_full()  # before any encoding work
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if body.suffix is not None and codec.fim is None:
            raise APIError(400, "suffix: this model's tokenizer has no fill-in-the-middle tokens", "suffix")
        prompts = []
        for i, text in enumerate(texts):
            param = "prompt" if isinstance(body.prompt, str) else f"prompt.{i}"
            if body.suffix is None:
                prompts.append(await encode(lambda: codec.encode(text), param))
            else:
                suffix = body.suffix
                prompts.append(await encode(lambda: psm_prompt(codec.encode(text), codec.encode(suffix), codec.fim),
                                            param))
        return await respond(body, request, prompts, body.max_tokens, codec.end_ids, chat=False)

    def refuse_if_full() -> None:
        if in_flight[0] >= limits.max_concurrent:
            raise APIError(429, f"{limits.max_concurrent} requests are in flight already; retry later",
                           code="too_many_requests", type="rate_limit_error")

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist here; this server serves {model_name!r}",
                           "model", "model_not_found")

    async def encode(fn, param: str) -> list[int]:
        try:
            ids = await asyncio.get_running_loop().run_in_executor(encoder, fn)
        except UserError as e:
            raise APIError(400, f"{param}: {e}", param) from e
        if not ids:
            raise APIError(400, f"{param}: encodes to no tokens", param)
        if len(ids) >= engine.max_context:
            raise APIError(400, f"{param}: {len(ids)} tokens; this model's context is {engine.max_context} tokens, "
                                "prompt and completion together", param, "context_length_exceeded")
        return ids

    async def respond(body: Common, request: Request, prompts: list[list[int]], max_tokens: int | None,
                      end_ids: tuple[int, ...], chat: bool):
        sampling = sampling_of(body, prompts, max_tokens, end_ids)
        refuse_if_full()  # again: others may have come in while this one was encoded
        in_flight[0] += 1
        handles: list = []
        released: list[bool] = []

        def release() -> None:  # once per request, however it ends
            if not released:
                released.append(True)
                for h in handles:
                    h.cancel()
                in_flight[0] -= 1

        try:
            queues = submit([(p, j) for p in prompts for j in range(body.n)], sampling, handles, body.stream)
        except BaseException:
            release()
            raise
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        usage = {"prompt_tokens": sum(len(p) for p in prompts) * body.n}
        if body.stream:
            return EventStream(stream(rid, chat, body, queues, usage), release)
        watcher = asyncio.create_task(cancel_on_disconnect(request, handles))
        try:
            results = await asyncio.gather(*(collect(q) for q in queues))
        finally:
            watcher.cancel()
            release()
        if any(reason == "cancelled" for _, reason, _ in results):
            return Response(status_code=499)  # the client went away; nobody reads this
        failed = next((text for text, reason, _ in results if reason == "error"), None)
        if failed is not None:
            raise APIError(500, failed, type="server_error")
        usage["completion_tokens"] = sum(n for _, _, n in results)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        out = []
        for i, (text, reason, _) in enumerate(results):
            choice = {"index": i, "finish_reason": reason, "logprobs": None}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            out.append(choice)
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name, "choices": out, "usage": usage}

    def sampling_of(body: Common, prompts: list[list[int]], max_tokens: int | None,
                    end_ids: tuple[int, ...]) -> Sampling:
        choices = body.n * len(prompts)
        if choices > limits.max_n:
            raise APIError(400, f"n: {choices} choices asked for; at most {limits.max_n} per request", "n")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > limits.max_stop or any(not s for s in stops):
            raise APIError(400, f"stop: at most {limits.max_stop} non-empty strings", "stop")
        room = engine.max_context - max(len(p) for p in prompts)
        if max_tokens is None:
            max_tokens = min(limits.max_tokens, room)
        elif max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens: {max_tokens} is over this server's limit of {limits.max_tokens}",
                           "max_tokens")
        elif max_tokens > room:
            raise APIError(400, f"max_tokens: {max_tokens} completion tokens do not fit after a prompt of "
                                f"{engine.max_context - room} tokens in the {engine.max_context}-token context",
                           "max_tokens", "context_length_exceeded")
        return Sampling(max_new_tokens=max_tokens, temperature=body.temperature, top_k=body.top_k,
                        top_p=body.top_p, repetition_penalty=body.repetition_penalty, stop_ids=end_ids,
                        stop_strings=tuple(stops), seed=body.seed)

    def submit(choices: list[tuple[list[int], int]], sampling: Sampling, handles: list,
               stream: bool) -> list[asyncio.Queue]:
        mailbox.loop = asyncio.get_running_loop()
        queues = []
        for prompt, j in choices:
            q: asyncio.Queue[Event] = asyncio.Queue()

            def deliver(event: Event, q=q) -> None:  # engine (or link) thread -> this loop
                mailbox.post(q, event)

            seeded = sampling if sampling.seed is None else replace(sampling, seed=sampling.seed + j)
            try:
                handles.append(engine.submit(prompt, seeded, deliver, stream))
            except UserError as e:
                raise APIError(400, str(e), "prompt") from e
            queues.append(q)
        return queues

    async def collect(q: asyncio.Queue) -> tuple[str, str, int]:
        parts = []
        while True:
            event = await q.get()
            parts.append(event.text)
            if event.finish_reason is not None:
                text = event.text if event.finish_reason == "error" else "".join(parts)
                return text, event.finish_reason, event.completion_tokens

    async def stream(rid: str, chat: bool, body: Common, queues, usage: dict) -> AsyncIterator[str]:
        created_at = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list, **extra) -> str:
            data = {"id": rid, "object": kind, "created": created_at, "model": model_name, "choices": choices,
                    **extra}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        def piece(i: int, text: str | None, reason: str | None, first: bool = False) -> dict:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                return {"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}
            return {"index": i, "text": text or "", "finish_reason": reason, "logprobs": None}

        merged: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        async def forward(i: int, q: asyncio.Queue) -> None:
            while True:
                event = await q.get()
                await merged.put((i, event))
                if event.finish_reason is not None:
                    return

        # One choice reads its queue directly; several are merged by one task each.
        tasks = [asyncio.create_task(forward(i, q)) for i, q in enumerate(queues)] if len(queues) > 1 else []
        source = merged if tasks else queues[0]

        async def next_events() -> list[tuple[int, Event]]:
            """What has arrived: at least one event; text of one choice that queued up is sent as one chunk."""
            items = [await source.get()]
            while not source.empty():
                items.append(source.get_nowait())
            items = [item if tasks else (0, item) for item in items]
            joined: list[tuple[int, Event]] = []
            for i, event in items:
                if joined and joined[-1][0] == i and joined[-1][1].finish_reason is None:
                    last = joined[-1][1]
                    event = Event(last.text + event.text, event.completion_tokens, event.finish_reason)
                    joined[-1] = (i, event)
                else:
                    joined.append((i, event))
            return joined

        try:
            if chat:
                yield chunk([piece(i, None, None, first=True) for i in range(len(queues))])
            open_, tokens = len(queues), 0
            while open_:
                for i, event in await next_events():
                    if event.finish_reason == "error":
                        yield f"data: {json.dumps(error_body(event.text, 'server_error'))}\n\n"
                        return
                    if event.finish_reason is not None:
                        open_ -= 1
                        tokens += event.completion_tokens
                    yield chunk([piece(i, event.text, event.finish_reason)])
            if body.stream_options is not None and body.stream_options.include_usage:
                usage.update(completion_tokens=tokens, total_tokens=usage["prompt_tokens"] + tokens)
                yield chunk([], usage=usage)
            yield "data: [DONE]\n\n"
        finally:
            for t in tasks:
                t.cancel()

    return app


class Mailbox:
    """Events from another thread (the engine's, or the link to its process) into the event loop, woken once per
    batch rather than once per token: a step of 32 rows makes one wake-up of the loop, not 32."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: list[tuple[asyncio.Queue, Event]] = []
        self.lock = threading.Lock()

    def post(self, q: asyncio.Queue, event: Event) -> None:
        with self.lock:
            self.pending.append((q, event))
            if len(self.pending) > 1:
                return  # a wake-up is on its way
        try:
            self.loop.call_soon_threadsafe(self.flush)
        except RuntimeError:  # the loop is closed: the server is going down
            pass

    def flush(self) -> None:
        with self.lock:
            items, self.pending = self.pending, []
        for q, event in items:
            q.put_nowait(event)


class EventStream(StreamingResponse):
    """Server-sent events; `on_close` runs however the response ends, a client gone mid-stream included."""

    def __init__(self, events: AsyncIterator[str], on_close):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def text_of(message: Message) -> str:
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content)


async def cancel_on_disconnect(request: Request, handles) -> None:
    """A non-streaming client that goes away cancels its sequences (streams are cancelled by the server)."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)
    for h in handles:
        h.cancel()


def body_limit(app, max_bytes: int):
    """ASGI middleware: a request body over `max_bytes` (declared or streamed) gets 413 before it is parsed."""

    async def limited(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        too_big = JSONResponse(error_body(f"the request body is over {max_bytes} bytes", "invalid_request_error",
                                          code="request_too_large"), status_code=413)
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            return await too_big(scope, receive, send)
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise BodyTooLarge
            return message

        try:
            await app(scope, counted, send)
        except BodyTooLarge:
            await too_big(scope, receive, send)

    return limited


class BodyTooLarge(Exception):
    pass
