"""The job queue: asynchronous predictions, deferred (slow) steps and batches, in SQLite.

A job is a row of `serving_jobs`. Workers (threads of the hub, or `edgepilot hub worker`
processes on the same data directory) take jobs with `claim`: one UPDATE inside a `BEGIN
IMMEDIATE` transaction moves a queued job (or a running one whose lease expired) to `running`
under the worker's name and a lease, so two workers never hold the same job. Only the owner can
complete, fail or extend a job (every later UPDATE is guarded by `owner = ?`): a worker that
lost its lease (it stalled past it and another worker reclaimed the job) cannot overwrite the
other's result. A failed attempt is queued again after a back-off until `max_attempts`; then
the job is failed with the error. Every claim is appended to the job's `history` (worker, time,
error), so "which worker ran it, how many times" is on record.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from cloud_hub.core.db import Database
from cloud_hub.core.errors import InvalidInput, NotFound
from cloud_hub.core.rows import model_from_row

JobKind = Literal["predict", "batch"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")
STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP)


def now_utc() -> datetime:
    return datetime.now(UTC)


class Job(BaseModel):
    id: str
    kind: JobKind
    endpoint: str
    step: str | None = Field(
        default=None, description="the step this job runs (a deferred slow step); None: output"
    )
    state: JobState
    attempts: int
    max_attempts: int
    worker: str | None = Field(description="the worker that holds or last held the job")
    history: list[dict[str, Any]] = Field(description="one entry per attempt: worker, at, error")
    request: dict[str, Any]
    early: dict[str, Any] | None = Field(
        default=None, description="time-differential: the fast answer given at once"
    )
    result: dict[str, Any] | None = None
    error: str | None = None
    done: int = 0
    total: int | None = None
    next_job: str | None = Field(default=None, description="a scheduled batch's next run")
    not_before: str
    lease_until: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def _job(row: sqlite3.Row) -> Job:
    return model_from_row(Job, row, ("history", "request", "early", "result"), worker=row["owner"])


class LostLease(Exception):
    """The worker no longer owns the job (its lease expired and another worker took it)."""


class JobQueue:
    def __init__(
        self,
        db: Database,
        *,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        lease_s: float = 30.0,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        if max_attempts < 1:
            raise InvalidInput("max_attempts must be 1 or more")
        self.db = db
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.lease_s = lease_s
        self.clock = clock
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    # -- producers ----------------------------------------------------------------------------
    def on_submit(self, wake: Callable[[], None]) -> None:
        """Call `wake` after each job this queue object submits (local workers start at once)."""
        with self._lock:
            self._listeners.append(wake)

    def submit(
        self,
        kind: JobKind,
        endpoint: str,
        request: dict[str, Any],
        *,
        step: str | None = None,
        early: dict[str, Any] | None = None,
        not_before: datetime | None = None,
        max_attempts: int | None = None,
    ) -> Job:
        job_id = uuid.uuid4().hex
        now = self.clock()
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO serving_jobs (id, kind, endpoint, step, request, state, "
                "max_attempts, not_before, early, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                [
                    job_id,
                    kind,
                    endpoint,
                    step,
                    json.dumps(request),
                    max_attempts or self.max_attempts,
                    stamp(not_before or now),
                    None if early is None else json.dumps(early),
                    stamp(now),
                ],
            )
        job = self.get(job_id)  # as queued, before any worker is woken
        with self._lock:
            listeners = list(self._listeners)
        for wake in listeners:
            wake()
        return job

    # -- readers ------------------------------------------------------------------------------
    def get(self, job_id: str, *, kind: JobKind | None = None) -> Job:
        row = self.db.conn.execute("SELECT * FROM serving_jobs WHERE id = ?", [job_id]).fetchone()
        if row is None or (kind is not None and row["kind"] != kind):
            raise NotFound("batch" if kind == "batch" else "job", job_id)
        return _job(row)

    def last_batch_result(
        self, endpoint: str, source: str, *, other_than: str
    ) -> dict[str, Any] | None:
        """The result of the latest succeeded batch over `source` on `endpoint`, other than the
        job `other_than` (None: there is none)."""
        row = self.db.conn.execute(
            "SELECT result FROM serving_jobs WHERE kind = 'batch' AND endpoint = ? "
            "AND state = 'succeeded' AND id != ? AND json_extract(result, '$.source') = ? "
            "ORDER BY finished_at DESC LIMIT 1",
            [endpoint, other_than, source],
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def find(
        self,
        *,
        endpoint: str | None = None,
        kind: JobKind | None = None,
        state: JobState | None = None,
        limit: int = 100,
    ) -> list[Job]:
        where, args = [], []
        for column, value in (("endpoint", endpoint), ("kind", kind), ("state", state)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM serving_jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        rows = self.db.conn.execute(sql, [*args, limit]).fetchall()
        return [_job(r) for r in rows]

    def counts(self, endpoint: str | None = None) -> dict[str, int]:
        sql = "SELECT state, COUNT(*) FROM serving_jobs"
        args: list[str] = []
        if endpoint is not None:
            sql += " WHERE endpoint = ?"
            args.append(endpoint)
        rows = self.db.conn.execute(sql + " GROUP BY state", args).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    # -- workers ------------------------------------------------------------------------------
    def expire(self, next_at: Callable[[Job], datetime | None] | None = None) -> list[Job]:
        """Fail running jobs whose lease expired with no attempt left (their worker died).
        `next_at`: when a failed job runs again (a scheduled batch's next tick), queued in the
        same transaction, as `fail` does, so a schedule does not end with a lost worker."""
        now = stamp(self.clock())
        lost = "state = 'running' AND lease_until < ? AND attempts >= max_attempts"
        probe = f"SELECT 1 FROM serving_jobs WHERE {lost} LIMIT 1"
        if self.db.conn.execute(probe, [now]).fetchone() is None:
            return []  # the usual case, without taking the write lock
        with self.db.transaction() as db:
            rows = db.execute(
                "UPDATE serving_jobs SET state = 'failed', finished_at = ?, lease_until = NULL, "
                "error = 'its worker was lost (lease expired) on the last attempt' "
                "|| COALESCE(': ' || error, '') "
                "WHERE state = 'running' AND lease_until < ? AND attempts >= max_attempts "
                "RETURNING *",
                [now, now],
            ).fetchall()
            jobs = [_job(r) for r in rows]
            for job in jobs:
                if next_at is None:
                    break
                nxt = self._again(db, job.id, next_at(job))
                if nxt is not None:
                    db.execute("UPDATE serving_jobs SET next_job = ? WHERE id = ?", [nxt, job.id])
                    job.next_job = nxt
        return jobs

    def claim(
        self, worker: str, *, endpoint: str | None = None, job_id: str | None = None
    ) -> Job | None:
        """Take the oldest due job (queued, or running with an expired lease), atomically:
        of one endpoint, or that one job, if asked."""
        moment = self.clock()
        now = stamp(moment)
        lease = stamp(moment + timedelta(seconds=self.lease_s))
        entry = json.dumps({"worker": worker, "at": now})
        due = self.db.conn.execute(
            "SELECT 1 FROM serving_jobs WHERE ((state = 'queued' AND not_before <= ?) "
            "OR (state = 'running' AND lease_until < ? AND attempts < max_attempts)) "
            "AND (? IS NULL OR endpoint = ?) AND (? IS NULL OR id = ?) LIMIT 1",
            [now, now, endpoint, endpoint, job_id, job_id],
        ).fetchone()
        if due is None:
            return None  # idle polls read, and never take the write lock
        with self.db.transaction() as db:
            row = db.execute(
                "UPDATE serving_jobs SET state = 'running', owner = ?, lease_until = ?, "
                "attempts = attempts + 1, started_at = COALESCE(started_at, ?), "
                "history = json_insert(history, '$[#]', json(?)) "
                "WHERE id = (SELECT id FROM serving_jobs WHERE "
                "((state = 'queued' AND not_before <= ?) OR (state = 'running' AND lease_until < ?"
                " AND attempts < max_attempts)) AND (? IS NULL OR endpoint = ?) "
                "AND (? IS NULL OR id = ?) ORDER BY not_before, created_at LIMIT 1) "
                "RETURNING *",
                [worker, lease, now, entry, now, now, endpoint, endpoint, job_id, job_id],
            ).fetchall()  # all of it: a statement still open would block the COMMIT
        return _job(row[0]) if row else None

    def heartbeat(
        self, job_id: str, worker: str, *, done: int | None = None, total: int | None = None
    ) -> None:
        """Extend the lease (and record progress); LostLease if the job is no longer ours."""
        with self.db.transaction() as db:
            self.extend(db, job_id, worker, done=done, total=total)

    def extend(
        self,
        db: Any,
        job_id: str,
        worker: str,
        *,
        done: int | None = None,
        total: int | None = None,
    ) -> None:
        """`heartbeat` inside the caller's transaction (so progress commits with its data)."""
        lease = stamp(self.clock() + timedelta(seconds=self.lease_s))
        cur = db.execute(
            "UPDATE serving_jobs SET lease_until = ?, done = COALESCE(?, done), "
            "total = COALESCE(?, total) WHERE id = ? AND owner = ? AND state = 'running'",
            [lease, done, total, job_id, worker],
        )
        if cur.rowcount != 1:
            raise LostLease(f"job {job_id} is no longer held by {worker}")

    def _again(self, db: Any, job_id: str, at: datetime | None) -> str | None:
        """A scheduled job's next run: a copy of it queued for `at`, in the caller's
        transaction (so a job ends and its next run exists in one commit, or neither)."""
        if at is None:
            return None
        next_id = uuid.uuid4().hex
        db.execute(
            "INSERT INTO serving_jobs (id, kind, endpoint, step, request, state, max_attempts, "
            "not_before, created_at) SELECT ?, kind, endpoint, step, request, 'queued', "
            "max_attempts, ?, ? FROM serving_jobs WHERE id = ?",
            [next_id, stamp(at), stamp(self.clock()), job_id],
        )
        return next_id

    def complete(
        self,
        job_id: str,
        worker: str,
        result: dict[str, Any],
        *,
        next_at: datetime | None = None,
    ) -> Job:
        """The job succeeded (with `next_at`: its next run is queued for then)."""
        with self.db.transaction() as db:
            cur = db.execute(
                "UPDATE serving_jobs SET state = 'succeeded', result = ?, error = NULL, "
                "lease_until = NULL, finished_at = ? "
                "WHERE id = ? AND owner = ? AND state = 'running'",
                [json.dumps(result), stamp(self.clock()), job_id, worker],
            )
            if cur.rowcount != 1:
                raise LostLease(f"job {job_id} is no longer held by {worker}")
            nxt = self._again(db, job_id, next_at)
            db.execute("UPDATE serving_jobs SET next_job = ? WHERE id = ?", [nxt, job_id])
        return self.get(job_id)

    def fail(
        self,
        job_id: str,
        worker: str,
        error: str,
        *,
        retry: bool = True,
        next_at: datetime | None = None,
    ) -> Job:
        """Record a failed attempt: queued again after a back-off while attempts are left (and
        `retry`), else failed for good (and, with `next_at`, its next run queued)."""
        moment = self.clock()
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT attempts, max_attempts FROM serving_jobs "
                "WHERE id = ? AND owner = ? AND state = 'running'",
                [job_id, worker],
            ).fetchone()
            if row is None:
                raise LostLease(f"job {job_id} is no longer held by {worker}")
            attempts = int(row["attempts"])
            again = retry and attempts < int(row["max_attempts"])
            delay = self.backoff_s * 2 ** (attempts - 1)
            db.execute(
                "UPDATE serving_jobs SET state = ?, error = ?, lease_until = NULL, "
                "owner = CASE WHEN ? THEN NULL ELSE owner END, not_before = ?, "
                "finished_at = CASE WHEN ? THEN NULL ELSE ? END, "
                "history = json_set(history, '$[#-1].error', ?) WHERE id = ?",
                [
                    "queued" if again else "failed",
                    error,
                    again,
                    stamp(moment + timedelta(seconds=delay if again else 0)),
                    again,
                    stamp(moment),
                    error,
                    job_id,
                ],
            )
            if not again:
                nxt = self._again(db, job_id, next_at)
                db.execute("UPDATE serving_jobs SET next_job = ? WHERE id = ?", [nxt, job_id])
        return self.get(job_id)

    def cancel(self, job_id: str, *, kind: JobKind | None = None) -> Job:
        """Cancel a queued job (a scheduled batch's next run, say); a running or finished job
        cannot be cancelled (InvalidInput)."""
        job = self.get(job_id, kind=kind)
        with self.db.transaction() as db:
            cur = db.execute(
                "UPDATE serving_jobs SET state = 'cancelled', finished_at = ? "
                "WHERE id = ? AND state = 'queued'",
                [stamp(self.clock()), job_id],
            )
        if cur.rowcount != 1:
            raise InvalidInput(f"{job.kind} job {job_id} is {job.state}: only a queued one can go")
        return self.get(job_id)
