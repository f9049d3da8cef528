"""Telemetry history at the hub: raw points and 1-minute / 1-hour rollups kept at ingest, once per
(device, epoch, seq); retention pruned in chunks; answered by REST and the CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.ingest import Ingest
from cloud_hub.fleet.metrics_store import METRICS, MetricsStore
from cloud_hub.fleet.mqtt_service import FleetService
from cloud_hub.fleet.schemas import DeviceCreate
from cloud_hub.hub import Hub
from edge_agent.core.wire import TelemetryBatch, TelemetryRecord
from tests.cloud_hub.conftest import Device
from tests.conftest import admin_headers, run_cli
from tests.waiting import wait_until

EPOCH = "e1e1e1e1e1e1e1e1"
DEV = "dev-metrics"
T0 = 1_800_000_000.0  # a minute boundary (divisible by 3600)


def _record(seq: int, ts: float, cpu: float, **extra: object) -> TelemetryRecord:
    return TelemetryRecord.model_validate({"seq": seq, "ts": ts, "cpu_percent": cpu, **extra})


def _batch(records: list[TelemetryRecord], floor: int = 1) -> TelemetryBatch:
    return TelemetryBatch(device_id=DEV, epoch=EPOCH, floor=floor, records=records)


def _rollups(hub: Hub, metric: str, step: int) -> list[tuple[float, float, float, float, int]]:
    rows = hub.db.conn.execute(
        "SELECT bucket, vmin, vmax, vsum / n, n FROM metric_rollups "
        "WHERE device_id = ? AND metric = ? AND step = ? ORDER BY bucket",
        [DEV, metric, step],
    )
    return [tuple(r) for r in rows]


@pytest.fixture
def device(hub: Hub) -> Hub:
    hub.fleet.devices.register(DeviceCreate(id=DEV))
    return hub


def test_rollups_per_minute_and_hour_from_known_samples(device: Hub) -> None:
    hub = device
    ingest = Ingest(hub.db)
    # minute 0: cpu 10, 20, 60; minute 1: cpu 5, 7
    cpus = [(T0 + 1, 10.0), (T0 + 20, 20.0), (T0 + 59, 60.0), (T0 + 60, 5.0), (T0 + 90, 7.0)]
    records = [_record(i + 1, ts, cpu) for i, (ts, cpu) in enumerate(cpus)]
    assert ingest.store_telemetry(DEV, _batch(records[:2])) == 2
    assert ingest.store_telemetry(DEV, _batch(records[2:], floor=3)) == 5
    assert _rollups(hub, "cpu", 60) == [(T0, 10.0, 60.0, 30.0, 3), (T0 + 60, 5.0, 7.0, 6.0, 2)]
    assert _rollups(hub, "cpu", 3600) == [(T0, 5.0, 60.0, 102.0 / 5, 5)]
    last = hub.db.conn.execute(
        "SELECT vlast FROM metric_rollups WHERE device_id = ? AND metric = 'cpu' AND step = 3600",
        [DEV],
    ).fetchone()
    assert tuple(last) == (7.0,)


def test_a_record_yields_its_numeric_metrics(device: Hub) -> None:
    hub = device
    record = _record(
        1,
        T0,
        50.0,
        memory_percent=40.0,
        memory_rss_mb=120.0,
        temperature_c=61.5,
        inferences={"3": 30, "4": 10},
        latency_ms={"3": {"p50": 2.0, "p99": 9.0}, "4": {"p50": 6.0, "p99": 20.0}},
        outbox_pending=12,
        outbox_dropped=3,
    )
    Ingest(hub.db).store_telemetry(DEV, _batch([record]))
    values = dict(
        hub.db.conn.execute(
            "SELECT metric, value FROM metric_points WHERE device_id = ?", [DEV]
        ).fetchall()
    )
    assert values == {
        "cpu": 50.0,
        "memory": 40.0,
        "memory_rss": 120.0,
        "temperature": 61.5,
        "inferences": 40.0,
        "latency_p50": 3.0,  # weighted by inferences: (2*30 + 6*10) / 40
        "latency_p99": 20.0,
        "outbox_backlog": 12.0,
        "outbox_drops": 3.0,
    }
    names = MetricsStore(hub.db, hub.settings).names(DEV).metrics
    assert names == list(METRICS)


def test_a_resent_batch_does_not_count_twice(device: Hub) -> None:
    hub = device
    ingest = Ingest(hub.db)
    batch = _batch([_record(1, T0 + 1, 10.0), _record(2, T0 + 2, 30.0)])
    ingest.store_telemetry(DEV, batch)
    ingest.store_telemetry(DEV, batch)  # sent again (lost ack)
    overlapping = _batch([_record(2, T0 + 2, 30.0), _record(3, T0 + 3, 50.0)], floor=2)
    ingest.store_telemetry(DEV, overlapping)
    assert _rollups(hub, "cpu", 60) == [(T0, 10.0, 50.0, 30.0, 3)]
    (points,) = hub.db.conn.execute("SELECT count(*) FROM metric_points").fetchone()
    assert points == 3


def _settings(tmp_path: Path) -> HubSettings:
    return HubSettings(
        data_dir=tmp_path / "hub-ret",
        run_scheduler=False,
        metrics_raw_retention_s=3600,
        metrics_minute_retention_s=2 * 86400,
        metrics_hour_retention_s=30 * 86400,
    )


@pytest.fixture
def small_hub(tmp_path: Path) -> Iterator[Hub]:
    opened = Hub.open(_settings(tmp_path))
    opened.fleet.devices.register(DeviceCreate(id=DEV))
    yield opened
    opened.close()


def test_retention_deletes_old_raw_points_keeps_rollups_and_prunes_in_chunks(
    small_hub: Hub,
) -> None:
    hub = small_hub
    ingest = Ingest(hub.db)
    # 12 samples 10 s apart starting at T0, then one at T0 + 3 days
    old = [_record(i + 1, T0 + 10 * i, float(i)) for i in range(12)]
    ingest.store_telemetry(DEV, _batch(old))
    ingest.store_telemetry(DEV, _batch([_record(13, T0 + 3 * 86400, 99.0)], floor=13))
    store = MetricsStore(hub.db, hub.settings)

    commits: list[str] = []
    hub.db.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    try:
        deleted = store.prune(T0 + 2 * 3600, chunk=5)  # raw older than T0 + 1h go
    finally:
        hub.db.conn.set_trace_callback(None)
    assert deleted == 12
    assert len(commits) == 5  # raw 5 + 5 + 2 rows, one transaction each; one per rollup kind
    (raw,) = hub.db.conn.execute("SELECT count(*) FROM metric_points").fetchone()
    assert raw == 1
    assert [r[4] for r in _rollups(hub, "cpu", 60)] == [6, 6, 1]  # the minute rollups remain
    assert store.prune(T0 + 2 * 3600) == 0

    # three days on: minute rollups past 2 days go, hour rollups (30 days) stay
    store.prune(T0 + 3 * 86400)
    assert [r[0] for r in _rollups(hub, "cpu", 60)] == [T0 + 3 * 86400]
    assert [r[0] for r in _rollups(hub, "cpu", 3600)] == [T0, T0 + 3 * 86400]
    series = store.query(DEV, "cpu", since="4d", now=T0 + 3 * 86400 + 10)
    assert series.step == "1h"
    assert [(p.ts, p.value, p.min, p.max) for p in series.points] == [
        (T0, 5.5, 0.0, 11.0),
        (T0 + 3 * 86400, 99.0, 99.0, 99.0),
    ]


def test_auto_step_picks_the_finest_retained_resolution(small_hub: Hub) -> None:
    hub = small_hub
    now = T0 + 600
    Ingest(hub.db).store_telemetry(
        DEV, _batch([_record(i + 1, T0 + 30 * i, float(i)) for i in range(20)])
    )
    store = MetricsStore(hub.db, hub.settings)
    assert store.query(DEV, "cpu", since="15m", now=now).step == "raw"
    assert len(store.query(DEV, "cpu", since="15m", now=now).points) == 20
    assert store.query(DEV, "cpu", since="12h", now=now).step == "1m"  # raw is kept for 1h
    assert store.query(DEV, "cpu", since="12h", step="1m", now=now).points[0].max == 1.0
    assert store.query(DEV, "cpu", since="1d", now=now).step == "1h"  # 1440 minutes: too many
    assert store.query(DEV, "cpu", since="7d", now=now).step == "1h"  # 1m kept for 2 days


@pytest.fixture
def client(device: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(device, scheduler=False), headers=admin_headers(device)) as c:
        yield c


def _ingest_recent(hub: Hub) -> float:
    now = time.time()
    records = [_record(i + 1, now - 300 + 60 * i, 10.0 * (i + 1)) for i in range(5)]
    Ingest(hub.db).store_telemetry(DEV, _batch(records))
    return now


def test_rest_answers_series_and_names(client: TestClient, device: Hub) -> None:
    _ingest_recent(device)
    got = client.get(f"/api/v1/devices/{DEV}/metrics", params={"metric": "cpu", "since": "1h"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["device"] == DEV and body["metric"] == "cpu" and body["step"] == "raw"
    assert [p["value"] for p in body["points"]] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert set(body["points"][0]) == {"ts", "value", "min", "max"}
    minute = client.get(f"/api/v1/devices/{DEV}/metrics", params={"step": "1m", "since": "10m"})
    assert minute.status_code == 200 and minute.json()["step"] == "1m"
    assert len(minute.json()["points"]) == 5
    names = client.get(f"/api/v1/devices/{DEV}/metrics/names")
    assert names.status_code == 200 and names.json() == {"device": DEV, "metrics": ["cpu"]}
    nobody = TestClient(create_app(device, scheduler=False))
    assert nobody.get(f"/api/v1/devices/{DEV}/metrics").status_code in (401, 403)


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"metric": "nope"}, 422, "latency_p99"),
        ({"since": "2h", "until": "3h"}, 422, "before until"),
        ({"since": "2999-01-01T00:00:00Z"}, 422, "future"),
        ({"since": "yesterday"}, 422, "not a time"),
        ({"since": "99999999999999999999999999h"}, 422, "not a time"),
        ({"step": "5m"}, 422, "raw, 1m, 1h or auto"),
    ],
)
def test_rest_refuses_bad_input_with_json(
    client: TestClient, params: dict[str, str], status: int, words: str
) -> None:
    got = client.get(f"/api/v1/devices/{DEV}/metrics", params=params)
    assert got.status_code == status, got.text
    assert words in json.dumps(got.json())


def test_rest_unknown_device_is_404(client: TestClient) -> None:
    for path in ("metrics", "metrics/names"):
        got = client.get(f"/api/v1/devices/ghost/{path}")
        assert got.status_code == 404, got.text
        assert "ghost" in json.dumps(got.json())


def test_cli_prints_a_chart_a_table_and_json(cli_env: dict[str, str]) -> None:
    data_dir = Path(cli_env["EDGEPILOT_DATA_DIR"])
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    try:
        hub.fleet.devices.register(DeviceCreate(id=DEV))
        _ingest_recent(hub)
    finally:
        hub.close()
    shown = run_cli(["devices", "metrics", DEV, "--metric", "cpu", "--since", "1h"], cli_env)
    assert shown.returncode == 0, shown.stderr
    assert "▁▃▅▆█" in shown.stdout  # 10..50: the chart rises
    assert "time (UTC)" in shown.stdout and "50" in shown.stdout
    as_json = run_cli(["devices", "metrics", DEV, "--step", "raw", "--json"], cli_env)
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["step"] == "raw" and [p["value"] for p in body["points"]][-1] == 50.0
    bad = run_cli(["devices", "metrics", DEV, "--metric", "nope"], cli_env)
    assert bad.returncode == 2 and "known:" in bad.stdout + bad.stderr


@pytest.fixture
def fleet_settings(fleet_settings: HubSettings) -> HubSettings:
    """The shared fleet settings, with the fleet service pruning expired metrics at once."""
    return fleet_settings.model_copy(update={"metrics_prune_interval_s": 0.05})


def test_telemetry_over_mqtt_is_kept_and_the_fleet_service_prunes_it(
    fleet_hub: Hub, service: FleetService, make_device: Callable[[str], Device]
) -> None:
    fleet_hub.fleet.devices.register(DeviceCreate(id=DEV))
    dev = make_device(DEV)
    now = time.time()
    old, new = _record(1, now - 2 * 3600, 5.0), _record(2, now, 50.0)
    dev.send("telemetry", _batch([old, new]))
    dev.wait_ack(2)

    def raw() -> list[float]:
        rows = fleet_hub.db.conn.execute(
            "SELECT value FROM metric_points WHERE device_id = ? AND metric = 'cpu'", [DEV]
        )
        return [r[0] for r in rows]

    wait_until(lambda: raw() == [50.0], 10, "the expired raw point pruned")
    assert [r[4] for r in _rollups(fleet_hub, "cpu", 60)] == [1, 1]  # rollups are kept
