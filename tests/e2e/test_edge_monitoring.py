"""Monitoring at the edge, end to end: a real agent process serving a digits model the hub
trained, its inference logs forwarded over Mosquitto to the hub's fleet service, and the hub's
monitor computing the device's window (latency, answers, input drift against the training
baseline) and raising a per-device alert when the device's inputs drift.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.fleet.schemas import DeploymentCreate
from cloud_hub.monitoring import Monitor, WindowReader
from cloud_hub.training.request import TrainRequest
from tests.cloud_hub.serving.conftest import digits_rows
from tests.e2e.test_fleet_loop import Fleet
from tests.waiting import wait_until

DEVICE = "cam-edge"


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: tuple[str, int]) -> Iterator[Fleet]:
    made = Fleet(tmp_path, mosquitto)
    try:
        yield made
    finally:
        made.close()


def _send(fleet: Fleet, rows: np.ndarray, stored_before: int) -> None:
    agent = fleet.agents[DEVICE]
    for start in range(0, len(rows), 20):
        code, body = agent.predict(rows[start : start + 20].tolist())
        assert code == 200, body
    wait_until(
        lambda: len(fleet.logs_at_hub(DEVICE)) >= stored_before + len(rows),
        60,
        "the device's logs at the hub",
    )


def test_a_devices_drift_raises_a_per_device_alert(fleet: Fleet) -> None:
    fleet.start_service()
    run = fleet.hub.pipeline().start(
        TrainRequest(
            project="edge", dataset="digits", model_type="logreg", formats=["onnx"], quantize=False
        )
    )
    assert run.status == "succeeded", run.error
    version = fleet.hub.registry.get_version_by_id(run.version_id or 0)
    fleet.add_agent(DEVICE)
    fleet.hub.fleet.deployments.create(DeploymentCreate(version=str(version.id), device=DEVICE))
    fleet.wait_active(version, DEVICE, timeout=60)

    x, _ = digits_rows()
    normal = x[np.random.default_rng(0).permutation(len(x))[:300]]
    _send(fleet, normal, 0)
    reader = WindowReader(fleet.hub.db, max_records=300)
    window = reader.window("device", DEVICE, window_s=600)
    assert window.count == 300 and window.requests == 300 and window.error_rate == 0
    assert 0 < window.latency_ms["p50"] <= window.latency_ms["p90"] <= window.latency_ms["p99"]
    assert sum(window.output.values()) == pytest.approx(1.0) and len(window.output) == 10
    assert window.versions == {str(version.id): 300}
    assert window.output_shift is not None and window.output_shift < 0.15
    assert window.drift is not None, window.notes  # the agent's logs carry features
    assert window.drift.samples == 300 and window.drift.psi_max < 0.15
    monitor = Monitor(fleet.hub.db, max_records=300)
    assert [e for e in monitor.evaluate() if e.alert.scope == "device"] == []

    # the camera now sees noise: the device's window drifts and the device rule fires
    noise = np.random.default_rng(1).random((300, 64)).astype(np.float32)
    _send(fleet, noise, 300)
    events = [e for e in monitor.evaluate() if e.alert.scope == "device"]
    assert [(e.event, e.alert.metric, e.alert.target) for e in events] == [
        ("opened", "psi_max", DEVICE)
    ]
    assert events[0].alert.value > 1.0

    # and back to normal: resolved
    _send(fleet, normal, 600)
    events = [e for e in monitor.evaluate() if e.alert.scope == "device"]
    assert [(e.event, e.alert.target) for e in events] == [("resolved", DEVICE)]
