"""Asynchronous jobs: submitted at once, run by workers (hub threads and `edgepilot hub worker`
processes sharing the SQLite queue), retried, reclaimed after a lost lease, kept across a hub
restart, and announced on MQTT."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.hub import Hub
from cloud_hub.serving import Signature, Step, StepParams, Value, register_step
from cloud_hub.serving.engine.spec import EndpointSpec
from cloud_hub.serving.engine.store import EndpointStore
from cloud_hub.serving.jobs.queue import JobQueue
from tests.clocks import ManualUtcClock
from tests.cloud_hub.serving.conftest import (
    REPO,
    Subscriber,
    digits_rows,
    example,
    hub_app,
    png_b64,
    reference_labels,
    wait_for,
    wait_job,
)
from tests.conftest import BIN

API = "/api/v1"


def submit(client: TestClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(f"{API}/endpoints/{name}/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job: dict[str, Any] = resp.json()
    return job


# -- a step that fails on purpose, to see retries ------------------------------------------------
FAILURES: Counter[str] = Counter()


class FlakyParams(StepParams):
    target: str
    fail_times: int  # fail this many calls per key, then answer


@register_step
class Flaky(Step):
    kind = "test_flaky"
    Params = FlakyParams
    arity = (0, 0)

    def targets(self) -> list[str]:
        return [self.params.target]

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return target(self.params.target)

    def run(self, ctx: Any, inputs: list[Value]) -> Value:
        key = ctx.key or ""
        FAILURES[key] += 1
        if FAILURES[key] <= self.params.fail_times:
            raise RuntimeError(f"flaky failure {FAILURES[key]} of {key}")
        value: Value = ctx.call(self.params.target)
        return value


class SlowParams(StepParams):
    target: str
    seconds: float


@register_step
class Slow(Step):
    """Takes its time, then answers with its target: a job slower than its lease."""

    kind = "test_slow"
    Params = SlowParams
    arity = (0, 0)

    def targets(self) -> list[str]:
        return [self.params.target]

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return target(self.params.target)

    def run(self, ctx: Any, inputs: list[Value]) -> Value:
        time.sleep(self.params.seconds)
        value: Value = ctx.call(self.params.target)
        return value


def flaky_spec(name: str, fail_times: int) -> dict[str, Any]:
    return {
        "name": name,
        "models": {"mlp": "digits/digits-mlp:1"},
        "steps": [
            {"name": "predict", "kind": "model", "params": {"model": "mlp"}},
            {
                "name": "flaky",
                "kind": "test_flaky",
                "params": {"target": "predict", "fail_times": fail_times},
            },
        ],
        "output": "flaky",
    }


# -- tests -----------------------------------------------------------------------------------------
def test_async_example_answers_a_job_id_at_once_then_the_result(
    client: TestClient, serving_hub: Hub
) -> None:
    assert client.post(f"{API}/endpoints", json=example("async.json")).status_code == 201
    job = submit(client, "digits-async", {"image_b64": png_b64(3)})
    assert job["state"] == "queued" and job["endpoint"] == "digits-async"
    assert "request" not in job
    raw, _ = digits_rows(raw=True)
    rows = submit(client, "digits-async", {"inputs": raw[:5].tolist()})
    done = wait_job(client, job["id"])
    assert done["state"] == "succeeded", done
    x, _ = digits_rows()
    expected = reference_labels(serving_hub, "digits/digits-mlp:1", x[:5])
    assert done["result"]["predictions"][0]["label"] == expected[3]
    assert done["attempts"] == 1 and done["worker"].split(":")[2].startswith("hub")
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    got = wait_job(client, rows["id"])["result"]["predictions"]
    assert [p["label"] for p in got] == expected
    listed = client.get(f"{API}/jobs", params={"endpoint": "digits-async"}).json()
    assert {j["id"] for j in listed} == {job["id"], rows["id"]}


def test_bad_jobs_are_refused_at_submit_and_unknown_ids_are_404(client: TestClient) -> None:
    assert client.post(f"{API}/endpoints", json=example("async.json")).status_code == 201
    missing = client.get(f"{API}/jobs/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    unknown = client.post(f"{API}/endpoints/ghost/jobs", json={"inputs": [[1.0]]})
    assert unknown.status_code == 404 and "ghost" in unknown.json()["detail"]
    for body in (
        {"inputs": [[1.0, 2.0], [3.0]]},  # ragged
        {"image_b64": "not base64!"},
        {"inputs": [[1.0]], "id": "x"},  # two kinds of input
        {},
    ):
        resp = client.post(f"{API}/endpoints/digits-async/jobs", json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["detail"]
    for content in (b"{not json", b'{"inputs": [[1.0, NaN]]}'):
        resp = client.post(
            f"{API}/endpoints/digits-async/jobs",
            content=content,
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 422, resp.text
    # a shape the model refuses is found when the job runs: failed at once, not retried
    job = wait_job(client, submit(client, "digits-async", {"inputs": [[1.0, 2.0]]})["id"])
    assert job["state"] == "failed" and job["attempts"] == 1
    assert "shape" in job["error"] or "input" in job["error"]
    assert client.get(f"{API}/endpoints").status_code == 200  # still serving


def test_a_failing_job_is_retried_then_failed_with_the_error(client: TestClient) -> None:
    assert client.post(f"{API}/endpoints", json=flaky_spec("flaky-jobs", 1)).status_code == 201
    x, _ = digits_rows()
    # fails once, then succeeds on its second attempt
    once = wait_job(
        client, submit(client, "flaky-jobs", {"inputs": x[:1].tolist(), "key": "a"})["id"]
    )
    assert once["state"] == "succeeded" and once["attempts"] == 2
    assert "flaky failure 1" in once["history"][0]["error"]
    assert "error" not in once["history"][1]
    # always fails: three attempts (the hub's serving_job_attempts), then failed with the error
    spec = flaky_spec("flaky-jobs", 100)
    assert client.put(f"{API}/endpoints/flaky-jobs", json=spec).status_code == 200
    job = submit(client, "flaky-jobs", {"inputs": x[:1].tolist(), "key": "b"})
    failed = wait_job(client, job["id"], timeout=30)
    assert failed["state"] == "failed" and failed["attempts"] == 3
    assert "step 'flaky' failed: flaky failure 3 of b" in failed["error"]
    assert [h["error"].split(": ")[-1] for h in failed["history"]] == [
        f"flaky failure {i} of b" for i in (1, 2, 3)
    ]
    assert FAILURES["b"] == 3


def test_a_job_whose_worker_died_is_taken_again_after_its_lease(
    client: TestClient, serving_hub: Hub
) -> None:
    assert client.post(f"{API}/endpoints", json=example("async.json")).status_code == 201
    raw, _ = digits_rows(raw=True)
    short = JobQueue(serving_hub.db, lease_s=0.3)
    job = short.submit("predict", "digits-async", {"inputs": raw[:2].tolist()})
    # claimed by a worker that then dies: nobody completes it, the lease runs out
    dead = short.claim("dead-worker", job_id=job.id)
    assert dead is not None and dead.state == "running"
    done = wait_job(client, job.id)
    assert done["state"] == "succeeded" and done["attempts"] == 2
    assert [h["worker"] for h in done["history"]][0] == "dead-worker"
    assert done["worker"] != "dead-worker"
    # the dead worker cannot overwrite the result
    from cloud_hub.serving.jobs.queue import LostLease

    with pytest.raises(LostLease):
        short.complete(job.id, "dead-worker", {"bogus": True})


def test_a_job_slower_than_its_lease_is_not_run_twice(serving_hub: Hub) -> None:
    from cloud_hub.serving.engine.engine import ServingEngine
    from cloud_hub.serving.jobs.worker import JobWorker

    spec = EndpointSpec.model_validate(
        {
            "name": "digits-slow",
            "models": {"mlp": "digits/digits-mlp:1"},
            "steps": [
                {"name": "predict", "kind": "model", "params": {"model": "mlp"}},
                {
                    "name": "slow",
                    "kind": "test_slow",
                    "params": {"target": "predict", "seconds": 1.2},
                },
            ],
            "output": "slow",
        }
    )
    engine = ServingEngine(serving_hub.registry, serving_hub.db, threads=4)
    try:
        engine.create(spec)
        queue = JobQueue(serving_hub.db, lease_s=0.3)  # the job takes four leases' time
        x, _ = digits_rows()
        job = queue.submit("predict", "digits-slow", {"inputs": x[:1].tolist()})
        first = JobWorker(queue, engine, name="first", endpoint="digits-slow")
        second = JobWorker(queue, engine, name="second", endpoint="digits-slow")
        done: list[Any] = []
        runner = threading.Thread(target=lambda: done.append(first.run_once()))
        runner.start()
        wait_for(
            lambda: queue.get(job.id).state,
            lambda state: state == "running",
            timeout=5,
            what="the first worker's claim",
        )
        while runner.is_alive():  # the other worker keeps looking for due work meanwhile
            assert second.run_once() is None
            time.sleep(0.05)
        runner.join()
        final = queue.get(job.id)
        assert final.state == "succeeded" and final.attempts == 1 and final.worker == "first"
        assert second.ran == 0
    finally:
        engine.delete("digits-slow")
        engine.close()


def test_a_hub_restart_loses_no_queued_job(serving_hub: Hub) -> None:
    data_dir = serving_hub.settings.data_dir
    raw, _ = digits_rows(raw=True)
    # a hub with no workers: the jobs stay queued until it goes down
    with hub_app(data_dir, keep=True, serving_workers=0) as (_, c):
        assert c.post(f"{API}/endpoints", json=example("async.json")).status_code == 201
        ids = [
            submit(c, "digits-async", {"inputs": raw[i : i + 1].tolist()})["id"] for i in range(6)
        ]
        assert {c.get(f"{API}/jobs/{i}").json()["state"] for i in ids} == {"queued"}
    with hub_app(data_dir) as (_, c):  # the hub comes back, with its workers
        jobs = [wait_job(c, i) for i in ids]
    assert {j["state"] for j in jobs} == {"succeeded"}
    x, _ = digits_rows()
    expected = reference_labels(serving_hub, "digits/digits-mlp:1", x[:6])
    assert [j["result"]["predictions"][0]["label"] for j in jobs] == expected


def test_completion_is_published_on_mqtt(serving_hub: Hub, mosquitto: tuple[str, int]) -> None:
    host, port = mosquitto
    root = f"jobs{os.getpid()}"
    sub = Subscriber(host, port, f"{root}/jobs/+")
    try:
        with hub_app(
            serving_hub.settings.data_dir,
            mqtt_host=host,
            mqtt_port=port,
            mqtt_username="hub",
            topic_root=root,
        ) as (_, c):
            assert c.post(f"{API}/endpoints", json=example("async.json")).status_code == 201
            job = submit(c, "digits-async", {"image_b64": png_b64(7)})
            message = sub.wait(f"{root}/jobs/{job['id']}")
            polled = wait_job(c, job["id"])
    finally:
        sub.close()
    assert message["id"] == job["id"] and message["state"] == "succeeded"
    assert message["result"] == polled["result"]
    assert "request" not in message


# -- workers as separate processes -----------------------------------------------------------------
class WorkerProcess:
    def __init__(self, data_dir: str) -> None:
        env = dict(os.environ, COLUMNS="200")
        self.proc = subprocess.Popen(
            [str(BIN / "edgepilot"), "--data-dir", data_dir, "hub", "worker", "--poll", "0.05"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "worker ready" in line:
                self.ready.set()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return "".join(self.lines)


@pytest.fixture
def worker_processes(serving_hub: Hub) -> Iterator[list[WorkerProcess]]:
    spec = EndpointSpec.model_validate({**example("sync.json"), "name": "digits-shared"})
    store = EndpointStore(serving_hub.db)
    store.create(spec)
    procs = [WorkerProcess(str(serving_hub.settings.data_dir)) for _ in range(2)]
    try:
        for p in procs:
            assert p.ready.wait(60), p.stop()
        yield procs
    finally:
        logs = [p.stop() for p in procs]
        store.delete("digits-shared")
    for log in logs:
        assert "worker stopped after" in log, log


def test_two_worker_processes_share_one_queue_and_run_every_job_once(
    serving_hub: Hub, worker_processes: list[WorkerProcess]
) -> None:
    queue = JobQueue(serving_hub.db)
    x, _ = digits_rows()
    n = 120
    ids = [
        queue.submit("predict", "digits-shared", {"inputs": x[i : i + 1].tolist()}).id
        for i in range(n)
    ]
    jobs = wait_for(
        lambda: [queue.get(i) for i in ids],
        lambda js: all(j.final for j in js),
        timeout=60,
        what="the shared queue",
    )
    assert {j.state for j in jobs} == {"succeeded"}
    assert all(len(j.history) == 1 and j.attempts == 1 for j in jobs)  # none ran twice
    by_worker = Counter(j.worker for j in jobs)
    assert len(by_worker) == 2 and all(":proc0:" in w for w in by_worker), by_worker
    assert min(by_worker.values()) > 0
    pids = {w.split(":")[1] for w in by_worker if w}
    assert pids == {str(p.proc.pid) for p in worker_processes}
    expected = reference_labels(serving_hub, "digits/digits-mlp:1", x[:n])
    assert [j.result["predictions"][0]["label"] for j in jobs if j.result] == expected


def _slow_engine(serving_hub: Hub, name: str, seconds: float) -> Any:
    from cloud_hub.serving.engine.engine import ServingEngine

    engine = ServingEngine(serving_hub.registry, serving_hub.db, threads=4)
    engine.create(
        EndpointSpec.model_validate(
            {
                "name": name,
                "models": {"mlp": "digits/digits-mlp:1"},
                "steps": [
                    {"name": "predict", "kind": "model", "params": {"model": "mlp"}},
                    {
                        "name": "slow",
                        "kind": "test_slow",
                        "params": {"target": "predict", "seconds": seconds},
                    },
                ],
                "output": "slow",
            }
        )
    )
    return engine


def test_a_worker_keeps_its_leases_with_one_thread_and_one_connection(serving_hub: Hub) -> None:
    """The lease keeper used to be a thread per job, each opening its own database connection,
    which the Database keeps until it closes: one connection leaked per job longer than a third
    of the lease (every long batch). Now one keeper per worker, for its whole life."""
    from cloud_hub.serving.jobs.worker import JobWorker

    engine = _slow_engine(serving_hub, "digits-leases", 0.25)
    worker = None
    try:
        queue = JobQueue(serving_hub.db, lease_s=0.3)  # extended every 0.1 s
        x, _ = digits_rows()
        ids = [
            queue.submit("predict", "digits-leases", {"inputs": x[i : i + 1].tolist()}).id
            for i in range(6)
        ]
        worker = JobWorker(queue, engine, name="keeper-test", endpoint="digits-leases")
        connections = len(serving_hub.db._all)  # every connection the Database ever opened
        for _ in ids:
            job = worker.run_once()
            assert job is not None and job.state == "succeeded" and job.attempts == 1
        assert worker.keeper.beats >= 6  # the leases were kept
        assert len(serving_hub.db._all) - connections <= 1  # the keeper's own, once
        assert [t.name for t in threading.enumerate()].count("lease-keeper-test") == 1
    finally:
        if worker is not None:
            worker.close()
        engine.delete("digits-leases")
        engine.close()
    assert "lease-keeper-test" not in [t.name for t in threading.enumerate()]


def test_a_scheduled_batch_lost_on_its_last_attempt_still_gets_its_next_run(
    serving_hub: Hub, tmp_path: Any
) -> None:
    """A worker dies on a scheduled batch's last attempt: the batch is failed when its lease
    expires, and its next run is queued all the same (the schedule used to end there)."""
    from cloud_hub.serving.engine.engine import ServingEngine
    from cloud_hub.serving.jobs.worker import JobWorker

    engine = ServingEngine(serving_hub.registry, serving_hub.db, threads=2)
    engine.create(EndpointSpec.model_validate({**example("batch.json"), "name": "lost-cron"}))
    clock = ManualUtcClock()  # the lease runs out when the test says so, for both queues
    worker = JobWorker(
        JobQueue(serving_hub.db, clock=clock), engine, name="survivor", endpoint="lost-cron"
    )
    nxt = None
    try:
        queue = JobQueue(serving_hub.db, lease_s=0.2, max_attempts=1, clock=clock)
        csv_path = str(REPO / "examples" / "endpoints" / "data" / "digits.csv")
        body = {"source": {"kind": "csv", "path": csv_path}, "cron": "0 3 * * *"}
        job = queue.submit("batch", "lost-cron", body)
        assert queue.claim("dead-worker", job_id=job.id) is not None
        assert worker.run_once() is None  # still leased: nothing to do
        assert queue.get(job.id).state == "running"
        clock.advance(0.25)
        assert worker.run_once() is None  # it expires the lost job; the next run is not due
        lost = queue.get(job.id)
        assert lost.state == "failed" and "its worker was lost" in (lost.error or "")
        assert lost.next_job is not None
        nxt = queue.get(lost.next_job)
        assert nxt.state == "queued" and nxt.request == job.request
        assert lost.finished_at is not None and nxt.not_before > lost.finished_at
    finally:
        if nxt is not None:
            JobQueue(serving_hub.db).cancel(nxt.id)
        worker.close()
        engine.delete("lost-cron")
        engine.close()
