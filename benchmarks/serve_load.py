"""Load test of `openhcx serve` on loopback: continuous batching against the same server one request at a time.

Starts `openhcx serve MODEL` as its own process, then sends the same request list twice with the official
`openai` async client: from one client, one request after another (the baseline), and from each number of
`--clients` concurrent clients. Requests alternate between chat (the demo's held-out prompts) and plain
completions (openings of demo corpus documents), half of them streamed; all greedy, so every pass must give the
texts of the first baseline pass, which the script checks. Prints per pass: wall time, requests/s, completion
tokens/s, p50/p99 latency, p50/p99 time to first token (streamed requests), errors; then the throughput ratio.

`--rounds` repeats the baseline and the concurrent passes back to back, each ratio against its own round's
baseline, and ends with the median ratio: on a shared machine the speed drifts by more than the effect of a
change between passes a minute apart.

    python benchmarks/serve_load.py [--model runs/demo/sft/model] [--requests 500] [--clients 8 32]
        [--max-tokens 48] [--max-batch 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import openai

ROOT = Path(__file__).resolve().parents[1]


def requests(n: int, max_tokens: int) -> list[dict]:
    chats = [json.loads(line)["messages"] for line in open(ROOT / "data/demo/heldout_prompts.jsonl", encoding="utf-8")]
    texts = []
    for label in ("ko", "en", "code"):
        with gzip.open(ROOT / f"data/demo/corpus/{label}.jsonl.gz", "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"][:200] for _, line in zip(range(100), f)]
    out = []
    for i in range(n):
        kind = "chat" if i % 2 == 0 else "completion"
        j = i // 2
        body = {"messages": chats[j % len(chats)]} if kind == "chat" else {"prompt": texts[j % len(texts)]}
        out.append({"kind": kind, "stream": i % 4 in (1, 2), "max_tokens": max_tokens, **body})
    return out


async def one(client: openai.AsyncOpenAI, model: str, req: dict) -> dict:
    args = dict(model=model, max_tokens=req["max_tokens"], temperature=0)
    start = time.perf_counter()
    first = None
    if req["kind"] == "chat":
        call = client.chat.completions.create(messages=req["messages"], **args,
                                              **({"stream": True, "stream_options": {"include_usage": True}}
                                                 if req["stream"] else {}))
    else:
        call = client.completions.create(prompt=req["prompt"], **args,
                                         **({"stream": True, "stream_options": {"include_usage": True}}
                                            if req["stream"] else {}))
    reply = await call
    if not req["stream"]:
        choice = reply.choices[0]
        text = choice.message.content if req["kind"] == "chat" else choice.text
        return {"text": text, "tokens": reply.usage.completion_tokens, "latency": time.perf_counter() - start}
    parts, tokens = [], 0
    async for chunk in reply:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            piece = choice.delta.content if req["kind"] == "chat" else choice.text
            if piece:
                first = first or time.perf_counter()
                parts.append(piece)
    end = time.perf_counter()
    return {"text": "".join(parts), "tokens": tokens, "latency": end - start, "ttft": (first or end) - start}


async def run(url: str, model: str, reqs: list[dict], clients: int) -> tuple[list[dict | None], float]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600,
                                http_client=openai.DefaultAsyncHttpxClient(
                                    limits=httpx.Limits(max_connections=clients + 4)))
    results: list[dict | None] = [None] * len(reqs)
    todo = iter(range(len(reqs)))

    async def worker():
        for i in todo:
            try:
                results[i] = await one(client, model, reqs[i])
            except openai.OpenAIError as e:
                results[i] = {"error": f"{type(e).__name__}: {e}"}

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return results, time.perf_counter() - start


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU time of a process (this one by default), from /proc."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(server: subprocess.Popen, url: str, coro) -> tuple:
    """Run a pass; also return the CPU seconds the server (its HTTP and engine processes) and this client spent
    on it, and the engine's mean rows per decoding step."""
    engine = httpx.get(f"{url}/health").json()
    served = lambda: cpu_seconds(server.pid) + cpu_seconds(engine["engine_pid"])  # noqa: E731 (HTTP + engine)
    before = served(), cpu_seconds()
    out = asyncio.run(coro)
    after = httpx.get(f"{url}/health").json()
    rows = (after["generated_tokens"] - engine["generated_tokens"]) / max(1, after["steps"] - engine["steps"]
                                                                         + after["prefills"] - engine["prefills"])
    busy, prefill = after["busy_s"] - engine["busy_s"], after["prefill_s"] - engine["prefill_s"]
    return out, served() - before[0], cpu_seconds() - before[1], rows, busy, prefill


def summary(name: str, results: list[dict], wall: float, cpu: tuple[float, ...]) -> dict:
    ok = [r for r in results if "error" not in r]
    lat = sorted(r["latency"] for r in ok)
    ttft = sorted(r["ttft"] for r in ok if "ttft" in r)
    q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")  # noqa: E731
    tokens = sum(r["tokens"] for r in ok)
    row = {"pass": name, "requests": len(results), "errors": len(results) - len(ok), "wall_s": wall,
           "req_per_s": len(ok) / wall, "tokens": tokens, "tokens_per_s": tokens / wall,
           "p50_latency_s": statistics.median(lat), "p99_latency_s": q(lat, 0.99),
           "p50_ttft_s": statistics.median(ttft) if ttft else float("nan"), "p99_ttft_s": q(ttft, 0.99),
           "server_cpu_s": cpu[0], "client_cpu_s": cpu[1], "mean_rows": cpu[2], "engine_busy": cpu[3] / wall,
           "prefill_share": cpu[4] / max(cpu[3], 1e-9)}
    print(f"{name:>12}: {row['requests']} requests, {row['errors']} errors, {wall:.1f} s, "
          f"{row['req_per_s']:.2f} req/s, {row['tokens_per_s']:.0f} tokens/s, latency p50 {row['p50_latency_s']:.2f} s "
          f"p99 {row['p99_latency_s']:.2f} s, TTFT p50 {row['p50_ttft_s']:.3f} s p99 {row['p99_ttft_s']:.3f} s; "
          f"CPU: server {cpu[0]:.1f} s, client {cpu[1]:.1f} s; {cpu[2]:.1f} rows a step, engine busy "
          f"{100 * cpu[3] / wall:.0f}% of the time ({100 * cpu[4] / max(cpu[3], 1e-9):.0f}% of that prefilling)",
          flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs/demo/sft/model"))
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 32], help="concurrent clients, one pass each")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="baseline and concurrent passes, back to back")
    ap.add_argument("--json", help="write every pass's row here")
    args = ap.parse_args()
    if not Path(args.model).is_dir():
        print(f"{args.model}: no checkpoint (run `make demo` first, or pass --model)", file=sys.stderr)
        return 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "openhcx.cli", "serve", args.model, "--port", str(port),
                               "--served_model_name", "bench", "--max_batch", str(args.max_batch),
                               "--max_concurrent", str(max(args.clients) + 8), "--log_level", "warning"])
    rows, identical, ratios = [], [], {clients: [] for clients in args.clients}
    try:
        for _ in range(600):
            try:
                httpx.get(f"{url}/health")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        reqs = requests(args.requests, args.max_tokens)
        asyncio.run(run(url, "bench", reqs[:8], 8))  # warm-up
        reference = None
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_} of {args.rounds}", flush=True)
            (alone, alone_wall), *cpu = timed(server, url, run(url, "bench", reqs, 1))
            base = summary("one at a time", alone, alone_wall, cpu)
            rows.append({"round": round_, **base})
            reference = reference or alone
            for clients in args.clients:
                (together, wall), *cpu = timed(server, url, run(url, "bench", reqs, clients))
                row = summary(f"{clients} clients", together, wall, cpu)
                rows.append({"round": round_, **row})
                ratios[clients].append(row["tokens_per_s"] / base["tokens_per_s"])
                same = sum(a.get("text") == b.get("text") for a, b in zip(reference, together))
                identical.append(same)
                print(f"{'':>12}  throughput {ratios[clients][-1]:.2f}x one at a time; "
                      f"greedy texts identical: {same}/{len(reqs)}", flush=True)
            identical.append(sum(a.get("text") == b.get("text") for a, b in zip(reference, alone)))
        stats = httpx.get(f"{url}/health").json()
    finally:
        server.terminate()
        server.wait(30)
    for clients, values in ratios.items():
        print(f"{clients} clients: {', '.join(f'{r:.2f}x' for r in values)}; median {statistics.median(values):.2f}x "
              "one at a time")
    print(f"engine: {stats['steps']} steps, {stats['prefills']} prefills, {stats['generated_tokens']} tokens, "
          f"{stats['compactions']} compactions, {stats['errors']} errors")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "identical": identical, "engine": stats}, indent=1))
    return 0 if all(n == len(reqs) for n in identical) and not any(r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
