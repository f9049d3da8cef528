"""Adaptive micro-batching: concurrent calls to one model are run as one batch.

Callers hand their rows to `submit` and block on the answer. A worker thread takes the first
waiting call, then every call already queued, and waits up to `max_wait_ms` for more only while
other requests are in flight (`pending()` says how many), so a lone caller never waits. Rows go
back to the call they came from; if a merged batch fails, each call is run alone so only the bad
one fails.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud_hub.serving.spec import BatchingSpec

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Call:
    x: np.ndarray
    future: Future[np.ndarray] = field(default_factory=Future)


class BatchStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sizes: Counter[int] = Counter()

    def add(self, rows: int) -> None:
        with self._lock:
            self.sizes[rows] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            sizes = dict(self.sizes)
        batches = sum(sizes.values())
        rows = sum(k * v for k, v in sizes.items())
        return {
            "batches": batches,
            "rows": rows,
            "max_batch_size": max(sizes, default=0),
            "mean_batch_size": round(rows / batches, 3) if batches else 0.0,
            "batch_sizes": {str(k): sizes[k] for k in sorted(sizes)},
        }


class MicroBatcher:
    def __init__(
        self,
        predict: Predict,
        spec: BatchingSpec,
        *,
        pending: Callable[[], int] = lambda: 0,
        name: str = "model",
    ) -> None:
        self._predict = predict
        self._spec = spec
        self._pending = pending
        self.stats = BatchStats()
        self._queue: queue.Queue[_Call | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if spec.enabled:
            self._thread = threading.Thread(target=self._loop, name=f"batch-{name}", daemon=True)
            self._thread.start()

    def submit(self, x: np.ndarray) -> np.ndarray:
        """Class scores for the rows `x` (blocks until they are computed)."""
        if self._thread is None:
            self.stats.add(len(x))
            return self._predict(x)
        call = _Call(x)
        self._queue.put(call)
        return call.future.result()

    def _gather(self, first: _Call) -> list[_Call]:
        calls, rows = [first], len(first.x)
        limit = self._spec.max_batch_size
        deadline = time.monotonic() + self._spec.max_wait_ms / 1000
        while rows < limit:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or self._pending() <= len(calls):
                    break  # nobody else is coming: do not make anyone wait
                try:
                    nxt = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if nxt is None:
                self._queue.put(None)  # stop after this batch
                break
            if rows + len(nxt.x) > limit:
                self._run([nxt])  # too big to join: run it alone, keep gathering
                continue
            calls.append(nxt)
            rows += len(nxt.x)
        return calls

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            self._run(self._gather(first))

    def _run(self, calls: list[_Call]) -> None:
        if len(calls) == 1:
            self._run_one(calls[0])
            return
        try:
            scores = self._predict(np.concatenate([c.x for c in calls]))
        except Exception:  # one bad call must not fail the others: run each alone
            for call in calls:
                self._run_one(call)
            return
        self.stats.add(len(scores))
        start = 0
        for call in calls:
            end = start + len(call.x)
            call.future.set_result(scores[start:end])
            start = end

    def _run_one(self, call: _Call) -> None:
        try:
            result = self._predict(call.x)
        except Exception as exc:
            call.future.set_exception(exc)
            return
        self.stats.add(len(call.x))
        call.future.set_result(result)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None
