"""Batch training: retrain on a cron schedule inside the hub process.

Every attempt is a recorded run. A failed attempt is retried with exponential back-off. A schedule
is claimed in the database before it runs, so neither this process nor another hub process ever
runs the same job twice at once; ticks missed while a job runs are skipped, not queued.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cloud_hub.core.cron import next_fire
from cloud_hub.core.errors import InvalidInput
from cloud_hub.registry.registry import Registry
from cloud_hub.registry.schemas import Schedule
from cloud_hub.training.pipeline import TrainingPipeline
from cloud_hub.training.request import TrainRequest

log = logging.getLogger(__name__)

STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP)


def create_schedule(
    registry: Registry,
    *,
    name: str,
    cron: str,
    request: TrainRequest,
    max_retries: int = 3,
    backoff_s: float = 30.0,
    now: datetime | None = None,
) -> Schedule:
    if max_retries < 0:
        raise InvalidInput("max_retries must be 0 or more")
    if backoff_s < 0:
        raise InvalidInput("backoff_s must be 0 or more")
    first = next_fire(cron, now or datetime.now(UTC))
    return registry.create_schedule(
        name=name,
        cron=cron,
        request=request.model_dump(mode="json"),
        next_run_at=stamp(first),
        max_retries=max_retries,
        backoff_s=backoff_s,
    )


class TrainingScheduler:
    def __init__(
        self,
        registry: Registry,
        pipeline: TrainingPipeline,
        *,
        poll_s: float = 1.0,
        lease_s: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.registry = registry
        self.pipeline = pipeline
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.clock = clock
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self._jobs: list[threading.Thread] = []

    def claim_due(self) -> Schedule | None:
        now = self.clock()
        return self.registry.claim_due_schedule(
            stamp(now), self.worker, stamp(now - timedelta(seconds=self.lease_s))
        )

    def run_job(self, schedule: Schedule) -> int | None:
        """Run a claimed schedule to success or out of retries; returns the last run's id."""
        request = TrainRequest(**schedule.request)
        run_id: int | None = None
        status = "failed"
        try:
            for attempt in range(1, schedule.max_retries + 2):
                self.registry.heartbeat_schedule(schedule.id, self.worker, stamp(self.clock()))
                try:
                    run = self.pipeline.start(
                        request, schedule_id=schedule.id, attempt=attempt, preflight=False
                    )
                except Exception as exc:  # registry trouble: logged, retried like a failed run
                    log.exception(
                        "schedule %s attempt %d could not run: %s", schedule.name, attempt, exc
                    )
                    run = None
                if run is not None:
                    run_id = run.id
                    status = run.status
                    if run.status == "succeeded":
                        break
                if attempt <= schedule.max_retries:
                    delay = schedule.backoff_s * 2 ** (attempt - 1)
                    log.info(
                        "schedule %s: attempt %d failed, retry in %.1fs",
                        schedule.name,
                        attempt,
                        delay,
                    )
                    if self._stop.wait(delay):
                        break
        finally:
            nxt = next_fire(schedule.cron, self.clock())
            self.registry.release_schedule(
                schedule.id, self.worker, next_run_at=stamp(nxt), run_id=run_id, status=status
            )
        return run_id

    def tick(self) -> list[threading.Thread]:
        """Start every due schedule in a thread of its own."""
        started = []
        while not self._stop.is_set():
            schedule = self.claim_due()
            if schedule is None:
                break
            thread = threading.Thread(
                target=self.run_job, args=(schedule,), name=f"schedule-{schedule.name}", daemon=True
            )
            thread.start()
            started.append(thread)
        self._jobs = [t for t in self._jobs if t.is_alive()] + started
        return started

    def _run_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # keep scheduling whatever one tick hit
                log.exception("scheduler tick failed")
            self._stop.wait(self.poll_s)

    def start(self) -> None:
        if self._loop is None:
            self._loop = threading.Thread(target=self._run_loop, name="scheduler", daemon=True)
            self._loop.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._loop is not None:
            self._loop.join(timeout)
        for job in self._jobs:
            job.join(timeout)
