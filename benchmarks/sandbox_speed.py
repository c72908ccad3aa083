"""Sandbox throughput on HumanEval's 164 canonical solutions, against running them one by one without limits.

Sandbox: `sandbox.run_many` with one worker per core. Plain: `subprocess.run([python, file])` for each program
in turn, with this interpreter (sys.executable) and, when the sandbox uses another one (as root it runs the
programs as `nobody`, who may be unable to read this one), with that interpreter too, so the ratio shows the
sandbox's own cost. Prints programs/s, median over --repeats alternated runs, the ratios and the machine.
Usage:
    python benchmarks/sandbox_speed.py --humaneval ../shared/benchmarks/humaneval
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openhcx.eval import sandbox
from openhcx.eval.tasks.code import humaneval_program, load_humaneval


def plain(programs: list[str], python: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        for i, source in enumerate(programs):
            path = Path(d, f"p{i}.py")
            path.write_text(source, encoding="utf-8")
            subprocess.run([python, str(path)], cwd=d, check=True, capture_output=True)


def sandboxed(programs: list[str]) -> None:
    outcomes = sandbox.run_many(programs)
    failed = [o.reason for o in outcomes if not o.passed]
    if failed:
        raise SystemExit(f"{len(failed)} canonical solutions failed in the sandbox: {failed[:3]}")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown CPU")
    return f"{os.cpu_count()} cores (nproc), {model}, load average {os.getloadavg()[0]:.1f} at start"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--humaneval", default=str(Path(__file__).resolve().parents[2] / "shared/benchmarks/humaneval"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    programs = [humaneval_program(it, it.target) for it in load_humaneval(Path(args.humaneval), "test")]
    runners = {"sandbox": lambda: sandboxed(programs), f"plain ({sys.executable})": lambda: plain(programs, sys.executable)}
    if sandbox.interpreter() != sys.executable:
        runners[f"plain ({sandbox.interpreter()})"] = lambda: plain(programs, sandbox.interpreter())
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "|", machine())
    print(f"sandbox interpreter: {sandbox.interpreter()}")
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():  # alternated, so machine noise hits all of them alike
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rates = {name: len(programs) / statistics.median(t) for name, t in times.items()}
    for name, rate in rates.items():
        runs = ", ".join(f"{len(programs) / s:.1f}" for s in times[name])
        print(f"{name}: {rate:.1f} programs/s (runs: {runs})")
    for name, rate in list(rates.items())[1:]:
        print(f"sandbox / {name}: {rates['sandbox'] / rate:.2f}x")


if __name__ == "__main__":
    main()
