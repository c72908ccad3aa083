"""The event queue on SQLite and on a real PostgreSQL server: idempotent puts, claims, retries, killed workers,
and worker processes racing for the same events."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time

import pytest

from openhcx.io import UserError
from openhcx.pipeline.events import EventQueue, queue_url, worker_id

SPAWN = multiprocessing.get_context("spawn")  # what a fresh worker on another machine would be: no inherited state


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return queue_url(tmp_path / "run")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def queue(url):
    q = EventQueue(url)
    yield q
    q.close()


def test_default_queue_is_sqlite_under_the_run_directory(tmp_path):
    url = queue_url(tmp_path / "run")
    assert url == f"sqlite:///{tmp_path.resolve() / 'run' / 'pipeline' / 'queue.db'}"
    EventQueue(url).close()
    assert (tmp_path / "run" / "pipeline" / "queue.db").is_file()
    assert queue_url(tmp_path, "postgresql://db.example/q") == "postgresql://db.example/q"


def test_unsupported_or_unreachable_database_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="only sqlite:/// and postgresql://"):
        EventQueue("mysql://somewhere/q")
    with pytest.raises(UserError, match="cannot open the database"):
        EventQueue(f"sqlite:///{tmp_path}/missing-folder/queue.db")


def test_put_is_idempotent_by_key(queue):
    assert queue.put("eval", "eval/sft/step-40", {"step": 40})
    assert not queue.put("eval", "eval/sft/step-40", {"step": 41})
    event = queue.claim("w", ["eval"], lease_s=60)
    assert queue.done(event.id, "w", {"score": 0.5})
    assert not queue.put("eval", "eval/sft/step-40", {"step": 42})  # done events are not queued again either
    [event] = queue.events()
    assert (event.payload, event.status, event.result) == ({"step": 40}, "done", {"score": 0.5})


def test_claim_takes_the_oldest_event_of_the_asked_kinds(queue):
    for kind, key in [("eval", "a"), ("train", "b"), ("eval", "c")]:
        queue.put(kind, key, {"key": key})
    before = time.time()
    first = queue.claim("w1", ["eval"], lease_s=60)
    after = time.time()
    assert (first.key, first.status, first.worker, first.attempts, first.max_attempts) == ("a", "running", "w1", 1, 3)
    assert before + 60 <= first.lease_until <= after + 60
    assert queue.claim("w2", ["eval"], lease_s=60).key == "c"
    assert queue.claim("w2", ["eval"], lease_s=60) is None
    assert queue.claim("w3", ["train", "eval"], lease_s=60).key == "b"
    assert queue.counts() == {("eval", "running"): 2, ("train", "running"): 1}


def test_done_and_fail_need_the_claiming_worker(queue):
    queue.put("eval", "a", {})
    event = queue.claim("w1", ["eval"], lease_s=60)
    assert not queue.done(event.id, "w2", {"x": 1})
    assert not queue.heartbeat(event.id, "w2", lease_s=60)
    assert queue.fail(event.id, "w2", "not mine") == "running"
    assert queue.get("a").error is None
    assert queue.fail(event.id, "w1", "ValueError: bad checkpoint") == "queued"
    again = queue.get("a")
    assert (again.status, again.worker, again.lease_until, again.error) == ("queued", None, None,
                                                                           "ValueError: bad checkpoint")
    assert not queue.done(event.id, "w1")  # given back: no longer held by anyone
    event = queue.claim("w2", ["eval"], lease_s=60)
    assert queue.done(event.id, "w2", {"score": 1.0})
    done = queue.get("a")
    assert (done.status, done.attempts, done.error, done.result) == ("done", 2, None, {"score": 1.0})
    assert not queue.done(event.id, "w2")  # done once only


def test_failures_are_retried_a_bounded_number_of_times(queue):
    queue.put("eval", "a", {}, max_attempts=2)
    statuses = []
    while (event := queue.claim("w", ["eval"], lease_s=60)) is not None:
        statuses.append(queue.fail(event.id, "w", f"error {event.attempts}"))
    assert statuses == ["queued", "failed"]
    [event] = queue.events(status="failed")
    assert (event.attempts, event.error, event.worker) == (2, "error 2", None)


def test_requeue_gives_a_finished_event_fresh_attempts(queue):
    queue.put("eval", "a", {}, max_attempts=1)
    event = queue.claim("w", ["eval"], lease_s=60)
    queue.fail(event.id, "w", "boom")
    assert queue.requeue("a")
    assert not queue.requeue("no-such-key")
    event = queue.get("a")
    assert (event.status, event.attempts, event.error) == ("queued", 0, None)
    assert queue.claim("w", ["eval"], lease_s=60).attempts == 1


def test_an_expired_lease_passes_the_event_to_another_worker(queue):
    queue.put("eval", "a", {})
    slow = queue.claim("slow", ["eval"], lease_s=0.2)
    assert queue.heartbeat(slow.id, "slow", lease_s=0.2)  # still its own until someone else takes it
    _wait_past(queue.get("a").lease_until)
    taken = queue.claim("fast", ["eval"], lease_s=60)
    assert (taken.id, taken.worker, taken.attempts) == (slow.id, "fast", 2)
    assert not queue.heartbeat(slow.id, "slow", lease_s=60)
    assert not queue.done(slow.id, "slow")
    assert queue.done(taken.id, "fast")


def _hold_one(url: str, lease_s: float, claimed) -> None:
    """Child process: claim one event, say which, then hang until killed."""
    queue = EventQueue(url)
    event = queue.claim(worker_id(), ["eval"], lease_s)
    claimed.put(event.id)
    time.sleep(600)


def _claim_and_get_killed(url: str, lease_s: float) -> int:
    claimed = SPAWN.Queue()
    child = SPAWN.Process(target=_hold_one, args=(url, lease_s, claimed))
    child.start()
    try:
        event_id = claimed.get(timeout=60)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()  # reaped, so its pid is no longer alive
    return event_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_worker_s_event_is_retried_then_abandoned(queue, url):
    queue.put("eval", "a", {})
    queue.put("train", "mine", {})
    mine = queue.claim(worker_id(), ["train"], lease_s=60)  # held by a live process: never released

    event_id = _claim_and_get_killed(url, lease_s=60)
    assert queue.claim("other", ["eval"], lease_s=60) is None  # the dead worker's lease still holds it
    assert queue.release_dead(socket.gethostname(), _alive) == 1
    assert queue.get("mine").lease_until == mine.lease_until

    assert _claim_and_get_killed(url, lease_s=1.0) == event_id  # attempt 2, taken at once after release_dead
    _wait_past(queue.get("a").lease_until)
    last = queue.claim("other", ["eval"], lease_s=0.2)  # attempt 3: this one hangs too
    assert (last.id, last.attempts) == (event_id, 3)

    _wait_past(queue.get("a").lease_until)
    assert queue.claim("other", ["eval"], lease_s=60) is None
    abandoned = queue.get("a")
    assert (abandoned.status, abandoned.attempts, abandoned.worker) == ("failed", 3, None)
    assert abandoned.error == "abandoned: lease expired after 3 attempts"


def _race(url: str, n_events: int, n_workers: int, rank: int, start, results) -> None:
    """Child process: with the other workers, open the queue and put events (each key by two workers); then, again
    together, claim and finish events until none is left. Reports how many puts took, the ids it finished, and
    refused done() calls."""
    start.wait()
    queue = EventQueue(url)  # all at once on an empty database: the table is created exactly once
    mine = [i for i in range(n_events) if i % n_workers in (rank, (rank + 1) % n_workers)]
    puts = sum(queue.put("eval", f"e{i}", {"i": i}) for i in mine)
    start.wait()  # then all claim at once
    me, done, refused = worker_id(), [], 0
    while (event := queue.claim(me, ["eval"], lease_s=60)) is not None:
        if queue.done(event.id, me, {"by": me}):
            done.append(event.id)
        else:
            refused += 1
    results.put((puts, done, refused))
    queue.close()


def test_racing_workers_finish_every_event_exactly_once(url):
    n_events, n_workers = 200, 4
    start, results = SPAWN.Barrier(n_workers), SPAWN.Queue()
    workers = [SPAWN.Process(target=_race, args=(url, n_events, n_workers, rank, start, results))
               for rank in range(n_workers)]
    for w in workers:
        w.start()
    reports = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    assert sum(puts for puts, _, _ in reports) == n_events  # each key queued once, whoever put it
    assert sum(refused for _, _, refused in reports) == 0
    done = [event_id for _, ids, _ in reports for event_id in ids]
    assert len(done) == len(set(done)) == n_events  # none lost, none done twice
    queue = EventQueue(url)
    events = queue.events()
    queue.close()
    assert sorted(done) == [e.id for e in events]
    assert {(e.status, e.attempts) for e in events} == {("done", 1)}
    assert all(e.result["by"] == e.worker for e in events)


def _wait_past(t: float) -> None:
    time.sleep(max(0.0, t - time.time()) + 0.05)
