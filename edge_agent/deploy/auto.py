"""`--artifact auto`: an `auto` deployment's candidate artifacts, measured on this device, and the
one chosen to run.

A desired state with `auto` that this device has not measured yet starts a trial: each candidate
in turn is taken from bytes already held (a trial file left by an interrupted trial, or a store
file with its sha256), else transferred as a model is (reported "transferring" with that
candidate's bytes), and verified exactly as a model is (size, sha256, the hub's signature).
Verified bytes are kept in `trials/{sha256}.{format}`, never in the store (which keeps one file
per version, and the candidates are one version). A candidate that fails its transfer or its
verification is left out, its error kept for the table. Once every candidate is in, each one
verified is measured at every thread count worth trying here (`variant_bench`, on the deployer's
thread: the active model keeps serving), the fastest is chosen with `wire.fastest_variant` in
the hub's order, the table and the choice are saved in `deploy.json` (`state.VariantChoice`)
and published (`variants`), and the deployer follows the desired state with the chosen artifact
as its model and the chosen threads (`effective`): it installs it from the trial file and
activates it as any model, then the trial files go. No candidate measured: the choice is None
and the hub's default pick (`desired.model`) runs.

A deployment already measured (its saved choice: same deployment, version and candidates) is
not measured again: its VariantReport is published again and the saved choice followed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.core.fs import write_atomic
from edge_agent.core.variant_bench import Candidate, measure_candidates, thread_choices
from edge_agent.core.wire import (
    DeploymentState,
    DesiredState,
    ModelRef,
    VariantReport,
    VariantTiming,
    fastest_variant,
)
from edge_agent.deploy.install import Installer
from edge_agent.deploy.reports import Reporter
from edge_agent.deploy.state import DeployStateFile, VariantChoice
from edge_agent.deploy.target import Role, Target
from edge_agent.deploy.transfers import Received, TransferSlot
from edge_agent.model_store import ModelStore
from edge_agent.signing import VerificationError, verify_model

__all__ = ["VariantChooser", "effective"]

log = logging.getLogger(__name__)

_ERROR_CHARS = 500  # VariantTiming.error's limit


def _shas(desired: DesiredState) -> list[str]:
    auto = desired.auto
    return [] if auto is None else [c.sha256.lower() for c in auto.candidates]


def effective(desired: DesiredState, report: VariantReport) -> DesiredState:
    """The desired state to follow once `report` chose: the chosen candidate as the model, run
    with the chosen threads (the hub's default pick and threads when nothing was chosen)."""
    auto = desired.auto
    chosen = None
    if auto is not None and report.chosen_sha256 is not None:
        chosen = next(
            (c for c in auto.candidates if c.sha256.lower() == report.chosen_sha256), None
        )
    if chosen is None or report.chosen_threads is None:
        return desired.model_copy(update={"auto": None})
    return desired.model_copy(
        update={"model": chosen, "threads": report.chosen_threads, "auto": None}
    )


@dataclass
class _Trial:
    desired: DesiredState
    pending: list[ModelRef]
    kept: dict[str, Candidate] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    current: ModelRef | None = None  # being transferred


class VariantChooser:
    """The trial of an `auto` deployment, as the `Target` of its candidates' transfers (role
    "trial"). Driven by the deployer's thread; `snapshot` may be called from any thread."""

    role: Role = "trial"

    def __init__(
        self,
        device_id: str,
        hardware: str,
        directory: Path,
        store: ModelStore,
        hub_public_key: str,
        transfers: TransferSlot,
        reporter: Reporter,
        state_file: DeployStateFile,
        *,
        publish_variants: Callable[[VariantReport], None],
        then: Callable[[DesiredState], None],
    ) -> None:
        self.device_id = device_id
        self.hardware = hardware
        self.directory = directory
        self.store = store
        self.hub_public_key = hub_public_key
        self.transfers = transfers
        self.reporter = reporter
        self.state_file = state_file
        self._publish_variants = publish_variants
        self._then = then  # follow the desired state with the chosen artifact
        self._trial: _Trial | None = None

    # -- the saved choice -----------------------------------------------------------------------
    def saved(self, desired: DesiredState) -> VariantChoice | None:
        """This deployment's saved choice (same deployment, version and candidates), if any."""
        choice = self.state_file.read().variants
        model = desired.model
        if (
            choice is None
            or model is None
            or choice.deployment_id != desired.deployment_id
            or choice.report.version_id != model.version_id
            or choice.candidates != _shas(desired)
        ):
            return None
        return choice

    def follow_saved(self, desired: DesiredState, choice: VariantChoice) -> DesiredState:
        """Publish the saved report again (the hub may have missed it) and give the desired
        state to follow."""
        log.info(
            "deployment %s was measured before: running %s with %s threads",
            desired.deployment_id,
            (choice.report.chosen_sha256 or "the default pick")[:12],
            choice.report.chosen_threads,
        )
        self._publish(choice.report)
        return effective(desired, choice.report)

    # -- the trial ------------------------------------------------------------------------------
    def measuring(self, desired: DesiredState) -> bool:
        """Whether a trial of this very deployment and candidates is under way."""
        trial = self._trial
        return (
            trial is not None
            and trial.desired.deployment_id == desired.deployment_id
            and _shas(trial.desired) == _shas(desired)
        )

    def begin(self, desired: DesiredState) -> None:
        """Start the trial of `desired`'s candidates (any other transfer stops; one of a
        candidate's bytes keeps what it holds, to resume)."""
        assert desired.auto is not None
        self.cancel()
        held = self.transfers.sha256
        if held is not None and held in _shas(desired):
            self.transfers.release(held, roles=("model", "shadow", "trial"))
        self.transfers.abandon()
        log.info(
            "deployment %s: measuring %d candidate artifacts of version %s",
            desired.deployment_id,
            len(desired.auto.candidates),
            desired.auto.candidates[0].version_id,
        )
        self._trial = _Trial(desired, list(desired.auto.candidates))
        self._advance()

    def cancel(self, keep: str | None = None) -> None:
        """Stop a trial in progress (a newer desired state): its transfer stops, keeping its
        bytes when they are `keep`'s (the new model), and its trial files go."""
        trial, self._trial = self._trial, None
        if trial is None:
            return
        log.info("deployment %s: measuring stopped", trial.desired.deployment_id)
        if trial.current is not None and trial.current.sha256.lower() == keep:
            self.transfers.release(keep, roles=("trial",))
        self.transfers.abandon(role="trial")
        self.discard_trials()

    def on_received(self, received: Received) -> None:
        """A candidate's transfer is complete: verify it, keep it, go on with the next."""
        trial = self._trial
        if trial is None or trial.current is None:
            return
        trial.current = None
        self._check(trial, received.ref, received.data, None)
        self._advance()

    # -- as a target ----------------------------------------------------------------------------
    def report(
        self,
        desired: DesiredState,
        state: DeploymentState,
        reason: str | None,
        received: int | None = None,
    ) -> None:
        """A candidate's transfer started ("transferring", reported with that candidate's bytes)
        or failed (kept for the table; the trial goes on with the next candidate)."""
        trial = self._trial
        if trial is None:
            return
        if state != "failed":
            self.reporter.model(desired, state, reason, received)
            return
        ref, trial.current = trial.current, None
        if ref is not None:
            log.warning("candidate %s… cannot be measured: %s", ref.sha256[:12], reason)
            trial.errors[ref.sha256.lower()] = (reason or "failed")[:_ERROR_CHARS]
        self._advance()

    def use(self, desired: DesiredState, ref: ModelRef, received: int | None) -> None:
        """Candidates are never installed by a transfer (`on_received` keeps them)."""

    # -- installing the chosen one --------------------------------------------------------------
    def install_from_trial(
        self, desired: DesiredState, ref: ModelRef, installer: Installer, target: Target
    ) -> bool:
        """Install `ref` from its trial file (verified again, as after a transfer) and use it;
        False when there is no such file."""
        path = self._trial_path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cannot read the trial file %s (%s): fetching", path.name, exc)
            return False
        installer.install_received(desired, Received(target, ref, data))
        return True

    def discard_trials(self) -> None:
        """Remove the trial files (unless a trial is under way)."""
        if self._trial is not None or not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            path.unlink(missing_ok=True)

    def snapshot(self) -> dict[str, Any] | None:
        """The trial under way (for /v1/status); None when none is."""
        trial = self._trial
        if trial is None or trial.desired.auto is None:
            return None
        return {
            "deployment_id": trial.desired.deployment_id,
            "candidates": len(trial.desired.auto.candidates),
            "verified": len(trial.kept),
            "failed": len(trial.errors),
        }

    # -- steps ----------------------------------------------------------------------------------
    def _trial_path(self, ref: ModelRef) -> Path:
        return self.directory / f"{ref.sha256.lower()}.{ref.format}"

    def _advance(self) -> None:
        """Gather the next candidate (from bytes held, else by a transfer); measure and choose
        once all are in."""
        trial = self._trial
        if trial is None or trial.current is not None:
            return
        while trial.pending:
            ref = trial.pending.pop(0)
            held = self._held(ref)
            if held is not None:
                self._check(trial, ref, held[1], held[0])
                continue
            trial.current = ref
            sha = ref.sha256.lower()
            self.transfers.remove_stale_partials(keep=sha)
            self.transfers.start(ref, trial.desired.model_copy(update={"model": ref}), self)
            return
        self._finish(trial)

    def _held(self, ref: ModelRef) -> tuple[Path, bytes] | None:
        """A candidate's bytes already on the device: a trial file, else a store file."""
        path = self._trial_path(ref)
        if not path.is_file():
            local = self.store.find_sha256(ref.sha256)
            if local is None:
                return None
            path = local.path
        try:
            return path, path.read_bytes()
        except OSError as exc:
            log.warning("cannot read %s (%s): fetching it", path.name, exc)
            return None

    def _check(self, trial: _Trial, ref: ModelRef, data: bytes, path: Path | None) -> None:
        """Verify a candidate's bytes as a model's; keep them in a trial file when they are
        not in a file already."""
        sha = ref.sha256.lower()
        try:
            verify_model(ref, data, self.hub_public_key)
        except VerificationError as exc:
            log.warning("candidate %s… rejected: verification failed: %s", sha[:12], exc)
            trial.errors[sha] = f"verification failed: {exc}"[:_ERROR_CHARS]
            if path is not None and path.parent == self.directory:
                path.unlink(missing_ok=True)
            return
        if path is None:
            path = self._trial_path(ref)
            try:
                write_atomic(path, data)
            except OSError as exc:
                trial.errors[sha] = f"cannot keep the candidate: {exc}"[:_ERROR_CHARS]
                return
        trial.kept[sha] = Candidate(
            model=path, format=ref.format, precision=ref.precision, sha256=sha
        )

    def _finish(self, trial: _Trial) -> None:
        """Measure every verified candidate, choose, save and publish, then follow the choice."""
        auto = trial.desired.auto
        model = trial.desired.model
        assert auto is not None and model is not None
        threads = thread_choices(auto.threads)
        timings: list[VariantTiming] = []
        for ref in auto.candidates:
            sha = ref.sha256.lower()
            candidate = trial.kept.get(sha)
            if candidate is None:
                error = trial.errors.get(sha, "not fetched")
                timings.extend(
                    VariantTiming(
                        sha256=sha,
                        format=ref.format,
                        precision=ref.precision,
                        threads=n,
                        error=error,
                    )
                    for n in threads
                )
                continue
            timings.extend(
                measure_candidates(
                    [candidate],
                    threads,
                    warmup_runs=auto.warmup_runs,
                    timed_runs=auto.timed_runs,
                )
            )
        chosen = fastest_variant(timings, order=_shas(trial.desired))
        report = VariantReport(
            device_id=self.device_id,
            deployment_id=trial.desired.deployment_id or 0,
            version_id=model.version_id,
            hardware=self.hardware[:256],
            cpu_count=min(os.cpu_count() or 1, 4096),
            timings=timings,
            chosen_sha256=None if chosen is None else chosen.sha256,
            chosen_threads=None if chosen is None else chosen.threads,
        )
        if chosen is None:
            log.warning(
                "deployment %s: no candidate could be measured; running the default pick",
                trial.desired.deployment_id,
            )
        else:
            log.info(
                "deployment %s: chose %s/%s %s… with %d threads (p50 %s ms)",
                trial.desired.deployment_id,
                chosen.format,
                chosen.precision,
                chosen.sha256[:12],
                chosen.threads,
                chosen.p50_ms,
            )
        with self.state_file.editing() as kept:
            kept.variants = VariantChoice(
                deployment_id=trial.desired.deployment_id,
                candidates=_shas(trial.desired),
                report=report,
            )
        self._trial = None
        self._publish(report)
        self._then(effective(trial.desired, report))

    def _publish(self, report: VariantReport) -> None:
        try:
            self._publish_variants(report)
        except Exception:
            log.exception("cannot publish the variant report")
