"""`artifact: auto` in a model step: the hub measures the version's artifacts at build time and
serves the fastest, as a device does for `--artifact auto`.

The candidates are the version's ready artifacts the hub can load (ONNX, and TFLite where
LiteRT is installed) within the step's `accuracy_budget` (`registry.accuracy_budget`), in the
order `choose_artifact` prefers them; each is measured at each thread count of
`thread_choices(AUTO_THREADS)` with `edge_agent.core.variant_bench`, and the step runs the one
`wire.fastest_variant` picks (ties within 5% go to the preferred artifact, then fewer threads).
Measurements are kept per (candidate sha256s, thread counts) in the process, so updating an
endpoint, or a second endpoint of the same version, does not measure again; the table and the
choice are in the endpoint's stats under `artifact_choice.<alias>`.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud_hub.registry.accuracy_budget import within_budget
from cloud_hub.registry.schemas import Artifact
from edge_agent.core.variant_bench import Candidate, measure_candidates, thread_choices
from edge_agent.core.wire import VariantTiming, fastest_variant

__all__ = ["AUTO_THREADS", "ArtifactChoice", "VariantCache", "choose_by_measurement"]

AUTO_THREADS = (1, 2, 4)
_ORDER = {("onnx", "fp32"): 0, ("onnx", "int8"): 1, ("tflite", "fp32"): 2, ("tflite", "int8"): 3}


@dataclass(frozen=True)
class ArtifactChoice:
    """What was measured and what runs."""

    artifact: Artifact
    threads: int
    timings: list[VariantTiming]
    excluded: dict[str, str] = field(default_factory=dict)
    reused: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "chosen": {
                "artifact": f"{self.artifact.format}/{self.artifact.precision}",
                "threads": self.threads,
            },
            "measured_before": self.reused,
            "timings": [t.model_dump(exclude_none=True) for t in self.timings],
            "excluded": self.excluded,
        }


def _loadable(artifact: Artifact) -> bool:
    if artifact.format == "onnx":
        return importlib.util.find_spec("onnxruntime") is not None
    return any(
        importlib.util.find_spec(name) is not None for name in ("ai_edge_litert", "tflite_runtime")
    )


class VariantCache:
    """Measurements by (candidate sha256s, thread counts); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timings: dict[tuple[tuple[str, ...], tuple[int, ...]], list[VariantTiming]] = {}

    def get(self, key: tuple[tuple[str, ...], tuple[int, ...]]) -> list[VariantTiming] | None:
        with self._lock:
            return self._timings.get(key)

    def put(
        self, key: tuple[tuple[str, ...], tuple[int, ...]], timings: list[VariantTiming]
    ) -> None:
        with self._lock:
            self._timings[key] = timings


VARIANTS = VariantCache()


def choose_by_measurement(
    artifacts: Sequence[Artifact],
    blob: Callable[[str], Any],
    *,
    budget_points: float,
    cache: VariantCache = VARIANTS,
    threads: Sequence[int] = AUTO_THREADS,
) -> ArtifactChoice:
    """Measure the candidates (or take their earlier measurement) and choose; LookupError when
    no artifact is a candidate or none could be measured, naming why."""
    ready = sorted(
        (a for a in artifacts if a.status == "ready" and _loadable(a)),
        key=lambda a: _ORDER.get((a.format, a.precision), 9),
    )
    kept, excluded = within_budget(ready, budget_points)
    if not kept:
        have = ", ".join(f"{a.format}/{a.precision} ({a.status})" for a in artifacts)
        raise LookupError(f"no artifact to measure for 'auto' (it has: {have or 'none'})")
    counts = tuple(thread_choices(threads))
    key = (tuple(a.sha256 for a in kept), counts)
    timings = cache.get(key)
    reused = timings is not None
    if timings is None:
        timings = measure_candidates(
            [Candidate(blob(a.sha256), a.format, a.precision, a.sha256) for a in kept], counts
        )
        cache.put(key, timings)
    chosen = fastest_variant(timings, [a.sha256 for a in kept])
    if chosen is None:
        errors = "; ".join(f"{t.format}/{t.precision}: {t.error}" for t in timings if t.error)
        raise LookupError(f"no artifact could be measured for 'auto' ({errors})")
    artifact = next(a for a in kept if a.sha256 == chosen.sha256)
    return ArtifactChoice(artifact, chosen.threads, timings, excluded, reused)
