"""The deployer's shadow, in-process: a shadow only ever runs beside its deployment's active model.

Real ModelStore, ModelManager and Deployer (with its thread), fed desired states directly; the
models are installed in the store beforehand (as a verified transfer would leave them), so no
transfer is involved. Reports go to a list.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cloud_hub.registry.signing import HubSigner
from converters import sklearn_to_onnx
from edge_agent.config import AgentSettings
from edge_agent.core.wire import DesiredState, ModelRef, ProbationPolicy, Report
from edge_agent.deployer import Deployer
from edge_agent.model_manager import ModelEvent, ModelManager
from edge_agent.model_store import ModelStore
from tests.edge_agent.conftest import IrisModels
from tests.waiting import wait_until

DEVICE = "pi-shadow"


@pytest.fixture(scope="module")
def third_model() -> bytes:
    X, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(C=0.01, max_iter=500).fit(X.astype(np.float32), y)
    return sklearn_to_onnx(clf, 4)


@dataclass
class Parts:
    store: ModelStore
    manager: ModelManager
    deployer: Deployer
    reports: list[Report]
    lock: threading.Lock
    refs: dict[int, ModelRef]

    def desired(self, deployment_id: int, model: int, shadow: int | None = None, **kw: Any) -> None:
        state = DesiredState(
            device_id=DEVICE,
            deployment_id=deployment_id,
            model=self.refs[model],
            shadow=None if shadow is None else self.refs[shadow],
            **kw,
        )
        self.deployer.on_desired(state.dumps())

    def find(self, deployment_id: int, state: str, role: str = "model") -> Report | None:
        with self.lock:
            return next(
                (
                    r
                    for r in self.reports
                    if r.deployment_id == deployment_id and r.state == state and r.role == role
                ),
                None,
            )

    def wait(self, deployment_id: int, state: str, role: str = "model") -> Report:
        return wait_until(
            lambda: self.find(deployment_id, state, role),
            10,
            f"{role} report {state!r} of deployment {deployment_id}",
        )

    def count(self, deployment_id: int, state: str, role: str = "model") -> int:
        with self.lock:
            return sum(
                r.deployment_id == deployment_id and r.state == state and r.role == role
                for r in self.reports
            )

    def answered_again(self, deployment_id: int, state: str, before: int) -> None:
        """Wait for one more `state` report of the deployment (a desired state handled)."""
        wait_until(
            lambda: self.count(deployment_id, state) > before,
            10,
            f"deployment {deployment_id} answered {state!r} again",
        )


@pytest.fixture
def parts(
    tmp_path: Path, signer: HubSigner, iris_models: IrisModels, third_model: bytes
) -> Iterator[Parts]:
    settings = AgentSettings(
        device_id=DEVICE, data_dir=tmp_path / "data", hub_public_key=signer.public_key_b64
    )
    store = ModelStore(settings.data_dir / "store", keep=5)
    refs: dict[int, ModelRef] = {}
    for version_id, data in ((1, iris_models.a), (2, iris_models.b), (3, third_model)):
        sha = hashlib.sha256(data).hexdigest()
        refs[version_id] = ModelRef(
            version_id=version_id,
            ref=f"demo/iris:{version_id}",
            format="onnx",
            precision="fp32",
            sha256=sha,
            size=len(data),
            signature=signer.sign_model(version_id, sha, len(data), "onnx"),
        )
        store.install(refs[version_id], data)
    reports: list[Report] = []
    lock = threading.Lock()

    def publish(report: Report) -> None:
        with lock:
            reports.append(report)

    holder: dict[str, Deployer] = {}
    manager = ModelManager(store, on_event=lambda e: holder["d"].on_model_event(e))
    deployer = Deployer(
        settings, manager, store, publish_report=publish, send_fetch=lambda _r: False
    )
    holder["d"] = deployer
    deployer.start()
    try:
        yield Parts(store, manager, deployer, reports, lock, refs)
    finally:
        deployer.stop()


X = np.asarray([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
FAILS_AT_ONCE = ProbationPolicy(window_s=60, min_requests=1, max_latency_ms=1e-9)


def test_a_rollback_of_the_active_model_drops_its_shadow(parts: Parts) -> None:
    parts.desired(1, model=1)
    parts.wait(1, "active")
    parts.desired(2, model=2, shadow=3, probation=FAILS_AT_ONCE)
    parts.wait(2, "active")
    parts.wait(2, "active", role="shadow")
    assert parts.manager.shadow is not None and parts.manager.shadow.version_id == 3

    # Version 2 fails its probation on the first request: back to version 1.
    assert parts.manager.predict(X).version_id == 2
    parts.wait(2, "rolled_back")
    assert parts.manager.active is not None and parts.manager.active.version_id == 1
    report = parts.wait(2, "rolled_back", role="shadow")
    assert report.version_id == 3 and report.reason and "rolled back" in report.reason
    assert parts.manager.shadow is None  # not compared with version 1, which nobody asked for
    assert parts.manager.loaded_versions() == [1]

    # The retained desired state, delivered again (a reconnect): still not loaded.
    before = parts.count(2, "rolled_back")
    parts.desired(2, model=2, shadow=3, probation=FAILS_AT_ONCE)
    parts.answered_again(2, "rolled_back", before)
    assert parts.manager.shadow is None


def test_a_shadow_does_not_run_beside_a_model_that_failed_to_activate(parts: Parts) -> None:
    parts.desired(1, model=1, shadow=3)
    parts.wait(1, "active", role="shadow")
    assert parts.manager.shadow is not None and parts.manager.shadow.version_id == 3

    # Deployment 2: a model whose file is damaged on the device, beside the same shadow.
    installed = parts.store.get(2)
    assert installed is not None
    installed.path.write_bytes(b"not the model")
    parts.desired(2, model=2, shadow=3)
    parts.wait(2, "failed")
    assert parts.manager.active is not None and parts.manager.active.version_id == 1
    assert parts.manager.shadow is None  # deployment 2's shadow never had its model active
    assert parts.find(2, "active", role="shadow") is None


def test_the_same_shadow_beside_its_active_model_is_kept_and_a_promotion_takes_it(
    parts: Parts,
) -> None:
    parts.desired(1, model=1, shadow=3)
    parts.wait(1, "active", role="shadow")
    loaded = parts.manager.loaded_versions()
    before = parts.count(1, "active")
    parts.desired(1, model=1, shadow=3)  # delivered again: nothing changes
    parts.answered_again(1, "active", before)
    assert parts.manager.loaded_versions() == loaded == [1, 3]
    parts.desired(2, model=3)  # the promotion
    parts.wait(2, "active")
    assert parts.manager.active is not None and parts.manager.active.version_id == 3
    assert parts.manager.shadow is None
    assert parts.manager.loaded_versions() == [3, 1]  # 1 kept for the probation window


def test_a_late_rollback_event_leaves_a_newer_deployments_shadow_alone(parts: Parts) -> None:
    parts.desired(1, model=2)
    parts.wait(1, "active")
    parts.desired(2, model=1, shadow=3)  # handled before the event of version 2 below
    parts.wait(2, "active", role="shadow")
    parts.deployer.on_model_event(ModelEvent("rolled_back", 2, "late", 1))
    before = parts.count(2, "active")
    parts.desired(2, model=1, shadow=3)  # queued after the event: handled after it
    parts.answered_again(2, "active", before)
    assert parts.manager.shadow is not None and parts.manager.shadow.version_id == 3
    assert parts.find(2, "rolled_back", role="shadow") is None
