"""Adaptive micro-batching: concurrent calls to one model are run as one batch.

Callers hand their rows to `submit` and block on the answer. There is no batching thread: the
first caller to arrive while no batch is running leads, in its own thread. It takes the calls
waiting (its own first), up to `max_batch_size` rows, and waits up to `max_wait_ms` for more
only while other requests are in flight (`pending()` says how many), so a lone caller neither
waits nor changes threads. It runs the batch, gives every call its rows, and hands the lead to
the oldest call still waiting (which is in the next batch), if any. If a merged batch fails,
each call is run alone so only the bad one fails.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud_hub.serving.spec import BatchingSpec

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(eq=False)
class _Call:
    x: np.ndarray
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)

    def finish(self, result: np.ndarray | None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True
        self.wake.set()

    def value(self) -> np.ndarray:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


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
        self.name = name
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._waiting: deque[_Call] = deque()
        self._rows_waiting = 0
        self._leading = False  # a caller is gathering or running a batch

    def submit(self, x: np.ndarray) -> np.ndarray:
        """Class scores for the rows `x` (blocks until they are computed)."""
        if not self._spec.enabled:
            self.stats.add(len(x))
            return self._predict(x)
        call = _Call(x)
        with self._cond:
            self._waiting.append(call)
            self._rows_waiting += len(x)
            lead = not self._leading
            self._leading = True
            self._cond.notify()  # a leader waiting for more may take this one
        if not lead:
            call.wake.wait()
            if call.done:
                return call.value()
            # handed the lead: this call is the oldest waiting, so it is in the next batch
        try:
            self._run(self._gather())
        finally:
            self._hand_over()
        assert call.done
        return call.value()

    def _gather(self) -> list[_Call]:
        limit = self._spec.max_batch_size
        deadline = time.monotonic() + self._spec.max_wait_ms / 1000
        with self._cond:
            while self._rows_waiting < limit and self._pending() > len(self._waiting):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)  # others are in flight: give them a moment to join
            calls = [self._waiting.popleft()]
            rows = len(calls[0].x)
            while self._waiting and rows + len(self._waiting[0].x) <= limit:
                calls.append(self._waiting.popleft())
                rows += len(calls[-1].x)
            self._rows_waiting -= rows
        return calls

    def _hand_over(self) -> None:
        with self._cond:
            if self._waiting:
                self._waiting[0].wake.set()  # not done: it leads the next batch
            else:
                self._leading = False

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
            call.finish(scores[start:end])
            start = end

    def _run_one(self, call: _Call) -> None:
        try:
            result = self._predict(call.x)
        except Exception as exc:
            call.finish(None, exc)
            return
        self.stats.add(len(call.x))
        call.finish(result)

    def close(self) -> None:
        """Nothing to stop: batches run in the callers' threads."""
