"""The sandbox against hostile programs: each is contained and scored as a failure with its reason, while the
good programs of the same batch pass and the test process (the harness) is untouched."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from openhcx.eval.sandbox import Limits, run, run_many

LIMITS = Limits(cpu_s=1, wall_s=10, memory_mb=256, file_mb=1, processes=8, open_files=32, output_bytes=4096)
SECRET = "hunter2-do-not-leak"
GOOD = "print(sum(range(10)))"


def hostile(canaries: list[Path], port: int, fifo: Path) -> dict[str, str]:
    return {
        "infinite loop": "while True:\n    pass",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        # One 8 GB request: refused by the address-space limit at once. (A loop of 10 MB chunks zero-filled each
        # page first, and on a loaded machine ran into the 1 s CPU limit before the memory one.)
        "memory bomb": "chunks = [0] * 10**9",
        "huge file": "with open('big', 'wb') as f:\n    while True:\n        f.write(b'0' * 2**20)",
        "delete outside": f"""
import os, shutil
for path in {[str(c) for c in canaries]!r}:
    try:
        os.remove(path)
    except OSError:
        pass
shutil.rmtree({str(canaries[0].parent)!r})
""",
        "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
        "read secrets": f"""
import os
print(sorted(os.environ.items()))
print(open('/proc/{os.getpid()}/environ').read())
""",
        "kill parent": f"""
import os, signal
os.kill(os.getppid(), signal.SIGKILL)
os.kill({os.getpid()}, signal.SIGKILL)
""",
        # A grandchild in its own session holds the FIFO open; once it is dead, a reader sees end-of-file.
        "detached child": f"""
import os, time
ready_r, ready_w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.open({str(fifo)!r}, os.O_RDWR)
        os.write(ready_w, b"x")
        time.sleep(120)
    os._exit(0)
os.read(ready_r, 1)
""",
    }


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One run_many batch: every hostile program with a good one after each. Yields (names, outcomes, world)."""
    tmp = tmp_path_factory.mktemp("sandbox")
    world = Path(tempfile.mkdtemp(prefix="openhcx-sandbox-test-"))  # a place the sandbox's user can reach
    world.chmod(0o755)
    canaries = [tmp / "canary", world / "canary"]
    for c in canaries:
        c.write_text("still here")
    fifo = world / "fifo"
    os.mkfifo(fifo)
    fifo.chmod(0o666)  # mkfifo applies the umask
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    os.environ["OPENHCX_TEST_SECRET"] = SECRET
    try:
        programs = hostile(canaries, listener.getsockname()[1], fifo)
        names = [n for name in programs for n in (name, "good")]
        sources = [s for src in programs.values() for s in (src, GOOD)]
        outcomes = run_many(sources, LIMITS, workers=2)
        yield names, outcomes, {"canaries": canaries, "fifo": fifo, "listener": listener}
    finally:
        del os.environ["OPENHCX_TEST_SECRET"]
        listener.close()
        shutil.rmtree(world)


def outcome(batch, name):
    names, outcomes, _ = batch
    return outcomes[names.index(name)]


def test_good_programs_in_a_hostile_batch_pass(batch):
    names, outcomes, _ = batch
    good = [outcomes[i] for i, n in enumerate(names) if n == "good"]
    assert len(good) == 9
    assert all(o.status == "passed" and o.reason == "" and o.stdout == "45\n" for o in good), good


def test_infinite_loop_stops_at_the_cpu_limit(batch):
    o = outcome(batch, "infinite loop")
    assert (o.status, o.reason) == ("timeout", "CPU time limit 1 s")


def test_fork_bomb_hits_the_process_limit(batch):
    o = outcome(batch, "fork bomb")
    assert o.status == "failed"
    assert o.reason == "BlockingIOError: [Errno 11] Resource temporarily unavailable"


def test_memory_bomb_hits_the_memory_limit(batch):
    o = outcome(batch, "memory bomb")
    assert (o.status, o.reason) == ("memory", "memory limit 256 MB (MemoryError)")


def test_huge_file_hits_the_file_size_limit(batch):
    o = outcome(batch, "huge file")
    assert (o.status, o.reason) == ("failed", "OSError: [Errno 27] File too large")


@pytest.mark.skipif(os.geteuid() != 0, reason="without root the program runs as the caller and may delete its files")
def test_files_outside_its_directory_survive(batch):
    o = outcome(batch, "delete outside")
    assert o.status == "failed" and o.reason.startswith("PermissionError: [Errno 13] Permission denied")
    assert all(c.read_text() == "still here" for c in batch[2]["canaries"])


def test_no_network(batch):
    o = outcome(batch, "network")
    assert (o.status, o.reason) == ("failed", "OSError: [Errno 101] Network is unreachable")
    with pytest.raises(BlockingIOError):  # nothing ever connected
        batch[2]["listener"].accept()


def test_parent_environment_is_invisible(batch):
    o = outcome(batch, "read secrets")
    assert SECRET not in o.stdout + o.stderr
    keys = [k for k, _ in eval(o.stdout.splitlines()[0])]
    assert keys == ["HOME", "LANG", "PATH", "TMPDIR"]
    assert o.status == "failed" and o.reason.startswith("FileNotFoundError")  # the harness's pid is not visible


def test_killing_its_parent_harms_nobody(batch):
    o = outcome(batch, "kill parent")  # its parent is the namespace's init; the harness's pid does not exist there
    assert (o.status, o.reason) == ("failed", "ProcessLookupError: [Errno 3] No such process")


def test_detached_child_does_not_outlive_scoring(batch):
    o = outcome(batch, "detached child")
    assert (o.status, o.reason) == ("failed", "left 1 process(es) running after it exited")
    fd = os.open(batch[2]["fifo"], os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert os.read(fd, 1) == b""  # end-of-file: no process holds the FIFO open any more
    finally:
        os.close(fd)


def test_wall_time_limit():
    o = run("import time\ntime.sleep(60)", Limits(wall_s=1))
    assert (o.status, o.reason) == ("timeout", "wall time limit 1 s")


def test_output_is_captured_and_truncated():
    o = run("import sys\nprint('x' * 10**5)\nprint('oops', file=sys.stderr)\nraise ValueError('bad input')",
            Limits(output_bytes=100))
    assert o.stdout == "x" * 100
    assert o.stderr.startswith("oops\nTraceback")
    assert (o.status, o.reason) == ("failed", "ValueError: bad input")


def test_exit_codes_and_signals():
    outcomes = run_many(["import sys\nsys.exit(3)", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
                         "import sys\nsys.exit(0)"], Limits())
    assert [(o.status, o.reason) for o in outcomes] == [("failed", "exit code 3"), ("killed", "killed by SIGSEGV"),
                                                        ("passed", "")]
    assert [o.passed for o in outcomes] == [False, False, True]


def test_working_directory_is_fresh_and_removed():
    o = run("import os\nprint(os.getcwd())\nprint(sorted(os.listdir()))\nopen('left.txt', 'w').write('x')")
    cwd, listing = o.stdout.splitlines()
    assert o.passed and listing == "['program.py']"
    assert not Path(cwd).exists()
