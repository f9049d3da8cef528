"""Measure candidate artifacts on this machine: what `--artifact auto` decides with.

Each (artifact, thread count) is loaded, run `warmup_runs` times on one row of zeros (every
input, its dynamic dimensions 1), then timed at least `timed_runs` times and for at least
`min_seconds` (a model of 0.1 ms needs thousands of runs for a p50 that holds still): p50 and
p99 of a single-row inference, the load time, and how much loading and running it grew the
process's resident memory (VmRSS; None where /proc is not there). The runtime is dropped
before the next one is loaded, so at most one candidate is held at a time. A candidate that
cannot be loaded or run is reported with its error, never raised: the others are still
measured. Timing stops once a variant has run for `max_seconds`, so a slow candidate cannot
hold the device for long. `measure_candidates` interleaves the variants in rounds and keeps the
medians of each variant's rounds.

Used by the agent after downloading the candidates and by the hub when an endpoint's model
step asks for `artifact: auto`; both pick with `wire.fastest_variant`.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.core.runtimes import ModelFormat, Runtime, load_runtime
from edge_agent.core.wire import VariantTiming

__all__ = ["Candidate", "measure_candidates", "measure_variant", "thread_choices", "zero_feeds"]

log = logging.getLogger(__name__)

MAX_SECONDS = 10.0  # per variant, timed runs included
MIN_SECONDS = 0.3  # per variant, over all rounds
ROUNDS = 3  # interleaved: every variant once a round
MAX_RUNS = 20_000
_ERROR_CHARS = 300


@dataclass(frozen=True)
class Candidate:
    """An artifact to measure: its bytes (or file), format, precision and sha256."""

    model: bytes | Path
    format: ModelFormat
    precision: str
    sha256: str


def zero_feeds(runtime: Runtime, rows: int = 1) -> dict[str, np.ndarray]:
    """Rows of zeros for every input of the model; dynamic dimensions other than the batch
    are 1."""
    feeds = {}
    for spec in runtime.inputs:
        rest = [1 if d is None else int(d) for d in spec.shape[1:]]
        feeds[spec.name] = np.zeros((rows, *rest), dtype=spec.dtype)
    return feeds


def rss_mb(proc: Path = Path("/proc/self/status")) -> float | None:
    """This process's resident memory in MB, from /proc (None where it cannot be read)."""
    try:
        for line in proc.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def thread_choices(wanted: Sequence[int], cores: int | None = None) -> list[int]:
    """The thread counts worth trying here: those of `wanted` up to this machine's cores, and
    always 1, in increasing order."""
    cores = cores or os.cpu_count() or 1
    return sorted({1, *(t for t in wanted if 1 <= t <= cores)})


def _fmt_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text[:_ERROR_CHARS]


def measure_variant(
    candidate: Candidate,
    threads: int,
    *,
    warmup_runs: int = 5,
    timed_runs: int = 30,
    min_seconds: float = MIN_SECONDS,
    max_seconds: float = MAX_SECONDS,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> VariantTiming:
    """One candidate at one thread count (see the module docstring)."""
    base = VariantTiming(
        sha256=candidate.sha256.lower(),
        format=candidate.format,
        precision=candidate.precision,  # type: ignore[arg-type]
        threads=threads,
        error="not measured",
    )
    gc.collect()
    before = rss_mb()
    start = clock()
    try:
        runtime = load_runtime(candidate.model, candidate.format, threads=threads)
    except Exception as exc:  # a candidate that will not load is reported, not raised
        return base.model_copy(update={"error": f"cannot load: {_fmt_error(exc)}"})
    load_ms = (clock() - start) / 1e6
    try:
        feeds = zero_feeds(runtime)
        for _ in range(warmup_runs):
            runtime.run(feeds)
        times: list[int] = []
        began = clock()
        enough, deadline = began + int(min_seconds * 1e9), began + int(max_seconds * 1e9)
        while len(times) < MAX_RUNS:
            t0 = clock()
            runtime.run(feeds)
            t1 = clock()
            times.append(t1 - t0)
            if t1 > deadline or (len(times) >= timed_runs and t1 >= enough):
                break
    except Exception as exc:
        return base.model_copy(
            update={"load_ms": round(load_ms, 3), "error": f"cannot run: {_fmt_error(exc)}"}
        )
    after = rss_mb()
    del runtime
    ms = np.asarray(times, dtype=np.float64) / 1e6
    return VariantTiming(
        sha256=base.sha256,
        format=base.format,
        precision=base.precision,
        threads=threads,
        load_ms=round(load_ms, 3),
        p50_ms=round(float(np.percentile(ms, 50)), 4),
        p99_ms=round(float(np.percentile(ms, 99)), 4),
        rss_mb=None if before is None or after is None else round(max(0.0, after - before), 1),
        runs=len(times),
    )


def measure_candidates(
    candidates: Sequence[Candidate],
    threads: Sequence[int],
    *,
    warmup_runs: int = 5,
    timed_runs: int = 30,
    min_seconds: float = MIN_SECONDS,
    max_seconds: float = MAX_SECONDS,
    rounds: int = ROUNDS,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[VariantTiming]:
    """Every candidate at every thread count, in order (candidates outer, threads inner),
    measured in `rounds` interleaved rounds: each round times every variant once (loaded
    again, warmed up, a `rounds`th of the runs and seconds), and a variant's p50 and p99 are
    the medians of its rounds'. A burst of other work during one round (a neighbour on the
    host, the agent's own uploads) then moves one round, not the decision (measured one after
    the other, 6 of bench/artifact_auto.py's 12 picks on a 2-core machine were 6-56% slower
    than the fastest).
    The load time is the least of a variant's loads, the RSS growth its first round's; a
    variant that fails is not tried again."""
    variants = [(c, n) for c in candidates for n in threads]
    rounds = max(1, rounds)
    done: list[list[VariantTiming]] = [[] for _ in variants]
    for _ in range(rounds):
        for (candidate, n), mine in zip(variants, done, strict=True):
            if mine and mine[-1].error is not None:
                continue
            mine.append(
                measure_variant(
                    candidate,
                    n,
                    warmup_runs=warmup_runs,
                    timed_runs=max(1, -(-timed_runs // rounds)),
                    min_seconds=min_seconds / rounds,
                    max_seconds=max_seconds / rounds,
                    clock=clock,
                )
            )
    timings = []
    for (candidate, n), mine in zip(variants, done, strict=True):
        timing = _combined(mine)
        log.info(
            "measured %s/%s %s threads=%d: p50 %s ms, p99 %s ms%s",
            candidate.format,
            candidate.precision,
            candidate.sha256[:12],
            n,
            timing.p50_ms,
            timing.p99_ms,
            f" ({timing.error})" if timing.error else "",
        )
        timings.append(timing)
    return timings


def _combined(rounds: list[VariantTiming]) -> VariantTiming:
    """One variant's rounds as one timing: the failure if one failed, else the medians."""
    failed = [t for t in rounds if t.error is not None]
    if failed:
        return failed[0]
    loads = [t.load_ms for t in rounds if t.load_ms is not None]
    return rounds[0].model_copy(
        update={
            "load_ms": min(loads) if loads else None,
            "p50_ms": round(float(np.median([t.p50_ms for t in rounds])), 4),
            "p99_ms": round(float(np.median([t.p99_ms for t in rounds])), 4),
            "runs": sum(t.runs for t in rounds),
        }
    )
