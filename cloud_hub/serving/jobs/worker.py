"""Workers: threads that claim jobs from the queue and run them on a serving engine.

The hub runs `serving_workers` of them in its own process; `edgepilot hub worker` runs more as
separate processes on the same data directory (each with its own engine, which follows the
stored endpoint specs). They share the SQLite queue; `JobQueue.claim` keeps them from ever
holding the same job. A job's outcome:

- a prediction (or a deferred slow step) that succeeds: `succeeded` with the response;
- bad input, or an endpoint that no longer exists: `failed` at once (retrying cannot help);
- anything else (a step failing, a broken endpoint): queued again with back-off, `failed` with
  the error once its attempts are used up;
- a worker that dies mid-job: its lease runs out and another worker takes the job again (on
  its last attempt the job is failed; a scheduled batch still gets its next run).

While a job runs, its lease is extended every third of it by the worker's lease keeper: one
thread per worker for its whole life (a thread per job would open a database connection per
job, which the Database keeps until it is closed).

Final states are published by the notifier (MQTT), when there is one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from cloud_hub.core.cron import next_fire
from cloud_hub.core.errors import InvalidInput, NotFound
from cloud_hub.serving.engine.engine import ServingEngine
from cloud_hub.serving.engine.values import PredictRequest
from cloud_hub.serving.jobs.batch import BatchRequest, BatchRunner
from cloud_hub.serving.jobs.queue import Job, JobQueue, LostLease

log = logging.getLogger(__name__)

Notify = Callable[[Job], None]


def worker_name(label: str = "w") -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{label}:{uuid.uuid4().hex[:6]}"


class JobWorker:
    def __init__(
        self,
        queue: JobQueue,
        engine: ServingEngine,
        *,
        name: str | None = None,
        endpoint: str | None = None,
        notify: Notify | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.queue = queue
        self.engine = engine
        self.name = name or worker_name()
        self.endpoint = endpoint
        self.notify = notify
        self.batches = BatchRunner(queue, queue.db, base_dir or Path.cwd())
        self.ran = 0
        self.keeper = LeaseKeeper(queue, self.name)

    def close(self) -> None:
        self.keeper.close()

    def run_once(self) -> Job | None:
        """Claim one due job and run it; the job as it ended, or None when none was due."""
        for lost in self.queue.expire(next_at=self._next_run_or_none):
            self._announce(lost)
        job = self.queue.claim(self.name, endpoint=self.endpoint)
        if job is None:
            return None
        self.ran += 1
        try:
            return self.execute(job)
        except LostLease as exc:
            log.warning("%s", exc)
            return None

    def execute(self, job: Job) -> Job:
        try:
            nxt = self._next_run(job)
        except (ValueError, InvalidInput) as exc:  # a stored batch request or cron gone bad
            return self._finish(self.queue.fail(job.id, self.name, str(exc), retry=False))
        try:
            with self._lease_kept(job):
                result = self._run(job)
        except NotFound as exc:  # the endpoint is gone: no retry, and no next scheduled run
            return self._finish(self.queue.fail(job.id, self.name, str(exc), retry=False))
        except InvalidInput as exc:
            failed = self.queue.fail(job.id, self.name, str(exc), retry=False, next_at=nxt)
            return self._finish(failed)
        except LostLease:
            raise
        except Exception as exc:
            log.info("job %s attempt %d failed: %s", job.id, job.attempts, exc)
            text = str(exc).strip() or type(exc).__name__
            return self._finish(self.queue.fail(job.id, self.name, text, next_at=nxt))
        return self._finish(self.queue.complete(job.id, self.name, result, next_at=nxt))

    def _next_run_or_none(self, job: Job) -> datetime | None:
        try:
            return self._next_run(job)
        except (ValueError, InvalidInput):  # a stored cron gone bad: no next run
            return None

    def _next_run(self, job: Job) -> datetime | None:
        """A scheduled batch's next tick (queued with this run's end, in one transaction)."""
        if job.kind != "batch":
            return None
        cron = BatchRequest.model_validate(job.request).cron
        if cron is None:
            return None
        return next_fire(cron, self.queue.clock())

    @contextmanager
    def _lease_kept(self, job: Job) -> Iterator[None]:
        """Extend the job's lease every third of it while the job runs, so a job slower than the
        lease is not claimed and run again by another worker. A lost lease ends the keeping;
        `complete` then says so."""
        with self.keeper.holding(job.id):
            yield

    def _predict(self, endpoint: str, request: PredictRequest, step: str | None = None) -> Any:
        try:
            return self.engine.predict(endpoint, request, step=step)
        except NotFound:
            self.engine.sync()  # created a moment ago in another process: build it now
            return self.engine.predict(endpoint, request, step=step)

    def _run(self, job: Job) -> dict[str, Any]:
        if job.kind == "batch":
            return self.batches.run(job, self.name, lambda r: self._predict(job.endpoint, r))
        request = PredictRequest.model_validate(job.request)
        response = self._predict(job.endpoint, request, job.step)
        out: dict[str, Any] = response.model_dump(mode="json")
        return out

    def _finish(self, job: Job) -> Job:
        if job.final:
            self._announce(job)
        return job

    def _announce(self, job: Job) -> None:
        if self.notify is not None:
            self.notify(self.queue.get(job.id))


class LeaseKeeper:
    """Extends the lease of the job a worker runs, every third of the lease, from one thread
    that lives as long as the worker (started with its first job)."""

    def __init__(self, queue: JobQueue, worker: str) -> None:
        self.queue = queue
        self.worker = worker
        self.beats = 0
        self._cond = threading.Condition()
        self._job: str | None = None
        self._turn = 0  # counts the jobs held: a job's keeping ends with its turn
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, job_id: str) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the lease keeper of {self.worker} is closed")
            self._job = job_id
            self._turn += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._keep, name=f"lease-{self.worker}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._job = None
                self._cond.notify_all()

    def _keep(self) -> None:
        period = self.queue.lease_s / 3
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job, turn = self._job, self._turn
                deadline = time.monotonic() + period
                while self._turn == turn and self._job is not None and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._turn != turn or self._job is None or self._closed:
                    continue  # the job ended (or another began) meanwhile
            assert job is not None
            try:
                self.queue.heartbeat(job, self.worker)
                self.beats += 1
            except LostLease:  # not ours any more: keep nothing until the next job
                with self._cond:
                    while self._turn == turn and not self._closed:
                        self._cond.wait()
            except Exception:  # a busy database now and then: try again next time
                log.exception("could not extend the lease of job %s", job)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(5)


class WorkerPool:
    """`count` worker threads; each polls every `poll_s` when idle, and wakes at once when this
    process submits a job."""

    def __init__(
        self,
        queue: JobQueue,
        engine: ServingEngine,
        *,
        count: int,
        poll_s: float = 0.2,
        endpoint: str | None = None,
        notify: Notify | None = None,
        base_dir: Path | None = None,
        label: str = "hub",
    ) -> None:
        self.queue = queue
        self.poll_s = poll_s
        self.workers = [
            JobWorker(
                queue,
                engine,
                name=worker_name(f"{label}{i}"),
                endpoint=endpoint,
                notify=notify,
                base_dir=base_dir,
            )
            for i in range(count)
        ]
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._pending = 0
        self._threads: list[threading.Thread] = []
        queue.on_submit(self.wake)

    def wake(self) -> None:
        with self._wake:
            self._pending += 1
            self._wake.notify()

    def _sleep(self) -> None:
        with self._wake:
            if self._pending == 0 and not self._stop.is_set():
                self._wake.wait(self.poll_s)
            self._pending = max(0, self._pending - 1)

    def _loop(self, worker: JobWorker) -> None:
        while not self._stop.is_set():
            try:
                job = worker.run_once()
            except Exception:  # a bad moment of the database must not end the worker
                log.exception("worker %s: claiming or running a job failed", worker.name)
                job = None
            if job is None:
                self._sleep()

    def start(self) -> WorkerPool:
        for worker in self.workers:
            thread = threading.Thread(
                target=self._loop, args=(worker,), name=f"job-{worker.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        for worker in self.workers:
            worker.close()
