"""Shadow and serving parameters at a real agent process, fed by a stand-in hub over Mosquitto.

- a shadow is fetched with the same verified transfer, run beside the active model on every
  request, its answers logged under the same request id and never returned; agreement and
  latency are counted; activating the shadow's version afterwards needs no transfer;
- serving parameters (a score threshold with a default answer, a kill switch) take effect on the
  next request without any transfer; bad ones are refused and reported.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from edge_agent.core.wire import InferRequest, InferResult, Report
from tests.agent_processes import AgentProc
from tests.edge_agent.conftest import IrisModels, WireHub
from tests.waiting import wait_until


def _shadow_report(hub: WireHub, deployment_id: int, state: str) -> Report:
    def found() -> Report | None:
        with hub.lock:
            return next(
                (
                    r
                    for r in hub.reports
                    if r.deployment_id == deployment_id and r.role == "shadow" and r.state == state
                ),
                None,
            )

    return wait_until(found, 15, f"shadow report {state!r} for deployment {deployment_id}")


def _logs_of(hub: WireHub, request_id: str) -> list[dict[str, Any]]:
    with hub.lock:
        return [r for r in hub.logs.values() if r["request_id"].split("/")[0] == request_id]


def _ask(hub: WireHub, request_id: str, inputs: Any) -> InferResult:
    hub.client.publish(hub.t("infer"), InferRequest(request_id=request_id, inputs=inputs).dumps())

    def answered() -> InferResult | None:
        with hub.lock:
            return next((r for r in hub.results if r.request_id == request_id), None)

    return wait_until(answered, 10, f"result {request_id}")


def test_shadow_runs_beside_the_active_model_and_is_promoted_without_a_transfer(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto, telemetry={"interval_s": 0.5})
    active, candidate = hub.ref(iris_models.a, 1), hub.ref(iris_models.b, 2)
    hub.deploy(active, iris_models.a, deployment_id=20, shadow=(candidate, iris_models.b))
    hub.wait_report(20, "active")
    _shadow_report(hub, 20, "active")
    states = [r.state for r in hub.reports if r.deployment_id == 20 and r.role == "shadow"]
    assert states[:3] == ["transferring", "verified", "active"], states
    shadow_sha = {f.sha256 for f in hub.fetches}
    assert shadow_sha == {active.sha256, candidate.sha256}  # both fetched, each verified
    status = agent.status()
    assert status["active_version"] == 1 and status["shadow_version"] == 2
    assert status["loaded_versions"] == [1, 2]

    # Every answer is the active model's; the shadow's go only to the logs.
    X = iris_models.X
    code, doc = agent.predict(X.tolist())
    assert code == 200, doc
    assert doc["model_version"] == 1
    assert [p["class"] for p in doc["predictions"]] == iris_models.clf_a.predict(X).tolist()
    request_id = doc["request_id"]
    wait_until(lambda: len(_logs_of(hub, request_id)) == 2 * len(X), 15, "active + shadow logs")
    logs = _logs_of(hub, request_id)
    by_role: dict[str, dict[str, dict[str, Any]]] = {"active": {}, "shadow": {}}
    for r in logs:
        by_role[r["role"]][r["request_id"]] = r
    assert {r["model_version"] for r in by_role["active"].values()} == {1}
    assert {r["model_version"] for r in by_role["shadow"].values()} == {2}
    assert by_role["active"].keys() == by_role["shadow"].keys()  # the same request ids
    shadow_top = [
        int(np.argmax(by_role["shadow"][f"{request_id}/{i}"]["output"]["scores"]))
        for i in range(150)
    ]
    assert all(r["output"]["task"] == "classification" for r in logs)
    assert all(len(r["outputs_digest"]) == 64 for r in logs)
    assert shadow_top == iris_models.clf_b.predict(X).tolist()
    for rid, shadow_log in by_role["shadow"].items():
        assert shadow_log["input_digest"] == by_role["active"][rid]["input_digest"]

    # Agreement and latency, at the agent and in its telemetry.
    expected = int(np.sum(iris_models.clf_a.predict(X) == iris_models.clf_b.predict(X)))
    stats = wait_until(lambda: agent.status()["shadow"], 5, "shadow stats")
    assert stats["compared"] == 150 and stats["agreed"] == expected < 150
    assert stats["agreement"] == round(expected / 150, 4)
    assert stats["task"] == "classification"
    assert stats["similarity"] == round(expected / 150, 6)
    assert stats["shadow_latency_ms"]["p50"] > 0 and stats["active_latency_ms"]["p99"] > 0

    def shadow_telemetry() -> list[dict[str, Any]]:
        with hub.lock:
            return [t["shadow"] for t in hub.telemetry.values() if t.get("shadow")]

    wait_until(lambda: sum(s["compared"] for s in shadow_telemetry()) >= 150, 10, "telemetry")
    windows = shadow_telemetry()
    assert sum(s["agreed"] for s in windows) == expected
    assert all(s["active_version"] == 1 and s["shadow_version"] == 2 for s in windows)

    # Promote: version 2 as the model, no shadow. The agent holds it: no fetch at all.
    fetches = len(hub.fetches)
    hub.deploy(candidate, iris_models.b, deployment_id=21)
    hub.wait_report(21, "active")
    assert hub.report_states(21) == ["active"]  # no transferring, no verified
    assert len(hub.fetches) == fetches
    assert "version 2 promoted from shadow (already loaded)" in agent.stderr()  # not reloaded
    code, doc = agent.predict(X[[0, 77, 106]].tolist())
    assert code == 200 and doc["model_version"] == 2
    assert [p["class"] for p in doc["predictions"]] == iris_models.clf_b.predict(
        X[[0, 77, 106]]
    ).tolist()
    status = agent.status()
    assert status["shadow_version"] is None and status["active_version"] == 2
    assert 2 in status["installed_versions"] and 1 in status["installed_versions"]


def test_params_threshold_and_kill_switch_take_effect_without_a_transfer(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto)
    ref = hub.ref(iris_models.a, 1)
    hub.deploy(ref, iris_models.a, deployment_id=30)
    hub.wait_report(30, "active")
    fetches = len(hub.fetches)
    X = iris_models.X
    top = iris_models.clf_a.predict_proba(X).max(axis=1)
    low = [int(i) for i in np.where(top < 0.6)[0][:3]]
    high = [int(i) for i in np.where(top > 0.95)[0][:2]]
    assert len(low) == 3 and len(high) == 2
    code, doc = agent.predict(X[low + high].tolist())
    assert code == 200 and all(p["class"] is not None for p in doc["predictions"])

    # A threshold with a default answer: the same model, new parameters.
    hub.deploy(
        ref, iris_models.a, deployment_id=30, params={"min_score": 0.6, "default_label": "unsure"}
    )
    wait_until(lambda: agent.status()["params"]["min_score"] == 0.6, 10, "params applied")
    code, doc = agent.predict(X[low + high].tolist())
    assert code == 200, doc
    preds = doc["predictions"]
    assert [p["label"] for p in preds[:3]] == ["unsure"] * 3
    assert all(p["thresholded"] and p["class"] is None and p["score"] < 0.6 for p in preds[:3])
    assert [p["class"] for p in preds[3:]] == iris_models.clf_a.predict(X[high]).tolist()
    assert not any(p["thresholded"] for p in preds[3:])
    rid = doc["request_id"]
    wait_until(lambda: len(_logs_of(hub, rid)) == 5, 10, "logs of the thresholded request")
    flags = {r["request_id"]: r["thresholded"] for r in _logs_of(hub, rid)}
    assert [flags[f"{rid}/{i}"] for i in range(5)] == [True, True, True, False, False]
    mqtt_answer = _ask(hub, "thr-1", X[low[:1]].tolist())
    assert mqtt_answer.ok and mqtt_answer.predictions[0]["label"] == "unsure"
    assert mqtt_answer.predictions[0]["thresholded"] is True

    # The kill switch with a default answer: the model is not run, every sample gets the default.
    count = agent.status()["inference_count"]
    hub.deploy(
        ref, iris_models.a, deployment_id=30, params={"disabled": True, "default_label": "off"}
    )
    wait_until(lambda: agent.status()["params"]["disabled"], 10, "kill switch on")
    code, doc = agent.predict(X[high].tolist())
    assert code == 200 and doc["disabled"] is True and doc["model_version"] is None
    assert [p["label"] for p in doc["predictions"]] == ["off", "off"]
    assert all(p["disabled"] and p["class"] is None for p in doc["predictions"])
    assert agent.status()["inference_count"] == count + 2
    # ... and without one: refused, plainly.
    hub.deploy(ref, iris_models.a, deployment_id=30, params={"disabled": True})
    wait_until(lambda: agent.status()["params"]["default_label"] is None, 10, "no default")
    code, doc = agent.predict(X[:1].tolist())
    assert code == 503 and doc["error"] == "serving disabled", doc
    off = _ask(hub, "off-1", X[:1].tolist())
    assert not off.ok and off.error and "switched off" in off.error

    # Switched back on: the model answers again. Not one byte of model was fetched throughout.
    hub.deploy(ref, iris_models.a, deployment_id=30, params={})
    wait_until(lambda: not agent.status()["params"]["disabled"], 10, "kill switch off")
    code, doc = agent.predict(X[high].tolist())
    assert code == 200 and doc["model_version"] == 1
    assert len(hub.fetches) == fetches
    assert hub.report_states(30).count("transferring") == 1

    # A desired state with a bad parameter is refused, reported, and changes nothing.
    assert hub.desired is not None
    bad = json.loads(hub.desired.dumps())
    bad["params"] = {"min_score": 1.5}
    hub.client.publish(hub.t("desired"), json.dumps(bad).encode(), qos=1, retain=True)

    def rejected() -> Report | None:
        with hub.lock:
            return next((r for r in hub.reports if r.deployment_id is None), None)

    report = wait_until(rejected, 10, "a rejection report")
    assert report.state == "failed" and report.reason and "min_score" in report.reason
    assert agent.status()["params"]["min_score"] is None
    assert agent.predict(X[high].tolist())[0] == 200


def test_shadow_sample_bounds_the_share_of_requests_run_on_the_shadow(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto)
    active, candidate = hub.ref(iris_models.a, 1), hub.ref(iris_models.b, 2)
    shadow = (candidate, iris_models.b)
    hub.deploy(active, iris_models.a, 40, shadow=shadow, params={"shadow_sample": 0})
    hub.wait_report(40, "active")
    _shadow_report(hub, 40, "active")
    fetches = len(hub.fetches)
    X = iris_models.X

    def mirrored() -> int:
        """Samples the shadow ran (or dropped), once its queue is empty: two reads agree."""
        last = -1
        while True:
            stats = agent.status()["shadow"] or {}
            now = int(stats.get("compared", 0) + stats.get("dropped", 0) + stats.get("errors", 0))
            if now == last:
                return now
            last = now
            time.sleep(0.3)

    for i in range(40):
        assert agent.predict(X[i : i + 1].tolist())[0] == 200
    assert mirrored() == 0  # sample 0: the shadow sees nothing, though it is loaded
    assert agent.status()["shadow_version"] == 2

    # a new share, in force without a transfer: about half of the requests from now on
    hub.deploy(active, iris_models.a, 40, shadow=shadow, params={"shadow_sample": 0.5})
    wait_until(lambda: agent.status()["params"]["shadow_sample"] == 0.5, 10, "params applied")
    for i in range(300):
        assert agent.predict(X[i % 150 : i % 150 + 1].tolist())[0] == 200
    share = mirrored() / 300
    assert 0.35 <= share <= 0.65, share  # binomial(300, 0.5): ±0.15 is over 5 sigma
    assert len(hub.fetches) == fetches
