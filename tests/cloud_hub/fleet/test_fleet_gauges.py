"""The hub's `/metrics` carries fleet gauges per device, read from the stores at each scrape.

A real hub with its MQTT service on Mosquitto and a device speaking the wire: its status, its
telemetry (outbox backlog, inferences) and its last will show up as `ep_device_*` gauges; and a
5,000-device fleet is scraped with two queries, quickly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cloud_hub.api.app import create_app
from cloud_hub.api.metrics import FleetCollector
from cloud_hub.fleet.mqtt_service import FleetService
from cloud_hub.fleet.schemas import DeviceCreate
from cloud_hub.hub import Hub
from edge_agent.core.wire import DeviceStatus, TelemetryBatch, TelemetryRecord
from tests.cloud_hub.conftest import Device
from tests.conftest import admin_headers
from tests.waiting import wait_until

EPOCH = "g1g1g1g1"


def gauges(client: TestClient) -> dict[tuple[str, str], float]:
    """(metric, device or status label) → value of the ep_device_* and ep_fleet_* samples."""
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.text
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name.startswith(("ep_device_", "ep_fleet_")):
                out[(s.name, s.labels.get("device") or s.labels.get("status", ""))] = s.value
    return out


def test_a_devices_status_backlog_and_inference_rate_are_gauges_on_metrics(
    fleet_hub: Hub, service: FleetService, make_device: Callable[[str], Device]
) -> None:
    for name in ("cam-a", "cam-b"):
        fleet_hub.fleet.devices.register(DeviceCreate(id=name))
    dev = make_device("cam-a")
    dev.send("status", DeviceStatus(device_id="cam-a", state="online"))
    # two whole minutes of telemetry, 90 inferences in each (so whichever minute the scrape
    # falls after, the rate is 1.5/s), the outbox backlog growing to 40
    minute = math.floor(time.time() / 60) * 60
    records = []
    for i, ts in enumerate([minute - 50, minute - 20, minute + 0.5, minute + 1.0]):
        records.append(
            TelemetryRecord(
                seq=i + 1,
                ts=ts,
                inferences={"1": 45},
                latency_ms={"1": {"p50": 4.0, "p95": 9.0, "p99": 12.5}},
                outbox_pending=10 * (i + 1),
                outbox_dropped=0,
                cpu_percent=30.0,
            )
        )
    dev.send("telemetry", TelemetryBatch(device_id="cam-a", epoch=EPOCH, floor=1, records=records))
    dev.wait_ack(4)
    with TestClient(
        create_app(fleet_hub, scheduler=False, fleet=False), headers=admin_headers(fleet_hub)
    ) as client:
        wait_until(lambda: gauges(client).get(("ep_device_online", "cam-a")) == 1, 10, "online")
        got = gauges(client)
        assert got[("ep_device_outbox_backlog", "cam-a")] == 40
        assert got[("ep_device_inferences_per_second", "cam-a")] == 1.5
        assert got[("ep_device_latency_p99_ms", "cam-a")] == 12.5
        assert got[("ep_device_cpu_percent", "cam-a")] == 30.0
        assert 0 <= got[("ep_device_last_seen_age_seconds", "cam-a")] < 30
        # registered, never connected: offline-or-unknown, and no telemetry gauges
        assert got[("ep_device_online", "cam-b")] == 0
        assert ("ep_device_outbox_backlog", "cam-b") not in got
        assert got[("ep_fleet_devices", "online")] == 1
        assert got[("ep_fleet_devices", "unknown")] == 1

        # the device drops off the network: its last will turns the gauge to 0
        dev.kill()
        wait_until(
            lambda: gauges(client).get(("ep_device_online", "cam-a")) == 0, 15, "cam-a offline"
        )
        assert gauges(client)[("ep_fleet_devices", "offline")] == 1
        assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401


def test_a_fleet_of_5000_devices_is_scraped_with_two_queries(hub: Hub) -> None:
    now = time.time()
    hour = math.floor(now / 3600) * 3600
    minute = math.floor(now / 60) * 60 - 60
    devices = [f"d{i:05d}" for i in range(5000)]
    with hub.db.transaction():
        hub.db.conn.executemany(
            "INSERT INTO devices (id, name, password_hash, status, last_seen) "
            "VALUES (?, ?, 'x', ?, ?)",
            [
                (d, d, "online" if i % 10 else "offline", "2026-01-01T00:00:00.000000Z")
                for i, d in enumerate(devices)
            ],
        )
        rollups = []  # (device, metric, step, bucket, vsum, vlast, last_ts)
        for i, d in enumerate(devices):
            rollups.append((d, "outbox_backlog", 3600, hour, float(i), float(i), now - 1))
            rollups.append((d, "inferences", 3600, hour, 30.0, 30.0, now - 1))
            rollups.append((d, "inferences", 60, minute, 120.0, 30.0, minute + 30))
        hub.db.conn.executemany(
            "INSERT INTO metric_rollups (device_id, metric, step, bucket, vmin, vmax, vsum, n, "
            "vlast, last_ts) VALUES (?, ?, ?, ?, 0, 0, ?, 1, ?, ?)",
            rollups,
        )
    collector = FleetCollector(hub)
    hub.fleet  # noqa: B018  # opened before counting: the signing key is read once
    statements: list[str] = []
    hub.db.conn.set_trace_callback(statements.append)
    try:
        start = time.perf_counter()
        families = {f.name: f for f in collector.collect()}
        took = time.perf_counter() - start
    finally:
        hub.db.conn.set_trace_callback(None)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 2
    assert took < 3.0, took
    online = {s.labels["device"]: s.value for s in families["ep_device_online"].samples}
    assert len(online) == 5000 and sum(online.values()) == 4500
    backlog = {s.labels["device"]: s.value for s in families["ep_device_outbox_backlog"].samples}
    assert backlog["d04999"] == 4999
    rate = {
        s.labels["device"]: s.value for s in families["ep_device_inferences_per_second"].samples
    }
    assert set(rate.values()) == {2.0}
