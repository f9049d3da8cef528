"""Every deployment step, reported on the `report` topic with the deployment and version ids, and
recorded as the last outcome in `deploy.json` (see `state`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_agent.core.wire import DeploymentState, DesiredState, Report
from edge_agent.deploy.state import DeployStateFile, ShadowOutcome
from edge_agent.model_manager import ModelEvent

__all__ = ["Reporter"]

log = logging.getLogger(__name__)


class Reporter:
    def __init__(
        self, device_id: str, state: DeployStateFile, publish: Callable[[Report], None]
    ) -> None:
        self.device_id = device_id
        self.state = state
        self._publish_report = publish

    def model(
        self,
        desired: DesiredState,
        state: DeploymentState,
        reason: str | None,
        received: int | None = None,
    ) -> None:
        """A step of the desired model (`received`: None keeps what was recorded for it)."""
        ref = desired.model
        self.record(
            desired.deployment_id,
            ref.version_id if ref is not None else None,
            state,
            reason,
            sha256=ref.sha256.lower() if ref is not None else None,
            received=received,
        )

    def rolled_back(self, event: ModelEvent) -> None:
        """The manager rolled a version back: reported against its deployment, when the version
        is the one last recorded."""
        last = self.state.read()
        deployment_id = last.deployment_id if last.version_id == event.version_id else None
        self.record(deployment_id, event.version_id, "rolled_back", event.reason, sha256=None)

    def shadow(
        self,
        desired: DesiredState,
        state: DeploymentState,
        reason: str | None,
        received: int | None = None,
    ) -> None:
        """A step of the desired shadow; its outcomes (active, failed, rolled back) are kept."""
        ref = desired.shadow
        assert ref is not None
        if state in ("failed", "active", "rolled_back"):
            with self.state.editing() as kept:
                kept.shadow = ShadowOutcome(
                    deployment_id=desired.deployment_id,
                    version_id=ref.version_id,
                    sha256=ref.sha256.lower(),
                    state=state,
                    reason=reason,
                )
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

    def reject(self, reason: str) -> None:
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

    def record(
        self,
        deployment_id: int | None,
        version_id: int | None,
        state: DeploymentState,
        reason: str | None,
        *,
        sha256: str | None,
        received: int | None = None,
    ) -> None:
        """Keep and report a model's outcome; a missing sha256 or `received` keeps what was
        recorded for the same version (an acknowledgement, a rollback)."""
        if state == "failed" or state == "rolled_back":
            log.warning("deployment %s version %s %s: %s", deployment_id, version_id, state, reason)
        else:
            log.info("deployment %s version %s %s", deployment_id, version_id, state)
        with self.state.editing() as kept:
            if kept.version_id == version_id:
                if sha256 is None:
                    sha256 = kept.sha256
                if received is None:
                    received = kept.received_bytes
            kept.deployment_id = deployment_id
            kept.version_id = version_id
            kept.sha256 = sha256
            kept.state = state
            kept.reason = reason
            kept.received_bytes = received
        self._publish(
            Report(
                device_id=self.device_id,
                deployment_id=deployment_id,
                version_id=version_id,
                state=state,
                reason=reason,
                received_bytes=received,
            )
        )

    def _publish(self, report: Report) -> None:
        try:
            self._publish_report(report)
        except Exception:
            log.exception("cannot publish a report")
