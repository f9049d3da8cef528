"""The one model transfer in progress (`edge_agent.transfer.Transfer`) and what it is for (the
deployment's model or its shadow), and the partial downloads kept in `transfers/`.

A transfer forgotten without being discarded (`release`) leaves its bytes on disk, so a new
transfer of the same bytes (a new deployment, a shadow that became the model) resumes from them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import TransferSettings
from edge_agent.core.wire import DesiredState, FetchRequest, ModelRef
from edge_agent.deploy.target import Role, Target
from edge_agent.transfer import Transfer, TransferFailed

__all__ = ["Received", "TransferSlot"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Fetch:
    transfer: Transfer
    target: Target


@dataclass(frozen=True)
class Received:
    """A completed transfer's bytes (not verified yet)."""

    target: Target
    ref: ModelRef
    data: bytes


class TransferSlot:
    """Driven by the deployer's thread; `snapshot` may be called from any thread."""

    def __init__(
        self,
        directory: Path,
        settings: TransferSettings,
        send_fetch: Callable[[FetchRequest], bool],
    ) -> None:
        self.directory = directory
        self.settings = settings
        self._send_fetch = send_fetch
        self._fetch: _Fetch | None = None

    @property
    def sha256(self) -> str | None:
        """The digest of the bytes being transferred (None when nothing is)."""
        fetch = self._fetch
        return fetch.transfer.sha256 if fetch is not None else None

    @property
    def role(self) -> Role | None:
        fetch = self._fetch
        return fetch.target.role if fetch is not None else None

    def start(self, ref: ModelRef, desired: DesiredState, target: Target) -> None:
        """Transfer `ref` for `target` (reported "transferring" with what is already held)."""
        transfer = Transfer(
            ref,
            desired.deployment_id or 0,
            self.directory,
            self.settings,
            self._send_fetch,
        )
        self._fetch = _Fetch(transfer, target)
        target.report(desired, "transferring", None, transfer.resumed_bytes)
        transfer.pump()

    def already_fetching(self, sha256: str, deployment_id: int | None, role: Role) -> bool:
        """Whether `sha256` is being transferred for this deployment and role."""
        fetch = self._fetch
        return (
            fetch is not None
            and fetch.transfer.sha256 == sha256
            and fetch.target.role == role
            and fetch.transfer.deployment_id == (deployment_id or 0)
        )

    def release(self, sha256: str, roles: tuple[Role, ...]) -> None:
        """Forget the transfer of `sha256` for one of `roles`, keeping the bytes it holds."""
        fetch = self._fetch
        if fetch is not None and fetch.transfer.sha256 == sha256 and fetch.target.role in roles:
            self._fetch = None

    def abandon(self, keep: str | None = None, role: Role | None = None) -> None:
        """Stop the transfer in progress (unless it is of `keep`, or not for `role` when one is
        named) and forget its bytes."""
        fetch = self._fetch
        if fetch is None or fetch.transfer.sha256 == keep:
            return
        if role is not None and fetch.target.role != role:
            return
        log.info("abandoning the transfer of %s…", fetch.transfer.sha256[:12])
        fetch.transfer.discard()
        self._fetch = None

    def remove_stale_partials(self, keep: str) -> None:
        """Partial downloads of models no longer desired (a superseded deployment)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if not path.name.startswith(keep):
                log.info("removing a stale partial download %s", path.name)
                path.unlink(missing_ok=True)

    def on_chunk(self, payload: bytes, desired: DesiredState) -> Received | None:
        """Take a chunk: the transfer's bytes once it is complete; None before that, or when
        the transfer failed (reported to its target) or none is in progress."""
        fetch = self._fetch
        if fetch is None:
            return None
        transfer = fetch.transfer
        try:
            transfer.on_chunk(payload)
        except TransferFailed as exc:
            self._fetch = None
            transfer.discard()
            reason = f"transfer failed: {exc}"
            fetch.target.report(desired, "failed", reason, transfer.received_bytes)
            return None
        if not transfer.complete:
            return None
        self._fetch = None
        data = transfer.read()
        transfer.discard()
        return Received(fetch.target, transfer.ref, data)

    def reconnected(self) -> None:
        if self._fetch is not None:
            self._fetch.transfer.reconnected()

    def tick(self) -> None:
        if self._fetch is not None:
            self._fetch.transfer.tick()

    def snapshot(self) -> dict[str, Any] | None:
        """The transfer's progress (for /v1/status); None when nothing is transferred."""
        fetch = self._fetch
        if fetch is None:
            return None
        transfer = fetch.transfer
        return {
            "role": fetch.target.role,
            "version_id": transfer.ref.version_id,
            "received_bytes": transfer.received_bytes,
            "size": transfer.size,
            "good_offset": transfer.good_offset,
            "resumed_from": transfer.resumed_bytes,
        }
