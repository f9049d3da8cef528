"""The job side of a hub process: the queue, its workers and the MQTT completion publisher,
built from the settings and started/stopped as one (the app's lifespan, `edgepilot hub worker`)."""

from __future__ import annotations

from pathlib import Path

from cloud_hub.core.db import Database
from cloud_hub.core.settings import HubSettings
from cloud_hub.predlog.writer import PredictionLogWriter
from cloud_hub.serving.engine.engine import ServingEngine
from cloud_hub.serving.jobs.notify import JobNotifier, MqttPublisher
from cloud_hub.serving.jobs.queue import JobQueue
from cloud_hub.serving.jobs.worker import WorkerPool


def job_queue(db: Database, settings: HubSettings) -> JobQueue:
    return JobQueue(
        db,
        max_attempts=settings.serving_job_attempts,
        backoff_s=settings.serving_job_backoff_s,
        lease_s=settings.serving_job_lease_s,
    )


def prediction_log(db: Database, settings: HubSettings) -> PredictionLogWriter | None:
    """The process's prediction-log writer, started (None when the settings turn it off)."""
    if not settings.prediction_log:
        return None
    return PredictionLogWriter(db).start()


class JobService:
    def __init__(
        self,
        queue: JobQueue,
        engine: ServingEngine,
        settings: HubSettings,
        *,
        workers: int,
        endpoint: str | None = None,
        base_dir: Path | None = None,
        label: str = "hub",
    ) -> None:
        self.queue = queue
        engine.jobs = queue
        self.publisher = MqttPublisher(settings) if settings.mqtt_host is not None else None
        notify = None
        if self.publisher is not None:
            notify = JobNotifier(self.publisher, settings.topic_root)
        self.pool = WorkerPool(
            queue,
            engine,
            count=workers,
            poll_s=settings.serving_job_poll_s,
            endpoint=endpoint,
            notify=notify,
            base_dir=base_dir,
            label=label,
        )

    def start(self) -> JobService:
        if self.publisher is not None:
            self.publisher.start()
        self.pool.start()
        return self

    def stop(self) -> None:
        self.pool.stop()
        if self.publisher is not None:
            self.publisher.stop()
