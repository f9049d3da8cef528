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

A desired state with `auto` (`--artifact auto`) has its candidates fetched, verified and
measured here first (`edge_agent.deploy.auto`; the old model serves meanwhile), the table and
the choice published on `variants` (`publish_variants`) and saved; it is then followed as if its
model were the chosen candidate and its threads the chosen ones. Delivered again, it is not
measured again: the saved report is published again and the saved choice followed.

The parts live in `edge_agent.deploy`: the saved state (`state`), reports (`reports`), the
transfer in progress (`transfers`), verification, installation and activation (`install`), the
shadow (`shadow`) and the variant choice (`auto`); this module runs them on its thread and
follows each desired state.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from edge_agent.config import AgentSettings
from edge_agent.core.wire import (
    DesiredState,
    FetchRequest,
    ModelRef,
    Report,
    VariantReport,
    WireError,
)
from edge_agent.deploy.auto import VariantChooser
from edge_agent.deploy.install import Installer, ModelActivation, serves
from edge_agent.deploy.reports import Reporter
from edge_agent.deploy.shadow import ShadowKeeper
from edge_agent.deploy.state import DeployStateFile
from edge_agent.deploy.target import sha_of
from edge_agent.deploy.transfers import TransferSlot
from edge_agent.hardware import hardware_model
from edge_agent.model_manager import ModelEvent, ModelManager
from edge_agent.model_store import ModelStore

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
        publish_variants: Callable[[VariantReport], None] | None = None,
        on_active_change: Callable[[], None] = lambda: None,
        hardware: str | None = None,
    ) -> None:
        self.device_id = settings.device_id
        self.settings = settings
        self.manager = manager
        self.store = store
        self._on_active_change = on_active_change
        self.state_file = DeployStateFile(settings.data_dir / "deploy.json")
        saved = self.state_file.read()
        self.params = saved.params
        if saved.threads is not None:
            manager.threads = saved.threads  # the last desired threads, for restore()
        self.reporter = Reporter(self.device_id, self.state_file, publish_report)
        self.transfers = TransferSlot(
            settings.data_dir / "transfers", settings.transfer, send_fetch
        )
        self.installer = Installer(store, settings.hub_public_key, self.transfers)
        self.shadow = ShadowKeeper(manager, store, self.reporter, self.transfers, self.installer)
        self.activation = ModelActivation(
            manager,
            store,
            self.reporter,
            on_active_change=on_active_change,
            then=self.shadow.reconcile,
        )
        self.chooser = VariantChooser(
            self.device_id,
            hardware or settings.telemetry.hardware or hardware_model(),
            settings.data_dir / "trials",
            store,
            settings.hub_public_key,
            self.transfers,
            self.reporter,
            self.state_file,
            publish_variants=publish_variants or _unpublished,
            then=self._follow,
        )
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
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
        self.reporter.rolled_back(event)
        self._queue.put(("rolled_back", event))
        self._on_active_change()

    def snapshot(self) -> dict[str, Any]:
        """The last deployment outcome and transfer progress (for /v1/status)."""
        shown = self.state_file.read().outcome()
        transfer = self.transfers.snapshot()
        if transfer is not None:
            shown["transfer"] = transfer
        trial = self.chooser.snapshot()
        if trial is not None:
            shown["measuring"] = trial
        return shown

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, item = self._queue.get(timeout=_TICK_S)
            except queue.Empty:
                kind, item = "tick", None
            try:
                self._handle(kind, item)
            except Exception:
                log.exception("deployer failed handling %s", kind)

    def _handle(self, kind: str, item: Any) -> None:
        if kind == "desired":
            self._handle_desired(item)
        elif kind == "chunk":
            self._handle_chunk(item)
        elif kind == "rolled_back":
            self.shadow.on_rollback(item, self._desired)
        elif kind == "connected":
            self.transfers.reconnected()
        if kind in ("tick", "connected"):
            self.transfers.tick()

    def _handle_chunk(self, payload: bytes) -> None:
        desired = self._desired
        if desired is None:
            return
        received = self.transfers.on_chunk(payload, desired)
        if received is None:
            return
        if received.target is self.chooser:
            self.chooser.on_received(received)  # a candidate: measured, not installed
        else:
            self.installer.install_received(desired, received)

    # -- desired states -------------------------------------------------------------------------
    def _handle_desired(self, payload: bytes) -> None:
        desired = self._parse_desired(payload)
        if desired is None:
            return
        if desired.auto is not None:
            self._handle_auto(desired)
            return
        self.chooser.cancel(keep=sha_of(desired.model))
        self._follow(desired)

    def _follow(self, desired: DesiredState) -> None:
        """Serve `desired` (its settings at once, then its model and shadow)."""
        self._desired = desired
        self._apply_serving_settings(desired)
        self.shadow.drop_unless_beside(desired)
        self._pursue_model(desired)
        self.chooser.discard_trials()

    def _handle_auto(self, desired: DesiredState) -> None:
        """`--artifact auto`: follow the saved choice, or measure the candidates first (then
        `chooser` follows the choice). Its params apply at once; its threads are the choice's."""
        saved = self.chooser.saved(desired)
        if saved is not None:
            self.chooser.cancel()
            self._follow(self.chooser.follow_saved(desired, saved))
            return
        if self.chooser.measuring(desired):
            return  # delivered again while measuring (a reconnect): carry on
        self._desired = desired
        self._apply_params(desired)
        self.shadow.drop_unless_beside(desired)
        self.chooser.begin(desired)

    def _parse_desired(self, payload: bytes) -> DesiredState | None:
        """The desired state for this device; None for a cleared one (keep serving what we
        have) and for one that breaks the contract (rejected)."""
        if not payload:
            return None  # the hub cleared the retained desired state
        try:
            desired: DesiredState = DesiredState.loads(payload)
        except WireError as exc:
            self.reporter.reject(f"rejected a desired state: {exc}")
            return None
        if desired.device_id != self.device_id:
            self.reporter.reject(f"rejected a desired state for device {desired.device_id!r}")
            return None
        return desired

    def _apply_serving_settings(self, desired: DesiredState) -> None:
        """Serving params and threads take effect at once, whatever happens to the model."""
        self._apply_params(desired)
        if desired.threads != self.manager.threads:
            self.manager.threads = desired.threads
            with self.state_file.editing() as kept:
                kept.threads = desired.threads

    def _apply_params(self, desired: DesiredState) -> None:
        if desired.params != self.params:
            self.params = desired.params  # in force from here: say so before saving it
            log.info("serving params now %s", self.params.model_dump(exclude_defaults=True))
            with self.state_file.editing() as kept:
                kept.params = self.params

    def _pursue_model(self, desired: DesiredState) -> None:
        """Bring the desired model to active, or answer for it when it is (or has failed)."""
        ref = desired.model
        if ref is None:
            self.transfers.abandon()  # nothing new to run: keep serving what is active
            self.shadow.reconcile(desired)
            return
        if serves(self.manager, ref):
            self.transfers.abandon(keep=sha_of(desired.shadow))
            self.reporter.model(desired, "active", None)
            self.shadow.reconcile(desired)
            return
        if self._answered_settled(desired, ref):
            return
        sha = ref.sha256.lower()
        if self.transfers.already_fetching(sha, desired.deployment_id, "model"):
            return  # already on it
        # The same bytes for a new deployment, or a shadow being fetched that became the model:
        # keep what is held. Any other transfer stops.
        self.transfers.release(sha, roles=("model", "shadow"))
        self.transfers.abandon()
        self._install_model(desired, ref)

    def _answered_settled(self, desired: DesiredState, ref: ModelRef) -> bool:
        """Whether this deployment's model already failed or was rolled back: reported again,
        not retried."""
        last = self.state_file.read()
        if not (
            last.deployment_id == desired.deployment_id
            and last.sha256 == ref.sha256.lower()
            and last.version_id == ref.version_id
            and (last.state == "failed" or last.state == "rolled_back")
        ):
            return False
        self.reporter.model(desired, last.state, last.reason)
        return True

    def _install_model(self, desired: DesiredState, ref: ModelRef) -> None:
        """Activate the desired model from the store, from bytes held for another version, or
        after a transfer."""
        sha = ref.sha256.lower()
        installed = self.store.get(ref.version_id)
        if installed is not None and installed.ref.sha256.lower() == sha:
            self.activation.use(desired, ref, 0)  # verified when it was installed: no transfer
            return
        if self.installer.install_held_copy(desired, ref, self.activation):
            return
        if self.chooser.install_from_trial(desired, ref, self.installer, self.activation):
            return  # the chosen candidate of an `auto` deployment, measured here
        self.transfers.remove_stale_partials(keep=sha)
        self.transfers.start(ref, desired, self.activation)


def _unpublished(report: VariantReport) -> None:
    log.warning("no publisher for the variant report of deployment %s", report.deployment_id)
