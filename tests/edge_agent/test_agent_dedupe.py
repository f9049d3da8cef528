"""Delivery dedupe on a real agent over a real Mosquitto: a version whose bytes the device already
holds (installed for another version) is activated from its store with nothing transferred, still
checked against the new version's signature; different bytes are still fetched."""

from __future__ import annotations

from typing import Any

from tests.edge_agent.conftest import IrisModels
from tests.waiting import wait_until


def _fetches(hub: Any, deployment_id: int) -> int:
    with hub.lock:
        return sum(1 for f in hub.fetches if f.deployment_id == deployment_id)


def _reports(hub: Any, deployment_id: int) -> list[Any]:
    with hub.lock:
        return [r for r in hub.reports if r.deployment_id == deployment_id]


def test_the_same_bytes_as_another_version_are_activated_without_a_transfer(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto)
    data = iris_models.b  # about 20 KB: several chunks
    hub.deploy(hub.ref(data, 1), data, deployment_id=10)
    hub.wait_report(10, "active")
    assert _fetches(hub, 10) >= 2

    hub.deploy(hub.ref(data, 2), data, deployment_id=11)
    hub.wait_report(11, "active")
    assert _fetches(hub, 11) == 0
    reports = _reports(hub, 11)
    assert [r.state for r in reports] == ["verified", "active"], reports
    assert [r.received_bytes for r in reports] == [0, 0]
    code, doc = agent.predict(iris_models.X[:1].tolist())
    assert code == 200 and doc["model_version"] == 2
    deployment = agent.status()["deployment"]
    assert deployment["version_id"] == 2 and deployment["received_bytes"] == 0
    models = agent.data_dir / "store" / "models"
    (one,) = (models / "1").glob("*.onnx")
    (two,) = (models / "2").glob("*.onnx")
    assert one.name == two.name and one.stat().st_ino == two.stat().st_ino  # linked, not copied

    # different bytes are fetched as before
    hub.deploy(hub.ref(iris_models.a, 3), iris_models.a, deployment_id=12)
    hub.wait_report(12, "active")
    assert _fetches(hub, 12) >= 1
    assert [r.state for r in _reports(hub, 12)][:2] == ["transferring", "verified"]
    code, doc = agent.predict(iris_models.X[:1].tolist())
    assert code == 200 and doc["model_version"] == 3


def test_held_bytes_under_a_bad_signature_are_refused_without_a_transfer(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto)
    data = iris_models.a
    hub.deploy(hub.ref(data, 1), data, deployment_id=20)
    hub.wait_report(20, "active")

    forged = hub.ref(data, 2, signature=hub.ref(data, 3).signature)  # signed for version 3
    hub.deploy(forged, data, deployment_id=21)
    report = hub.wait_report(21, "failed")
    assert report.reason is not None and "bad signature" in report.reason, report.reason
    assert _fetches(hub, 21) == 0
    code, doc = agent.predict(iris_models.X[:1].tolist())
    assert code == 200 and doc["model_version"] == 1
    assert not (agent.data_dir / "store" / "models" / "2").exists()


def test_a_shadow_with_held_bytes_is_loaded_without_a_transfer(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto)
    hub.deploy(hub.ref(iris_models.b, 1), iris_models.b, deployment_id=30)
    hub.wait_report(30, "active")
    # version 2 (new bytes) with a shadow, version 3, that holds version 1's bytes
    shadow = (hub.ref(iris_models.b, 3), iris_models.b)
    hub.deploy(hub.ref(iris_models.a, 2), iris_models.a, deployment_id=31, shadow=shadow)

    def shadow_active() -> bool:
        return any(r.role == "shadow" and r.state == "active" for r in _reports(hub, 31))

    wait_until(shadow_active, 15, "the shadow to be active")
    sha = shadow[0].sha256
    with hub.lock:
        shadow_fetches = [f for f in hub.fetches if f.deployment_id == 31 and f.sha256 == sha]
    assert shadow_fetches == [] and _fetches(hub, 31) >= 1  # only version 2 was fetched
    shadow_reports = [r for r in _reports(hub, 31) if r.role == "shadow"]
    assert [r.state for r in shadow_reports] == ["verified", "active"], shadow_reports
    assert agent.status()["shadow_version"] == 3
