"""Queueing a batch job, and running one job in this process (`edgepilot endpoints batch
--here`) instead of in a hub worker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cloud_hub.core.db import Database
from cloud_hub.serving.engine.engine import ServingEngine
from cloud_hub.serving.engine.store import EndpointStore
from cloud_hub.serving.jobs.batch import BatchRequest, check
from cloud_hub.serving.jobs.queue import Job, JobQueue
from cloud_hub.serving.jobs.worker import JobWorker, worker_name

RESULTS_TABLE = "batch_predictions"  # where a batch's predictions are stored (serving.jobs.batch)
RETRY_POLL_S = 0.1  # how often a job waiting out its retry back-off is looked at again


def submit_batch(db: Database, endpoint: str, request: BatchRequest, base_dir: Path) -> Job:
    """Queue a batch on `endpoint` (which must exist) after checking its source: the file or
    folder (relative paths from `base_dir`) or the table, and the columns it names."""
    EndpointStore(db).get(endpoint)
    check(request, base_dir, db)
    return JobQueue(db).submit("batch", endpoint, request.model_dump(mode="json"))


def run_job_in_thread(
    engine: ServingEngine, queue: JobQueue, job_id: str, endpoint: str
) -> threading.Thread:
    """Run the one job, retries included, on `engine` in a thread of this process (started and
    returned); the engine is closed when the job ends."""

    def run() -> None:
        try:
            engine.load(endpoint)  # one that cannot be built is kept as broken: the job says so
            worker = JobWorker(queue, engine, name=worker_name("cli"))
            while not queue.get(job_id).final:
                job = queue.claim(worker.name, job_id=job_id)
                if job is None:
                    time.sleep(RETRY_POLL_S)  # waiting out a retry's back-off
                    continue
                worker.execute(job)
        finally:
            engine.close()

    thread = threading.Thread(target=run, name="batch-here", daemon=True)
    thread.start()
    return thread
