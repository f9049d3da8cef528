"""Model delivery to a real agent process over a real Mosquitto: transfer, verify, activate."""

from __future__ import annotations

from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from edge_agent.core.wire import ProbationPolicy
from tests.edge_agent.conftest import IrisModels
from tests.waiting import wait_until


def _deliver(make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, models: IrisModels):
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto)
    ref = hub.ref(models.a, 1)
    hub.deploy(ref, models.a, deployment_id=10)
    hub.wait_report(10, "active")
    return hub, agent


def test_model_delivered_verified_active_and_serving(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto)
    assert agent.predict([[5.1, 3.5, 1.4, 0.2]])[0] == 503  # nothing deployed yet
    wait_until(lambda: any(s.state == "online" for s in hub.statuses), 10, "online status")
    online = [s for s in hub.statuses if s.state == "online"][-1]
    assert "onnxruntime" in online.runtimes and online.active_version is None

    ref = hub.ref(iris_models.a, 1)
    hub.deploy(ref, iris_models.a, deployment_id=10, params={"min_score": 0.2})
    hub.wait_report(10, "active")
    states = hub.report_states(10)
    assert states[:3] == ["transferring", "verified", "active"], states
    X = iris_models.X
    code, doc = agent.predict(X[[0, 60, 120]].tolist())
    assert code == 200, doc
    assert [p["class"] for p in doc["predictions"]] == iris_models.clf_a.predict(
        X[[0, 60, 120]]
    ).tolist()
    assert doc["model_version"] == 1 and doc["predictions"][0]["label"] == "setosa"
    status = agent.status()
    assert status["active_version"] == 1 and status["loaded_versions"] == [1]
    assert status["params"] == {
        "min_score": 0.2,
        "default_label": None,
        "disabled": False,
        "shadow_sample": 1.0,
    }
    assert status["deployment"]["state"] == "active"
    wait_until(
        lambda: any(s.state == "online" and s.active_version == 1 for s in hub.statuses),
        10,
        "status with the active version",
    )
    # the same desired state again (a reconnect, a re-publish) is acknowledged, not re-fetched
    fetched = len(hub.fetches)
    hub.deploy(ref, iris_models.a, deployment_id=10, params={"min_score": 0.25})
    wait_until(lambda: hub.report_states(10).count("active") >= 2, 10, "idempotent active")
    assert len(hub.fetches) == fetched
    wait_until(lambda: agent.status()["params"]["min_score"] == 0.25, 5, "new params")

    # a restarted agent serves its last model at once, even without a broker in reach
    assert agent.terminate() == 0
    wait_until(lambda: hub.statuses[-1].state == "offline", 5, "offline status")
    agent.config.write_text(agent.config.read_text().replace(f"port = {mosquitto[1]}", "port = 1"))
    agent.start()
    code, doc = agent.predict(X[:1].tolist())
    assert code == 200 and doc["model_version"] == 1


@pytest.mark.parametrize(
    "case, expected",
    [
        ("wrong_sha", "sha256 mismatch"),
        ("bad_signature", "bad signature"),
        ("missing_signature", "missing signature"),
        ("truncated", "size mismatch"),
        ("corrupted_chunk", "CRC mismatch"),
    ],
)
def test_bad_models_refused_and_old_model_keeps_serving(
    make_hub: Any,
    make_agent: Any,
    mosquitto: Any,
    device_id: str,
    iris_models: IrisModels,
    case: str,
    expected: str,
) -> None:
    hub, agent = _deliver(make_hub, make_agent, mosquitto, device_id, iris_models)
    data = iris_models.b
    corrupt: set[int] = set()
    if case == "wrong_sha":
        ref = hub.ref(data, 2, sha256="0" * 64)
    elif case == "bad_signature":
        ref = hub.ref(data, 2, signature=hub.ref(data, 3).signature)  # signed for another version
    elif case == "missing_signature":
        ref = hub.ref(data, 2, signature="")
    elif case == "truncated":
        ref = hub.ref(data, 2)
        data = data[: len(data) - 100]  # the hub holds fewer bytes than the ref promises
    else:
        ref = hub.ref(data, 2)
        corrupt = {4096}
    hub.deploy(ref, data, deployment_id=11, corrupt=corrupt)
    report = hub.wait_report(11, "failed")
    assert report.reason is not None and expected in report.reason, report.reason
    assert report.version_id == 2
    code, doc = agent.predict(iris_models.X[:1].tolist())
    assert code == 200 and doc["model_version"] == 1
    assert agent.status()["deployment"]["state"] == "failed"
    assert (agent.data_dir / "store" / "models" / "2").exists() is False


def test_a_corrupted_chunk_is_re_requested_and_the_transfer_completes(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto)
    ref = hub.ref(iris_models.b, 1)
    hub.deploy(ref, iris_models.b, deployment_id=20, corrupt_once={0, 4096})
    hub.wait_report(20, "active")
    assert sum(1 for f in hub.fetches if f.offset == 4096) == 2
    assert "CRC mismatch" in agent.stderr()


def _nan_model() -> bytes:
    """A model that loads but whose scores are NaN: sqrt(-(|x| + 1))."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Abs", ["input"], ["a"]),
        helper.make_node("Add", ["a", "one"], ["b"]),
        helper.make_node("Neg", ["b"], ["c"]),
        helper.make_node("Sqrt", ["c"], ["scores"]),
    ]
    graph = helper.make_graph(nodes, "nan", [x], [y], initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.parametrize(
    "case, expected", [("garbage", "cannot load model"), ("nan", "warm-up failed")]
)
def test_a_model_that_fails_to_load_or_warm_up_is_reported_failed(
    make_hub: Any,
    make_agent: Any,
    mosquitto: Any,
    device_id: str,
    iris_models: IrisModels,
    case: str,
    expected: str,
) -> None:
    hub, agent = _deliver(make_hub, make_agent, mosquitto, device_id, iris_models)
    data = b"definitely not an onnx model " * 50 if case == "garbage" else _nan_model()
    hub.deploy(hub.ref(data, 2), data, deployment_id=12)
    hub.wait_report(12, "verified")  # correctly signed: it passes verification...
    report = hub.wait_report(12, "failed")  # ...and fails when loaded
    assert report.reason is not None and expected in report.reason, report.reason
    code, doc = agent.predict(iris_models.X[:1].tolist())
    assert code == 200 and doc["model_version"] == 1
    # delivered again (a reconnect), the failed deployment is reported, not retried
    fetched = len(hub.fetches)
    hub.deploy(hub.ref(data, 2), data, deployment_id=12)
    wait_until(lambda: hub.report_states(12).count("failed") >= 2, 10, "failed again")
    assert len(hub.fetches) == fetched


def test_probation_rollback_is_reported_and_the_old_model_serves(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub, agent = _deliver(make_hub, make_agent, mosquitto, device_id, iris_models)
    strict = ProbationPolicy(window_s=60, min_requests=1, max_latency_ms=1e-9)
    hub.deploy(hub.ref(iris_models.b, 2), iris_models.b, deployment_id=13, probation=strict)
    hub.wait_report(13, "active")
    code, doc = agent.predict(iris_models.X[:1].tolist())
    assert code == 200 and doc["model_version"] == 2  # served, then found too slow
    report = hub.wait_report(13, "rolled_back")
    assert report.reason is not None and "latency" in report.reason
    assert report.version_id == 2
    code, doc = agent.predict(iris_models.X[:1].tolist())
    assert code == 200 and doc["model_version"] == 1
    wait_until(lambda: hub.statuses[-1].active_version == 1, 5, "status back on version 1")


def test_transfer_resumes_after_the_broker_restarts(
    make_hub: Any, make_agent: Any, own_mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    address = own_mosquitto.address
    hub = make_hub(address, device_id)
    agent = make_agent(device_id, address, transfer={"chunk_size": 1024, "window": 1})
    hub.chunk_delay_s = 0.05
    data = iris_models.b
    assert len(data) > 8 * 1024
    hub.deploy(hub.ref(data, 1), data, deployment_id=30)
    wait_until(lambda: len(hub.fetches) >= 4, 10, "a few chunks")
    own_mosquitto.stop()
    before = agent.status()["deployment"]["transfer"]["good_offset"]
    assert 0 < before < len(data)
    with hub.lock:
        hub.fetches.clear()
    own_mosquitto.start()
    hub.wait_report(30, "active", timeout=25)
    offsets = [f.offset for f in hub.fetches]
    assert offsets and min(offsets) >= before, (before, offsets[:5])
    code, doc = agent.predict(iris_models.X[:1].tolist())
    assert code == 200 and doc["model_version"] == 1


def test_transfer_resumes_after_the_agent_is_killed(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto, transfer={"chunk_size": 1024, "window": 1})
    hub.chunk_delay_s = 0.05
    data = iris_models.b
    hub.deploy(hub.ref(data, 1), data, deployment_id=31)
    wait_until(lambda: len(hub.fetches) >= 4, 10, "a few chunks")
    agent.kill()
    with hub.lock:
        held = max(f.offset for f in hub.fetches)  # at most this one was in flight
        hub.fetches.clear()
    agent.start()
    hub.wait_report(31, "active", timeout=20)
    offsets = [f.offset for f in hub.fetches]
    assert min(offsets) >= held - 1024 and min(offsets) > 0, (held, offsets[:5])
    resumed = [r for r in hub.reports if r.deployment_id == 31 and r.state == "transferring"]
    assert resumed[-1].received_bytes and resumed[-1].received_bytes > 0


def test_a_malformed_desired_state_is_reported_and_changes_nothing(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub, agent = _deliver(make_hub, make_agent, mosquitto, device_id, iris_models)
    hub.client.publish(hub.t("desired"), b'{"v": 1, "device_id": 7}', qos=1).wait_for_publish(5)

    def rejection() -> Any:
        return next((r for r in hub.reports if r.deployment_id is None), None)

    report = wait_until(rejection, 10, "the agent to report the rejected message")
    assert report.state == "failed" and "rejected a desired state" in (report.reason or "")
    code, doc = agent.predict(iris_models.X[:1].tolist())
    assert code == 200 and doc["model_version"] == 1
    assert agent.status()["deployment"]["state"] == "active"
