"""The pipeline's durable event queue: one table of events that workers claim, finish or fail.

An event (a checkpoint to evaluate, a stage to run) is put once under a unique key and claimed by exactly one
worker at a time under a lease. A worker that dies stops renewing its lease; once the lease expires the event
is handed out again, a bounded number of times, then marked failed. The same code runs on an embedded SQLite
file under the run directory (one machine) and on PostgreSQL given a URL (trainers and evaluation workers on
several machines): claims take the database's own lock (BEGIN IMMEDIATE on SQLite, FOR UPDATE SKIP LOCKED on
PostgreSQL). Times are wall-clock seconds, so hosts sharing a queue need synchronised clocks.
Not here: what an event does (the runner and workers decide), and the record of what exists: the run
directory is the source of truth and the runner reconciles the queue with it on every start.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from openhcx.io import UserError

_metadata = sa.MetaData()
_events = sa.Table(
    "openhcx_events", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False, unique=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(300)),
    sa.Column("lease_until", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("result", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Index("ix_openhcx_events_claim", "status", "kind", "id"),
)
_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    key: str
    payload: dict
    status: str  # "queued" | "running" | "done" | "failed"
    attempts: int
    max_attempts: int
    worker: str | None
    lease_until: float | None
    error: str | None
    result: dict | None
    created: float
    updated: float


def _event(row) -> Event:
    fields = row._asdict()
    fields["payload"] = json.loads(fields["payload"])
    fields["result"] = None if fields["result"] is None else json.loads(fields["result"])
    return Event(**fields)


def worker_id() -> str:
    """This process as a queue worker: "<host>:<pid>"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def queue_url(run_dir: str | Path, url: str | None = None) -> str:
    """`url` when given, else the embedded SQLite queue under the run directory."""
    if url:
        return url
    path = Path(run_dir).resolve() / "pipeline" / "queue.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _engine(url: str) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise UserError(f"event queue URL {url!r}: not a database URL (sqlite:///PATH or postgresql://...)") from None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return sa.create_engine(parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True)
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
        raise UserError(f"event queue URL {parsed.render_as_string()}: only sqlite:/// and postgresql:// are supported")
    engine = sa.create_engine(parsed, connect_args={"timeout": 60})  # busy timeout: wait for the write lock

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # sqlite3 must not issue its own BEGIN; ours follows
        _wal(dbapi_connection)  # readers do not block the writer
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # a power cut may undo the last commits, not corrupt

    @sa.event.listens_for(engine, "begin")
    def _begin(connection):
        # Take the write lock up front: two deferred transactions that both upgrade to writing fail at once.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _wal(connection, tries: int = 200) -> None:
    """Put the SQLite file in WAL mode. The mode persists in the file, so only its first openers switch it, and
    switching needs the file to itself without waiting on the busy timeout: processes racing to open a new queue
    got "database is locked" at once. They retry for up to about 10 s."""
    for attempt in range(tries):
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == tries - 1:
                raise
            time.sleep(0.05)


class EventQueue:
    """Events in one table of a SQLite file or a PostgreSQL database, shared by every process that opens it."""

    def __init__(self, url: str):
        self.engine = _engine(url)
        self.url = self.engine.url.render_as_string()  # password hidden
        try:
            try:
                _metadata.create_all(self.engine)
            except (sa.exc.ProgrammingError, sa.exc.IntegrityError):  # another process created it after our check
                _metadata.create_all(self.engine)
        except sa.exc.OperationalError as e:
            raise UserError(f"event queue {self.url}: cannot open the database: {e.orig}") from None

    def put(self, kind: str, key: str, payload: dict, max_attempts: int = 3) -> bool:
        """Queue an event unless one with `key` exists, whatever its status; True when it was queued."""
        now = time.time()
        insert = _INSERT[self.engine.dialect.name](_events).values(
            kind=kind, key=key, payload=json.dumps(payload), status="queued", attempts=0,
            max_attempts=max_attempts, created=now, updated=now)
        with self.engine.begin() as conn:
            inserted = conn.execute(insert.on_conflict_do_nothing(index_elements=["key"]).returning(_events.c.id))
            return inserted.first() is not None

    def claim(self, worker: str, kinds: Sequence[str], lease_s: float) -> Event | None:
        """The oldest queued (or lease-expired) event of these kinds, now running for `worker`; None when none.

        An expired event that has used all its attempts is marked failed ("abandoned") instead of handed out."""
        c = _events.c
        with self.engine.begin() as conn:
            while True:
                now = time.time()
                claimable = sa.or_(c.status == "queued", sa.and_(c.status == "running", c.lease_until <= now))
                query = (sa.select(_events).where(c.kind.in_(list(kinds)), claimable)
                         .order_by(c.id).limit(1).with_for_update(skip_locked=True))
                row = conn.execute(query).first()
                if row is None:
                    return None
                if row.status == "running" and row.attempts >= row.max_attempts:
                    conn.execute(_events.update().where(c.id == row.id).values(
                        status="failed", worker=None, lease_until=None, updated=now,
                        error=f"abandoned: lease expired after {row.attempts} attempts"))
                    continue
                conn.execute(_events.update().where(c.id == row.id).values(
                    status="running", worker=worker, lease_until=now + lease_s, attempts=row.attempts + 1, updated=now))
                return _event(conn.execute(sa.select(_events).where(c.id == row.id)).one())

    def _update_owned(self, conn: sa.Connection, event_id: int, owner: str, **values) -> bool:
        c = _events.c
        owned = (c.id == event_id) & (c.status == "running") & (c.worker == owner)
        return conn.execute(_events.update().where(owned).values(updated=time.time(), **values)).rowcount == 1

    def heartbeat(self, event_id: int, worker: str, lease_s: float) -> bool:
        """Extend the lease; False when `worker` no longer holds the event (stop working on it)."""
        with self.engine.begin() as conn:
            return self._update_owned(conn, event_id, worker, lease_until=time.time() + lease_s)

    def done(self, event_id: int, worker: str, result: dict | None = None) -> bool:
        """Mark done with its result; False when `worker` no longer holds the event (nothing changes)."""
        with self.engine.begin() as conn:
            return self._update_owned(conn, event_id, worker, status="done", lease_until=None, error=None,
                                      result=None if result is None else json.dumps(result))

    def fail(self, event_id: int, worker: str, error: str, retry: bool = True) -> str:
        """Record the error; back to "queued" while attempts remain (and `retry`), else "failed". Returns the
        status after the call: when `worker` no longer holds the event nothing changes and its current status
        is returned."""
        c = _events.c
        status = sa.case((c.attempts < c.max_attempts, "queued"), else_="failed") if retry else "failed"
        with self.engine.begin() as conn:
            self._update_owned(conn, event_id, worker, status=status, worker=None, lease_until=None, error=error)
            return conn.execute(sa.select(c.status).where(c.id == event_id)).scalar_one()

    def release_dead(self, host: str, alive: Callable[[int], bool]) -> int:
        """Expire now the leases of running events held by processes on `host` that are no longer alive, so a
        restarted runner retries them at once instead of waiting for the lease. Returns how many."""
        c = _events.c
        now = time.time()
        with self.engine.begin() as conn:
            on_host = (c.status == "running") & c.worker.startswith(f"{host}:", autoescape=True)
            held = conn.execute(sa.select(c.id, c.worker).where(on_host).with_for_update(skip_locked=True)).all()
            pids = {row.id: row.worker.rsplit(":", 1)[1] for row in held}
            dead = [event_id for event_id, pid in pids.items() if pid.isdigit() and not alive(int(pid))]
            if dead:
                conn.execute(_events.update().where(c.id.in_(dead)).values(lease_until=now, updated=now))
        return len(dead)

    def requeue(self, key: str) -> bool:
        """A done or failed event back to queued with fresh attempts (its artifact turned out missing); a queued
        or running event is left as it is. False when no event has this key."""
        c = _events.c
        with self.engine.begin() as conn:
            conn.execute(_events.update().where(c.key == key, c.status.in_(["done", "failed"])).values(
                status="queued", attempts=0, worker=None, lease_until=None, error=None, result=None,
                updated=time.time()))
            return conn.execute(sa.select(c.id).where(c.key == key)).first() is not None

    def events(self, kind: str | None = None, status: str | None = None) -> list[Event]:
        """Events in the order they were put, optionally of one kind and/or status."""
        query = sa.select(_events).order_by(_events.c.id)
        if kind is not None:
            query = query.where(_events.c.kind == kind)
        if status is not None:
            query = query.where(_events.c.status == status)
        with self.engine.begin() as conn:
            return [_event(row) for row in conn.execute(query)]

    def get(self, key: str) -> Event | None:
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(_events).where(_events.c.key == key)).first()
        return None if row is None else _event(row)

    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, status) -> number of events."""
        c = _events.c
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(c.kind, c.status, sa.func.count()).group_by(c.kind, c.status))
            return {(kind, status): n for kind, status, n in rows}

    def close(self) -> None:
        self.engine.dispose()
