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
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.core.runtimes import Runtime

#: the share of a row's cost alone a batch must save...
MIN_SAVING = 0.25
#: ...and the least it must save per row, in µs (a quarter of the hub's own cost per request)
MIN_SAVING_US = 200.0
SIZES = (1, 4, 16, 64)
MIN_RUNS = 3
MIN_TIME_S = 0.01  # per size: runs until both this and MIN_RUNS are reached...
BUDGET_S = 1.0  # ...within this for the whole measurement


@dataclass(frozen=True)
class BatchingChoice:
    """What the engine decided for one model, and why (shown in the endpoint's stats)."""

    enabled: bool
    max_batch_size: int
    reason: str
    us_per_row: dict[int, float] = field(default_factory=dict)  # batch size → median µs a row

    def describe(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "max_batch_size": self.max_batch_size,
            "reason": self.reason,
            "us_per_row": {str(k): round(v, 2) for k, v in sorted(self.us_per_row.items())},
        }


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
    """Measure `runtime` at batch sizes up to `max_batch_size` and decide."""
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
            if clock() > deadline:
                break
    except Exception as exc:  # rows of zeros it refuses: keep batching, as before measuring
        return BatchingChoice(True, max_batch_size, f"not measured: {type(exc).__name__}")
    if len(costs) < 2:
        return BatchingChoice(False, max_batch_size, "too slow to measure a batch", costs)
    return decide(costs, max_batch_size)
