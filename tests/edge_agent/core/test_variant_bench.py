"""Measuring candidate artifacts (edge_agent/core/variant_bench.py): a burst of other work on the
machine while one variant is timed moves one round of it, not the decision."""

from __future__ import annotations

import hashlib
import time

from edge_agent.core.variant_bench import Candidate, measure_candidates
from edge_agent.core.wire import fastest_variant
from tests.model_zoo import multi_input_model


class BurstClock:
    """perf_counter_ns, with `extra_ns` more on each of its first `calls` readings: every run
    timed then looks that much slower, as when a neighbour takes the core for a while."""

    def __init__(self, calls: int, extra_ns: int) -> None:
        self.left, self.extra_ns, self.offset = calls, extra_ns, 0

    def __call__(self) -> int:
        if self.left > 0:
            self.left -= 1
            self.offset += self.extra_ns
        return time.perf_counter_ns() + self.offset


def _twins() -> list[Candidate]:
    """The same model twice (two sha256s): equally fast, whatever the machine."""
    data = multi_input_model().data
    return [
        Candidate(data, "onnx", "fp32", hashlib.sha256(data + tag).hexdigest())
        for tag in (b"a", b"b")
    ]


def test_a_burst_during_one_round_does_not_move_the_choice() -> None:
    first, second = _twins()
    # the burst covers the first candidate's first round: its 3 clock readings around the load
    # and 10 runs (2 readings each), every run then looks 2 ms slower
    burst = 3 + 2 * 10

    def measured(rounds: int) -> dict[str, float]:
        timings = measure_candidates(
            [first, second],
            [1],
            timed_runs=30 if rounds > 1 else 10,
            min_seconds=0.0,
            rounds=rounds,
            clock=BurstClock(burst, 2_000_000),
        )
        assert all(t.error is None for t in timings)
        return {t.sha256: t.p50_ms or 0.0 for t in timings}

    once = measured(1)  # one after the other: the burst is the first candidate's whole timing
    assert once[first.sha256] > 1.0 > once[second.sha256]

    interleaved = measured(3)
    assert interleaved[first.sha256] < 1.0 and interleaved[second.sha256] < 1.0
    timings = measure_candidates([first, second], [1], min_seconds=0.0)
    assert all(t.runs >= 30 for t in timings)  # the rounds together make the runs asked for
    assert fastest_variant(timings) is not None
