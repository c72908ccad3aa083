"""Run untrusted Python programs (model-written code) one process tree each, and say how each one ended.

Each program runs in a fresh temporary directory, with what the OS gives:
- rlimits on CPU seconds, address space, file size, processes and open files, set just before exec;
- its own user, network, pid, IPC and mount namespaces (util-linux `unshare`): no network but a loopback that
  is down, no sight of other processes, and nothing it starts outlives it, because the kernel kills every
  process of a pid namespace when its init exits;
- when run as root, the whole tree first drops to the unprivileged `nobody` (util-linux `setpriv`), so it cannot
  touch files it does not own and RLIMIT_NPROC binds; inside, the program holds no capabilities;
- an environment of PATH, HOME, TMPDIR and LANG only, so no secret of the parent's environment is visible.
A small init (pid 1 of the namespace) enforces the wall time, waits for the program and counts the processes
it left running. Programs run in parallel: a thread pool where each thread waits on one process tree.

Not here: a filesystem jail (a program reads whatever `nobody` may read and may write to world-writable places
such as /tmp and /dev/shm), one memory budget for a whole tree (the limit is per process), or any defence
against kernel exploits. docs/sandbox.md lists what this does and does not protect against.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
PATH = "/usr/local/bin:/usr/bin:/bin"
GRACE_S = 5  # the harness kills a tree this long after the init should have ended it itself

# The namespace's pid 1. argv: report fd, wall seconds, cpu s, address space / file size bytes, processes,
# open files, then the program's command. It writes one line to the report fd: "wall", or
# "<exit code or -signal> <cpu seconds> <processes still running>".
INIT = """
import os, resource as r, select, sys
fd, wall = int(sys.argv[1]), float(sys.argv[2])
cpu, mem, fsize, nproc, nofile = map(int, sys.argv[3:8])
os.set_inheritable(fd, False)
pid = os.fork()
if pid == 0:
    for res, soft, hard in ((r.RLIMIT_CPU, cpu, cpu + 1), (r.RLIMIT_AS, mem, mem), (r.RLIMIT_FSIZE, fsize, fsize),
                            (r.RLIMIT_NPROC, nproc, nproc), (r.RLIMIT_NOFILE, nofile, nofile), (r.RLIMIT_CORE, 0, 0)):
        r.setrlimit(res, (soft, hard))
    os.execv(sys.argv[8], sys.argv[8:])
if not select.select([os.pidfd_open(pid)], [], [], wall)[0]:
    os.write(fd, b"wall")
    os._exit(0)
status, usage = os.wait4(pid, 0)[1:]
while True:  # reap orphans that have already exited, so that only live ones count as left behind
    try:
        if os.waitpid(-1, os.WNOHANG)[0] == 0:
            break
    except ChildProcessError:
        break
left = sum(p.isdigit() and p != "1" for p in os.listdir("/proc"))
os.write(fd, f"{os.waitstatus_to_exitcode(status)} {usage.ru_utime + usage.ru_stime:.3f} {left}".encode())
"""


class SandboxError(RuntimeError):
    """The sandbox cannot run programs on this machine (a missing tool or kernel feature)."""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 10
    wall_s: float = 15
    memory_mb: int = 1024  # address space of each process
    file_mb: int = 16  # largest file it may write (its captured stdout and stderr included)
    processes: int = 32  # processes and threads at once
    open_files: int = 64
    output_bytes: int = 65536  # kept of stdout and of stderr


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed" | "failed" | "timeout" | "memory" | "killed" | "error"
    reason: str  # why it did not pass, in a line ("" when it passed)
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _tool(name: str) -> str:
    path = shutil.which(name, path=PATH)
    if path is None:
        raise SandboxError(f"sandbox: `{name}` not found on {PATH} (it comes with util-linux)")
    return path


def _command(python: str, limits: Limits, report_fd: int) -> list[str]:
    setpriv = _tool("setpriv")
    drop = ["--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"] if os.geteuid() == 0 else []
    mb = 1024 * 1024
    return [
        setpriv, "--no-new-privs", *drop, "--",
        _tool("unshare"), "--user", "--map-root-user", "--net", "--pid", "--ipc", "--fork", "--kill-child",
        "--mount-proc", "--",
        python, "-I", "-S", "-c", INIT, str(report_fd), str(limits.wall_s), str(limits.cpu_s),
        str(limits.memory_mb * mb), str(limits.file_mb * mb), str(limits.processes), str(limits.open_files),
        setpriv, "--inh-caps=-all", "--bounding-set=-all", "--", python, "-I", "program.py",
    ]  # fmt: skip


def _read(f, limit: int, tail: bool = False) -> str:
    """The first (or last) `limit` bytes of a captured stream."""
    f.seek(max(0, f.seek(0, os.SEEK_END) - limit) if tail else 0)
    return f.read(limit).decode("utf-8", errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _verdict(report: str, overran: bool, stderr_tail: str, limits: Limits) -> tuple[str, str]:
    """(status, reason) from the init's report line and the end of stderr (an exception's last line)."""
    last = _last_line(stderr_tail)
    if overran or report == "wall":
        return "timeout", f"wall time limit {limits.wall_s:g} s"
    if not report:
        return "error", f"sandbox did not start: {last or 'no report from its init'}"
    code, cpu, left = report.split()
    code, cpu, left = int(code), float(cpu), int(left)
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= limits.cpu_s):  # soft, then hard limit
        return "timeout", f"CPU time limit {limits.cpu_s} s"
    if code < 0:
        return "killed", f"killed by {signal.Signals(-code).name}"
    if last.startswith("MemoryError"):
        return "memory", f"memory limit {limits.memory_mb} MB ({last})"
    if code != 0:
        return "failed", last or f"exit code {code}"
    if left:
        return "failed", f"left {left} process(es) running after it exited"
    return "passed", ""


def _workdir(top: str) -> str:
    """A directory the program owns inside `top`, which only root may list (the name stays unguessable)."""
    os.chmod(top, 0o711)
    work = os.path.join(top, "work")
    os.mkdir(work, 0o700)
    if os.geteuid() == 0:
        os.chown(work, NOBODY, NOBODY)
    return work


def _kill_group(pgid: int, killed: threading.Event) -> None:
    killed.set()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _run(source: str, limits: Limits, python: str) -> Outcome:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="openhcx-sandbox-", ignore_cleanup_errors=True) as top:
        work = _workdir(top)
        Path(work, "program.py").write_text(source, encoding="utf-8")
        env = {"PATH": PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        read_end, write_end = os.pipe()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(_command(python, limits, write_end), cwd=work, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(write_end,),
                                        start_new_session=True)
            finally:
                os.close(write_end)
            # A backstop in case the init never ends it (a machine too busy to start it); a timer, because
            # Popen.wait(timeout=...) polls with sleeps that would add tens of milliseconds to every program.
            overran = threading.Event()
            backstop = threading.Timer(limits.wall_s + GRACE_S, _kill_group, (proc.pid, overran))
            backstop.start()
            proc.wait()
            backstop.cancel()
            os.set_blocking(read_end, False)
            try:
                report = os.read(read_end, 256).decode()
            except BlockingIOError:
                report = ""
            finally:
                os.close(read_end)
            stdout, stderr = _read(out, limits.output_bytes), _read(err, limits.output_bytes)
            status, reason = _verdict(report, overran.is_set(), _read(err, 4096, tail=True), limits)
    return Outcome(status, reason, stdout, stderr, time.monotonic() - start)


@functools.lru_cache(maxsize=None)
def interpreter() -> str:
    """The Python that programs run with: this one if the sandbox's user can run it, else the system's python3.

    As root, programs run as `nobody`, who may be unable to read an interpreter installed under /root.
    """
    tried = []
    for python in dict.fromkeys([sys.executable, shutil.which("python3", path=PATH)]):
        if python:
            outcome = _run("import sys", Limits(wall_s=60), python)
            if outcome.passed:
                return python
            tried.append(f"{python}: {outcome.reason}")
    raise SandboxError(
        "sandbox: no Python interpreter runs inside it ("
        + "; ".join(tried)
        + "). It needs util-linux's unshare and setpriv and user namespaces"
        " (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone = 1 where it exists)"
    )


def run(source: str, limits: Limits = Limits(), python: str | None = None) -> Outcome:
    """Run one program (Python source) in the sandbox; it passes when it exits 0 within the limits."""
    return _run(source, limits, python or interpreter())


def run_many(sources: list[str], limits: Limits = Limits(), workers: int | None = None, progress: bool = False,
             python: str | None = None) -> list[Outcome]:
    """Run programs `workers` at a time (default: one per core); outcomes in input order."""
    from tqdm import tqdm

    python = python or interpreter()
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        futures = [pool.submit(_run, s, limits, python) for s in sources]
        bar = tqdm(as_completed(futures), total=len(futures), disable=None if progress else True,  # None: a terminal
                   desc="programs", unit="prog")
        for _ in bar:
            pass
        return [f.result() for f in futures]
