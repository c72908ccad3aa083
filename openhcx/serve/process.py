"""The decoding engine in a process of its own, so that decoding and HTTP never queue for one Python lock.

In one process the decoding loop and the HTTP server share the GIL: every torch call in a step lets the HTTP
thread in, and the step then waits for that thread's Python (parsing, tokenizing, server-sent events). Under
load such a server used one core in all and decoded at half the engine's own rate (docs/benchmarks.md,
"Serving"). vLLM splits its API server from its engine core for the same reason.

Here the engine runs on the main thread of a spawned child (fork would copy torch's thread pools and locks
mid-use) and the server talks to it through one stdlib `multiprocessing` pipe: submissions and cancellations
go in; each pass of the decoding loop comes back as one message holding that pass's events and the engine's
counters. One peer and small pickled batches need no broker or message library. `EngineProcess` offers what
the app uses of `Engine` (submit, stats, close, max_context, max_batch, cache_bytes), so the app serves
either; `openhcx serve` uses this one.

If the engine process dies, every open request gets an error event and `on_exit` is called (the server stops,
exit 1); if the server dies, the engine process sees its pipe close and exits.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import time
from typing import Callable

from openhcx.io import UserError
from openhcx.model.generate import Sampling
from openhcx.serve.engine import Event, check_request

STATS_EVERY_S = 0.1  # a pass with no events still sends the counters this often


class Handle:
    """A submitted request, as the server holds it."""

    def __init__(self, owner: EngineProcess, rid: int):
        self.owner, self.rid = owner, rid

    def cancel(self) -> None:
        """Free the request's row at the engine's next step (a client that went away)."""
        self.owner._cancel(self.rid)


class EngineProcess:
    """An `Engine` in a child process, with the engine's interface. Loads the checkpoint there; raises
    UserError (the child's message) if it cannot."""

    def __init__(self, model: str, *, device: str = "cpu", dtype: str | None = None, threads: int | None = None,
                 on_exit: Callable[[int | None], None] | None = None, **engine_options):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_engine_main, name="openhcx-engine", daemon=True,
                                        args=(child, model, device, dtype, threads, engine_options))
        self._process.start()
        child.close()
        try:
            kind, info = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise UserError(f"{model}: the engine process exited while loading it "
                            f"(exit code {self._process.exitcode})") from None
        if kind == "failed":
            self._process.join(5)
            raise UserError(info)
        self.max_context, self.max_batch, self.cache_bytes = info["max_context"], info["max_batch"], info["cache_bytes"]
        self.pid = self._process.pid
        self.on_exit = on_exit
        self._stats = info["stats"]
        self._handlers: dict[int, Callable[[Event], None]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()  # one sender at a time; registration against the reader's final sweep
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="openhcx-engine-link", daemon=True)
        self._reader.start()

    def submit(self, prompt: list[int], sampling: Sampling, on_event: Callable[[Event], None],
               stream: bool = True) -> Handle:
        """As `Engine.submit`: `on_event` is called on this process's link thread."""
        with self._lock:  # checked under the lock: the link thread may be marking the engine closed
            check_request(prompt, sampling, self.max_context, self._closed)
            rid = next(self._ids)
            self._handlers[rid] = on_event
            self._conn.send(("submit", rid, list(prompt), sampling, stream))
        return Handle(self, rid)

    def stats(self) -> dict:
        """The engine's counters as of its last pass, and its process id."""
        return {**self._stats, "engine_pid": self.pid}

    def close(self, timeout: float = 10) -> None:
        """Stop the engine (what still runs or waits gets an error event) and wait for its process to end."""
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self._conn.send(("close",))
                except OSError:
                    pass
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._reader.join(timeout)

    def _cancel(self, rid: int) -> None:
        with self._lock:
            if rid in self._handlers and not self._closed:
                self._conn.send(("cancel", rid))

    def _read(self) -> None:
        """Deliver the engine's events until its pipe closes; then fail whatever is still open."""
        try:
            while True:
                _, events, self._stats = self._conn.recv()
                for rid, event in events:
                    handler = self._handlers.pop(rid, None) if event.finish_reason else self._handlers.get(rid)
                    if handler is not None:
                        handler(event)
        except (EOFError, OSError):
            pass
        self._process.join(5)
        with self._lock:
            expected, self._closed = self._closed, True
            left, self._handlers = self._handlers, {}
        code = self._process.exitcode
        for handler in left.values():
            handler(Event(f"the engine process stopped (exit code {code})", 0, "error"))
        self._stats = {**self._stats, "running": 0, "waiting": 0}
        if not expected and self.on_exit is not None:
            self.on_exit(code)


def _engine_main(conn, model: str, device: str, dtype: str | None, threads: int | None, options: dict) -> None:
    """The child: load the checkpoint, run the loop on this (main) thread, serve the pipe on another."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server stops us
    import torch

    from openhcx.chat import load
    from openhcx.serve.engine import Engine

    try:
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))
        net, codec = load(model, device, dtype)
        engine = Engine(net, codec.decode, pad_id=codec.pad_id, background=False, **options)
    except UserError as e:
        conn.send(("failed", str(e)))
        return
    conn.send(("ready", {"max_context": engine.max_context, "max_batch": engine.max_batch,
                         "cache_bytes": engine.cache_bytes, "stats": engine.stats()}))
    lock, registry = threading.Lock(), threading.Lock()  # the pipe's sending end; `requests`
    outbox: list[tuple[int, Event]] = []
    requests = {}  # rid -> Request, while it runs or waits
    last = [time.monotonic()]

    def on_event(rid: int) -> Callable[[Event], None]:
        def post(event: Event) -> None:  # engine thread
            outbox.append((rid, event))
            if event.finish_reason:
                with registry:
                    requests.pop(rid, None)
        return post

    def send(events: list) -> None:
        with lock:
            try:
                conn.send(("events", events, engine.stats()))
            except OSError:  # the server is gone; the link thread closes the engine
                pass
        last[0] = time.monotonic()

    def after() -> None:  # end of a pass of the loop
        if outbox or time.monotonic() - last[0] > STATS_EVERY_S:
            events = outbox[:]
            del outbox[:len(events)]
            send(events)

    def link() -> None:
        try:
            while (message := conn.recv())[0] != "close":
                if message[0] == "cancel":
                    if (request := requests.get(message[1])) is not None:
                        request.cancel()
                    continue
                _, rid, prompt, sampling, stream = message
                try:
                    with registry:  # registered before its last event can remove it
                        requests[rid] = engine.submit(prompt, sampling, on_event(rid), stream)
                except UserError as e:
                    send([(rid, Event(str(e), 0, "error"))])
        except (EOFError, OSError):  # the server died
            pass
        engine.close()

    threading.Thread(target=link, name="openhcx-engine-link", daemon=True).start()
    engine.run(after)
