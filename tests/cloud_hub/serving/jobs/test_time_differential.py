"""Time-differential: the fast model answers at once with a job id; the slow, better model's
answer comes later through the job (polled, and on MQTT)."""

from __future__ import annotations

import os
from typing import Any

from fastapi.testclient import TestClient

from cloud_hub.hub import Hub
from tests.cloud_hub.serving.conftest import (
    Subscriber,
    digits_rows,
    example,
    hub_app,
    png_b64,
    reference_labels,
    wait_job,
)

API = "/api/v1"


def test_fast_answer_now_slow_answer_through_the_job(client: TestClient, serving_hub: Hub) -> None:
    created = client.post(f"{API}/endpoints", json=example("time_differential.json"))
    assert created.status_code == 201, created.text
    assert created.json()["signatures"]["answer"] == "scores [None, 10]"
    raw, _ = digits_rows(raw=True)
    x, _ = digits_rows()
    fast = reference_labels(serving_hub, "digits/digits-logreg:1", x[:40])
    slow = reference_labels(serving_hub, "digits/digits-mlp:1", x[:40])
    resp = client.post(
        f"{API}/endpoints/digits-two-speed/predict", json={"inputs": raw[:40].tolist()}
    )
    assert resp.status_code == 200, resp.text
    now = resp.json()
    assert [p["label"] for p in now["predictions"]] == fast
    assert "slow" not in now["steps"] and "fast" in now["steps"]
    assert now["counters"]["answer:deferred"] == 1
    job = wait_job(client, now["job"])
    assert job["state"] == "succeeded" and job["step"] == "slow"
    later = job["result"]
    assert [p["label"] for p in later["predictions"]] == slow
    assert later["steps"] == ["pre", "slow"]
    assert job["early"]["predictions"] == now["predictions"]
    assert later["predictions"][0]["scores"] != now["predictions"][0]["scores"]  # two models


def test_time_differential_spec_is_checked(client: TestClient) -> None:
    spec: dict[str, Any] = example("time_differential.json")
    spec["steps"][-1]["params"] = {"fast": "fast", "slow": "fast"}
    resp = client.post(f"{API}/endpoints", json=spec)
    assert resp.status_code == 422 and resp.json()["step"] == "answer"
    spec["steps"][-1]["params"] = {"fast": "fast", "slow": "missing"}
    resp = client.post(f"{API}/endpoints", json=spec)
    assert resp.status_code == 422 and "missing" in resp.json()["detail"]
    spec["steps"] = [s for s in spec["steps"] if s["name"] != "slow"]
    spec["steps"][-1]["params"] = {"fast": "fast", "slow": "pre"}
    resp = client.post(f"{API}/endpoints", json=spec)
    assert resp.status_code == 422 and "not class scores" in resp.json()["detail"]
    assert resp.json()["step"] == "answer"


def test_the_slow_answer_is_published_on_mqtt(serving_hub: Hub, mosquitto: tuple[str, int]) -> None:
    host, port = mosquitto
    root = f"td{os.getpid()}"
    sub = Subscriber(host, port, f"{root}/jobs/#")
    try:
        with hub_app(
            serving_hub.settings.data_dir,
            mqtt_host=host,
            mqtt_port=port,
            mqtt_username="hub",
            topic_root=root,
        ) as (_, c):
            spec = example("time_differential.json")
            assert c.post(f"{API}/endpoints", json=spec).status_code == 201
            now = c.post(
                f"{API}/endpoints/digits-two-speed/predict", json={"image_b64": png_b64(8)}
            ).json()
            message = sub.wait(f"{root}/jobs/{now['job']}")
    finally:
        sub.close()
    assert message["state"] == "succeeded" and message["step"] == "slow"
    assert message["early"]["predictions"] == now["predictions"]
    assert message["result"]["steps"] == ["pre", "slow"]


def test_cli_predict_queues_the_slow_step_and_job_shows_it(serving_hub: Hub) -> None:
    import json

    from typer.testing import CliRunner

    from cloud_hub.cli.main import app
    from cloud_hub.serving.engine.spec import EndpointSpec
    from cloud_hub.serving.engine.store import EndpointStore
    from cloud_hub.serving.jobs.queue import JobQueue
    from cloud_hub.serving.jobs.worker import JobWorker

    store = EndpointStore(serving_hub.db)
    store.create(
        EndpointSpec.model_validate({**example("time_differential.json"), "name": "td-cli"})
    )
    runner = CliRunner()
    base = ["--data-dir", str(serving_hub.settings.data_dir), "endpoints"]
    try:
        raw, _ = digits_rows(raw=True)
        rows = json.dumps(raw[:2].tolist())
        result = runner.invoke(app, [*base, "predict", "td-cli", "--input", rows, "--json"])
        assert result.exit_code == 0, result.output
        job_id = json.loads(result.stdout)["job"]
        shown = runner.invoke(app, [*base, "job", job_id, "--json"])
        assert shown.exit_code == 0 and json.loads(shown.stdout)["state"] == "queued"
        # a worker (here: one in this process) runs it
        from cloud_hub.serving import ServingEngine

        queue = JobQueue(serving_hub.db)
        engine = ServingEngine(serving_hub.registry, serving_hub.db, jobs=queue)
        try:
            engine.load("td-cli")
            claimed = queue.claim("test-worker", job_id=job_id)
            assert claimed is not None
            JobWorker(queue, engine, name="test-worker").execute(claimed)
        finally:
            engine.close()
        shown = runner.invoke(app, [*base, "job", job_id], env={"COLUMNS": "200"})
        assert shown.exit_code == 0 and "succeeded" in shown.stdout and "row 1:" in shown.stdout
        assert runner.invoke(app, [*base, "job", "nope"]).exit_code == 2
    finally:
        store.delete("td-cli")
