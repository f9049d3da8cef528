"""Helpers the router and guard steps share: checking that the steps they may answer with give the
same classes, answers with an extra class, tags an error carries to the prediction log, and
small latency summaries for their stats."""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from typing import Any

import numpy as np

from cloud_hub.serving.engine.step import Signature, Step
from cloud_hub.serving.engine.values import Value


def check_same_classes(
    step: Step, sigs: dict[str, Signature], what: str, *, results: bool = True
) -> Signature:
    """The first signature, after checking every one gives the same kind of answer: class
    scores with the same classes, or (with `results`) head results of the same task."""
    first_name, first = next(iter(sigs.items()))
    for name, sig in sigs.items():
        if results and first.kind == "results":
            if sig.kind != "results" or sig.task != first.task:
                raise step.fail(
                    f"{what} {name!r} gives {sig.describe()}, not {first.describe()} as "
                    f"{first_name!r} does"
                )
            continue
        if sig.kind != "scores":
            extra = " (or a head's results)" if results else ""
            raise step.fail(f"{what} {name!r} gives {sig.describe()}, not class scores{extra}")
        if sig.labels != first.labels:
            raise step.fail(
                f"{what} {name!r} has classes {list(sig.labels or [])}, which differ from "
                f"{first_name!r}'s {list(first.labels or [])}"
            )
    return first


def with_extra_class(value: Value, labels: tuple[str, ...]) -> Value:
    """`value`'s scores with a zero column for each label of `labels` past its own (a default
    answer that is not one of the model's classes)."""
    assert value.x is not None
    own = len(value.labels or ())
    extra = len(labels) - own
    if extra <= 0:
        return value
    x = np.concatenate([value.x, np.zeros((value.rows, extra), dtype=value.x.dtype)], axis=1)
    return Value(
        kind="scores",
        rows=value.rows,
        x=x,
        labels=labels,
        top=value.winners(),
        version=value.version,
    )


def fixed_answer(rows: int, labels: tuple[str, ...], label: str) -> Value:
    """Every row answered `label` with score 1 (a fallback that needs no model)."""
    x = np.zeros((rows, len(labels)), dtype=np.float32)
    x[:, labels.index(label)] = 1.0
    return Value(kind="scores", rows=rows, x=x, labels=labels, version=np.full(rows, -1))


def bucket(*parts: str) -> float:
    """A stable number in [0, 1) for `parts` (the same key always lands in the same place)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Latencies:
    """The last `window` latencies (ms) of something, for p50/p99 in stats."""

    def __init__(self, window: int = 1024) -> None:
        self._lock = threading.Lock()
        self._values: deque[float] = deque(maxlen=window)

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            values = np.asarray(self._values, dtype=np.float64)
        if not len(values):
            return {"p50": None, "p99": None}
        return {
            "p50": round(float(np.percentile(values, 50)), 3),
            "p99": round(float(np.percentile(values, 99)), 3),
        }
