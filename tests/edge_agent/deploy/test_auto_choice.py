"""`--artifact auto` on the device: the deployer fetches, verifies and measures the candidate
artifacts of an `auto` desired state, publishes the table, and runs the one `fastest_variant`
picks from what it measured.

Real ModelStore, ModelManager and Deployer (its thread); the hub's side is played here: refs
signed with a real hub key, and fetches answered with real chunks fed to the deployer. The
candidates are real artifacts whose speeds differ on this machine: a scikit-learn MLP on digits
in fp32 and its int8 twins (dynamic and static quantization; with two 1024-wide layers the int8
ones ran about 1.7x faster than fp32 here, single rows). Which one is faster is a benchmark's
business: the tests assert that the choice follows what was measured.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from cloud_hub.registry.signing import HubSigner
from converters import quantize_onnx, sklearn_to_onnx
from edge_agent.config import AgentSettings, TransferSettings
from edge_agent.core.variant_bench import thread_choices
from edge_agent.core.wire import (
    AutoChoice,
    Chunk,
    DesiredState,
    FetchRequest,
    ModelRef,
    ProbationPolicy,
    Report,
    VariantReport,
    fastest_variant,
)
from edge_agent.deployer import Deployer
from edge_agent.model_manager import ModelManager
from edge_agent.model_store import ModelStore
from tests.waiting import wait_until

DEVICE = "pi-auto"
VERSION = 5
THREADS = [1, 2]


@dataclass(frozen=True)
class Artifacts:
    fp32: bytes
    dynamic: bytes
    static: bytes
    other: bytes  # another network (its bytes differ): the tampered candidate's


@pytest.fixture(scope="module")
def artifacts() -> Artifacts:
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence: its accuracy is not the point
        clf = MLPClassifier((1024, 1024), max_iter=3, random_state=0).fit(X, y)
        other = MLPClassifier((32,), max_iter=20, random_state=1).fit(X, y)
    fp32 = sklearn_to_onnx(clf, 64)
    return Artifacts(
        fp32=fp32,
        dynamic=quantize_onnx(fp32, X[:200], method="dynamic").data,
        static=quantize_onnx(fp32, X[:200], method="static").data,
        other=sklearn_to_onnx(other, 64),
    )


@dataclass
class Hub:
    """The hub's side: signed refs, the bytes it serves by sha256, what the device sent."""

    signer: HubSigner
    blobs: dict[str, bytes] = field(default_factory=dict)
    fetches: list[FetchRequest] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    variants: list[VariantReport] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ref(
        self, data: bytes, version_id: int, precision: str, *, key: HubSigner | None = None
    ) -> ModelRef:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        signer = key or self.signer
        return ModelRef(
            version_id=version_id,
            ref=f"demo/digits:{version_id}",
            format="onnx",
            precision=precision,  # type: ignore[arg-type]
            sha256=sha,
            size=len(data),
            signature=signer.sign_model(version_id, sha, len(data), "onnx"),
        )

    def fetched(self) -> set[str]:
        with self.lock:
            return {f.sha256 for f in self.fetches}

    def count(self, deployment_id: int, state: str) -> int:
        with self.lock:
            return sum(r.deployment_id == deployment_id and r.state == state for r in self.reports)

    def states(self, deployment_id: int) -> list[str]:
        with self.lock:
            return [r.state for r in self.reports if r.deployment_id == deployment_id]

    def wait_count(self, deployment_id: int, state: str, at_least: int) -> None:
        wait_until(
            lambda: self.count(deployment_id, state) >= at_least,
            60,
            f"{at_least} {state!r} reports of deployment {deployment_id} "
            f"(have {self.states(deployment_id)})",
        )

    def wait_variants(self, at_least: int) -> VariantReport:
        def got() -> VariantReport | None:
            with self.lock:
                return self.variants[at_least - 1] if len(self.variants) >= at_least else None

        report: VariantReport = wait_until(got, 120, f"variant report #{at_least}")
        return report


@dataclass
class Device:
    settings: AgentSettings
    store: ModelStore
    manager: ModelManager
    deployer: Deployer


class Fleet:
    """The hub and the device's parts; `restart` builds a new device on the same data_dir."""

    def __init__(self, data_dir: Path, hub: Hub) -> None:
        self.data_dir = data_dir
        self.hub = hub
        self.device = self._device()

    def _device(self) -> Device:
        settings = AgentSettings(
            device_id=DEVICE,
            data_dir=self.data_dir,
            hub_public_key=self.hub.signer.public_key_b64,
            transfer=TransferSettings(chunk_size=256 * 1024, window=8),
        )
        store = ModelStore(self.data_dir / "store", keep=5)
        holder: dict[str, Deployer] = {}
        manager = ModelManager(store, on_event=lambda e: holder["d"].on_model_event(e))
        manager.restore()
        deployer = Deployer(
            settings,
            manager,
            store,
            publish_report=self._on_report,
            send_fetch=self._answer,
            publish_variants=self._on_variants,
            hardware="test-box",
        )
        holder["d"] = deployer
        deployer.start()
        return Device(settings, store, manager, deployer)

    def restart(self) -> None:
        self.device.deployer.stop()
        self.device = self._device()

    def stop(self) -> None:
        self.device.deployer.stop()

    def desired(self, deployment_id: int, model: ModelRef, **kw: Any) -> DesiredState:
        state = DesiredState(
            device_id=DEVICE,
            deployment_id=deployment_id,
            model=model,
            probation=ProbationPolicy(window_s=0),
            **kw,
        )
        self.device.deployer.on_desired(state.dumps())
        return state

    def auto(self, deployment_id: int, candidates: list[ModelRef]) -> DesiredState:
        choice = AutoChoice(candidates=candidates, threads=THREADS, warmup_runs=2, timed_runs=5)
        return self.desired(deployment_id, candidates[0], auto=choice)

    # the hub's answers (on the deployer's thread: chunks are queued to it)
    def _answer(self, request: FetchRequest) -> bool:
        with self.hub.lock:
            self.hub.fetches.append(request)
        whole = self.hub.blobs[request.sha256]
        data = whole[request.offset : request.offset + request.length]
        chunk = Chunk(request.deployment_id, request.sha256, request.offset, len(whole), data)
        self.device.deployer.on_chunk(chunk.encode())
        return True

    def _on_report(self, report: Report) -> None:
        with self.hub.lock:
            self.hub.reports.append(report)

    def _on_variants(self, report: VariantReport) -> None:
        VariantReport.loads(report.dumps())  # what goes on the wire validates
        with self.hub.lock:
            self.hub.variants.append(report)


@pytest.fixture
def hub(signer: HubSigner) -> Hub:
    return Hub(signer)


@pytest.fixture
def fleet(tmp_path: Path, hub: Hub) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path / "data", hub)
    try:
        yield fleet
    finally:
        fleet.stop()


def trials(fleet: Fleet) -> list[Path]:
    """The trial files on the device (removed just after the outcome is reported, so wait)."""
    directory = fleet.data_dir / "trials"
    return sorted(directory.iterdir()) if directory.is_dir() else []


def test_the_device_runs_the_fastest_candidate_it_measured_and_keeps_the_choice(
    fleet: Fleet, hub: Hub, artifacts: Artifacts
) -> None:
    # Deployment 1 runs the same fp32 network as version 1: those bytes are already held.
    v1 = hub.ref(artifacts.fp32, 1, "fp32")
    fleet.device.store.install(v1, artifacts.fp32)
    fleet.desired(1, v1)
    hub.wait_count(1, "active", 1)

    fp32 = hub.ref(artifacts.fp32, VERSION, "fp32")
    dynamic = hub.ref(artifacts.dynamic, VERSION, "int8")
    static = hub.ref(artifacts.static, VERSION, "int8")
    tampered = hub.ref(artifacts.other, VERSION, "fp32", key=HubSigner.generate())
    candidates = [fp32, dynamic, static, tampered]
    order = [c.sha256 for c in candidates]
    fleet.auto(2, candidates)

    report = hub.wait_variants(1)
    hub.wait_count(2, "active", 1)
    device = fleet.device

    # Every candidate at every thread count worth trying here is in the table.
    threads = thread_choices(THREADS)
    assert sorted((t.sha256, t.threads) for t in report.timings) == sorted(
        (c.sha256, n) for c in candidates for n in threads
    )
    assert report.device_id == DEVICE and report.deployment_id == 2
    assert report.version_id == VERSION and report.hardware == "test-box"
    bad = [t for t in report.timings if t.sha256 == tampered.sha256]
    assert all(t.error and "verification failed" in t.error and t.p50_ms is None for t in bad)
    good = [t for t in report.timings if t.sha256 != tampered.sha256]
    assert all(t.error is None and t.p50_ms is not None and t.runs >= 5 for t in good)

    # The choice is what the rule makes of the published measurements, and it runs.
    chosen = fastest_variant(report.timings, order=order)
    assert chosen is not None and chosen.sha256 != tampered.sha256
    assert (report.chosen_sha256, report.chosen_threads) == (chosen.sha256, chosen.threads)
    active = device.manager.active
    assert active is not None and active.version_id == VERSION
    assert active.ref.sha256 == chosen.sha256
    assert device.manager.threads == chosen.threads

    # Held bytes were not fetched; every other candidate was, once; nothing is left in trials/.
    assert hub.fetched() == {dynamic.sha256, static.sha256, tampered.sha256}
    assert hub.count(2, "transferring") == 3
    assert hub.states(2)[-2:] == ["verified", "active"]
    assert "failed" not in hub.states(2)
    wait_until(lambda: trials(fleet) == [], 10, "the trial files removed")
    shown = device.deployer.snapshot()["variants"]
    assert shown["chosen_sha256"] == chosen.sha256 and shown["chosen_threads"] == chosen.threads
    assert len(shown["timings"]) == len(report.timings)

    # Delivered again (a reconnect): the saved report again, nothing fetched nor measured.
    fetches = len(hub.fetches)
    fleet.auto(2, candidates)
    again = hub.wait_variants(2)
    assert again == report
    hub.wait_count(2, "active", 2)
    assert len(hub.fetches) == fetches

    # The hub's republish without `auto`: the chosen artifact is simply the active model.
    fleet.desired(2, device.manager.active.ref, threads=chosen.threads)  # type: ignore[union-attr]
    hub.wait_count(2, "active", 3)
    assert len(hub.fetches) == fetches and len(hub.variants) == 2

    # A restart keeps the choice: the retained auto state is answered from deploy.json.
    fleet.restart()
    restored = fleet.device.manager.active
    assert restored is not None and restored.ref.sha256 == chosen.sha256
    assert fleet.device.manager.threads == chosen.threads
    fleet.auto(2, candidates)
    assert hub.wait_variants(3) == report
    hub.wait_count(2, "active", 4)
    assert len(hub.fetches) == fetches
    assert fleet.device.manager.active.ref.sha256 == chosen.sha256  # type: ignore[union-attr]


def test_with_no_candidate_measured_the_default_pick_is_pursued(
    fleet: Fleet, hub: Hub, artifacts: Artifacts
) -> None:
    # Signed, but not models: both verify and neither loads.
    default = hub.ref(b"not a model at all", VERSION, "fp32")
    other = hub.ref(b"nor is this one", VERSION, "int8")
    fleet.auto(3, [default, other])

    report = hub.wait_variants(1)
    assert report.chosen_sha256 is None and report.chosen_threads is None
    assert all(t.error and t.error.startswith("cannot load") for t in report.timings)
    hub.wait_count(3, "failed", 1)  # the default pick, activated from its trial bytes, fails
    assert fleet.device.manager.active is None
    assert hub.fetched() == {default.sha256, other.sha256}
    wait_until(lambda: trials(fleet) == [], 10, "the trial files removed")


def test_a_newer_desired_state_stops_the_measuring(
    fleet: Fleet, hub: Hub, artifacts: Artifacts
) -> None:
    fp32 = hub.ref(artifacts.fp32, VERSION, "fp32")
    dynamic = hub.ref(artifacts.dynamic, VERSION, "int8")
    v6 = hub.ref(artifacts.other, 6, "fp32")
    fleet.auto(4, [fp32, dynamic])
    fleet.desired(5, v6)  # queued behind it: handled once deployment 4 is measured or stopped
    hub.wait_count(5, "active", 1)
    active = fleet.device.manager.active
    assert active is not None and active.version_id == 6
    wait_until(lambda: trials(fleet) == [], 10, "the trial files removed")
