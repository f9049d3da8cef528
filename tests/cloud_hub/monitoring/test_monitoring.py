"""Prediction monitoring: the training baseline, rolling windows per version, endpoint and device
(latency, errors, answers, drift), alert rules and alerts over REST, the CLI and MQTT.

Real SQLite, the real serving engine behind the REST app, a real Mosquitto for the alerts topic;
device records go through the fleet's real ingest path.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.ingest import Ingest
from cloud_hub.hub import Hub
from cloud_hub.monitoring import AlertEvent, BaselineStore, WindowReader, WindowStats
from cloud_hub.monitoring.alerts import AlertStore
from cloud_hub.monitoring.incremental import DeviceWindows
from cloud_hub.monitoring.stats import bin_index, percentiles, psi
from cloud_hub.predlog.writer import LogEntry, PredictionLogWriter
from cloud_hub.registry.registry import NewArtifact
from cloud_hub.training.request import TrainRequest
from edge_agent.core.features import summary_lists
from edge_agent.core.wire import LogBatch, LogRecord
from tests.cloud_hub.serving.conftest import Subscriber, digits_rows
from tests.conftest import admin_headers, run_cli
from tests.waiting import wait_for

API = "/api/v1"
REF = "digits/digits-logreg:1"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding digits/digits-logreg:1, trained by the real pipeline; each test
    works on a copy of it."""
    data_dir = tmp_path_factory.mktemp("monitoring-trained")
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    try:
        run = hub.pipeline().start(
            TrainRequest(
                project="digits",
                dataset="digits",
                model_type="logreg",
                formats=["onnx"],
                quantize=False,
            )
        )
        assert run.status == "succeeded", run.error
    finally:
        hub.close()
    return data_dir


@contextmanager
def monitored(trained: Path, data_dir: Path, **settings: Any) -> Iterator[tuple[Hub, TestClient]]:
    shutil.copytree(trained, data_dir)
    defaults: dict[str, Any] = {"run_scheduler": False, "monitor_interval_s": 3600.0}
    hub = Hub.open(HubSettings(data_dir=data_dir, **{**defaults, **settings}))
    try:
        with TestClient(
            create_app(hub, scheduler=False, fleet=False), headers=admin_headers(hub)
        ) as client:
            yield hub, client
    finally:
        hub.close()


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`edgepilot --data-dir DATA_DIR ARGS...` as a real process."""
    return run_cli(["--data-dir", str(data_dir), *args], dict(os.environ, COLUMNS="250"))


def _spec(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "models": {"m": REF},
        "steps": [{"name": "predict", "kind": "model", "params": {"model": "m"}}],
    }


def _predict(client: TestClient, name: str, rows: np.ndarray, batch: int = 10) -> None:
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        resp = client.post(f"{API}/endpoints/{name}/predict", json={"inputs": chunk.tolist()})
        assert resp.status_code == 200, resp.text


def _flush(client: TestClient) -> None:
    assert client.app.state.engine.log.flush()  # type: ignore[attr-defined]


def _evaluate(client: TestClient) -> list[dict[str, Any]]:
    resp = client.post(f"{API}/alerts/evaluate")
    assert resp.status_code == 200, resp.text
    events: list[dict[str, Any]] = resp.json()
    return events


def _open(client: TestClient, metric: str, scope: str) -> list[dict[str, Any]]:
    alerts = client.get(f"{API}/alerts", params={"state": "open"}).json()
    return [a for a in alerts if a["metric"] == metric and a["scope"] == scope]


def _in_distribution(n: int, seed: int = 0) -> np.ndarray:
    x, _ = digits_rows()
    return x[np.random.default_rng(seed).permutation(len(x))[:n]]


# -- the baseline -------------------------------------------------------------------------------
def test_training_saves_the_versions_baseline(trained: Path, tmp_path: Path) -> None:
    with monitored(trained, tmp_path / "hub") as (hub, client):
        version = hub.registry.resolve_version(REF)
        run = hub.registry.get_run(version.run_id or 0)
        register = next(s for s in run.steps if s.step == "register")
        assert register.outputs["baseline"] == {"samples": 1437, "features": 64}

        resp = client.get(f"{API}/versions/{version.id}/baseline")
        assert resp.status_code == 200, resp.text
        baseline = resp.json()
        assert baseline["source"] == "training" and baseline["samples"] == 1437
        assert len(baseline["features"]) == 64  # an 8×8 digit: the summary is the input itself
        for fb in baseline["features"]:
            assert 1 <= len(fb["edges"]) <= 11 and fb["edges"] == sorted(fb["edges"])
            assert len(fb["expected"]) == len(fb["edges"]) + 2
            assert sum(fb["expected"]) == pytest.approx(1.0, abs=1e-4)
            assert fb["expected"][0] == 0 and fb["expected"][-1] == 0  # out of training range
        # the training labels, and the model's answers on the training inputs: ~10 % per digit
        assert set(baseline["label_distribution"]) == {str(d) for d in range(10)}
        assert all(0.07 < p < 0.13 for p in baseline["prediction_distribution"].values())

        # the bins are the training split's deciles: the training pixels fall in them as stored
        x, y = digits_rows()
        pixel = 36  # a central pixel, many distinct values
        fb = baseline["features"][pixel]
        counts = np.bincount(bin_index(fb["edges"], x[:, pixel]), minlength=len(fb["expected"]))
        assert psi(fb["expected"], counts / counts.sum()) < 0.05

        assert client.get(f"{API}/versions/999/baseline").status_code == 404


def test_a_baseline_for_an_uploaded_version_from_a_dataset(trained: Path, tmp_path: Path) -> None:
    with monitored(trained, tmp_path / "hub") as (hub, client):
        version = hub.registry.resolve_version(REF)
        blob = hub.registry.artifact_blob(version.artifacts[0].sha256)
        uploaded = hub.registry.register_version(
            "digits",
            "uploaded",
            artifacts=[NewArtifact("onnx", "fp32", blob)],
            source="uploaded",
            labels=version.labels,
            preprocessing=version.preprocessing,
        )
        assert client.get(f"{API}/versions/{uploaded.id}/baseline").status_code == 404
        resp = client.post(f"{API}/versions/{uploaded.id}/baseline", json={"dataset": "digits"})
        assert resp.status_code == 201, resp.text
        made = resp.json()
        assert made["source"] == "dataset:digits" and made["samples"] == 1797
        assert len(made["features"]) == 64
        assert all(0.07 < p < 0.13 for p in made["prediction_distribution"].values())
        assert client.get(f"{API}/versions/{uploaded.id}/baseline").json() == made

        bad = client.post(f"{API}/versions/{uploaded.id}/baseline", json={"dataset": "nope"})
        assert bad.status_code == 422 and "dataset" in bad.json()["detail"]


# -- drift, alerts over REST, the CLI and MQTT --------------------------------------------------
def test_shifted_inputs_raise_a_drift_alert_that_resolves_when_traffic_is_normal_again(
    trained: Path, tmp_path: Path, mosquitto: tuple[str, int]
) -> None:
    host, port = mosquitto
    root = f"mon{time.monotonic_ns()}"
    sub = Subscriber(host, port, f"{root}/alerts")
    data_dir = tmp_path / "hub"
    try:
        with monitored(
            trained,
            data_dir,
            mqtt_host=host,
            mqtt_port=port,
            mqtt_username="hub",
            topic_root=root,
            monitor_max_records=300,  # a window: the latest 300 records of the last 300 s
        ) as (hub, client):
            version = hub.registry.resolve_version(REF)
            assert client.post(f"{API}/endpoints", json=_spec("mon")).status_code == 201
            rules = client.get(f"{API}/alerts/rules").json()  # none created: the defaults
            assert {(r["metric"], r["scope"]) for r in rules} >= {
                ("psi_max", "version"),
                ("psi_max", "device"),
                ("error_rate", "endpoint"),
            }
            assert all(r["default"] for r in rules)

            # in-distribution digits: low PSI, answers like training's, no alert
            _predict(client, "mon", _in_distribution(300))
            _flush(client)
            window = client.get(f"{API}/monitoring/versions/{version.id}").json()
            assert window["count"] == 300 and window["baseline_version"] == version.id
            assert window["drift"]["samples"] == 300
            assert window["drift"]["psi_max"] < 0.15
            assert window["output_shift"] < 0.15
            assert _evaluate(client) == []
            assert client.get(f"{API}/alerts", params={"state": "open"}).json() == []

            # inverted digits (white background): every pixel leaves its training range
            x_bad = 1.0 - _in_distribution(300, seed=1)
            _predict(client, "mon", x_bad)
            _flush(client)
            window = client.get(f"{API}/monitoring/versions/{version.id}").json()
            assert window["drift"]["psi_max"] > 1.0 and len(window["drift"]["top"]) == 5
            events = _evaluate(client)
            opened = [
                e
                for e in events
                if e["event"] == "opened"
                and e["alert"]["metric"] == "psi_max"
                and e["alert"]["scope"] == "version"
            ]
            assert len(opened) == 1
            alert = opened[0]["alert"]
            assert alert["target"] == str(version.id) and alert["rule"] == "default:input-drift"
            assert alert["value"] == window["drift"]["psi_max"]
            assert REF in alert["message"] and "most drifting features" in alert["message"]
            # visible over REST ...
            (listed,) = _open(client, "psi_max", "version")
            assert listed["id"] == alert["id"] and listed["state"] == "open"
            assert _evaluate(client) == []  # still firing: one open alert, nothing new
            # ... on MQTT, schema-valid ...
            message = wait_for(
                lambda: [m for t, m in sub.messages if m["alert"]["id"] == alert["id"]],
                bool,
                what="the alert on MQTT",
            )[0]
            event = AlertEvent.model_validate(message)
            assert event.event == "opened" and event.alert.metric == "psi_max"
            # ... and in the CLI (another process, same database)
            listed_cli = cli(data_dir, "alerts", "--open", "--json")
            assert listed_cli.returncode == 0, listed_cli.stderr
            assert alert["id"] in [a["id"] for a in json.loads(listed_cli.stdout)]
            table = cli(data_dir, "alerts", "--open")
            assert table.returncode == 0 and "psi_max" in table.stdout
            monitor = cli(data_dir, "monitor", "--by", "endpoint", "--json")
            assert monitor.returncode == 0, monitor.stderr
            (mon,) = json.loads(monitor.stdout)
            assert mon["key"] == "mon" and mon["drift"]["psi_max"] > 1.0

            # normal traffic again: the window holds only normal records, the alert resolves
            _predict(client, "mon", _in_distribution(300, seed=2))
            _flush(client)
            events = _evaluate(client)
            resolved = [e for e in events if e["alert"]["id"] == alert["id"]]
            assert [e["event"] for e in resolved] == ["resolved"]
            assert "under the threshold 0.25" in resolved[0]["alert"]["resolution"]
            assert _open(client, "psi_max", "version") == []
            closed = client.get(f"{API}/alerts", params={"state": "resolved"}).json()
            assert alert["id"] in [a["id"] for a in closed]
            wait_for(
                lambda: [
                    m
                    for t, m in sub.messages
                    if m["alert"]["id"] == alert["id"] and m["event"] == "resolved"
                ],
                bool,
                what="the resolution on MQTT",
            )
            # each announced once, though evaluated at every pass while it fired
            announced = [m["event"] for t, m in sub.messages if m["alert"]["id"] == alert["id"]]
            assert announced == ["opened", "resolved"]
    finally:
        sub.close()


# -- latency and errors -------------------------------------------------------------------------
def test_latency_percentiles_and_error_rate_per_version(trained: Path, tmp_path: Path) -> None:
    with monitored(trained, tmp_path / "hub") as (hub, client):
        version = hub.registry.resolve_version(REF)
        # known latencies, through the real log writer: 1..100 ms, and 20 refused requests
        writer = PredictionLogWriter(hub.db)
        now = time.time()
        rows = [
            LogEntry(
                ts=now - 1 + i / 1000,
                request_id=f"s{i}",
                endpoint="synthetic",
                outcome="ok",
                model_version=version.id,
                label=str(i % 10),
                latency_ms=float(i),
            )
            for i in range(1, 101)
        ]
        rows += [
            LogEntry(ts=now, request_id=f"bad{i}", endpoint="synthetic", outcome="bad_input")
            for i in range(20)
        ]
        writer.add(rows)
        writer.close()
        window = WindowReader(hub.db).window("endpoint", "synthetic", window_s=60)
        assert window.latency_ms == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
        assert window.requests == 120 and window.errors == 20
        assert window.error_rate == pytest.approx(20 / 120, abs=1e-6)
        assert window.outcomes == {"ok": 100, "bad_input": 20}
        assert window.output == {str(d): 0.1 for d in range(10)}

        # real traffic: 20 good requests, 5 refused (3 values instead of 64) on one endpoint
        assert client.post(f"{API}/endpoints", json=_spec("lat")).status_code == 201
        x = _in_distribution(20)
        for row in x:
            ok = client.post(f"{API}/endpoints/lat/predict", json={"inputs": [row.tolist()]})
            assert ok.status_code == 200
        for _ in range(5):
            bad = client.post(f"{API}/endpoints/lat/predict", json={"inputs": [[1.0, 2.0, 3.0]]})
            assert bad.status_code == 422
        _flush(client)
        logged = client.get(f"{API}/logs", params={"endpoint": "lat", "outcome": "ok"}).json()
        latencies = [r["latency_ms"] for r in logged["records"]]
        endpoint = client.get(f"{API}/monitoring/endpoints/lat").json()
        assert endpoint["requests"] == 25 and endpoint["errors"] == 5
        assert endpoint["error_rate"] == pytest.approx(0.2)
        assert endpoint["outcomes"] == {"ok": 20, "bad_input": 5}
        assert endpoint["latency_ms"] == percentiles(latencies)
        expected = np.percentile(latencies, [50, 90, 99], method="inverted_cdf")
        assert list(endpoint["latency_ms"].values()) == pytest.approx(expected.tolist(), abs=1e-3)

        # per version: the refused requests carry no version, yet count against the version
        # that answers both endpoints (the only one)
        by_version = client.get(f"{API}/monitoring", params={"by": "version"}).json()
        (mine,) = [w for w in by_version if w["key"] == str(version.id)]
        assert mine["name"] == REF
        assert mine["requests"] == 145 and mine["errors"] == 25
        assert mine["outcomes"] == {"ok": 120, "bad_input": 25}
        # the error-rate rule (default: > 0.1 with 20 requests) opens on both endpoints
        _evaluate(client)
        assert {a["target"] for a in _open(client, "error_rate", "endpoint")} == {
            "lat",
            "synthetic",
        }
        assert client.get(f"{API}/monitoring/endpoints/nope").status_code == 404
        assert client.get(f"{API}/monitoring/versions/999").status_code == 404
        assert client.get(f"{API}/monitoring", params={"by": "model"}).status_code == 422


# -- rules --------------------------------------------------------------------------------------
def test_rules_are_validated_naming_the_field(trained: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    with monitored(trained, data_dir) as (hub, client):

        def refused(body: dict[str, Any]) -> str:
            resp = client.post(f"{API}/alerts/rules", json=body)
            assert resp.status_code == 422, resp.text
            return json.dumps(resp.json()["detail"])

        assert "metric" in refused({"metric": "accuracy", "threshold": 0.5})
        assert "threshold" in refused({"metric": "error_rate", "threshold": 1.5})
        assert "threshold" in refused({"metric": "psi_max", "threshold": -1})
        assert "threshold" in refused({"metric": "latency_p99_ms", "threshold": 0})
        no_device = refused(
            {"metric": "psi_max", "threshold": 0.2, "scope": "device", "target": "ghost"}
        )
        assert "target" in no_device and "ghost" in no_device
        assert "target" in refused(
            {"metric": "psi_max", "threshold": 0.2, "scope": "version", "target": "x/y:9"}
        )
        assert "target" in refused(
            {"metric": "psi_max", "threshold": 0.2, "scope": "endpoint", "target": "none"}
        )
        assert "target" in refused({"metric": "psi_max", "threshold": 0.2, "target": "1"})
        assert "min_count" in refused(
            {"metric": "psi_max", "threshold": 0.2, "last_n": 10, "min_count": 50}
        )

        made = client.post(
            f"{API}/alerts/rules",
            json={"metric": "psi_max", "threshold": 0.4, "scope": "version", "target": REF},
        )
        assert made.status_code == 201, made.text
        rule = made.json()
        version = hub.registry.resolve_version(REF)
        assert rule["target"] == str(version.id) and rule["default"] is False
        assert [r["key"] for r in client.get(f"{API}/alerts/rules").json()] == [rule["key"]]

    # the CLI: add (bad input: exit 2 naming the field), list, delete
    bad = cli(data_dir, "alerts", "rules", "add", "--metric", "error_rate", "--threshold", "2")
    assert bad.returncode == 2 and "threshold" in bad.stderr
    added = cli(
        data_dir,
        *("alerts", "rules", "add", "--json", "--metric", "latency_p99_ms"),
        *("--threshold", "250", "--scope", "endpoint"),
    )
    assert added.returncode == 0, added.stderr
    cli_rule = json.loads(added.stdout)
    listed = cli(data_dir, "alerts", "rules", "list", "--json")
    assert [r["key"] for r in json.loads(listed.stdout)] == [rule["key"], cli_rule["key"]]
    for key in (rule["key"], cli_rule["key"]):
        gone = cli(data_dir, "alerts", "rules", "delete", key)
        assert gone.returncode == 0, gone.stderr
    listed = cli(data_dir, "alerts", "rules", "list", "--json")
    assert all(r["default"] for r in json.loads(listed.stdout))  # none left: the defaults


# -- devices ------------------------------------------------------------------------------------
def _store_device_logs(hub: Hub, device_id: str, version_id: int, x: np.ndarray, seq0: int) -> None:
    """Device inference logs through the fleet's real ingest path, each with the feature summary
    of its input, as an agent sends them."""
    from edge_agent.core.runtimes import load_runtime

    version = hub.registry.get_version_by_id(version_id)
    runtime = load_runtime(hub.registry.artifact_blob(version.artifacts[0].sha256), "onnx")
    scores = runtime.predict(x).tolist()
    features = summary_lists(x)
    now = time.time()
    records = []
    for i in range(len(x)):
        records.append(
            LogRecord(
                seq=seq0 + i,
                request_id=f"{device_id}-{seq0 + i}",
                model_version=version_id,
                input_digest="ab" * 8,
                output=scores[i],
                latency_ms=3.0 + (i % 10),
                ts=now - 1 + i / 10_000,
                features=features[i],
            )
        )
    Ingest(hub.db).store_logs(device_id, LogBatch(device_id=device_id, floor=1, records=records))


def test_per_device_drift_from_forwarded_logs_raises_a_device_alert(
    trained: Path, tmp_path: Path
) -> None:
    with monitored(trained, tmp_path / "hub", monitor_interval_s=0.2, monitor_max_records=300) as (
        hub,
        client,
    ):
        version = hub.registry.resolve_version(REF)
        for device in ("cam-ok", "cam-drift"):
            made = client.post(f"{API}/devices", json={"id": device, "hardware": "rpi4"})
            assert made.status_code == 201, made.text
        _store_device_logs(hub, "cam-ok", version.id, _in_distribution(300, seed=3), 1)
        _store_device_logs(hub, "cam-drift", version.id, _in_distribution(300, seed=4), 1)
        ok = client.get(f"{API}/monitoring/devices/cam-ok").json()
        assert ok["count"] == 300 and ok["drift"]["psi_max"] < 0.15
        assert ok["latency_ms"] == {"p50": 7.0, "p90": 11.0, "p99": 12.0}
        assert ok["error_rate"] == 0 and ok["baseline_version"] == version.id
        assert sum(ok["output"].values()) == pytest.approx(1.0)

        # the camera sees noise now (a lens cap off, a broken sensor): the device's drift alert
        # is opened by the hub's own monitor thread (every 0.2 s here), not by a direct call
        noise = np.random.default_rng(5).random((300, 64)).astype(np.float32)
        _store_device_logs(hub, "cam-drift", version.id, noise, 301)
        opened = wait_for(
            lambda: _open(client, "psi_max", "device"), bool, timeout=20, what="a device alert"
        )
        assert [a["target"] for a in opened] == ["cam-drift"]
        assert opened[0]["rule"] == "default:device-input-drift"
        assert "device cam-drift" in opened[0]["message"]
        drift = client.get(f"{API}/monitoring/devices/cam-drift").json()
        assert drift["drift"]["psi_max"] > 1.0
        by_device = client.get(f"{API}/monitoring", params={"by": "device"}).json()
        assert [w["key"] for w in by_device] == ["cam-drift", "cam-ok"]
        assert client.get(f"{API}/monitoring/devices/ghost").status_code == 404

        # the device's stored baseline comparison uses the same bins as the training baseline
        baseline = BaselineStore(hub.db).get(version.id)
        assert len(baseline.features) == len(summary_lists(noise[:1])[0])


# -- review fixes: bins, damaged records, a failing window or write, hysteresis ----------------
def test_bins_at_the_edges_and_psi_by_hand() -> None:
    edges = [0.0, 0.5, 1.0]  # bins: < 0 | = 0 | (0, 0.5] | (0.5, 1] | > 1
    values = np.array([-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0, np.inf, -np.inf])
    assert bin_index(edges, values).tolist() == [0, 1, 2, 2, 3, 3, 4, 4, 0]
    # a value that is not a number is outside the training range, not in its last interval
    assert bin_index(edges, np.array([np.nan, 0.75])).tolist() == [4, 3]
    # PSI = Σ (a − e) ln(a / e), with empty shares floored at 1e-4
    expected = [0.0, 0.1, 0.4, 0.5, 0.0]
    actual = [0.0, 0.2, 0.4, 0.2, 0.2]
    by_hand = (
        (0.2 - 0.1) * np.log(0.2 / 0.1)
        + (0.2 - 0.5) * np.log(0.2 / 0.5)
        + (0.2 - 1e-4) * np.log(0.2 / 1e-4)
    )
    assert psi(expected, actual) == pytest.approx(by_hand, rel=1e-9)
    assert psi(expected, expected) == 0.0


def _damaged_device_record(hub: Hub, device_id: str, seq: int, version_id: int) -> None:
    """A record the wire would not have let through (a hand edit, an older hub, a bug)."""
    with hub.db.transaction():
        hub.db.conn.execute(
            "INSERT INTO inference_logs (device_id, seq, request_id, model_version, "
            "input_digest, output, latency_ms, ts, source, features) "
            "VALUES (?, ?, 'bad', ?, 'x', 'not json', ?, ?, 'api', '[1, \"a\"')",
            [device_id, seq, version_id, float("inf"), time.time()],
        )


def test_a_damaged_record_is_left_out_of_its_window(trained: Path, tmp_path: Path) -> None:
    with monitored(trained, tmp_path / "hub") as (hub, client):
        version = hub.registry.resolve_version(REF)
        assert client.post(f"{API}/devices", json={"id": "cam-a"}).status_code == 201
        _store_device_logs(hub, "cam-a", version.id, _in_distribution(200, seed=3), 1)
        _damaged_device_record(hub, "cam-a", 201, version.id)
        got = client.get(f"{API}/monitoring/devices/cam-a")
        assert got.status_code == 200, got.text
        window = got.json()
        assert window["count"] == 201 and window["drift"]["samples"] == 200
        assert window["latency_ms"]["p99"] == 12.0  # an infinite latency is not a latency
        assert any("unreadable features" in note for note in window["notes"])


def test_a_failing_window_or_write_does_not_stop_the_pass(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud_hub.monitoring import Monitor

    with monitored(trained, tmp_path / "hub") as (hub, client):
        version = hub.registry.resolve_version(REF)
        noise = np.random.default_rng(5).random((250, 64)).astype(np.float32)
        for device in ("cam-a", "cam-b", "cam-c"):
            assert client.post(f"{API}/devices", json={"id": device}).status_code == 201
        _store_device_logs(hub, "cam-a", version.id, noise, 1)
        monitor = Monitor(hub.db, max_records=300)

        def device_alerts(events: list[AlertEvent]) -> list[tuple[str, str]]:
            return sorted((e.event, e.alert.target) for e in events if e.alert.scope == "device")

        assert device_alerts(monitor.evaluate()) == [("opened", "cam-a")]

        # cam-a's window now fails (a damaged database page, a query error), cam-b drifts too:
        # cam-b's alert opens, and cam-a's stays open (unjudged, not "no records any more");
        # device windows are the monitor's incremental ones
        window = DeviceWindows.window

        def failing(self: DeviceWindows, view: Any, reader: Any, key: str, **kw: Any) -> Any:
            if key == "cam-a":
                raise RuntimeError("database disk image is malformed")
            return window(self, view, reader, key, **kw)

        monkeypatch.setattr(DeviceWindows, "window", failing)
        _store_device_logs(hub, "cam-b", version.id, noise, 1)
        assert device_alerts(monitor.evaluate()) == [("opened", "cam-b")]
        monkeypatch.undo()
        assert {a["target"] for a in _open(client, "psi_max", "device")} == {"cam-a", "cam-b"}

        # opening cam-c's alert fails once: the others' events are still returned (and so
        # published), and cam-c's alert opens at the next pass
        _store_device_logs(hub, "cam-c", version.id, noise, 1)
        _store_device_logs(hub, "cam-a", version.id, _in_distribution(300, seed=3), 251)
        opening = AlertStore.open

        def failing_open(self: AlertStore, rule: Any, w: WindowStats, *args: Any) -> Any:
            if w.key == "cam-c":
                raise sqlite3.OperationalError("database is locked")
            return opening(self, rule, w, *args)

        monkeypatch.setattr(AlertStore, "open", failing_open)
        assert device_alerts(monitor.evaluate()) == [("resolved", "cam-a")]
        monkeypatch.undo()
        assert device_alerts(monitor.evaluate()) == [("opened", "cam-c")]


def test_an_alert_does_not_flap_on_a_metric_hovering_at_its_threshold(tmp_path: Path) -> None:
    from cloud_hub.core.db import Database
    from cloud_hub.monitoring import AlertRuleIn, Monitor, RuleStore

    db = Database(tmp_path / "hub.db")
    RuleStore(db).create(
        AlertRuleIn(metric="error_rate", threshold=0.1, scope="endpoint", window_s=10)
    )
    t0 = time.time() - 1000

    def traffic(at: float, requests: int, errors: int) -> list[AlertEvent]:
        writer = PredictionLogWriter(db)
        writer.add(
            [
                LogEntry(
                    ts=at + i / 1000,
                    request_id=f"{at}-{i}",
                    endpoint="e",
                    outcome="failed" if i < errors else "ok",
                    latency_ms=1.0,
                )
                for i in range(requests)
            ]
        )
        writer.close()
        return Monitor(db).evaluate(now=at + 5)

    assert [e.event for e in traffic(t0, 100, 12)] == ["opened"]
    # just under the threshold, then just over it again: the one alert stays open throughout
    assert traffic(t0 + 100, 200, 19) == []
    (alert,) = AlertStore(db).list("open")
    assert alert.last_value == pytest.approx(0.095)
    assert traffic(t0 + 200, 100, 11) == []
    assert traffic(t0 + 300, 200, 19) == []
    # clearly under it (10 % under the threshold or more): resolved, once
    (resolved,) = traffic(t0 + 400, 100, 5)
    assert resolved.event == "resolved" and resolved.alert.id == alert.id
    assert "0.05 ≤ 0.09" in (resolved.alert.resolution or "")
    # and a value just under the threshold does not open a new one
    assert traffic(t0 + 500, 100, 10) == []
    assert len(AlertStore(db).list("all")) == 1


def test_the_monitor_runs_when_its_publisher_cannot_start(tmp_path: Path) -> None:
    from cloud_hub.core.db import Database
    from cloud_hub.monitoring.service import MonitorService
    from cloud_hub.serving.jobs.notify import MqttPublisher

    class Unstartable(MqttPublisher):
        def __init__(self) -> None:  # no client: its start fails (e.g. an empty mqtt_host)
            pass

        def start(self, wait_s: float = 5.0) -> MqttPublisher:
            raise ValueError("Invalid host.")

        def stop(self) -> None:
            pass

    service = MonitorService(
        Database(tmp_path / "hub.db"),
        interval_s=0.05,
        max_records=100,
        topic_root="ep",
        publisher=Unstartable(),
    )
    passes: list[float | None] = []

    def evaluate(now: float | None = None) -> list[AlertEvent]:
        passes.append(now)
        return []

    service.monitor.evaluate = evaluate  # type: ignore[method-assign]
    service.start()
    try:
        wait_for(lambda: len(passes), lambda n: n >= 2, timeout=10, what="monitor passes")
    finally:
        service.stop()


def test_a_baseline_that_cannot_be_computed_does_not_fail_the_training_step(
    trained: Path, tmp_path: Path
) -> None:
    from cloud_hub.monitoring.baseline import save_training_baseline

    class Broken:
        def predict_scores(self, x: np.ndarray) -> np.ndarray:
            raise RuntimeError("the model cannot run here")

    with monitored(trained, tmp_path / "hub") as (hub, _):
        version = hub.registry.resolve_version(REF)
        before = BaselineStore(hub.db).get(version.id)
        state = {"X_train": np.zeros((4, 64), np.float32), "trained": Broken(), "labels": []}
        assert save_training_baseline(hub.db, version.id, state) == {
            "error": "RuntimeError: the model cannot run here"
        }
        assert "error" in save_training_baseline(hub.db, version.id, {})  # no training split
        assert BaselineStore(hub.db).get(version.id) == before  # the saved one is untouched


def test_alerts_evaluated_from_the_cli_are_published_on_mqtt(
    trained: Path, tmp_path: Path, mosquitto: tuple[str, int]
) -> None:
    """`edgepilot alerts evaluate --mqtt` announces what it opens, as the hub's monitor does
    (without it, subscribers would only ever see those alerts resolve)."""
    host, port = mosquitto
    root = f"cli{time.monotonic_ns()}"
    sub = Subscriber(host, port, f"{root}/alerts")
    data_dir = tmp_path / "hub"
    try:
        with monitored(trained, data_dir) as (hub, client):
            version = hub.registry.resolve_version(REF)
            assert client.post(f"{API}/devices", json={"id": "cam-cli"}).status_code == 201
            noise = np.random.default_rng(6).random((300, 64)).astype(np.float32)
            _store_device_logs(hub, "cam-cli", version.id, noise, 1)
        done = cli(
            data_dir,
            "alerts",
            "evaluate",
            "--mqtt",
            f"{host}:{port}",
            "--topic-root",
            root,
            "--json",
        )
        assert done.returncode == 0, done.stderr
        events = json.loads(done.stdout)
        opened = [e for e in events if e["event"] == "opened" and e["alert"]["scope"] == "device"]
        assert [e["alert"]["target"] for e in opened] == ["cam-cli"]

        def published() -> list[dict[str, Any]]:
            with sub._lock:
                return [m for _, m in sub.messages]

        got = wait_for(published, lambda m: len(m) >= len(events), what="the alerts on MQTT")
        assert sorted((m["event"], m["alert"]["id"]) for m in got) == sorted(
            (e["event"], e["alert"]["id"]) for e in events
        )

        unreachable = cli(data_dir, "alerts", "evaluate", "--mqtt", "127.0.0.1:1")
        assert unreachable.returncode == 2
        assert "no MQTT broker answered at 127.0.0.1:1" in unreachable.stderr
    finally:
        sub.close()
