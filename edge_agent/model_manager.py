"""The model being served: load beside, warm up, hot-swap, watch on probation, roll back.

A new model is loaded and warmed up while the old one keeps serving; the swap is a reference
change under a lock. `predict` takes its (runtime, version) under the lock and runs outside it, so
a request in flight during a swap finishes on the model it started on.

After an activation with a ProbationPolicy the previous runtime stays loaded for `window_s`: if the
new version errors or is too slow, it is rolled back at once (no reload). When the window passes
cleanly the previous runtime is dropped, so at most two runtimes are ever in memory for serving,
and two only while a new version is on probation.

A deployment may add a *shadow*: a candidate loaded (and warmed up) beside the active model,
run by `predict_shadow` on the same inputs, never answering anyone and never on probation.
Activating the version that is the shadow (a promotion) takes its loaded runtime: no reload.

Events (`on_event`) and the store's active pointer are written outside the serving lock; an
automatic rollback runs them on the request thread that tripped it, so keep `on_event` quick.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edge_agent.model_store import InstalledModel, ModelStore
from edge_agent.runtimes import Runtime, load_runtime
from edge_agent.wire import ProbationPolicy

__all__ = [
    "ActivationError",
    "ModelEvent",
    "ModelManager",
    "NoActiveModel",
    "Prediction",
]

log = logging.getLogger(__name__)

WARMUP_RUNS = 3


@dataclass(frozen=True)
class Prediction:
    scores: np.ndarray
    version_id: int
    latency_ms: float


@dataclass(frozen=True)
class ModelEvent:
    kind: Literal["activated", "failed", "rolled_back"]
    version_id: int
    reason: str | None
    restored_version: int | None = None


class NoActiveModel(Exception):
    """No model is loaded, so there is nothing to predict with."""


class ActivationError(Exception):
    """A model could not be made active; the message is the reason."""

    def __init__(self, reason: str, version_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.version_id = version_id


@dataclass(frozen=True)
class _Loaded:
    installed: InstalledModel
    runtime: Runtime

    @property
    def version_id(self) -> int:
        return self.installed.ref.version_id


@dataclass
class _Probation:
    version_id: int
    policy: ProbationPolicy
    started: float
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def verdict(self) -> str | None:
        """Why the version fails probation, or None while it passes."""
        if self.requests < self.policy.min_requests:
            return None
        rate = self.errors / self.requests
        if rate > self.policy.max_error_rate:
            return (
                f"error rate {rate:.2f} > {self.policy.max_error_rate:.2f} "
                f"over {self.requests} requests in probation"
            )
        limit = self.policy.max_latency_ms
        if limit is not None and self.latencies_ms:
            p50 = float(np.median(self.latencies_ms))
            if p50 > limit:
                return f"p50 latency {_ms(p50)} ms > {_ms(limit)} ms in probation"
        return None


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


class ModelManager:
    def __init__(
        self,
        store: ModelStore,
        *,
        threads: int = 1,
        on_event: Callable[[ModelEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.threads = threads
        self._on_event = on_event
        self._clock = clock
        self._lock = threading.Lock()  # guards the references below; held only briefly
        self._switch = threading.Lock()  # one activation / restore / manual rollback at a time
        self._persist_lock = threading.Lock()
        self._current: _Loaded | None = None
        self._previous: _Loaded | None = None  # kept loaded only while _probation is set
        self._probation: _Probation | None = None
        self._shadow: _Loaded | None = None

    # -- state ----------------------------------------------------------------------------------
    @property
    def active(self) -> InstalledModel | None:
        with self._lock:
            return self._current.installed if self._current is not None else None

    @property
    def on_probation(self) -> bool:
        """Whether the active version is still on probation (its predecessor still loaded)."""
        self.poll()
        with self._lock:
            return self._probation is not None

    @property
    def shadow(self) -> InstalledModel | None:
        with self._lock:
            return self._shadow.installed if self._shadow is not None else None

    def loaded_versions(self) -> list[int]:
        """Versions with a runtime in memory: the active one first (then the shadow's)."""
        with self._lock:
            return [
                m.version_id for m in (self._current, self._previous, self._shadow) if m is not None
            ]

    # -- loading --------------------------------------------------------------------------------
    def _load(self, installed: InstalledModel, warmup_input: np.ndarray | None = None) -> _Loaded:
        """Load and warm up a model; ActivationError(reason) when it cannot serve."""
        version_id = installed.ref.version_id
        try:
            data = installed.path.read_bytes()
        except OSError as exc:
            raise ActivationError(
                f"cannot read model file {installed.path}: {exc.strerror or exc}", version_id
            ) from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != installed.ref.sha256.lower():
            raise ActivationError(
                f"model file is corrupted: sha256 {digest[:12]}… is not the ref's", version_id
            )
        try:
            runtime = load_runtime(data, installed.ref.format, threads=self.threads)
        except Exception as exc:  # ModelLoadError, RuntimeUnavailable, or an engine's own error
            raise ActivationError(f"cannot load model: {exc}", version_id) from exc
        _warm_up(runtime, version_id, warmup_input)
        return _Loaded(installed=installed, runtime=runtime)

    def _fail(self, version_id: int, exc: ActivationError) -> None:
        log.warning("version %s cannot be activated: %s", version_id, exc.reason)
        self._emit(ModelEvent("failed", version_id, exc.reason))

    # -- activation -----------------------------------------------------------------------------
    def activate(
        self,
        installed: InstalledModel,
        probation: ProbationPolicy | None = None,
        warmup_input: np.ndarray | None = None,
    ) -> None:
        """Make `installed` the served model, loaded and warmed up beside the current one.

        Raises ActivationError (after a "failed" event) when it does not load or warm up; the
        current model then keeps serving and the store's active pointer is unchanged.
        """
        new_id = installed.ref.version_id
        with self._switch:
            with self._lock:
                current = self._current
                if current is not None and current.installed == installed:
                    return  # already serving exactly this
                if self._probation is not None:
                    # A newer version supersedes the one on probation: free its predecessor first,
                    # so loading the new one never holds three runtimes.
                    self._probation = None
                    self._previous = None
                promoted = self._shadow
                if promoted is not None and promoted.installed == installed:
                    self._shadow = None  # the shadow becomes the active model: already warm
                else:
                    promoted = None
            if promoted is not None:
                loaded = promoted
                log.info("version %s promoted from shadow (already loaded)", new_id)
            else:
                try:
                    loaded = self._load(installed, warmup_input)
                except ActivationError as exc:
                    self._fail(new_id, exc)
                    raise
            with self._lock:
                old = self._current
                if old is not None and old.version_id == new_id:
                    old = None  # new bytes for the same version: nothing to roll back to in memory
                self._current = loaded
                if probation is not None and old is not None:
                    self._previous = old
                    self._probation = _Probation(new_id, probation, started=self._clock())
                else:
                    self._previous = None
                    self._probation = None
            if old is not None:
                previous_id: int | None = old.version_id
            elif current is not None and current.version_id == new_id:
                previous_id = self.store.previous_id()
            else:
                previous_id = None
            self._persist(new_id, previous_id)
        log.info("version %s active (previous %s)", new_id, previous_id)
        self._emit(ModelEvent("activated", new_id, None))

    def restore(self) -> int | None:
        """Load the store's active model at start-up, falling back to the previous one, then to the
        newest installed one that loads. Returns the version now active, or None."""
        wanted = self.store.active_id()
        candidates: list[InstalledModel] = []
        missing: list[str] = []
        for version_id in (wanted, self.store.previous_id()):
            if version_id is None:
                continue
            found = self.store.get(version_id)
            if found is None:
                missing.append(f"version {version_id} is not installed")
            else:
                candidates.append(found)
        candidates += self.store.installed()
        reasons = list(missing)
        tried: set[int] = set()
        with self._switch:
            for candidate in candidates:
                version_id = candidate.ref.version_id
                if version_id in tried:
                    continue
                tried.add(version_id)
                try:
                    loaded = self._load(candidate)
                except ActivationError as exc:
                    self._fail(version_id, exc)
                    reasons.append(f"version {version_id}: {exc.reason}")
                    continue
                with self._lock:
                    self._current = loaded
                    self._previous = None
                    self._probation = None
                if version_id != wanted:
                    self._persist(version_id, None)
                    if wanted is not None:
                        reason = "active version could not be restored: " + "; ".join(reasons)
                        self._emit(ModelEvent("rolled_back", wanted, reason, version_id))
                log.info("restored version %s", version_id)
                return version_id
        if reasons:
            log.warning("no model could be restored: %s", "; ".join(reasons))
        return None

    def rollback(self, reason: str) -> int | None:
        """Return to the previous version (instantly if it is still loaded, else from the store).

        Returns the version now active, or None when there is nothing to roll back to. Raises
        ActivationError when the previous version cannot be loaded; the current one keeps serving.
        """
        with self._switch:
            with self._lock:
                current, previous = self._current, self._previous
            if current is None:
                return None
            if previous is None:
                previous_id = self.store.previous_id()
                if previous_id is None or previous_id == current.version_id:
                    return None
                found = self.store.get(previous_id)
                if found is None:
                    error = ActivationError(
                        f"cannot roll back: version {previous_id} is not installed", previous_id
                    )
                    self._fail(previous_id, error)
                    raise error
                try:
                    previous = self._load(found)
                except ActivationError as exc:
                    self._fail(previous_id, exc)
                    raise
            with self._lock:
                if self._current is not current:  # an automatic rollback got there first
                    return self._current.version_id if self._current is not None else None
                self._current = previous
                self._previous = None
                self._probation = None
            self._finish_rollback(current.version_id, previous.version_id, reason)
            return previous.version_id

    def _finish_rollback(self, from_id: int, to_id: int, reason: str) -> None:
        # The rolled-back version is not a rollback target any more: it is what we left.
        self._persist(to_id, None)
        log.warning("rolled back from version %s to %s: %s", from_id, to_id, reason)
        self._emit(ModelEvent("rolled_back", from_id, reason, to_id))

    # -- shadow ---------------------------------------------------------------------------------
    def set_shadow(self, installed: InstalledModel | None) -> None:
        """Load and warm up `installed` as the shadow (replacing any other), or drop the shadow
        with None. Raises ActivationError when it cannot serve; the active model is untouched."""
        with self._switch:
            with self._lock:
                current = self._shadow
                if installed is None:
                    self._shadow = None
                    return
                if current is not None and current.installed == installed:
                    return
                self._shadow = None  # free the old shadow before loading the new one
            loaded = self._load(installed)
            with self._lock:
                self._shadow = loaded
        log.info("version %s loaded as the shadow", installed.ref.version_id)

    def predict_shadow(self, x: np.ndarray) -> Prediction:
        """Scores from the shadow (NoActiveModel when there is none). Not counted anywhere."""
        with self._lock:
            loaded = self._shadow
        if loaded is None:
            raise NoActiveModel("no shadow is loaded")
        start = time.perf_counter()
        scores = loaded.runtime.predict(x)
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Prediction(scores=scores, version_id=loaded.version_id, latency_ms=latency_ms)

    # -- serving --------------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> Prediction:
        """Scores from the active model. ValueError for an input the model does not accept."""
        self.poll()
        with self._lock:
            loaded = self._current
        if loaded is None:
            raise NoActiveModel("no model is active")
        start = time.perf_counter()
        try:
            scores = loaded.runtime.predict(x)
        except ValueError:
            raise  # the caller's input, not the model's fault
        except Exception:
            self._record(loaded, ok=False, latency_ms=None)
            raise
        latency_ms = (time.perf_counter() - start) * 1000.0
        self._record(loaded, ok=True, latency_ms=latency_ms)
        return Prediction(scores=scores, version_id=loaded.version_id, latency_ms=latency_ms)

    def poll(self) -> None:
        """End a probation whose window has passed cleanly, freeing the previous runtime.

        `predict` calls this; an agent that may go quiet can call it from a timer too.
        """
        with self._lock:
            probation = self._probation
            if probation is None or self._clock() - probation.started < probation.policy.window_s:
                return
            self._probation = None
            self._previous = None
        log.info("version %s passed probation", probation.version_id)

    def _record(self, loaded: _Loaded, *, ok: bool, latency_ms: float | None) -> None:
        with self._lock:
            probation = self._probation
            if probation is None or self._current is not loaded:
                return
            if self._clock() - probation.started > probation.policy.window_s:
                return  # the window is over; poll() ends it
            probation.requests += 1
            if not ok:
                probation.errors += 1
            elif latency_ms is not None:
                probation.latencies_ms.append(latency_ms)
            reason = probation.verdict()
            previous = self._previous
            if reason is None or previous is None:
                return
            self._current = previous
            self._previous = None
            self._probation = None
        self._finish_rollback(loaded.version_id, previous.version_id, reason)

    # -- plumbing -------------------------------------------------------------------------------
    def _persist(self, active: int | None, previous: int | None) -> None:
        """Write the active pointer, unless the in-memory state has moved on meanwhile."""
        with self._persist_lock:
            with self._lock:
                current = self._current.version_id if self._current is not None else None
            if current != active:
                return  # a later change wrote (or will write) its own state
            try:
                self.store.set_active(active, previous)
            except (OSError, ValueError):
                log.exception("cannot persist active version %s", active)

    def _emit(self, event: ModelEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("model event handler failed for %s", event)


def _warm_up(runtime: Runtime, version_id: int, warmup_input: np.ndarray | None) -> None:
    """Run a few inferences and check the scores: 2-D, one row per sample, all finite."""
    if warmup_input is None:
        spec = runtime.input
        shape = tuple(1 if d is None else d for d in spec.shape)
        try:
            x = np.zeros(shape, dtype=np.dtype(spec.dtype))
        except TypeError as exc:
            raise ActivationError(
                f"cannot build a warm-up input of dtype {spec.dtype}: {exc}", version_id
            ) from exc
    else:
        x = np.asarray(warmup_input)
    for _ in range(WARMUP_RUNS):
        try:
            scores = runtime.predict(x)
        except Exception as exc:
            raise ActivationError(f"warm-up failed: {exc}", version_id) from exc
        if scores.ndim != 2:
            raise ActivationError(
                f"warm-up failed: expected (N, C) scores, got shape {scores.shape}", version_id
            )
        if scores.shape[0] != x.shape[0]:
            raise ActivationError(
                f"warm-up failed: {x.shape[0]} samples in, {scores.shape[0]} rows of scores out",
                version_id,
            )
        if not np.all(np.isfinite(scores)):
            raise ActivationError("warm-up failed: the scores are not all finite", version_id)
