"""Verified bytes become an installed model, and the deployment's model becomes the active one.

`Installer` verifies bytes against the ref (size, sha256, the hub's signature), installs them in
the store and hands the installed version to its target; bytes received by a transfer and bytes
the store already holds for another version (installed by a hard link, no transfer) go the same
way, reported "verified" then the target's outcome. `ModelActivation` is the model's target: it
activates the version (on probation when the desired state asks for it; the manager rolls it
back), prunes the store, then lets the shadow follow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_agent.core.wire import DeploymentState, DesiredState, ModelRef
from edge_agent.deploy.reports import Reporter
from edge_agent.deploy.target import Role, Target
from edge_agent.deploy.transfers import Received, TransferSlot
from edge_agent.model_manager import ActivationError, ModelManager
from edge_agent.model_store import ModelStore
from edge_agent.signing import VerificationError, verify_model

__all__ = ["Installer", "ModelActivation", "serves"]

log = logging.getLogger(__name__)


def serves(manager: ModelManager, ref: ModelRef | None) -> bool:
    """Whether `ref` (that version, those bytes) is the active model."""
    active = manager.active
    return (
        ref is not None
        and active is not None
        and active.ref.version_id == ref.version_id
        and active.ref.sha256.lower() == ref.sha256.lower()
    )


class Installer:
    def __init__(self, store: ModelStore, hub_public_key: str, transfers: TransferSlot) -> None:
        self.store = store
        self.hub_public_key = hub_public_key
        self.transfers = transfers

    def install_received(self, desired: DesiredState, received: Received) -> None:
        """Verify and install the bytes of a completed transfer, then use them."""
        ref, data, target = received.ref, received.data, received.target
        try:
            verify_model(ref, data, self.hub_public_key)
        except VerificationError as exc:
            target.report(desired, "failed", f"verification failed: {exc}", len(data))
            return
        target.report(desired, "verified", None, len(data))
        try:
            self.store.install(ref, data)
        except (OSError, ValueError) as exc:
            target.report(desired, "failed", f"cannot install the model: {exc}")
            return
        target.use(desired, ref, len(data))

    def install_held_copy(self, desired: DesiredState, ref: ModelRef, target: Target) -> bool:
        """Install `ref` from another installed version with the same bytes, then use it. False
        when the store holds no such file (or it cannot be read): the caller transfers it. A ref
        that fails verification against the file is reported failed, exactly as it would have
        been after a transfer."""
        local = self.store.find_sha256(ref.sha256, exclude=ref.version_id)
        if local is None:
            return False
        try:
            data = local.path.read_bytes()
        except OSError as exc:
            log.warning("cannot read version %s's model file (%s): fetching", local.version_id, exc)
            return False
        if self.transfers.sha256 == ref.sha256.lower():
            self.transfers.abandon()  # a shadow's transfer of these bytes: not needed now
        try:
            verify_model(ref, data, self.hub_public_key)
        except VerificationError as exc:
            target.report(desired, "failed", f"verification failed: {exc}", 0)
            return True
        log.info(
            "version %s has the bytes of installed version %s: installing it without a transfer",
            ref.version_id,
            local.version_id,
        )
        target.report(desired, "verified", None, 0)
        try:
            self.store.install_file(ref, local.path)
        except (OSError, ValueError) as exc:
            target.report(desired, "failed", f"cannot install the model: {exc}", 0)
            return True
        target.use(desired, ref, 0)
        return True


class ModelActivation:
    """The deployment's model as a `Target`: reported as the deployment, activated when
    installed."""

    role: Role = "model"

    def __init__(
        self,
        manager: ModelManager,
        store: ModelStore,
        reporter: Reporter,
        *,
        on_active_change: Callable[[], None],
        then: Callable[[DesiredState], None],
    ) -> None:
        self.manager = manager
        self.store = store
        self.reporter = reporter
        self._on_active_change = on_active_change
        self._then = then  # once the model is active: the shadow follows

    def report(
        self,
        desired: DesiredState,
        state: DeploymentState,
        reason: str | None,
        received: int | None = None,
    ) -> None:
        self.reporter.model(desired, state, reason, received)

    def use(self, desired: DesiredState, ref: ModelRef, received: int | None) -> None:
        """Activate the installed desired model (`desired.model`, whose bytes `ref` are);
        `received` is the bytes transferred for it (0 when it was installed from the store),
        reported with the outcome."""
        model = desired.model
        assert model is not None
        installed = self.store.get(model.version_id)
        if installed is None:
            self.report(desired, "failed", "the installed model disappeared", received)
            return
        try:
            self.manager.activate(installed, probation=desired.probation)
        except ActivationError as exc:
            self.report(desired, "failed", exc.reason, received)
            return
        self.report(desired, "active", None, received)
        self._on_active_change()
        try:
            self.store.prune(protect=[desired.shadow.version_id] if desired.shadow else [])
        except OSError as exc:
            log.warning("cannot prune old models: %s", exc)
        self._then(desired)
