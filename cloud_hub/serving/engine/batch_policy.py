"""Whether micro-batching pays for a model, measured when the endpoint is built.

Batching costs something at every request (calls wait for each other, one batch runs at a time)
and pays only where a row costs less in a batch than alone: a model whose weights stream from
memory on every call pays (a batch reads them once), a convolutional network on one thread
often does not (MobileNetV2: 4.42 ms a row alone, 4.49 in a batch of 8), and a model that costs
microseconds saves nothing a request would notice. So, with `batching.enabled: "auto"` (the
default), the engine runs the model on rows of zeros at a few batch sizes up to the spec's
`max_batch_size` and batches only when the best size saves at least `MIN_SAVING` of a row's
cost alone and at least `MIN_SAVING_US` per row; the batches are then capped at that size.
`true` or `false` in the spec is obeyed as written.

A decision is kept (`PolicyCache`) by the artifact's sha256, the runtime's intra-op threads and
the spec's `max_batch_size`, so building an endpoint again on the same artifact (an update of
another part of its spec) does not measure again; unless the machine's load has changed
markedly since (the 1-minute load average per core moved by more than `LOAD_SHIFT`, looked at
when the endpoint is built): a model measured on an idle machine is measured again under load,
and the other way round. The stats say when, and under what load, a decision was measured.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from edge_agent.core.runtimes import Runtime

#: the share of a row's cost alone a batch must save...
MIN_SAVING = 0.25
#: ...and the least it must save per row, in µs (a quarter of the hub's own cost per request)
MIN_SAVING_US = 200.0
SIZES = (1, 4, 16, 64)
#: a size that saves less than this share of a row's cost stops the measurement there: larger
#: batches of a model that gains nothing at 4 rows (a convolutional network on one thread) are
#: not worth what their run would leave behind (onnxruntime's arena keeps the memory of the
#: largest batch run: +170 MB for MobileNetV2 at 64 rows, held by an endpoint that then does
#: not batch)
STOP_SHARE = MIN_SAVING / 2
MIN_RUNS = 3
MIN_TIME_S = 0.01  # per size: runs until both this and MIN_RUNS are reached...
BUDGET_S = 1.0  # ...within this for the whole measurement
#: measure again when the load average per core has moved by more than this since
LOAD_SHIFT = 0.5
CACHED_CHOICES = 256  # decisions kept (the least recently used go first)


@dataclass(frozen=True)
class BatchingChoice:
    """What the engine decided for one model, and why (shown in the endpoint's stats)."""

    enabled: bool
    max_batch_size: int
    reason: str
    us_per_row: dict[int, float] = field(default_factory=dict)  # batch size → median µs a row
    measured_at: float | None = None  # when (Unix time), if measured through a PolicyCache
    load_per_core: float | None = None  # the machine's load then (None: unknown)
    reused: bool = False  # taken from the cache, not measured for this build

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "max_batch_size": self.max_batch_size,
            "reason": self.reason,
            "us_per_row": {str(k): round(v, 2) for k, v in sorted(self.us_per_row.items())},
        }
        if self.measured_at is not None:
            when = dt.datetime.fromtimestamp(self.measured_at, dt.UTC)
            out["measured_at"] = when.isoformat(timespec="seconds")
            out["load_per_core"] = (
                None if self.load_per_core is None else round(self.load_per_core, 2)
            )
            out["reused"] = self.reused
        return out


def decide(us_per_row: dict[int, float], max_batch_size: int) -> BatchingChoice:
    """The choice for measured costs (batch size → µs a row): batch at the cheapest size if it
    saves enough over a row alone."""
    alone = us_per_row[1]
    best = min(us_per_row, key=lambda size: (us_per_row[size], size))
    saving = alone - us_per_row[best]
    if best > 1 and saving >= MIN_SAVING * alone and saving >= MIN_SAVING_US:
        return BatchingChoice(
            True,
            min(best, max_batch_size),
            f"a row costs {us_per_row[best]:.0f} µs in a batch of {best}, {alone:.0f} µs alone",
            us_per_row,
        )
    return BatchingChoice(
        False,
        max_batch_size,
        f"batches save {saving:.0f} µs a row of {alone:.0f} µs: not worth the wait",
        us_per_row,
    )


def _zeros(runtime: Runtime, rows: int) -> dict[str, np.ndarray] | None:
    """Rows of zeros for every input, or None when an input has another dynamic dimension."""
    feeds = {}
    for spec in runtime.inputs:
        rest = spec.shape[1:]
        if any(d is None for d in rest):
            return None
        feeds[spec.name] = np.zeros((rows, *[int(d) for d in rest if d is not None]), spec.dtype)
    return feeds


def _median_us_per_row(
    run: Callable[[], Any], rows: int, clock: Callable[[], float], deadline: float
) -> float:
    run()  # warm-up: the first run allocates
    times: list[float] = []
    spent = 0.0
    while len(times) < MIN_RUNS or (spent < MIN_TIME_S and clock() < deadline):
        start = clock()
        run()
        took = clock() - start
        times.append(took)
        spent += took
        if clock() > deadline:
            break
    return statistics.median(times) * 1e6 / rows


def measure(
    runtime: Runtime,
    max_batch_size: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
    budget_s: float = BUDGET_S,
) -> BatchingChoice:
    """Measure `runtime` at batch sizes up to `max_batch_size` (until a size saves less than
    `STOP_SHARE` of a row's cost) and decide."""
    if not runtime.batched:
        return BatchingChoice(False, max_batch_size, "the model has no batch dimension")
    if runtime.batch_size is not None:
        return BatchingChoice(
            True, max_batch_size, f"a fixed batch of {runtime.batch_size}: calls fill it"
        )
    sizes = sorted({s for s in SIZES if s <= max_batch_size} | {1})
    if _zeros(runtime, 1) is None:
        return BatchingChoice(True, max_batch_size, "dynamic input dimensions: not measured")
    deadline = clock() + budget_s
    costs: dict[int, float] = {}
    try:
        for size in sizes:
            feeds = _zeros(runtime, size)
            assert feeds is not None
            run = functools.partial(runtime.run, feeds)
            costs[size] = _median_us_per_row(run, size, clock, deadline)
            if clock() > deadline or (size > 1 and costs[size] > costs[1] * (1 - STOP_SHARE)):
                break
    except Exception as exc:  # rows of zeros it refuses: keep batching, as before measuring
        return BatchingChoice(True, max_batch_size, f"not measured: {type(exc).__name__}")
    if len(costs) < 2:
        return BatchingChoice(False, max_batch_size, "too slow to measure a batch", costs)
    return decide(costs, max_batch_size)


def load_per_core() -> float | None:
    """The machine's 1-minute load average per core (None where the OS does not say)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return load / (os.cpu_count() or 1)


class PolicyKey(NamedTuple):
    sha256: str  # the artifact
    threads: int  # the runtime's intra-op threads
    max_batch_size: int  # the spec's


class PolicyCache:
    """Decisions by `PolicyKey`, measured again when the load has moved (see the module)."""

    def __init__(
        self,
        *,
        load: Callable[[], float | None] = load_per_core,
        shift: float = LOAD_SHIFT,
        clock: Callable[[], float] = time.time,
        size: int = CACHED_CHOICES,
    ) -> None:
        self._load = load
        self._shift = shift
        self._clock = clock
        self._size = size
        self._lock = threading.Lock()
        self._choices: OrderedDict[PolicyKey, BatchingChoice] = OrderedDict()
        self.measured = 0  # how many decisions were measured (the others were reused)

    def _current_load(self) -> float | None:
        try:
            return self._load()
        except Exception:  # a load source gone wrong: as if the OS did not say
            return None

    def _still_fits(self, choice: BatchingChoice, load: float | None) -> bool:
        if load is None or choice.load_per_core is None:
            return load is None and choice.load_per_core is None
        return abs(load - choice.load_per_core) <= self._shift

    def choose(
        self, key: PolicyKey, runtime: Runtime, *, budget_s: float = BUDGET_S
    ) -> BatchingChoice:
        """The decision for `runtime` (the artifact of `key`): the cached one while the load
        is about what it was when measured, else measured now."""
        load = self._current_load()
        with self._lock:
            cached = self._choices.get(key)
            if cached is not None and self._still_fits(cached, load):
                self._choices.move_to_end(key)
                return replace(cached, reused=True)
        choice = replace(
            measure(runtime, key.max_batch_size, budget_s=budget_s),
            measured_at=self._clock(),
            load_per_core=load,
        )
        with self._lock:
            self.measured += 1
            self._choices[key] = choice
            self._choices.move_to_end(key)
            while len(self._choices) > self._size:
                self._choices.popitem(last=False)
        return choice


#: the engine's decisions, shared by every endpoint of the process
POLICIES = PolicyCache()
