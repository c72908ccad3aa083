"""Run a data stage's tasks on a Ray cluster: one task per input file, resumable, retried, merged once.

The corpus and shard stages split their work into tasks (one input file each) that write into a task
directory of a shared work folder; a task's directory appears, by rename, only once the task finished, so a
rerun of the same command runs only the tasks without one. Ray reruns a task whose worker process or node
died, or whose reads or writes failed (an OSError: a file system or network hiccup), up to `retries` times;
a task that meets bad input (a UserError naming the file and line) fails alone, at once, the others finish,
and the job ends with every failure listed. The stage merges the task outputs and writes its
manifest only after every task finished, then removes the work folder.

Why Ray: it starts on one machine (`ray.init`) as on a cluster of many (KubeRay, `ray start` on Slurm
nodes, cloud launchers), reruns tasks lost with their worker, and needs nothing of us beyond a function per
task. docs/scale.md compares it with datatrove and Spark.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from openhcx.io import UserError, write_json

log = logging.getLogger(__name__)


@dataclass
class Cluster:
    """Where a data stage runs its tasks: a Ray instance started here, or a running Ray cluster."""

    address: str = "local"
    """local: start Ray on this machine with `workers` CPUs; auto: join the cluster this node belongs to
    (`ray start`); or the head's address (host:6379, ray://host:10001)."""
    workers: int = 0
    """local only: CPUs, hence tasks at a time (0: every core of this machine)."""
    retries: int = 3
    """Times a task is rerun after its worker process or node died or an I/O error stopped it (bad input is
    never retried)."""
    work_dir: str | None = None
    """Finished tasks' outputs until the merge (default: `.NAME.work` beside the output). Every node must
    see it at the same path (a shared file system) and it must hold about the size of the output."""

    def __post_init__(self):
        if self.workers < 0:
            raise UserError(f"cluster.workers: {self.workers} must be 0 (every core) or more")
        if self.retries < 0:
            raise UserError(f"cluster.retries: {self.retries} must be 0 or more")


@dataclass
class Task:
    """One unit of work: a stable key (its directory's name), its input size for the progress bar, and the
    arguments of the task function."""

    key: str
    size: int
    args: Any
    stamp: Any = None
    """What the task's input was (e.g. path, size and mtime): a finished task whose stamp differs is stale
    and runs again."""


def work_folder(cluster: Cluster, out: str | Path) -> Path:
    out = Path(out)
    return Path(cluster.work_dir) if cluster.work_dir else out.with_name(f".{out.name}.work")


def run_task(fn: Callable[[Any, Path], dict], task: Task, work: str) -> dict:
    """Run one task into a fresh directory, renamed to `tasks/KEY` when done; bad input returns an error."""
    final = Path(work) / "tasks" / task.key
    if (final / "summary.json").is_file():  # a rerun of a task that finished (its first result was lost)
        return json.loads((final / "summary.json").read_text(encoding="utf-8"))
    tmp = final.with_name(f".{task.key}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    start = time.time()
    try:
        summary = fn(task.args, tmp)
        summary["task"] = {"host": socket.gethostname(), "pid": os.getpid(), "started": start,
                           "seconds": round(time.time() - start, 3)}
        summary["stamp"] = task.stamp
        write_json(tmp / "summary.json", summary)
        try:
            tmp.rename(final)
        except OSError:  # another attempt of this task finished first: keep its output
            if not (final / "summary.json").is_file():
                raise
        return json.loads((final / "summary.json").read_text(encoding="utf-8"))
    except UserError as e:
        return {"error": str(e)}
    except OSError:  # the file system or the network, perhaps for a moment: Ray runs the task again
        raise
    except Exception as e:  # a bug: reported with its trace, the other tasks go on
        return {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_tasks(name: str, fn: Callable[[Any, Path], dict], tasks: list[Task], work: Path, cluster: Cluster,
              job: dict) -> dict[str, dict]:
    """Run every task not finished in `work` on the cluster; return each task's summary by key.

    `job` describes the work (its config): a work folder left by a different job is refused rather than
    mixed in; a finished task whose input changed since (its `stamp`) runs again. Raises UserError listing every failed task once all others have finished.
    """
    if len({t.key for t in tasks}) != len(tasks):
        raise ValueError("task keys must be unique")
    work.mkdir(parents=True, exist_ok=True)
    job_file = work / "job.json"
    job = json.loads(json.dumps(job))  # as it reads back: lists, not tuples
    if job_file.is_file():
        if json.loads(job_file.read_text(encoding="utf-8")) != job:
            raise UserError(f"{work}: holds the finished tasks of a different {name} job (another config); "
                            "delete it, or rerun the command that started it")
    else:
        write_json(job_file, job)
    (work / "tasks").mkdir(exist_ok=True)
    for stale in (work / "tasks").glob(".*.tmp-*"):  # left by workers killed with an earlier driver
        shutil.rmtree(stale, ignore_errors=True)
    done = {}
    for task in tasks:
        path = work / "tasks" / task.key
        if (path / "summary.json").is_file():
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
            if summary["stamp"] == json.loads(json.dumps(task.stamp)):
                done[task.key] = summary
            else:
                log.warning("%s: task %s's input changed since it ran; running it again", name, task.key)
                shutil.rmtree(path)
    todo = [t for t in tasks if t.key not in done]
    print(f"{name}: {len(tasks)} tasks, {len(done)} finished before, {len(todo)} to run ({work})", flush=True)
    if todo:
        done |= _run_on_ray(name, fn, todo, work, cluster, sum(t.size for t in tasks if t.key in done),
                            sum(t.size for t in tasks))
    failed = {key: s["error"] for key, s in done.items() if "error" in s}
    if failed:
        listed = "\n".join(f"  task {key}: {error.strip()}" for key, error in sorted(failed.items())[:20])
        more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
        raise UserError(f"{name}: {len(failed)} of {len(tasks)} tasks failed; the {len(tasks) - len(failed)} "
                        f"others are kept in {work}: fix the input and run the same command again, and only "
                        f"the failed tasks run.\n{listed}{more}")
    return {t.key: done[t.key] for t in tasks}


@contextlib.contextmanager
def connected(cluster: Cluster) -> Iterator[None]:
    """Ray for the block: joined if this process already has it, else started (local) or joined (address)
    and shut down after. A stage that runs tasks in rounds holds it across them."""
    import ray

    if ray.is_initialized():
        yield
        return
    options = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
    if cluster.address == "local":
        ray.init(num_cpus=cluster.workers or os.cpu_count(), object_store_memory=100 << 20, **options)
    else:
        ray.init(address=cluster.address, **options)
    try:
        yield
    finally:
        ray.shutdown()


def _run_on_ray(name: str, fn, tasks: list[Task], work: Path, cluster: Cluster, done_size: int,
                total_size: int) -> dict[str, dict]:
    import ray

    with connected(cluster):
        remote = ray.remote(run_task).options(name=f"openhcx-{name}", num_cpus=1, max_retries=cluster.retries,
                                              retry_exceptions=[OSError])
        pending = {remote.remote(fn, task, str(work)): task for task in tasks}
        results = {}
        with tqdm(desc=name, total=total_size, initial=done_size, unit="B", unit_scale=True, disable=None) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ready[0])
                try:
                    results[task.key] = ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:  # an I/O error on every attempt
                    results[task.key] = {"error": f"{type(e.cause).__name__} on each of {cluster.retries + 1} "
                                                  f"attempts: {e.cause}"}
                except ray.exceptions.RayError as e:  # lost more often than `retries` allows
                    results[task.key] = {"error": f"{type(e).__name__}: {e}"}
                bar.update(task.size)
        return results


def summaries_table(summaries: dict[str, dict]) -> dict[str, dict]:
    """Where and how long each task ran, for the manifest."""
    return {key: s["task"] for key, s in summaries.items()}
