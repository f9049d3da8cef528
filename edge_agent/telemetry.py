"""What the agent reports about itself: inference counts and latency, CPU, memory, temperature.

Only the standard library and numpy: the numbers come straight from /proc and /sys (there is no
psutil on the device). Anything that cannot be read is reported as None, never an exception.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.core.wire import ShadowStats
from edge_agent.outbox import OutboxStats

__all__ = [
    "LatencyTracker",
    "LatencyWindow",
    "SystemSampler",
    "percentiles",
    "sample_system",
    "telemetry_record",
    "version_key",
]

DEFAULT_RESERVOIR = 10_000
PERCENTILES = (50, 95, 99)
# Thermal zones that report outside this range are broken or virtual sensors, not hardware.
_PLAUSIBLE_TEMPERATURE_C = (-50.0, 150.0)


def version_key(model_version: int | None) -> str:
    """How a model version is named in telemetry: "3", or "none" for no model."""
    return "none" if model_version is None else str(model_version)


@dataclass(frozen=True)
class LatencyWindow:
    """Inference statistics over one telemetry interval, per model version key."""

    inferences: dict[str, int]
    errors: dict[str, int]
    latency_ms: dict[str, dict[str, float]]


class LatencyTracker:
    """Counts inferences per model version and keeps their latencies for percentiles. Thread-safe.

    Latencies are kept in a bounded reservoir per version (the most recent ``reservoir``), so
    memory stays flat however long the interval. Failed inferences are counted (in
    ``inferences`` and ``errors``) but their latency is left out of the percentiles: a failure
    that returns early, or a timeout, says nothing about how fast the model is.
    """

    def __init__(self, reservoir: int = DEFAULT_RESERVOIR) -> None:
        if reservoir < 1:
            raise ValueError(f"reservoir must be at least 1, not {reservoir}")
        self.reservoir = reservoir
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._latencies: dict[str, deque[float]] = {}

    def record(self, model_version: int | None, latency_ms: float, ok: bool = True) -> None:
        key = version_key(model_version)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            if not ok:
                self._errors[key] = self._errors.get(key, 0) + 1
                return
            if not math.isfinite(latency_ms):
                return
            samples = self._latencies.get(key)
            if samples is None:
                samples = self._latencies[key] = deque(maxlen=self.reservoir)
            samples.append(float(latency_ms))

    def window(self, reset: bool = True) -> LatencyWindow:
        """Counts, errors and p50/p95/p99 since the last reset; ``reset`` starts a new interval."""
        with self._lock:
            counts = dict(self._counts)
            errors = dict(self._errors)
            latencies = {key: list(samples) for key, samples in self._latencies.items() if samples}
            if reset:
                self._counts.clear()
                self._errors.clear()
                self._latencies.clear()
        return LatencyWindow(
            inferences=counts,
            errors=errors,
            latency_ms={key: percentiles(values) for key, values in latencies.items()},
        )

    def snapshot(self, reset: bool = True) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
        """(inferences per version, {"p50", "p95", "p99"} per version): TelemetryRecord fields."""
        window = self.window(reset)
        return window.inferences, window.latency_ms


def percentiles(values: list[float]) -> dict[str, float]:
    """{"p50", "p95", "p99"} of a non-empty list, rounded to the microsecond."""
    result = np.percentile(np.asarray(values, dtype=np.float64), PERCENTILES)
    return {f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, result, strict=True)}


class SystemSampler:
    """CPU, memory and temperature of one process, read from /proc and /sys.

    ``cpu_percent`` is the process's CPU time over wall time since the previous ``sample()``
    (100 = one core busy; several threads may take it above 100), so the first sample has None.
    ``proc_root`` and ``sys_root`` exist so the readers can be pointed at another tree.
    """

    def __init__(
        self,
        pid: int | None = None,
        *,
        proc_root: Path = Path("/proc"),
        sys_root: Path = Path("/sys"),
    ) -> None:
        self.pid = pid
        self._proc = Path(proc_root) / ("self" if pid is None else str(pid))
        self._meminfo = Path(proc_root) / "meminfo"
        self._thermal = Path(sys_root) / "class" / "thermal"
        self._clock_ticks = _clock_ticks()
        self._ncpu = os.cpu_count() or 1
        self._lock = threading.Lock()
        self._previous: tuple[float, float] | None = None  # (wall seconds, cpu seconds)

    def sample(self) -> dict[str, float | None]:
        rss_kb = _read_kb(self._proc / "status", "VmRSS")
        total_kb = _read_kb(self._meminfo, "MemTotal")
        return {
            "cpu_percent": self._cpu_percent(),
            "memory_rss_mb": None if rss_kb is None else round(rss_kb / 1024, 3),
            "memory_percent": (
                round(100.0 * rss_kb / total_kb, 3) if rss_kb is not None and total_kb else None
            ),
            "temperature_c": self._temperature(),
        }

    def _cpu_percent(self) -> float | None:
        cpu = self._cpu_seconds()
        wall = time.monotonic()
        with self._lock:
            previous = self._previous
            self._previous = None if cpu is None else (wall, cpu)
        if cpu is None or previous is None or wall <= previous[0]:
            return None
        percent = 100.0 * (cpu - previous[1]) / (wall - previous[0])
        # Ticks are coarse (10 ms): two samples close together can overshoot; clamp to the machine.
        return round(min(max(percent, 0.0), 100.0 * self._ncpu), 2)

    def _cpu_seconds(self) -> float | None:
        """utime + stime of the process, in seconds, from /proc/PID/stat."""
        try:
            text = (self._proc / "stat").read_text()
            # Fields after the command name, which is in parentheses and may hold anything.
            fields = text[text.rindex(")") + 2 :].split()
            return (int(fields[11]) + int(fields[12])) / self._clock_ticks
        except (OSError, ValueError, IndexError):
            return None

    def _temperature(self) -> float | None:
        readings: list[float] = []
        try:
            zones = sorted(self._thermal.glob("thermal_zone*/temp"))
        except OSError:
            return None
        low, high = _PLAUSIBLE_TEMPERATURE_C
        for zone in zones:
            try:
                celsius = int(zone.read_text().strip()) / 1000.0
            except (OSError, ValueError):
                continue  # some zones refuse to be read (EIO, ENODATA) on real hardware
            if low <= celsius <= high:
                readings.append(celsius)
        return max(readings) if readings else None


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK") or 100
    except (ValueError, OSError, AttributeError):
        return 100


def _read_kb(path: Path, field: str) -> int | None:
    """The kB value of ``field`` in a /proc file of "Name:  value kB" lines."""
    try:
        with path.open() as lines:
            for line in lines:
                name, _, rest = line.partition(":")
                if name == field:
                    return int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None


_samplers: dict[int | None, SystemSampler] = {}
_samplers_lock = threading.Lock()


def sample_system(pid: int | None = None) -> dict[str, float | None]:
    """One sample for a process (this one by default), CPU measured since this function's last
    call for the same pid (None the first time)."""
    with _samplers_lock:
        sampler = _samplers.get(pid)
        if sampler is None:
            sampler = _samplers[pid] = SystemSampler(pid)
    return sampler.sample()


def telemetry_record(
    sampler: SystemSampler,
    tracker: LatencyTracker,
    outbox_stats: OutboxStats | None = None,
    *,
    ts: float | None = None,
    shadow: ShadowStats | None = None,
) -> dict[str, Any]:
    """The payload of a TelemetryRecord, without ``seq`` (the outbox assigns it).

    Takes (and resets) the tracker's interval, so each record covers the time since the last.
    """
    inferences, latency_ms = tracker.snapshot(reset=True)
    return {
        "ts": time.time() if ts is None else ts,
        **sampler.sample(),
        "inferences": inferences,
        "latency_ms": latency_ms,
        "outbox_pending": None if outbox_stats is None else outbox_stats.pending,
        "outbox_dropped": None if outbox_stats is None else outbox_stats.dropped_total,
        "shadow": None if shadow is None else shadow.model_dump(),
    }
