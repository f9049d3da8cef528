"""A deployment's shadow: a candidate loaded beside the deployment's active model, and only
beside it.

Once the model is active (`reconcile`) the desired shadow is loaded: from the store, from the
bytes held for another version, or after the same verified transfer as a model (reported with
role "shadow"); a desired state without one drops it. A shadow that failed for a deployment is
reported again, not retried. It is dropped while its deployment's model is fetched, when that
model fails (`drop_unless_beside`), and when it is rolled back (`on_rollback`, reported as the
shadow's "rolled_back").
"""

from __future__ import annotations

import logging

from edge_agent.core.wire import DeploymentState, DesiredState, ModelRef
from edge_agent.deploy.install import Installer, serves
from edge_agent.deploy.reports import Reporter
from edge_agent.deploy.state import ShadowOutcome
from edge_agent.deploy.target import Role, sha_of
from edge_agent.deploy.transfers import TransferSlot
from edge_agent.model_manager import ActivationError, ModelEvent, ModelManager
from edge_agent.model_store import ModelStore

__all__ = ["ShadowKeeper"]

log = logging.getLogger(__name__)


class ShadowKeeper:
    """The deployment's shadow as a `Target`: reported with role "shadow", loaded beside the
    active model when installed."""

    role: Role = "shadow"

    def __init__(
        self,
        manager: ModelManager,
        store: ModelStore,
        reporter: Reporter,
        transfers: TransferSlot,
        installer: Installer,
    ) -> None:
        self.manager = manager
        self.store = store
        self.reporter = reporter
        self.transfers = transfers
        self.installer = installer

    # -- as a target ----------------------------------------------------------------------------
    def report(
        self,
        desired: DesiredState,
        state: DeploymentState,
        reason: str | None,
        received: int | None = None,
    ) -> None:
        self.reporter.shadow(desired, state, reason, received)

    def use(self, desired: DesiredState, ref: ModelRef, received: int | None = None) -> None:
        """Load the installed `ref` as the shadow."""
        installed = self.store.get(ref.version_id)
        if installed is None:
            self.report(desired, "failed", "the installed shadow disappeared")
            return
        try:
            self.manager.set_shadow(installed)
        except ActivationError as exc:
            self.report(desired, "failed", exc.reason, received)
            return
        self.report(desired, "active", None, received)

    # -- following the desired state ------------------------------------------------------------
    def drop_unless_beside(self, desired: DesiredState) -> None:
        """Drop the loaded shadow unless it is this deployment's and its model is active, or it
        is the desired model itself (`activate` takes a loaded shadow over). A model being
        fetched, failed or rolled back has no shadow beside it; it is loaded again (from the
        store) once the model is active."""
        loaded = self.manager.shadow
        if loaded is None:
            return
        loaded_sha = loaded.ref.sha256.lower()
        promoted = loaded_sha == sha_of(desired.model)
        beside = loaded_sha == sha_of(desired.shadow) and serves(self.manager, desired.model)
        if not (promoted or beside):
            self._unload()

    def reconcile(self, desired: DesiredState) -> None:
        """Make the loaded shadow the desired one (called once the desired model is active)."""
        ref = desired.shadow
        if ref is None:
            self._unload()
            self.transfers.abandon(role="shadow")
            return
        if self._is_loaded(ref):
            self.report(desired, "active", None)
            return
        failure = self._failure(desired, ref)
        if failure is not None:
            self.report(desired, "failed", failure.reason)  # not retried
            return
        self._install(desired, ref)

    def on_rollback(self, event: ModelEvent, desired: DesiredState | None) -> None:
        """The active model was rolled back: its deployment's shadow stops (it compared the
        candidate with a model the device no longer runs), and so does its transfer."""
        if (
            desired is None
            or desired.model is None
            or desired.model.version_id != event.version_id
            or serves(self.manager, desired.model)
        ):
            return  # a later desired state, handled since, took care of its own shadow
        self._unload("rolled back")
        self.transfers.abandon(role="shadow")
        if desired.shadow is not None:
            self.report(
                desired,
                "rolled_back",
                f"version {event.version_id}, which it ran beside, was rolled back",
            )

    # -- steps ----------------------------------------------------------------------------------
    def _install(self, desired: DesiredState, ref: ModelRef) -> None:
        sha = ref.sha256.lower()
        installed = self.store.get(ref.version_id)
        if installed is not None and installed.ref.sha256.lower() == sha:
            self.use(desired, installed.ref)
            return
        if self.installer.install_held_copy(desired, ref, self):
            return
        if self.transfers.already_fetching(sha, desired.deployment_id, "shadow"):
            return
        self.transfers.release(sha, roles=("shadow",))  # a new deployment: keep the bytes held
        self.transfers.abandon()
        self.transfers.remove_stale_partials(keep=sha)
        self.transfers.start(ref, desired, self)

    def _is_loaded(self, ref: ModelRef) -> bool:
        loaded = self.manager.shadow
        return (
            loaded is not None
            and loaded.ref.version_id == ref.version_id
            and loaded.ref.sha256.lower() == ref.sha256.lower()
        )

    def _failure(self, desired: DesiredState, ref: ModelRef) -> ShadowOutcome | None:
        """The recorded failure of this shadow in this deployment, if it failed."""
        last = self.reporter.state.read().shadow
        if (
            last is not None
            and last.deployment_id == desired.deployment_id
            and last.sha256 == ref.sha256.lower()
            and last.state == "failed"
        ):
            return last
        return None

    def _unload(self, why: str | None = None) -> None:
        loaded = self.manager.shadow
        if loaded is None:
            return
        if why is None:
            log.info("dropping the shadow (version %s)", loaded.version_id)
        else:
            log.info("dropping the shadow (version %s): %s", loaded.version_id, why)
        self.manager.set_shadow(None)
