"""Adaptive micro-batching: concurrent calls to one model are run as batches, several at once.

Callers hand their rows to `submit` and block on the answer. There is no batching thread: a
batch is gathered and run by one of its callers, its leader, in its own thread. Up to
`concurrency` batches run at once (by default as many as the cores the model's intra-op
threads leave free), so a batched model uses the machine's cores as an unbatched one does.

One leader at a time gathers: it takes the calls waiting, oldest first (its own is the oldest),
up to `max_batch_size` rows, waiting up to `max_wait_ms` for more only while other requests are
in flight that are not already in a batch (`pending()` says how many are in flight), so a lone
caller neither waits nor changes threads. Once it has its batch it runs it, and the gathering of
the next batch passes to the oldest call still waiting, if fewer than `concurrency` batches are
running; else the first batch to finish hands it on. Batches are thus formed strictly in
arrival order (FIFO across batches). If a merged batch fails, each call is run alone so only the
bad one fails.

A call's rows are one array, or a dict of arrays by input name (a model of several inputs); the
answer is an array, or every output by name (`Runtime.run`): a merged batch's inputs are joined
per name and each output split back per call. A model with a fixed batch dimension takes any
number of rows here: its runtime runs them in chunks of its size (padding the last).

A model must give one row per row it is given, in every output. One that gives another number
(a graph that reduces or broadcasts over the batch axis) would hand callers someone else's rows,
or none: every call of that batch fails instead with `WrongRowCount`, naming the model (the
graph turns it into a StepFailed naming the step). Whatever happens while a batch runs, every
call taken into it is finished (with its rows or an error), so no caller is left waiting.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud_hub.serving.engine.spec import BatchingSpec

Rows = np.ndarray | Mapping[str, np.ndarray]
Answer = Any  # an array of rows, or a dict of them by output name
Predict = Callable[[Any], Any]
RECHECK_S = 0.001  # a leader waiting for others looks at the in-flight count this often


class WrongRowCount(RuntimeError):
    """The model gave a different number of rows than it was given rows."""


def _rows_of(scores: object) -> int | None:
    shape = getattr(scores, "shape", None)
    return int(shape[0]) if shape else None


def count_rows(x: Rows) -> int:
    if isinstance(x, Mapping):
        return len(next(iter(x.values()))) if x else 0
    return len(x)


def _join(xs: list[Rows]) -> Rows:
    if isinstance(xs[0], Mapping):
        return {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}
    return np.concatenate(xs)  # type: ignore[arg-type]


def _slice(answer: Answer, start: int, end: int) -> Answer:
    if isinstance(answer, Mapping):
        return {k: v[start:end] for k, v in answer.items()}
    return answer[start:end]


def _same_feeds(xs: list[Rows]) -> bool:
    """Whether calls can be joined: the same input names, and rows of the same shape."""
    first = xs[0]
    if isinstance(first, Mapping):
        return all(
            isinstance(x, Mapping)
            and set(x) == set(first)
            and all(x[k].shape[1:] == first[k].shape[1:] for k in first)
            for x in xs
        )
    return all(not isinstance(x, Mapping) and x.shape[1:] == first.shape[1:] for x in xs)


@dataclass(eq=False)
class _Call:
    x: Rows
    result: Answer = None
    error: BaseException | None = None
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        return count_rows(self.x)

    def finish(self, result: Answer, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True
        self.wake.set()

    def value(self) -> Answer:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class BatchStats:
    def __init__(self, concurrency: int = 1) -> None:
        self._lock = threading.Lock()
        self.sizes: Counter[int] = Counter()
        self.concurrency = concurrency  # batches that may run at once
        self.most_at_once = 0  # the most that did

    def running(self, batches: int) -> None:
        with self._lock:
            self.most_at_once = max(self.most_at_once, batches)

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
            "concurrent_batches": self.concurrency,
            "most_concurrent_batches": self.most_at_once,
        }


def free_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_concurrency(intra_op_threads: int) -> int:
    """How many batches of a model may run at once: the cores its intra-op threads leave free."""
    return max(1, free_cores() // max(1, intra_op_threads))


class MicroBatcher:
    def __init__(
        self,
        predict: Predict,
        spec: BatchingSpec,
        *,
        pending: Callable[[], int] = lambda: 0,
        name: str = "model",
        concurrency: int = 1,
    ) -> None:
        self._predict = predict
        self._spec = spec
        self._pending = pending
        self.name = name
        self.concurrency = max(1, concurrency)
        self.stats = BatchStats(self.concurrency if spec.enabled else 1)
        self._cond = threading.Condition()
        self._waiting: deque[_Call] = deque()
        self._rows_waiting = 0
        self._leaders = 0  # batches being gathered or run (≤ concurrency)
        self._gathering = False  # one of them is gathering the next batch
        self._calls_running = 0  # calls in batches that are running

    def submit(self, x: Rows) -> Answer:
        """The model's answer for the rows `x` (blocks until it is computed)."""
        if not self._spec.enabled:
            scores = self._predict(x)
            self._check(scores, count_rows(x), 1)
            self.stats.add(count_rows(x))
            return scores
        call = _Call(x)
        with self._cond:
            self._waiting.append(call)
            self._rows_waiting += call.rows
            # the queue was empty (else someone gathers, or every slot runs): this call is first
            lead = not self._gathering and self._leaders < self.concurrency
            if lead:
                self._gathering = True
                self._leaders += 1
            self._cond.notify()  # a leader waiting for more may take this one
        if not lead:
            call.wake.wait()
            if call.done:
                return call.value()
            # handed the gathering: this call is the oldest waiting, so it is in the next batch
        calls: list[_Call] = []
        try:
            self._gather(calls)
            self._run(calls)
        except BaseException as exc:
            for c in calls:  # never leave a caller of this batch waiting
                if not c.done:
                    c.finish(None, exc)
            if not call.done:  # the gathering itself failed: take this call out, pass it on
                with self._cond:
                    if call in self._waiting:
                        self._waiting.remove(call)
                        self._rows_waiting -= call.rows
                raise
        finally:
            self._finished(calls)
        assert call.done
        return call.value()

    def _check(self, answer: Answer, rows: int, calls: int) -> None:
        named = answer.items() if isinstance(answer, Mapping) else [("scores", answer)]
        for name, out in named:
            got = _rows_of(out)
            if got != rows:
                what = (
                    f"a batch of {rows} rows from {calls} requests" if calls > 1 else f"{rows} rows"
                )
                raise WrongRowCount(
                    f"model {self.name!r} returned {'no' if got is None else got} rows of {name} "
                    f"for {what}: a model must give one row per input row"
                )

    def _gather(self, calls: list[_Call]) -> None:
        """Take the next batch into `calls` (filled in place: a failure midway still shows
        which calls were taken)."""
        limit = self._spec.max_batch_size
        deadline = time.monotonic() + self._spec.max_wait_ms / 1000
        with self._cond:
            try:
                while (
                    self._rows_waiting < limit
                    and self._others() > len(self._waiting) + self._calls_running
                ):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    # others are in flight: give them a moment to join. A submit wakes this at
                    # once; a request that ends elsewhere (bad input, a cache hit, another
                    # route) does not, so the count is looked at again every millisecond
                    self._cond.wait(min(left, RECHECK_S))
                rows = 0
                while self._waiting and (
                    not calls
                    or (
                        rows + self._waiting[0].rows <= limit
                        and _same_feeds([calls[0].x, self._waiting[0].x])
                    )
                ):
                    calls.append(self._waiting.popleft())
                    self._calls_running += 1
                    rows += calls[-1].rows
                    self._rows_waiting -= calls[-1].rows
            finally:  # the next batch is gathered while this one runs
                self._gathering = False
                if calls:
                    self.stats.running(self._leaders)  # no one else gathers: all of them run
                self._pass_gathering()

    def _others(self) -> int:
        try:
            return self._pending()
        except Exception:  # a count gone wrong must not fail (or strand) the batch
            return 0

    def _pass_gathering(self) -> None:
        """With the lock held: the oldest call waiting gathers the next batch, if no one does
        and a batch may start."""
        if not self._gathering and self._waiting and self._leaders < self.concurrency:
            self._gathering = True
            self._leaders += 1
            self._waiting[0].wake.set()  # not done: it leads the next batch

    def _finished(self, calls: list[_Call]) -> None:
        """A leader's batch is done (or its gathering failed): its slot is free."""
        with self._cond:
            self._calls_running -= len(calls)
            self._leaders -= 1
            self._pass_gathering()

    def _run(self, calls: list[_Call]) -> None:
        if len(calls) == 1:
            self._run_one(calls[0])
            return
        rows = sum(c.rows for c in calls)
        try:
            scores = self._predict(_join([c.x for c in calls]))
        except Exception:  # one bad call must not fail the others: run each alone
            for call in calls:
                self._run_one(call)
            return
        try:
            self._check(scores, rows, len(calls))
        except WrongRowCount as exc:  # whose rows are whose is unknown: all of them fail
            for call in calls:
                call.finish(None, WrongRowCount(str(exc)))  # one exception per caller's thread
            return
        self.stats.add(rows)
        start = 0
        for call in calls:
            end = start + call.rows
            call.finish(_slice(scores, start, end))
            start = end

    def _run_one(self, call: _Call) -> None:
        try:
            result = self._predict(call.x)
            self._check(result, call.rows, 1)
        except Exception as exc:
            call.finish(None, exc)
            return
        self.stats.add(call.rows)
        call.finish(result)

    def queued(self) -> int:
        """Calls waiting for a batch."""
        with self._cond:
            return len(self._waiting)

    def close(self) -> None:
        """Nothing to stop: batches run in the callers' threads."""
