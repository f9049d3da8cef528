"""Several batches of one model at once: up to `concurrency` run side by side, batches are
formed oldest call first (FIFO across batches), and the old guarantees hold with several
leaders (a failing merged batch is retried call by call, no caller is left waiting). Every
wait here is on an event or a condition polled by `wait_until`, never a sleep."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.hub import Hub
from cloud_hub.serving.engine.batching import MicroBatcher, default_concurrency, free_cores
from cloud_hub.serving.engine.engine import ServingEngine
from cloud_hub.serving.engine.spec import BatchingSpec, EndpointSpec
from cloud_hub.serving.engine.values import PredictRequest
from cloud_hub.serving.steps import preprocess as preprocess_step
from tests.cloud_hub.serving.conftest import digits_rows, example, png_b64
from tests.waiting import wait_until


class GatedModel:
    """A model whose every batch waits for its own gate: `release(first)` lets the batch whose
    first row is `first` finish. Each row is one number; the answer is the rows times 10."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches: list[list[int]] = []  # the rows of each batch, in the order they started
        self.gates: dict[int, threading.Event] = {}
        self.running = 0
        self.most_running = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = [int(v) for v in x[:, 0]]
        with self._lock:
            self.batches.append(rows)
            gate = self.gates.setdefault(rows[0], threading.Event())
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if not gate.wait(timeout=20):
                raise TimeoutError(f"batch {rows} was never released")
            if any(r < 0 for r in rows):
                raise ValueError("negative rows")
            return x * 10
        finally:
            with self._lock:
                self.running -= 1

    def release(self, first: int) -> None:
        with self._lock:
            self.gates.setdefault(first, threading.Event()).set()

    def started(self, first: int) -> bool:
        with self._lock:
            return any(b[0] == first for b in self.batches)


def row(i: int) -> np.ndarray:
    return np.full((1, 1), i, np.float32)


@pytest.fixture
def pool() -> Any:
    with ThreadPoolExecutor(16) as p:
        yield p


def submit_in_order(
    pool: ThreadPoolExecutor, batcher: MicroBatcher, values: list[int]
) -> list[Future[Any]]:
    """Submit one call per value, each queued before the next is submitted."""
    futures = []
    for v in values:
        queued = batcher.queued()
        futures.append(pool.submit(batcher.submit, row(v)))
        wait_until(lambda q=queued: batcher.queued() > q, what=f"call {v} queued")
    return futures


def test_batches_run_side_by_side_up_to_the_concurrency(pool: ThreadPoolExecutor) -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, BatchingSpec(enabled=True), name="m", concurrency=2)
    first = pool.submit(batcher.submit, row(1))
    wait_until(lambda: model.started(1), what="the first batch")
    second = pool.submit(batcher.submit, row(2))  # a second batch starts beside the first
    wait_until(lambda: model.started(2), what="a second batch while the first runs")
    (third,) = submit_in_order(pool, batcher, [3])  # both slots busy: it waits
    assert not model.started(3) and batcher.queued() == 1
    model.release(2)
    assert second.result(timeout=10)[0, 0] == 20
    wait_until(lambda: model.started(3), what="the waiting call in the freed slot")
    model.release(3)
    model.release(1)
    assert first.result(timeout=10)[0, 0] == 10 and third.result(timeout=10)[0, 0] == 30
    assert model.most_running == 2
    stats = batcher.stats.snapshot()
    assert stats["concurrent_batches"] == 2 and stats["most_concurrent_batches"] == 2
    assert stats["rows"] == 3


def test_the_oldest_waiting_calls_go_into_the_next_batch(pool: ThreadPoolExecutor) -> None:
    model = GatedModel()
    spec = BatchingSpec(enabled=True, max_batch_size=2)
    batcher = MicroBatcher(model, spec, name="m", concurrency=2)
    a = pool.submit(batcher.submit, row(1))
    wait_until(lambda: model.started(1), what="batch 1")
    b = pool.submit(batcher.submit, row(2))
    wait_until(lambda: model.started(2), what="batch 2")
    waiting = submit_in_order(pool, batcher, [3, 4, 5, 6, 7])
    model.release(2)  # the second batch ends first: the next batch is the two oldest calls
    wait_until(lambda: model.started(3), what="batch 3")
    model.release(1)
    wait_until(lambda: model.started(5), what="batch 5")
    for first in (3, 5, 7):
        model.release(first)
    answers = [int(f.result(timeout=10)[0, 0]) for f in (a, b, *waiting)]
    assert answers == [10, 20, 30, 40, 50, 60, 70]
    assert model.batches == [[1], [2], [3, 4], [5, 6], [7]]


def test_a_failing_merged_batch_is_retried_call_by_call_beside_another(
    pool: ThreadPoolExecutor,
) -> None:
    model = GatedModel()
    spec = BatchingSpec(enabled=True, max_batch_size=8)
    batcher = MicroBatcher(model, spec, name="m", concurrency=2)
    a = pool.submit(batcher.submit, row(1))
    wait_until(lambda: model.started(1), what="batch 1")
    b = pool.submit(batcher.submit, row(2))
    wait_until(lambda: model.started(2), what="batch 2")
    good, bad, also_good = submit_in_order(pool, batcher, [3, -4, 5])
    for first in (2, 3, -4, 5):  # [3, -4, 5] fails whole, then each runs alone
        model.release(first)
    assert good.result(timeout=10)[0, 0] == 30 and also_good.result(timeout=10)[0, 0] == 50
    with pytest.raises(ValueError, match="negative rows"):
        bad.result(timeout=10)
    assert b.result(timeout=10)[0, 0] == 20
    assert not a.done()  # the first batch ran all along, untouched
    model.release(1)
    assert a.result(timeout=10)[0, 0] == 10
    assert [3, -4, 5] in model.batches and [-4] in model.batches


def test_a_lone_caller_leads_at_once_with_free_slots() -> None:
    """No other request in flight: no wait, in the caller's own thread."""
    threads: list[int] = []

    def model(x: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        return x

    batcher = MicroBatcher(
        model, BatchingSpec(enabled=True, max_wait_ms=1000), pending=lambda: 1, concurrency=4
    )
    for i in range(3):
        assert batcher.submit(row(i))[0, 0] == i
    assert threads == [threading.get_ident()] * 3
    assert batcher.stats.snapshot()["most_concurrent_batches"] == 1


def test_many_callers_all_answered_with_their_own_rows() -> None:
    """A stress of the hand-overs: 32 threads, 3 batch slots, batches of up to 5 rows."""

    def model(x: np.ndarray) -> np.ndarray:
        return x * 2

    batcher = MicroBatcher(
        model, BatchingSpec(enabled=True, max_batch_size=5, max_wait_ms=1), concurrency=3
    )

    def caller(k: int) -> list[bool]:
        return [
            bool(
                (
                    batcher.submit(np.full((1 + i % 2, 1), k * 1000 + i, np.float32))
                    == (k * 1000 + i) * 2
                ).all()
            )
            for i in range(50)
        ]

    with ThreadPoolExecutor(32) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(caller, k) for k in range(32)]]
    assert all(all(r) for r in results)
    stats = batcher.stats.snapshot()
    assert stats["rows"] == 32 * 75 and stats["most_concurrent_batches"] <= 3
    assert batcher.queued() == 0


def test_the_default_concurrency_is_the_cores_the_threads_leave() -> None:
    assert default_concurrency(1) == free_cores()
    assert default_concurrency(10_000) == 1
    assert default_concurrency(2) == max(1, free_cores() // 2)


# -- through an endpoint ------------------------------------------------------------------------
API = "/api/v1/endpoints"


def preprocess_spec(name: str, batching: dict[str, Any]) -> dict[str, Any]:
    spec = example("preprocess_predict.json")
    spec["name"] = name
    spec["batching"] = batching
    return spec


def test_the_spec_sets_how_many_batches_run_at_once(client: TestClient) -> None:
    for name, batching in (
        ("conc-three", {"enabled": True, "max_concurrent_batches": 3}),
        ("conc-default", {"enabled": True}),
    ):
        resp = client.post(API, json=preprocess_spec(name, batching))
        assert resp.status_code == 201, resp.text
    stats = client.get(f"{API}/conc-three/stats").json()["batching"]["mlp"]
    assert stats["concurrent_batches"] == 3
    stats = client.get(f"{API}/conc-default/stats").json()["batching"]["mlp"]
    assert stats["concurrent_batches"] == default_concurrency(1)
    bad = preprocess_spec("conc-bad", {"enabled": True, "max_concurrent_batches": 0})
    resp = client.post(API, json=bad)
    assert resp.status_code == 422 and "max_concurrent_batches" in resp.text


def test_images_are_decoded_in_each_request_thread_before_the_batcher(
    serving_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode and resize of a `preprocess` step run in the caller's own thread, in
    parallel, and only the model-ready rows reach the batch leader. A spy around the real
    decode (it still decodes) says which thread ran it."""
    decoded_in: list[int] = []
    real = preprocess_step.prepare_images_geometry

    def spy(*args: Any, **kwargs: Any) -> Any:
        decoded_in.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(preprocess_step, "prepare_images_geometry", spy)
    engine = ServingEngine(serving_hub.registry, serving_hub.db, threads=8)
    name = "conc-decode"
    spec = preprocess_spec(name, {"enabled": True, "max_wait_ms": 50})
    engine.create(EndpointSpec.model_validate(spec))
    callers: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def call(i: int) -> str:
        with lock:
            callers.append(threading.get_ident())
        start.wait(timeout=10)
        answer = engine.predict(name, PredictRequest(image_b64=png_b64(i)))
        return str(answer.predictions[0].label)

    try:
        with ThreadPoolExecutor(8) as pool:
            labels = [f.result(timeout=30) for f in [pool.submit(call, i) for i in range(8)]]
        assert sorted(decoded_in) == sorted(callers)  # each in its own caller's thread
        _, truth = digits_rows()
        assert sum(label == str(truth[i]) for i, label in enumerate(labels)) >= 6
        assert engine.stats(name)["batching"]["mlp"]["rows"] == 8
    finally:
        engine.delete(name)
        engine.close()
