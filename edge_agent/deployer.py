"""From a desired state to a served model: transfer, verify, install, activate, report.

One thread does it all, fed by a queue (desired states, chunks, reconnects), so paho's network
thread never waits on a disk or a model load. Every step is reported on the `report` topic with
the deployment and version ids. The old model serves throughout; a failure anywhere leaves it
serving. The last outcome per deployment is kept in `deploy.json`, so a retained desired state
that is delivered again (each reconnect, each restart) is answered, not redone: an active model is
acknowledged, a failed or rolled-back deployment is reported again and not retried.

Serving parameters are applied as soon as a desired state arrives, whatever happens to its
model: a change of parameters alone never transfers anything. A desired state's `shadow` is
taken care of once its model is active: fetched with the same verified transfer (reports with
role "shadow"), installed, and loaded beside the active model; a desired state without one drops
it. A shadow only ever runs beside its own deployment's active model: it is dropped while that
model is fetched or when it fails, and when it is rolled back (reported as the shadow's
"rolled_back"). A desired model already in the store (a promoted shadow) is activated without a
transfer, and so is one whose bytes (by sha256) the store holds for another version: the file is
hard-linked into the new version after the new ref is verified against it (size, sha256, the
hub's signature of the new version), reported "verified" and "active" with `received_bytes` 0,
and no chunk is fetched.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Literal

from edge_agent.config import AgentSettings
from edge_agent.core.fs import write_atomic
from edge_agent.core.wire import (
    DeploymentState,
    DesiredState,
    FetchRequest,
    ModelRef,
    Report,
    ServingParams,
    WireError,
)
from edge_agent.model_manager import ActivationError, ModelEvent, ModelManager
from edge_agent.model_store import ModelStore
from edge_agent.signing import VerificationError, verify_model
from edge_agent.transfer import Transfer, TransferFailed

__all__ = ["Deployer"]

log = logging.getLogger(__name__)

_TICK_S = 0.2


class Deployer:
    def __init__(
        self,
        settings: AgentSettings,
        manager: ModelManager,
        store: ModelStore,
        *,
        publish_report: Callable[[Report], None],
        send_fetch: Callable[[FetchRequest], bool],
        on_active_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.device_id = settings.device_id
        self.settings = settings
        self.manager = manager
        self.store = store
        self._publish_report = publish_report
        self._send_fetch = send_fetch
        self._on_active_change = on_active_change
        self._state_path = settings.data_dir / "deploy.json"
        self._transfers_dir = settings.data_dir / "transfers"
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.state: dict[str, Any] = self._load_state()
        self.params = _saved_params(self.state.get("params"))
        if isinstance(self.state.get("threads"), int) and self.state["threads"] >= 1:
            manager.threads = self.state["threads"]  # the last desired threads, for restore()
        self.transfer: Transfer | None = None
        self._transfer_role: Literal["model", "shadow"] = "model"
        self._desired: DesiredState | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deployer", daemon=True)

    # -- inputs (any thread) --------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(("stop", None))
        if self._thread.is_alive():
            self._thread.join(10)

    def on_desired(self, payload: bytes) -> None:
        self._queue.put(("desired", payload))

    def on_chunk(self, payload: bytes) -> None:
        self._queue.put(("chunk", payload))

    def on_connected(self) -> None:
        self._queue.put(("connected", None))

    def on_model_event(self, event: ModelEvent) -> None:
        """ModelManager events: an automatic rollback is reported against its deployment, and
        the deployment's shadow (run beside the version rolled back) is dropped, on the
        deployer's thread (this may be a request's thread, and loading a shadow holds the
        manager's switch lock)."""
        if event.kind != "rolled_back":
            return
        with self._lock:
            same = self.state.get("version_id") == event.version_id
            deployment_id = self.state.get("deployment_id") if same else None
        self._record(deployment_id, event.version_id, "rolled_back", event.reason, sha256=None)
        self._queue.put(("rolled_back", event))
        self._on_active_change()

    def snapshot(self) -> dict[str, Any]:
        """The last deployment outcome and transfer progress (for /v1/status)."""
        with self._lock:
            state = {k: v for k, v in self.state.items() if k not in ("params", "threads")}
        transfer = self.transfer
        if transfer is not None:
            state["transfer"] = {
                "role": self._transfer_role,
                "version_id": transfer.ref.version_id,
                "received_bytes": transfer.received_bytes,
                "size": transfer.size,
                "good_offset": transfer.good_offset,
                "resumed_from": transfer.resumed_bytes,
            }
        return state

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, item = self._queue.get(timeout=_TICK_S)
            except queue.Empty:
                kind, item = "tick", None
            try:
                if kind == "desired":
                    self._handle_desired(item)
                elif kind == "chunk":
                    self._handle_chunk(item)
                elif kind == "rolled_back":
                    self._handle_rollback(item)
                elif kind == "connected" and self.transfer is not None:
                    self.transfer.reconnected()
                if self.transfer is not None and kind in ("tick", "connected"):
                    self.transfer.tick()
            except Exception:
                log.exception("deployer failed handling %s", kind)

    def _handle_desired(self, payload: bytes) -> None:
        if not payload:
            return  # the hub cleared the retained desired state: keep serving what we have
        try:
            desired: DesiredState = DesiredState.loads(payload)
        except WireError as exc:
            self._reject(f"rejected a desired state: {exc}")
            return
        if desired.device_id != self.device_id:
            self._reject(f"rejected a desired state for device {desired.device_id!r}")
            return
        self._desired = desired
        if desired.params != self.params:
            self.params = desired.params
            with self._lock:
                self.state["params"] = self.params.model_dump()
            self._save_state()
            log.info("serving params now %s", self.params.model_dump(exclude_defaults=True))
        if desired.threads != self.manager.threads:
            self.manager.threads = desired.threads
            with self._lock:
                self.state["threads"] = desired.threads
            self._save_state()
        ref = desired.model
        loaded_shadow = self.manager.shadow
        if loaded_shadow is not None:
            loaded_sha = loaded_shadow.ref.sha256.lower()
            promoted = loaded_sha == _sha(ref)  # activate() takes the loaded shadow over
            beside = loaded_sha == _sha(desired.shadow) and self._is_active(ref)
            if not (promoted or beside):
                # Not this deployment's shadow, or its model is not active (yet, or any more:
                # it is being fetched, it failed or was rolled back): a shadow only ever runs
                # beside its deployment's active model. Stop comparing now; it is loaded again
                # (from the store) once the model is active.
                log.info("dropping the shadow (version %s)", loaded_shadow.version_id)
                self.manager.set_shadow(None)
        if ref is None:
            self._abandon_transfer()  # nothing new to run: keep serving what is active
            self._reconcile_shadow(desired)
            return
        deployment_id = desired.deployment_id
        sha = ref.sha256.lower()
        if self._is_active(ref):
            self._abandon_transfer(keep=_sha(desired.shadow))
            self._report(desired, "active", None)
            self._reconcile_shadow(desired)
            return
        with self._lock:
            last = dict(self.state)
        if (
            last.get("deployment_id") == deployment_id
            and last.get("sha256") == sha
            and last.get("version_id") == ref.version_id
            and last.get("state") in ("failed", "rolled_back")
        ):
            self._report(desired, last["state"], last.get("reason"))  # not retried
            return
        transfer = self.transfer
        if transfer is not None and transfer.sha256 == sha and self._transfer_role == "model":
            if transfer.deployment_id == (deployment_id or 0):
                return  # already on it
            self.transfer = None  # the same bytes for a new deployment: keep what is held
        elif transfer is not None and transfer.sha256 == sha:
            self.transfer = None  # a shadow being fetched became the model: keep what is held
        self._abandon_transfer()
        installed = self.store.get(ref.version_id)
        if installed is not None and installed.ref.sha256.lower() == sha:
            self._activate(desired, received=0)  # verified when it was installed: no transfer
            return
        if self._install_local(desired, ref, "model"):
            return
        self._remove_stale_partials(keep=sha)
        self._start_transfer(ref, desired, "model")

    def _start_transfer(
        self, ref: ModelRef, desired: DesiredState, role: Literal["model", "shadow"]
    ) -> None:
        self.transfer = Transfer(
            ref,
            desired.deployment_id or 0,
            self._transfers_dir,
            self.settings.transfer,
            self._send_fetch,
        )
        self._transfer_role = role
        if role == "model":
            self._report(desired, "transferring", None, received=self.transfer.resumed_bytes)
        else:
            self._report_shadow(desired, "transferring", None, self.transfer.resumed_bytes)
        self.transfer.pump()

    def _is_active(self, ref: ModelRef | None) -> bool:
        active = self.manager.active
        return (
            ref is not None
            and active is not None
            and active.ref.version_id == ref.version_id
            and active.ref.sha256.lower() == ref.sha256.lower()
        )

    # -- the shadow -----------------------------------------------------------------------------
    def _handle_rollback(self, event: ModelEvent) -> None:
        """The active model was rolled back: its deployment's shadow stops (it compared the
        candidate with a model the device no longer runs), and so does its transfer."""
        desired = self._desired
        if (
            desired is None
            or desired.model is None
            or desired.model.version_id != event.version_id
            or self._is_active(desired.model)
        ):
            return  # a later desired state, handled since, took care of its own shadow
        loaded = self.manager.shadow
        if loaded is not None:
            log.info("dropping the shadow (version %s): rolled back", loaded.version_id)
            self.manager.set_shadow(None)
        if self.transfer is not None and self._transfer_role == "shadow":
            self._abandon_transfer()
        if desired.shadow is not None:
            self._report_shadow(
                desired,
                "rolled_back",
                f"version {event.version_id}, which it ran beside, was rolled back",
            )

    def _reconcile_shadow(self, desired: DesiredState) -> None:
        """Make the loaded shadow the desired one (called once the desired model is active)."""
        ref = desired.shadow
        loaded = self.manager.shadow
        if ref is None:
            if loaded is not None:
                log.info("dropping the shadow (version %s)", loaded.version_id)
                self.manager.set_shadow(None)
            if self.transfer is not None and self._transfer_role == "shadow":
                self._abandon_transfer()
            return
        sha = ref.sha256.lower()
        if (
            loaded is not None
            and loaded.ref.version_id == ref.version_id
            and loaded.ref.sha256.lower() == sha
        ):
            self._report_shadow(desired, "active", None)
            return
        with self._lock:
            last = dict(self.state.get("shadow") or {})
        if (
            last.get("deployment_id") == desired.deployment_id
            and last.get("sha256") == sha
            and last.get("state") == "failed"
        ):
            self._report_shadow(desired, "failed", last.get("reason"))  # not retried
            return
        installed = self.store.get(ref.version_id)
        if installed is not None and installed.ref.sha256.lower() == sha:
            self._load_shadow(desired, installed.ref)
            return
        if self._install_local(desired, ref, "shadow"):
            return
        transfer = self.transfer
        if transfer is not None and transfer.sha256 == sha and self._transfer_role == "shadow":
            if transfer.deployment_id == (desired.deployment_id or 0):
                return  # already on it
            self.transfer = None  # keep the bytes held for the new deployment
        self._abandon_transfer()
        self._remove_stale_partials(keep=sha)
        self._start_transfer(ref, desired, "shadow")

    def _install_local(
        self, desired: DesiredState, ref: ModelRef, role: Literal["model", "shadow"]
    ) -> bool:
        """Install `ref` from another installed version with the same bytes, then activate it (or
        load it as the shadow). False when the store holds no such file (or it cannot be read):
        the caller transfers it. A ref that fails verification against the file is reported
        failed, exactly as it would have been after a transfer."""
        local = self.store.find_sha256(ref.sha256, exclude=ref.version_id)
        if local is None:
            return False
        try:
            data = local.path.read_bytes()
        except OSError as exc:
            log.warning("cannot read version %s's model file (%s): fetching", local.version_id, exc)
            return False
        fail = self._report if role == "model" else self._report_shadow
        if self.transfer is not None and self.transfer.sha256 == ref.sha256.lower():
            self._abandon_transfer()  # a shadow's transfer of these bytes: not needed now
        try:
            verify_model(ref, data, self.settings.hub_public_key)
        except VerificationError as exc:
            fail(desired, "failed", f"verification failed: {exc}", 0)
            return True
        log.info(
            "version %s has the bytes of installed version %s: installing it without a transfer",
            ref.version_id,
            local.version_id,
        )
        fail(desired, "verified", None, 0)
        try:
            self.store.install_file(ref, local.path)
        except (OSError, ValueError) as exc:
            fail(desired, "failed", f"cannot install the model: {exc}", 0)
            return True
        if role == "shadow":
            self._load_shadow(desired, ref, received=0)
        else:
            self._activate(desired, received=0)
        return True

    def _load_shadow(
        self, desired: DesiredState, ref: ModelRef, *, received: int | None = None
    ) -> None:
        installed = self.store.get(ref.version_id)
        if installed is None:
            self._report_shadow(desired, "failed", "the installed shadow disappeared")
            return
        try:
            self.manager.set_shadow(installed)
        except ActivationError as exc:
            self._report_shadow(desired, "failed", exc.reason, received)
            return
        self._report_shadow(desired, "active", None, received)

    def _report_shadow(
        self,
        desired: DesiredState,
        state: DeploymentState,
        reason: str | None,
        received: int | None = None,
    ) -> None:
        ref = desired.shadow
        assert ref is not None
        if state in ("failed", "active", "rolled_back"):
            with self._lock:
                self.state["shadow"] = {
                    "deployment_id": desired.deployment_id,
                    "version_id": ref.version_id,
                    "sha256": ref.sha256.lower(),
                    "state": state,
                    "reason": reason,
                }
            self._save_state()
        if state == "failed":
            log.warning("shadow version %s failed: %s", ref.version_id, reason)
        else:
            log.info("shadow version %s %s", ref.version_id, state)
        self._publish(
            Report(
                device_id=self.device_id,
                deployment_id=desired.deployment_id,
                version_id=ref.version_id,
                state=state,
                reason=reason,
                received_bytes=received,
                role="shadow",
            )
        )

    def _abandon_transfer(self, keep: str | None = None) -> None:
        """Stop the transfer in progress (unless it is of `keep`) and forget its bytes."""
        if self.transfer is not None and self.transfer.sha256 != keep:
            log.info("abandoning the transfer of %s…", self.transfer.sha256[:12])
            self.transfer.discard()
            self.transfer = None

    def _remove_stale_partials(self, keep: str) -> None:
        """Partial downloads of models no longer desired (a superseded deployment)."""
        if not self._transfers_dir.is_dir():
            return
        for path in self._transfers_dir.iterdir():
            if not path.name.startswith(keep):
                log.info("removing a stale partial download %s", path.name)
                path.unlink(missing_ok=True)

    def _handle_chunk(self, payload: bytes) -> None:
        transfer, desired = self.transfer, self._desired
        if transfer is None or desired is None:
            return
        try:
            transfer.on_chunk(payload)
        except TransferFailed as exc:
            self.transfer = None
            transfer.discard()
            fail = self._report if self._transfer_role == "model" else self._report_shadow
            fail(desired, "failed", f"transfer failed: {exc}", transfer.received_bytes)
            return
        if not transfer.complete:
            return
        self.transfer = None
        role = self._transfer_role
        data = transfer.read()
        transfer.discard()
        ref = transfer.ref
        fail = self._report if role == "model" else self._report_shadow
        try:
            verify_model(ref, data, self.settings.hub_public_key)
        except VerificationError as exc:
            fail(desired, "failed", f"verification failed: {exc}", len(data))
            return
        fail(desired, "verified", None, len(data))
        try:
            self.store.install(ref, data)
        except (OSError, ValueError) as exc:
            fail(desired, "failed", f"cannot install the model: {exc}")
            return
        if role == "shadow":
            self._load_shadow(desired, ref, received=len(data))
        else:
            self._activate(desired, received=len(data))

    def _activate(self, desired: DesiredState, *, received: int | None = None) -> None:
        """Activate the installed desired model; `received` is the bytes transferred for it (0
        when it was installed from the store), reported with the outcome."""
        assert desired.model is not None
        installed = self.store.get(desired.model.version_id)
        if installed is None:
            self._report(desired, "failed", "the installed model disappeared", received)
            return
        try:
            self.manager.activate(installed, probation=desired.probation)
        except ActivationError as exc:
            self._report(desired, "failed", exc.reason, received)
            return
        self._report(desired, "active", None, received)
        self._on_active_change()
        try:
            self.store.prune(protect=[desired.shadow.version_id] if desired.shadow else [])
        except OSError as exc:
            log.warning("cannot prune old models: %s", exc)
        self._reconcile_shadow(desired)

    # -- reports and state ----------------------------------------------------------------------
    def _report(
        self,
        desired: DesiredState,
        state: DeploymentState,
        reason: str | None,
        received: int | None = None,
    ) -> None:
        ref = desired.model
        self._record(
            desired.deployment_id,
            ref.version_id if ref is not None else None,
            state,
            reason,
            sha256=ref.sha256.lower() if ref is not None else None,
            received=received,
        )

    def _reject(self, reason: str) -> None:
        """A message that breaks the contract: logged, and reported to the hub (which keeps the
        reason on the device), without touching the deployment state."""
        log.warning("%s", reason)
        self._publish(
            Report(
                device_id=self.device_id,
                deployment_id=None,
                version_id=None,
                state="failed",
                reason=reason[:1000],
            )
        )

    def _publish(self, report: Report) -> None:
        try:
            self._publish_report(report)
        except Exception:
            log.exception("cannot publish a report")

    def _record(
        self,
        deployment_id: int | None,
        version_id: int | None,
        state: DeploymentState,
        reason: str | None,
        *,
        sha256: str | None,
        received: int | None = None,
    ) -> None:
        if state == "failed" or state == "rolled_back":
            log.warning("deployment %s version %s %s: %s", deployment_id, version_id, state, reason)
        else:
            log.info("deployment %s version %s %s", deployment_id, version_id, state)
        with self._lock:
            if self.state.get("version_id") == version_id:
                if sha256 is None:
                    sha256 = self.state.get("sha256")
                if received is None:  # an acknowledgement, a rollback: what was received stands
                    received = self.state.get("received_bytes")
            self.state.update(
                deployment_id=deployment_id,
                version_id=version_id,
                sha256=sha256,
                state=state,
                reason=reason,
                received_bytes=received,  # bytes transferred for it so far (0: from the store)
            )
        self._save_state()
        report = Report(
            device_id=self.device_id,
            deployment_id=deployment_id,
            version_id=version_id,
            state=state,
            reason=reason,
            received_bytes=received,
        )
        self._publish(report)

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path.read_text())
            return state if isinstance(state, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self._state_path, exc)
            return {}

    def _save_state(self) -> None:
        with self._lock:
            text = json.dumps(self.state)
        write_atomic(self._state_path, text)


def _sha(ref: ModelRef | None) -> str | None:
    return None if ref is None else ref.sha256.lower()


def _saved_params(saved: Any) -> ServingParams:
    """The serving parameters kept in deploy.json (defaults when missing or unreadable)."""
    try:
        return ServingParams.model_validate(saved or {})
    except ValueError as exc:
        log.warning("ignoring saved serving params: %s", exc)
        return ServingParams()
