"""The corpus and shard stages on a real local Ray instance: the same corpus and byte-identical token shards
as on one machine, bad input named per file and line without losing the other files' work, and a job whose
worker and driver are SIGKILLed resumes without redoing finished tasks."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openhcx.data.cluster import Cluster, Task, run_tasks
from openhcx.data.corpus import Source, build_corpus, iter_documents
from openhcx.data.shards import build_shards
from openhcx.io import UserError

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("ko", "en", "code")


def split_demo(out: Path, sizes: dict[str, tuple[int, int]]) -> list[Source]:
    """The first `n` demo documents of each label, dealt into `files` gzipped JSONL inputs."""
    out.mkdir(parents=True, exist_ok=True)
    for label, (n, files) in sizes.items():
        with gzip.open(ROOT / "data/demo/corpus" / f"{label}.jsonl.gz", "rt", encoding="utf-8") as f:
            lines = [line for _, line in zip(range(n), f)]
        for k in range(files):
            with gzip.open(out / f"{label}-{k}.jsonl.gz", "wt", encoding="utf-8") as f:
                f.writelines(lines[k::files])
    return [Source(str(out / f"{label}-*.jsonl.gz"), label) for label in sizes]


def same_corpus(a: dict, b: dict, dir_a: Path, dir_b: Path) -> None:
    """Point 2's contract for corpora: the same documents in the same order, the same counts; only where
    shard files end may differ."""
    for key in ("config", "inputs", "sources", "labels", "totals"):
        assert a[key] == b[key], key
    for split in ("train", "heldout"):
        for label in a["labels"]:
            assert list(iter_documents(dir_a, split, [label])) == list(iter_documents(dir_b, split, [label]))
            assert sum(a["documents"][split].get(label, [])) == sum(b["documents"][split].get(label, []))


def same_shards(a: dict, b: dict, dir_a: Path, dir_b: Path) -> None:
    """Point 2's contract for shards: every file byte for byte, and the manifest but for when and from where."""
    for key in set(a) | set(b):
        if key not in ("created", "inputs", "tasks"):
            assert a.get(key) == b.get(key), key
    files = [s["file"] for split in a["splits"].values() for s in split["shards"]] + ["infill.jsonl"]
    for name in files:
        assert (dir_a / name).read_bytes() == (dir_b / name).read_bytes(), name


def test_corpus_and_shards_on_ray_equal_the_single_machine_build(ray_cluster, demo_tokenizer, tmp_path):
    everything = 10**6  # the whole demo corpus, dealt into 4, 3 and 2 input files
    sources = split_demo(tmp_path / "in", {"ko": (everything, 4), "en": (everything, 3), "code": (everything, 2)})
    one = build_corpus(sources, str(tmp_path / "one"), shard_docs=300)
    many = build_corpus(sources, str(tmp_path / "many"), shard_docs=300, cluster=Cluster())
    same_corpus(one, many, tmp_path / "one", tmp_path / "many")
    assert len(many["tasks"]) == 9 and not (tmp_path / ".many.work").exists()

    # Shards from each corpus in equal thirds: en and code are upsampled (later passes, later rounds of tasks).
    options = dict(shard_tokens=100_000, max_repeats=3.0, seed=7)
    a = build_shards(str(tmp_path / "one"), str(demo_tokenizer), str(tmp_path / "s-one"), **options)
    b = build_shards(str(tmp_path / "many"), str(demo_tokenizer), str(tmp_path / "s-many"), cluster=Cluster(),
                     **options)
    same_shards(a, b, tmp_path / "s-one", tmp_path / "s-many")
    assert len(a["splits"]["train"]["shards"]) > 4
    assert max(c["passes"] for c in a["splits"]["train"]["labels"].values()) > 1  # a label was repeated
    assert any("-1-" in key for key in b["tasks"])  # ... from its second pass's own tasks
    assert a["splits"]["train"]["fim"] > 0 and a["infill"]["documents"] > 0
    assert not (tmp_path / ".s-many.work").exists()


def test_bad_input_in_one_file_is_named_and_the_other_files_work_is_kept(ray_cluster, tmp_path, capsys):
    sources = split_demo(tmp_path / "in", {"ko": (120, 3), "en": (60, 2)})
    broken_json, broken_utf8 = tmp_path / "in/ko-1.jsonl.gz", tmp_path / "in/en-0.jsonl.gz"
    good = {p: p.read_bytes() for p in (broken_json, broken_utf8)}
    lines = gzip.decompress(good[broken_json]).splitlines(keepends=True)
    broken_json.write_bytes(gzip.compress(b"".join(lines[:4] + [b'{"text": "unterminated\n'] + lines[4:])))
    lines = gzip.decompress(good[broken_utf8]).splitlines(keepends=True)
    broken_utf8.write_bytes(gzip.compress(b"".join(lines[:2] + [b'{"text": "\xff\xfe"}\n'] + lines[2:])))

    with pytest.raises(UserError) as caught:
        build_corpus(sources, str(tmp_path / "c"), shard_docs=30, cluster=Cluster())
    message = str(caught.value)
    assert "2 of 5 tasks failed" in message
    assert f"{broken_json}:5: malformed JSON" in message and f"{broken_utf8}:3: not valid UTF-8" in message
    assert not (tmp_path / "c").exists()  # no corpus, and no manifest, until every task succeeded
    kept = sorted(p.name for p in (tmp_path / ".c.work/tasks").iterdir())
    assert len(kept) == 3 and not any(p.name.startswith(".") for p in (tmp_path / ".c.work/tasks").iterdir())

    for path, data in good.items():
        path.write_bytes(data)
    capsys.readouterr()
    fixed = build_corpus(sources, str(tmp_path / "c"), shard_docs=30, cluster=Cluster())
    assert "corpus: 5 tasks, 3 finished before, 2 to run" in capsys.readouterr().out
    one = build_corpus(sources, str(tmp_path / "one"), shard_docs=30)
    same_corpus(one, fixed, tmp_path / "one", tmp_path / "c")

    # A changed config does not reuse another job's finished tasks.
    (tmp_path / "in/ko-0.jsonl.gz").write_bytes(b"not gzip, not JSON\n")
    with pytest.raises(UserError):
        build_corpus(sources, str(tmp_path / "d"), shard_docs=30, cluster=Cluster())
    with pytest.raises(UserError, match="different corpus job"):
        build_corpus(sources, str(tmp_path / "d"), shard_docs=31, cluster=Cluster())


def test_a_task_whose_io_fails_is_retried_then_reported(ray_cluster, tmp_path):
    def flaky(attempts: str, out: Path) -> dict:
        """Fails with an I/O error on its first attempt ("once") or on every one ("always")."""
        log = Path(attempts)
        log.write_text(log.read_text() + "x")
        tries = len(log.read_text())
        if log.name == "always" or tries == 1:
            raise OSError(f"{log}: the file system went away for a moment")
        (out / "data").write_text("ok")
        return {"tries": tries}

    for name in ("once", "always"):
        (tmp_path / name).write_text("")
    tasks = [Task(name, 1, str(tmp_path / name)) for name in ("once", "always")]
    with pytest.raises(UserError) as caught:
        run_tasks("flaky", flaky, tasks, tmp_path / "work", Cluster(retries=2), {"config": 0})
    message = str(caught.value)
    assert "1 of 2 tasks failed" in message
    assert "task always: OSError on each of 3 attempts" in message and "went away for a moment" in message
    assert (tmp_path / "always").read_text() == "xxx"  # the first attempt and two retries
    assert (tmp_path / "work/tasks/once/data").read_text() == "ok"
    assert json.loads((tmp_path / "work/tasks/once/summary.json").read_text())["tries"] == 2


def finished(work: Path) -> dict[str, dict]:
    tasks = work / "tasks"
    out = {}
    for task in tasks.glob("[!.]*") if tasks.is_dir() else []:
        try:
            out[task.name] = json.loads((task / "summary.json").read_text(encoding="utf-8"))["task"]
        except (OSError, ValueError):  # renamed away by the merge meanwhile
            pass
    return out


def in_session(session: int, title: bytes = b"") -> list[int]:
    """Processes of a driver's session (the Ray instance it started) whose command line starts with `title`."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.getsid(int(proc.name)) == session and (proc / "cmdline").read_bytes().startswith(title):
                pids.append(int(proc.name))
        except (OSError, ProcessLookupError):
            pass
    return pids


def wait_for(condition, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_killed_worker_and_driver_resume_without_redoing_finished_tasks(demo_tokenizer, tmp_path):
    corpus = tmp_path / "corpus"
    build_corpus(split_demo(tmp_path / "in", {"ko": (900, 1), "en": (300, 1), "code": (150, 1)}), str(corpus),
                 shard_docs=40)
    out, work = tmp_path / "shards", tmp_path / ".shards.work"
    command = [sys.executable, "-m", "openhcx.cli", "shards", "build", "--corpus", str(corpus), "--tokenizer",
               str(demo_tokenizer), "--out", str(out), "--shard_tokens", "30000", "--cluster.workers", "2"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: len(finished(work)) >= 2, 120, "two finished tasks")
        victim = wait_for(lambda: in_session(driver.pid, b"ray::openhcx-"), 60, "a worker running a task")[0]
        os.kill(victim, signal.SIGKILL)  # Ray reruns the task it was running
        before_kill = len(finished(work))
        wait_for(lambda: len(finished(work)) >= before_kill + 3, 120, "tasks finishing after the worker died")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:  # what the driver started goes with it (Ray's workers would notice and exit within seconds)
        for pid in in_session(driver.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    done = finished(work)
    assert not out.exists() and done

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "finished before" in rerun.stdout
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for key, task in done.items():
        assert manifest["tasks"][key] == task, key  # not run again: same process and start time
    assert len(manifest["tasks"]) > len(done) and not work.exists()
    reference = build_shards(str(corpus), str(demo_tokenizer), str(tmp_path / "one"), shard_tokens=30000)
    same_shards(reference, manifest, tmp_path / "one", out)


def test_a_recipe_section_s_cluster_mapping_is_typed_and_checked():
    from openhcx.recipe import stage_args

    section = {"sources": [{"path": "in/*.jsonl.gz", "label": "ko"}], "cluster": {"address": "auto", "retries": 5}}
    args = stage_args(build_corpus, section, "recipe.yaml:corpus", out="corpus")
    assert args["cluster"] == Cluster(address="auto", retries=5)
    with pytest.raises(UserError, match=r"(?s)recipe\.yaml:corpus.*cluster.*wrkers"):
        stage_args(build_corpus, {**section, "cluster": {"wrkers": 2}}, "recipe.yaml:corpus", out="corpus")
    with pytest.raises(UserError, match=r"cluster\.workers: -1"):
        stage_args(build_shards, {"cluster": {"workers": -1}}, "recipe.yaml:shards", corpus="c", tokenizer="t",
                   out="o")
