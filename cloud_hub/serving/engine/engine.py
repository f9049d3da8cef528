"""The serving engine: every endpoint of the hub, compiled from the specs in its database.

An endpoint is built whole (models loaded from the registry, graph checked) before it is stored
or swapped in, so a bad spec changes nothing. `update` swaps the reference to the compiled
endpoint under a lock: requests already running finish on the old one, which is closed when the
last of them is done. Requests run on the engine's thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from cloud_hub.core.db import Database
from cloud_hub.core.errors import AlreadyExists, InvalidInput, NotFound, RegistryError
from cloud_hub.predlog.writer import LogEntry, PredictionLogWriter
from cloud_hub.registry.registry import Registry
from cloud_hub.serving.engine.admission import Admission, Caps, Ticket
from cloud_hub.serving.engine.device_lookup import DeviceLookup
from cloud_hub.serving.engine.endpoint import CompiledEndpoint, PredictResponse
from cloud_hub.serving.engine.errors import ModelOff
from cloud_hub.serving.engine.graph import StepFailed
from cloud_hub.serving.engine.params import EndpointParams, resolve
from cloud_hub.serving.engine.spec import EndpointSpec
from cloud_hub.serving.engine.stats import EndpointStats
from cloud_hub.serving.engine.store import EndpointStore, StoredEndpoint
from cloud_hub.serving.engine.values import PredictRequest

log = logging.getLogger(__name__)


class EndpointUnavailable(RegistryError):
    """A stored endpoint that could not be built (its model is gone, say): 503."""


@dataclass(frozen=True)
class Limits:
    """What bounds one endpoint's requests: the body size, and the caps on what it holds."""

    max_body_bytes: int
    caps: Caps


class EndpointInfo(BaseModel):
    name: str
    status: Literal["ready", "broken"]
    error: str | None = None
    spec: EndpointSpec
    created_at: str
    updated_at: str
    output: str | None = None
    models: list[dict[str, Any]] = []
    signatures: dict[str, str] = {}
    params: EndpointParams = EndpointParams()


class DeferredJob(Protocol):
    id: str


class DeferredQueue(Protocol):
    """Where deferred steps go (the job queue, `serving.jobs.queue.JobQueue`, in the hub)."""

    def submit(
        self,
        kind: Literal["predict"],
        endpoint: str,
        request: dict[str, Any],
        *,
        step: str | None = None,
        early: dict[str, Any] | None = None,
    ) -> DeferredJob: ...


@dataclass
class EndpointSlot:
    """What the engine knows of one endpoint name: the build serving it (or why none can), the
    stamps of the spec and the run-time parameters in force, and its counters (which outlive
    rebuilds)."""

    stats: EndpointStats = field(default_factory=EndpointStats)
    live: CompiledEndpoint | None = None
    broken: str | None = None  # why the stored spec could not be built
    spec_stamp: str | None = None  # updated_at of the spec in force (or that failed to build)
    params_stamp: str | None = None  # updated_at of the run-time parameters in force
    admission: Admission = field(default_factory=Admission)  # bytes and rows in flight


class ServingEngine:
    def __init__(
        self,
        registry: Registry,
        db: Database,
        *,
        threads: int = 64,
        base_dir: Path | None = None,
        jobs: DeferredQueue | None = None,
        log: PredictionLogWriter | None = None,
    ) -> None:
        self.registry = registry
        self.log = log  # the prediction log; None: predictions are not logged
        self.jobs = jobs  # where deferred steps (time-differential) go; None: they do not run
        self.store = EndpointStore(db)
        self.base_dir = base_dir  # None: relative data paths start at the working directory
        self._requests = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="serve")
        self._fanout = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fanout")
        self._lock = threading.Lock()
        self._slots: dict[str, EndpointSlot] = {}  # endpoint name → its slot
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._devices = DeviceLookup(db)  # condition routing on a device's tags or hardware

    # -- lifetime ---------------------------------------------------------------------------
    def start(self, *, poll_s: float | None = None) -> None:
        """Build every stored endpoint; one that fails is kept as broken, with its reason. With
        `poll_s`, also follow changes other processes (the CLI) make to the stored specs."""
        self.sync()
        if poll_s is not None:
            self._poller = threading.Thread(
                target=self._poll, args=(poll_s,), name="endpoints-sync", daemon=True
            )
            self._poller.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sync()
            except Exception:  # a bad moment of the database must not end the poller
                log.exception("endpoint sync failed")

    def sync(self) -> None:
        """Build what is stored and new or changed since it was built; drop what is gone."""
        with self._lock:
            # before reading the store: a change meanwhile is seen next time
            seen = {n: slot.spec_stamp for n, slot in self._slots.items() if slot.spec_stamp}
        stored = {s.name: s for s in self.store.list()}
        for name, item in stored.items():
            if seen.get(name) != item.updated_at:
                self.load(item)
        for name in set(seen) - set(stored):
            self._drop(name)
        stamps = self.store.params_stamps()
        with self._lock:
            changed = [
                slot.live
                for n, slot in self._slots.items()
                if slot.live is not None and slot.params_stamp != stamps.get(n)
            ]
        for endpoint in changed:
            self._apply_stored_params(endpoint)

    def _apply_stored_params(self, endpoint: CompiledEndpoint) -> None:
        """The stored run-time parameters, in force on `endpoint` (leniently: what a changed
        spec no longer has is left out, with a warning)."""
        params, stamp = self.store.get_params(endpoint.name)
        endpoint.runtime = resolve(
            params,
            endpoint.graph.steps,
            set(endpoint.models) | set(endpoint.spec.models),
            strict=False,
            versions=_versions(endpoint),
        )
        with self._lock:
            self._slot(endpoint.name).params_stamp = stamp

    def _slot(self, name: str) -> EndpointSlot:
        """`name`'s slot, made if it has none (call with the lock held)."""
        return self._slots.setdefault(name, EndpointSlot())

    def _live(self, name: str) -> CompiledEndpoint | None:
        """The build serving `name` now, if any (call with the lock held)."""
        slot = self._slots.get(name)
        return None if slot is None else slot.live

    def live(self, name: str) -> CompiledEndpoint:
        """The build serving `name` now (its graph and steps, for tools and tests); NotFound
        if none is."""
        with self._lock:
            endpoint = self._live(name)
        if endpoint is None:
            raise NotFound("endpoint", name)
        return endpoint

    def _drop(self, name: str) -> None:
        """Forget `name` (deleted): its build is retired, its slot gone."""
        with self._lock:
            slot = self._slots.pop(name, None)
        if slot is not None and slot.live is not None:
            slot.live.retire()

    def load(self, stored: StoredEndpoint | str) -> None:
        """Build one stored endpoint (by name, or as read) and serve it."""
        item = self.store.get(stored) if isinstance(stored, str) else stored
        try:
            self._install(self._compile(item.spec), item.updated_at)
        except RegistryError as exc:
            log.warning("endpoint %s could not be built: %s", item.name, exc)
            with self._lock:
                slot = self._slot(item.name)
                slot.broken, slot.spec_stamp = str(exc), item.updated_at

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        with self._lock:
            live = [slot.live for slot in self._slots.values() if slot.live is not None]
            for slot in self._slots.values():
                slot.live = None
        for endpoint in live:
            endpoint.retire()
        self._requests.shutdown(wait=True, cancel_futures=True)
        self._fanout.shutdown(wait=False, cancel_futures=True)
        if self.log is not None:
            self.log.close()  # what requests logged is written before the process ends

    # -- specs ------------------------------------------------------------------------------
    def _compile(self, spec: EndpointSpec) -> CompiledEndpoint:
        with self._lock:
            stats = self._slot(spec.name).stats
        endpoint = CompiledEndpoint(
            spec,
            self.registry,
            fanout=self._fanout,
            stats=stats,
            base_dir=self.base_dir,
            devices=self._devices,
        )
        endpoint.log = self.log
        try:
            self._apply_stored_params(endpoint)
        except BaseException:
            endpoint.retire()
            raise
        return endpoint

    def _install(self, endpoint: CompiledEndpoint, updated_at: str) -> None:
        """Swap `endpoint` in, unless this spec or a newer one is already in force."""
        with self._lock:
            slot = self._slot(endpoint.name)
            if (slot.spec_stamp or "") >= updated_at and slot.live is not None:
                old: CompiledEndpoint | None = endpoint  # already in force, or stale: drop it
            else:
                old, slot.live = slot.live, endpoint
                slot.broken, slot.spec_stamp = None, updated_at
        if old is not None:
            old.retire()
        if not self.store.exists(endpoint.name):
            # deleted while it was being built (a sync that read the store before the delete):
            # do not bring it back to serve until the next sync
            with self._lock:
                gone = self._live(endpoint.name)
                if gone is endpoint:
                    slot.live = slot.spec_stamp = None
            if gone is endpoint:
                endpoint.retire()

    def create(self, spec: EndpointSpec) -> EndpointInfo:
        if self.store.exists(spec.name):
            raise AlreadyExists("endpoint", spec.name)
        endpoint = self._compile(spec)
        try:
            stored = self.store.create(spec)
        except BaseException:
            endpoint.retire()
            raise
        self._install(endpoint, stored.updated_at)
        return self.get(spec.name)

    def update(self, name: str, spec: EndpointSpec) -> EndpointInfo:
        if spec.name != name:
            raise InvalidInput(f"the spec is named {spec.name!r}, not {name!r}")
        self.store.get(name)  # NotFound before anything is loaded
        endpoint = self._compile(spec)
        try:
            params, _ = self.store.get_params(name)
            # run-time parameters in force must still fit: refuse the spec, not drop them
            resolve(params, endpoint.graph.steps, set(spec.models), strict=True)
            stored = self.store.update(spec)
        except BaseException:
            endpoint.retire()
            raise
        self._install(endpoint, stored.updated_at)  # the atomic swap
        return self.get(name)

    def apply(self, spec: EndpointSpec) -> tuple[EndpointInfo, bool]:
        """Create or update; True when it was created."""
        if self.store.exists(spec.name):
            return self.update(spec.name, spec), False
        return self.create(spec), True

    def delete(self, name: str) -> None:
        self.store.delete(name)
        self._drop(name)

    # -- run-time parameters ----------------------------------------------------------------
    def get_params(self, name: str) -> EndpointParams:
        self.store.get(name)
        return self.store.get_params(name)[0]

    def set_params(self, name: str, params: EndpointParams) -> EndpointParams:
        """Check `params` against the endpoint as it runs (SpecError naming the step and
        field), store them, and put them in force at once: the next request reads them."""
        endpoint = self._acquire(name)
        try:
            resolved = resolve(
                params,
                endpoint.graph.steps,
                set(endpoint.spec.models),
                strict=True,
                versions=_versions(endpoint),
            )
            stamp = self.store.set_params(name, params)
            endpoint.runtime = resolved
            with self._lock:
                self._slot(name).params_stamp = stamp
        finally:
            endpoint.release()
        return params

    def _info(self, stored: StoredEndpoint) -> EndpointInfo:
        with self._lock:
            slot = self._slots.get(stored.name)
            live, error = (None, None) if slot is None else (slot.live, slot.broken)
        info = EndpointInfo(
            name=stored.name,
            status="ready" if live is not None else "broken",
            error=error if live is None else None,
            spec=stored.spec,
            created_at=stored.created_at,
            updated_at=stored.updated_at,
        )
        if live is not None:
            described = live.describe()
            info.output = described["output"]
            info.models = described["models"]
            info.signatures = described["signatures"]
            info.params = self.store.get_params(stored.name)[0]
        elif error is None:
            info.error = "not loaded in this process"
        return info

    def get(self, name: str) -> EndpointInfo:
        return self._info(self.store.get(name))

    def list(self) -> list[EndpointInfo]:
        return [self._info(s) for s in self.store.list()]

    # -- serving ----------------------------------------------------------------------------
    def _acquire(self, name: str) -> CompiledEndpoint:
        while True:
            with self._lock:
                slot = self._slots.get(name)
                endpoint, broken = (None, None) if slot is None else (slot.live, slot.broken)
            if endpoint is None:
                if broken is not None:
                    raise EndpointUnavailable(f"endpoint {name!r} is broken: {broken}")
                raise NotFound("endpoint", name)
            if endpoint.acquire():
                return endpoint
            # retired between the lookup and acquire: the new one is installed; look again

    def is_public(self, name: str) -> bool:
        """Whether the live endpoint `name` takes predictions without a token."""
        with self._lock:
            endpoint = self._live(name)
        return endpoint is not None and endpoint.spec.public

    def max_body_bytes(self, name: str, default: int) -> int:
        with self._lock:
            endpoint = self._live(name)
        if endpoint is None or endpoint.spec.max_body_bytes is None:
            return default
        return endpoint.spec.max_body_bytes

    def limits(self, name: str, defaults: Limits) -> tuple[Limits, Admission]:
        """The body limit and caps in force for `name` (its spec's, else `defaults`), and its
        admission counters (a throwaway for a name that has no slot: it gets a 404)."""
        with self._lock:
            slot = self._slots.get(name)
            spec = None if slot is None or slot.live is None else slot.live.spec
            admission = Admission() if slot is None else slot.admission
        if spec is None:
            return defaults, admission
        return Limits(
            max_body_bytes=spec.max_body_bytes or defaults.max_body_bytes,
            caps=Caps(
                in_flight_bytes=spec.max_in_flight_bytes or defaults.caps.in_flight_bytes,
                queued_rows=spec.max_queued_rows or defaults.caps.queued_rows,
            ),
        ), admission

    def predict(
        self, name: str, request: PredictRequest, *, step: str | None = None
    ) -> PredictResponse:
        """Run one request (blocking: call it from a thread, or use `apredict`), up to the
        endpoint's output or to `step`. Steps it defers (time-differential) are queued as a
        job, whose id the response carries."""
        started = time.perf_counter()
        rid = request.request_id or os.urandom(16).hex()  # as uuid4().hex, cheaper
        endpoint = self._acquire(name)
        try:
            response, deferred = endpoint.run_deferring(request, step, request_id=rid)
            if deferred and self.jobs is not None:
                if request.request_id is None:  # the deferred answer logs under the same id
                    request = request.model_copy(update={"request_id": rid})
                job = self.jobs.submit(
                    "predict",
                    name,
                    request.to_json(),
                    step=deferred[0],
                    early=response.model_dump(mode="json"),
                )
                response.job = job.id
            return response
        except InvalidInput as exc:
            endpoint.stats.error("bad_input")
            self._log_failure(endpoint, rid, step, "bad_input", exc, started)
            raise
        except ModelOff as exc:
            endpoint.stats.error("model_off")
            self._log_failure(endpoint, rid, step, "model_off", exc, started)
            raise
        except Exception as exc:
            endpoint.stats.error("failed")
            self._log_failure(endpoint, rid, step, "failed", exc, started)
            raise
        finally:
            endpoint.release()

    def _log_failure(
        self,
        endpoint: CompiledEndpoint,
        request_id: str,
        step: str | None,
        outcome: str,
        exc: BaseException,
        started: float,
    ) -> None:
        if self.log is None:
            return
        failed_step = getattr(exc, "step", None) if isinstance(exc, StepFailed | ModelOff) else None
        # an endpoint with one model: the failure is that version's (monitoring's error rate)
        models = list(endpoint.models.values())
        version = models[0].version.id if len(models) == 1 else None
        # what a router said of the request before it failed (the A/B variant that failed)
        tags = exc.tags if isinstance(exc, StepFailed | ModelOff) else None
        entry = LogEntry(
            ts=time.time(),
            request_id=request_id,
            endpoint=endpoint.name,
            outcome=outcome,
            model_version=version,
            step=failed_step or getattr(exc, "step", None) or step,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            error=str(exc)[:500],
            variant=None if tags is None else tags.get("variant"),
            tags=tags,
        )
        self.log.add([entry])

    async def apredict(
        self, name: str, request: PredictRequest, *, ticket: Ticket | None = None
    ) -> PredictResponse:
        """`predict` on the engine's threads; `ticket` (what admission gave the request) is
        given back when the run ends, even if the caller is cancelled first."""
        if ticket is None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._requests, self.predict, name, request)
        future = self._requests.submit(self.predict, name, request)
        ticket.follow(future)
        return await asyncio.wrap_future(future)

    def stats(self, name: str) -> dict[str, Any]:
        self.store.get(name)
        with self._lock:
            endpoint = self._live(name)
            slot = self._slot(name)
            stats, admission = slot.stats, slot.admission
        out: dict[str, Any] = {"endpoint": name, **stats.snapshot()}
        out["admission"] = admission.snapshot()
        if endpoint is not None:
            out["in_flight"] = endpoint.pending()
            out["steps"] = endpoint.step_stats()
            out["batching"] = {
                alias: {
                    **(m.batcher.stats.snapshot() if m.batcher is not None else {}),
                    **({} if m.batching is None else {"policy": m.batching.describe()}),
                }
                for alias, m in endpoint.models.items()
                if m.batcher is not None or m.batching is not None
            }
            out["artifact_choice"] = {  # model steps with artifact "auto"
                alias: m.artifact_choice.describe()
                for alias, m in endpoint.models.items()
                if m.artifact_choice is not None
            }
        return out


def _versions(endpoint: CompiledEndpoint) -> dict[str, int]:
    """Model alias → the registry version it serves (for kill switches on cached answers)."""
    return {alias: model.version.id for alias, model in endpoint.models.items()}
