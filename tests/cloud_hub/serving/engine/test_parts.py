"""The engine's parts on their own: micro-batcher, TTL cache, request parsing, aggregation."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cloud_hub.serving.engine.batching import MicroBatcher
from cloud_hub.serving.engine.errors import BadInput
from cloud_hub.serving.engine.spec import BatchingSpec
from cloud_hub.serving.engine.ttl_cache import TTLCache
from cloud_hub.serving.engine.values import PredictRequest, Value, parse_rows
from cloud_hub.serving.steps.compose import aggregate


def _echo(calls: list[int]) -> MicroBatcher:
    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        time.sleep(0.005)
        if (x < 0).any():
            raise ValueError("negative")
        return x * 2

    return MicroBatcher(
        predict, BatchingSpec(max_batch_size=16, max_wait_ms=20), pending=lambda: 32
    )


def test_batcher_merges_concurrent_calls_and_gives_each_its_rows() -> None:
    calls: list[int] = []
    batcher = _echo(calls)
    try:
        with ThreadPoolExecutor(32) as pool:
            outs = list(
                pool.map(lambda i: batcher.submit(np.full((2, 3), i, np.float32)), range(32))
            )
        for i, out in enumerate(outs):
            assert out.shape == (2, 3) and (out == 2 * i).all()
        assert max(calls) > 2 and max(calls) <= 16
        assert batcher.stats.snapshot()["rows"] == 64
    finally:
        batcher.close()


def test_one_bad_call_fails_alone() -> None:
    calls: list[int] = []
    batcher = _echo(calls)
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [
                pool.submit(batcher.submit, np.full((1, 2), -1 if i == 3 else i, np.float32))
                for i in range(8)
            ]
            results = []
            for i, f in enumerate(futures):
                if i == 3:
                    with pytest.raises(ValueError, match="negative"):
                        f.result()
                else:
                    results.append(f.result())
        assert len(results) == 7
    finally:
        batcher.close()


def test_a_lone_caller_does_not_wait() -> None:
    batcher = MicroBatcher(
        lambda x: x, BatchingSpec(max_wait_ms=500), pending=lambda: 1, name="lone"
    )
    try:
        start = time.perf_counter()
        batcher.submit(np.zeros((1, 2), np.float32))
        assert time.perf_counter() - start < 0.2
    finally:
        batcher.close()


def test_batching_off_runs_in_the_caller() -> None:
    seen: list[str] = []

    def predict(x: np.ndarray) -> np.ndarray:
        seen.append(threading.current_thread().name)
        return x

    batcher = MicroBatcher(predict, BatchingSpec(enabled=False))
    batcher.submit(np.zeros((1, 1), np.float32))
    assert seen == [threading.current_thread().name]


def test_ttl_cache_expires_and_evicts_least_recent() -> None:
    now = [0.0]
    cache: TTLCache[int] = TTLCache(max_entries=2, ttl_s=10, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)  # evicts b
    assert cache.get("b") is None and cache.get("c") == 3
    now[0] = 11
    assert cache.get("a") is None
    snap = cache.snapshot()
    assert (snap["hits"], snap["misses"], snap["evictions"]) == (2, 2, 1)


def test_request_parsing() -> None:
    assert PredictRequest(inputs=[[1, 2]]).to_value().x is not None
    with pytest.raises(BadInput, match="NaN"):
        parse_rows([[1.0, float("nan")]])
    with pytest.raises(BadInput, match="ragged"):
        parse_rows([[1.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="exactly one"):
        PredictRequest(id="a", ids=["b"])
    v = Value(kind="request", rows=2, x=np.asarray([[1.0], [1.0]], np.float32))
    d = v.row_digests()
    assert d[0] == d[1] and d[0] != Value(kind="request", rows=1, raw=(b"1",)).row_digests()[0]


def test_aggregates() -> None:
    a = Value(kind="scores", rows=2, x=np.asarray([[0.9, 0.1], [0.4, 0.6]]), labels=("x", "y"))
    b = Value(kind="scores", rows=2, x=np.asarray([[0.2, 0.8], [0.3, 0.7]]), labels=("x", "y"))
    c = Value(kind="scores", rows=2, x=np.asarray([[0.6, 0.4], [0.1, 0.9]]), labels=("x", "y"))
    best = aggregate("max_score", [a, b], ["a", "b"])
    assert best.winners().tolist() == [0, 1] and best.x is not None
    assert best.x[0].tolist() == [0.9, 0.1]
    vote = aggregate("vote", [a, b, c], ["a", "b", "c"])
    assert vote.winners().tolist() == [0, 1]
    assert vote.x is not None and vote.x[1].tolist() == [0.0, 1.0]
    tie = aggregate("vote", [a, b], ["a", "b"])  # 1-1 on row 0: the higher mean score wins
    assert tie.winners()[0] == 0
    cat = aggregate("concat", [a, b], ["a", "b"])
    assert cat.labels == ("a:x", "a:y", "b:x", "b:y")
