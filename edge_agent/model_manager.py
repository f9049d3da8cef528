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

A loaded model is its runtime and its task head: the version's `ModelRef.head` checked against
the runtime's outputs (`edge_agent.core.heads.check_head`), or, without one, the default for the
signature (`default_head`: classification of a lone rank-2 float output, or of one beside a
scikit-learn classifier's integer labels; else raw). A classification head without labels
takes the version's labels (left out, with a warning, when they do not fit its classes). A head
that does not fit fails the activation, like a corrupt file. A version without a preprocessing
spec gets the one its signature implies, if any (an input of [1, 224, 224, 3] is an RGB image).
A `Prediction` carries every raw output and the head; `Prediction.answers()` decodes it.

Each dropped runtime (probation passed, a rollback, a shadow dropped or replaced, a newer
version superseding one on probation) is followed by `memory.release_memory()`, so the engine's
memory goes back to the system rather than staying in the allocator's heaps.

Events (`on_event`) and the store's active pointer are written outside the serving lock; an
automatic rollback runs them on the request thread that tripped it, so keep `on_event` quick.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from edge_agent.core.heads import HeadError, check_head, decode, default_head, parse_head
from edge_agent.core.preprocess import Geometry, infer_preprocessing, prepare_image
from edge_agent.core.runtimes import Runtime, TensorSpec, dims, load_runtime
from edge_agent.core.wire import ModelRef, ProbationPolicy
from edge_agent.memory import release_memory
from edge_agent.model_store import InstalledModel, ModelStore

__all__ = [
    "ActivationError",
    "ModelEvent",
    "ModelManager",
    "NoActiveModel",
    "Prediction",
]

log = logging.getLogger(__name__)

WARMUP_RUNS = 3


Feeds = np.ndarray | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """A model's answer to one batch: every raw output by name (the engine's dtype, rows first
    for a batched model), the head that reads them, and how many rows were asked."""

    outputs: dict[str, np.ndarray]
    head: Any
    version_id: int
    latency_ms: float
    rows: int = 1
    dequantize: Callable[[str, np.ndarray], np.ndarray] | None = None
    specs: tuple[TensorSpec, ...] = ()  # the runtime's outputs (quantization, for the JSON)
    batched: bool = True  # whether the outputs have a row per sample first

    def floats(self) -> dict[str, np.ndarray]:
        """The outputs as the heads read them: numeric ones as float32, dequantized."""
        out: dict[str, np.ndarray] = {}
        for name, value in self.outputs.items():
            if value.dtype.kind not in "fiub":
                out[name] = value  # strings stay as they are
            elif self.dequantize is not None:
                out[name] = self.dequantize(name, value)
            else:
                out[name] = np.asarray(value, dtype=np.float32)
        return out

    def answers(
        self, geometry: Sequence[Geometry | None] | None = None, *, include_mask: bool = False
    ) -> list[dict[str, Any]]:
        """The head's structured answer, one dict per row (`edge_agent.core.heads.decode`)."""
        return decode(self.head, self.floats(), self.rows, geometry, include_mask=include_mask)


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
    head: Any
    preprocessing: dict[str, Any] | None = None

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
        memory_arena: bool = False,
        on_event: Callable[[ModelEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.threads = threads
        self.memory_arena = memory_arena  # onnxruntime's CPU arena (`load_runtime`)
        self._on_event = on_event
        self._clock = clock
        self._lock = threading.Lock()  # guards the references below; held only briefly
        self._switch = threading.Lock()  # one activation / restore / shadow change at a time
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

    @property
    def head(self) -> Any:
        """The active model's head (None when no model is active)."""
        with self._lock:
            return self._current.head if self._current is not None else None

    def preprocessing(self) -> dict[str, Any] | None:
        """How images become the active model's input: its version's spec or, without one,
        what its signature says (`preprocess.infer_preprocessing`); None for no model."""
        with self._lock:
            return self._current.preprocessing if self._current is not None else None

    @property
    def runtime(self) -> Runtime | None:
        """The active model's runtime (None when no model is active)."""
        with self._lock:
            return self._current.runtime if self._current is not None else None

    def loaded_versions(self) -> list[int]:
        """Versions with a runtime in memory: the active one first (then the shadow's)."""
        with self._lock:
            return [
                m.version_id for m in (self._current, self._previous, self._shadow) if m is not None
            ]

    # -- loading --------------------------------------------------------------------------------
    def _load(self, installed: InstalledModel, warmup_input: Feeds | None = None) -> _Loaded:
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
            runtime = load_runtime(
                data, installed.ref.format, threads=self.threads, memory_arena=self.memory_arena
            )
        except Exception as exc:  # ModelLoadError, RuntimeUnavailable, or an engine's own error
            raise ActivationError(f"cannot load model: {exc}", version_id) from exc
        del data
        try:
            head = resolve_head(installed.ref, runtime.outputs)
        except HeadError as exc:
            raise ActivationError(
                f"the version's head does not fit the model: {exc}", version_id
            ) from None
        except ValidationError as exc:
            reason = f"the version's head is not valid: {_errors(exc)}"
            raise ActivationError(reason, version_id) from None
        except Exception as exc:  # a head module's own failure: this version cannot serve
            reason = f"the version's head cannot be checked: {type(exc).__name__}: {exc}"
            raise ActivationError(reason, version_id) from exc
        _warm_up(runtime, head, version_id, warmup_input)
        preprocessing = installed.ref.preprocessing
        if preprocessing is None:  # what the signature says: an image input of H x W x C
            inferred = infer_preprocessing(runtime.inputs)
            preprocessing = inferred.model_dump(mode="json") if inferred is not None else None
        _warm_up_images(preprocessing, version_id)
        return _Loaded(installed, runtime, head, preprocessing)

    def _fail(self, version_id: int, exc: ActivationError) -> None:
        log.warning("version %s cannot be activated: %s", version_id, exc.reason)
        self._emit(ModelEvent("failed", version_id, exc.reason))

    # -- activation -----------------------------------------------------------------------------
    def activate(
        self,
        installed: InstalledModel,
        probation: ProbationPolicy | None = None,
        warmup_input: Feeds | None = None,
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
                dropped = self._previous
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
            if dropped is not None and self._previous is None:
                dropped = None
                release_memory()
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
            del old, current, promoted, loaded  # a runtime replaced without probation goes now
        # what loading left behind (the file's bytes, the engine's copies), and that runtime
        release_memory()
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
                release_memory()  # what loading it left behind
                log.info("restored version %s", version_id)
                return version_id
        if reasons:
            log.warning("no model could be restored: %s", "; ".join(reasons))
        return None

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
                if current is not None and current.installed == installed:
                    return
                self._shadow = None  # free the old shadow before loading the new one
            if current is not None:
                del current
                release_memory()
            if installed is None:
                return
            loaded = self._load(installed)
            with self._lock:
                self._shadow = loaded
        log.info("version %s loaded as the shadow", installed.ref.version_id)

    def predict_shadow(self, x: Feeds) -> Prediction:
        """The shadow's outputs (NoActiveModel when there is none). Not counted anywhere."""
        with self._lock:
            loaded = self._shadow
        if loaded is None:
            raise NoActiveModel("no shadow is loaded")
        start = time.perf_counter()
        outputs = loaded.runtime.run(x)
        latency_ms = (time.perf_counter() - start) * 1000.0
        return _prediction(loaded, x, outputs, latency_ms)

    # -- serving --------------------------------------------------------------------------------
    def predict(self, x: Feeds) -> Prediction:
        """Every output of the active model for a batch (one array, or arrays by input name).
        ValueError (the runtime's InputError) for a feed the model does not accept."""
        self.poll()
        with self._lock:
            loaded = self._current
        if loaded is None:
            raise NoActiveModel("no model is active")
        start = time.perf_counter()
        try:
            outputs = loaded.runtime.run(x)
        except ValueError:
            raise  # the caller's input, not the model's fault
        except Exception:
            self._record(loaded, ok=False, latency_ms=None)
            raise
        latency_ms = (time.perf_counter() - start) * 1000.0
        self._record(loaded, ok=True, latency_ms=latency_ms)
        return _prediction(loaded, x, outputs, latency_ms)

    def poll(self) -> None:
        """End a probation whose window has passed cleanly, freeing the previous runtime.

        `predict` calls this; an agent that may go quiet can call it from a timer too.
        """
        with self._lock:
            probation = self._probation
            if probation is None or self._clock() - probation.started < probation.policy.window_s:
                return
            self._probation = None
            dropped, self._previous = self._previous, None
        del dropped
        release_memory()  # the predecessor's runtime is gone
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
        from_id, to_id = loaded.version_id, previous.version_id
        del loaded, previous
        release_memory()  # the failed version's runtime is gone (but for requests in flight)
        self._finish_rollback(from_id, to_id, reason)

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


def _errors(exc: ValidationError) -> str:
    """A head document's problems, one per field ("head.boxes: Field required; ...")."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"head.{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def resolve_head(ref: ModelRef, outputs: Sequence[TensorSpec]) -> Any:
    """The head a version is served with (see the module's docstring). HeadError, or pydantic's
    ValidationError for a malformed head document."""
    labels = list(ref.labels)
    head = default_head(None, outputs, ()) if ref.head is None else parse_head(ref.head)
    if head.task != "classification" or head.labels or not labels:
        return check_head(head, outputs)
    try:
        return check_head(head.model_copy(update={"labels": labels}), outputs)
    except HeadError as exc:
        if exc.field != "labels":
            raise
        log.warning("version %s: its labels are left out: %s", ref.version_id, exc.message)
        return check_head(head, outputs)


def _rows(runtime: Runtime, x: Feeds) -> int:
    """How many rows a (checked) feed has: its leading dimension for a batched model, else 1."""
    if not runtime.batched:
        return 1
    first = x[runtime.inputs[0].name] if isinstance(x, Mapping) else x
    return int(len(first))


def _prediction(
    loaded: _Loaded, x: Feeds, outputs: dict[str, np.ndarray], latency_ms: float
) -> Prediction:
    return Prediction(
        outputs=outputs,
        head=loaded.head,
        version_id=loaded.version_id,
        latency_ms=latency_ms,
        rows=_rows(loaded.runtime, x),
        dequantize=loaded.runtime.dequantize,
        specs=tuple(loaded.runtime.outputs),
        batched=loaded.runtime.batched,
    )


def _warmup_feeds(runtime: Runtime, version_id: int) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for spec in runtime.inputs:
        shape = tuple(1 if d is None else d for d in spec.shape)
        if spec.dtype == "str":
            feeds[spec.name] = np.full(shape, "", dtype=object)
            continue
        try:
            feeds[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
        except TypeError as exc:
            raise ActivationError(
                f"cannot build a warm-up input of dtype {spec.dtype}: {exc}", version_id
            ) from exc
    return feeds


def _warm_up_images(preprocessing: dict[str, Any] | None, version_id: int) -> None:
    """For a model that takes images, prepare one now: OpenCV is imported (about 16 MB, a
    third of a second) while the model loads, not in its first request."""
    if not preprocessing or preprocessing.get("input_kind") != "image":
        return
    try:
        prepare_image(np.zeros((8, 8, 3), np.uint8), preprocessing)
    except Exception as exc:  # its requests will say what is wrong; the model itself serves
        log.warning("version %s: its preprocessing cannot prepare images: %s", version_id, exc)


def _warm_up(runtime: Runtime, head: Any, version_id: int, warmup_input: Feeds | None) -> None:
    """Run a few inferences and check them: every output there, each float one finite, one row
    per sample in a batched model, and the head able to read them."""
    x: Feeds = _warmup_feeds(runtime, version_id) if warmup_input is None else warmup_input
    rows = _rows(runtime, x)
    outputs: dict[str, np.ndarray] = {}
    for _ in range(WARMUP_RUNS):
        try:
            outputs = runtime.run(x)
        except Exception as exc:
            raise ActivationError(f"warm-up failed: {exc}", version_id) from exc
    for spec in runtime.outputs:
        value = outputs.get(spec.name)
        if value is None:
            raise ActivationError(f"warm-up failed: no output {spec.name}", version_id)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ActivationError(
                f"warm-up failed: output {spec.name} is not all finite", version_id
            )
        if runtime.batched and spec.shape and (value.ndim == 0 or value.shape[0] != rows):
            raise ActivationError(
                f"warm-up failed: {rows} samples in, output {spec.name} {dims(spec.shape)} "
                f"has shape {tuple(value.shape)}",
                version_id,
            )
    prediction = Prediction(outputs, head, version_id, 0.0, rows, runtime.dequantize)
    try:
        prediction.answers()
    except Exception as exc:  # a head that cannot read what the model gives
        raise ActivationError(
            f"warm-up failed: the {head.task} head cannot read the outputs: {exc}", version_id
        ) from exc
