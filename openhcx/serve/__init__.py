"""`openhcx serve`: a checkpoint behind the OpenAI API, on uvicorn, decoding with continuous batching.

engine.py batches the running requests, process.py runs that engine in a process of its own, api.py is the HTTP
side. For many GPUs, paged attention or tensor parallelism, serve the same checkpoint directory with vLLM, SGLang
or TGI (docs/serve.md).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from openhcx.io import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def open_server(model: str, *, served_model_name: str | None = None, api_key: str | None = None,
                max_batch: int = 16, max_context: int | None = None, max_tokens: int = 2048, max_n: int = 8,
                max_concurrent: int = 64, max_body_bytes: int = 1 << 20, device: str = "cpu",
                dtype: str | None = None, threads: int | None = None, on_exit=None):
    """(ASGI app, engine, served name) for a checkpoint directory: what `serve` runs, and what tests start.
    The engine decodes in a process of its own (openhcx.serve.process); `close()` it when done."""
    from openhcx.chat import load_codec
    from openhcx.serve.api import Limits, body_limit, build_app
    from openhcx.serve.process import EngineProcess

    limits = Limits(max_tokens=max_tokens, max_n=max_n, max_concurrent=max_concurrent, max_body_bytes=max_body_bytes)
    for key in ("max_tokens", "max_n", "max_concurrent", "max_body_bytes"):
        if getattr(limits, key) < 1:
            raise UserError(f"{key}={getattr(limits, key)}: at least 1")
    codec = load_codec(model)
    engine = EngineProcess(model, device=device, dtype=dtype, threads=threads, on_exit=on_exit,
                           max_batch=max_batch, max_context=max_context)
    codec.encode("안녕하세요. Hello.")  # loads the morpheme analyser now, not on the first request
    name = served_model_name or Path(model).resolve().name
    app = build_app(engine, codec, name, limits, api_key)
    return body_limit(app, max_body_bytes), engine, name


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, served_model_name: str | None = None,
          api_key: str | None = None, max_batch: int = 16, max_context: int | None = None, max_tokens: int = 2048,
          max_n: int = 8, max_concurrent: int = 64, max_body_bytes: int = 1 << 20, device: str = "cpu",
          dtype: str | None = None, threads: int | None = None, log_level: str = "info") -> None:
    """Serve a checkpoint over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /health).

    Args:
        model: Checkpoint directory (ours, or any HF Llama directory with safetensors and a tokenizer).
        host: Address to listen on; loopback by default. Anything else should have an API key.
        port: TCP port.
        served_model_name: The `model` name clients send; default: the directory's name.
        api_key: Bearer token every /v1 request must carry; default: $OPENHCX_API_KEY, or none.
        max_batch: Sequences decoded together (KV-cache rows); more requests wait for a free row.
        max_context: Tokens per sequence, prompt and completion (default: the model's context).
        max_tokens: Most completion tokens a request may ask for (and the default when it does not say).
        max_n: Most choices per request (n times the number of prompts).
        max_concurrent: Requests in flight; more are refused with 429.
        max_body_bytes: Largest request body; larger ones get 413.
        device: Torch device, e.g. cpu or cuda.
        dtype: Weight dtype (float32, bfloat16, float16); default: as saved.
        threads: torch's CPU threads in the engine process; default: one core fewer than the machine has (at
            least 1), leaving one to HTTP and tokenization. (Decoding's OpenMP threads wait for each other at
            every op, so one on a core that HTTP holds stalls the whole step.)
        log_level: uvicorn's log level (critical, error, warning, info, debug).
    """
    import signal
    import threading

    import uvicorn

    api_key = api_key or os.environ.get("OPENHCX_API_KEY") or None
    died: list[int | None] = []
    server: uvicorn.Server | None = None

    def engine_died(code: int | None) -> None:
        died.append(code)
        if server is not None:
            server.should_exit = True

    app, engine, name = open_server(model, served_model_name=served_model_name, api_key=api_key,
                                    max_batch=max_batch, max_context=max_context, max_tokens=max_tokens,
                                    max_n=max_n, max_concurrent=max_concurrent, max_body_bytes=max_body_bytes,
                                    device=device, dtype=dtype, threads=threads, on_exit=engine_died)
    if host not in LOOPBACK and api_key is None:
        print(f"warning: listening on {host} without an API key: anyone who can reach it can use it",
              file=sys.stderr)
    print(f"serving {name!r} at http://{host}:{port}/v1: {engine.max_batch} rows x {engine.max_context} tokens, "
          f"KV cache {engine.cache_bytes / 2**20:.1f} MiB, engine process {engine.pid}", file=sys.stderr, flush=True)
    logging.basicConfig(level=logging.WARNING)
    # uvicorn on a thread of its own, so that its shutdown is ours: stop HTTP, then the engine.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=5))
    if died:
        server.should_exit = True
    http = threading.Thread(target=server.run, name="openhcx-http")

    def stop(*_) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    http.start()
    try:
        http.join()
    finally:
        engine.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if died:
        raise SystemExit(f"error: the engine process stopped (exit code {died[0]}); the server stopped with it")
    if not server.started:
        raise UserError(f"could not listen on {host}:{port} (see the error above)")
