"""The live stream: the bus's ring and coalescing (injected clock), and `GET /api/v1/stream` and
`/overview` served by a real uvicorn over a hub whose fleet service talks to real Mosquitto, fed
by test devices publishing the wire contract's messages."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from cloud_hub.api.app import create_app
from cloud_hub.auth.tokens import TokenCreate
from cloud_hub.core.errors import InvalidInput
from cloud_hub.fleet.schemas import DeviceCreate
from cloud_hub.hub import Hub
from cloud_hub.stream.bus import EventBus
from cloud_hub.stream.client import HubRefused, HubStream, StreamEvent, fetch_overview
from edge_agent.core.wire import DeviceStatus, TelemetryBatch, TelemetryRecord
from tests.cloud_hub.conftest import Device, register_model
from tests.conftest import admin_headers, free_port
from tests.waiting import wait_until


# -- the bus ------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_telemetry_is_coalesced_to_one_event_per_device_per_window_and_the_newest_wins() -> None:
    clock = Clock()
    bus = EventBus(capacity=100, coalesce_s=1.0, clock=clock, boot="0badcafe")
    bus.publish("telemetry", {"id": "a", "cpu": 1}, key="a")
    bus.publish("telemetry", {"id": "a", "cpu": 2}, key="a")  # too soon: waits
    bus.publish("telemetry", {"id": "a", "cpu": 3}, key="a")  # replaces the waiting one
    bus.publish("telemetry", {"id": "b", "cpu": 9}, key="b")  # another device: at once
    first = bus.read(0)
    assert [e.data for e in first.events] == ['{"id": "a", "cpu": 1}', '{"id": "b", "cpu": 9}']
    clock.now += 0.5
    assert bus.read(first.cursor).events == []  # still inside a's window
    clock.now += 0.5
    later = bus.read(first.cursor)  # the window ended: the newest waiting values go out
    assert [e.data for e in later.events] == ['{"id": "a", "cpu": 3}']
    assert bus.stats()["coalesced"] == 1


def test_a_reader_that_falls_off_the_ring_is_told_how_many_events_it_missed() -> None:
    bus = EventBus(capacity=10, boot="0badcafe")
    for n in range(25):
        bus.publish("device", {"n": n})
    read = bus.read(3)
    assert read.missed == 12  # events 4..15 are gone; 16..25 are held
    assert [e.n for e in read.events] == list(range(16, 26))
    assert bus.read(read.cursor).events == []


def test_resume_positions_and_refused_last_event_ids() -> None:
    bus = EventBus(capacity=10, boot="0badcafe")
    for n in range(30):
        bus.publish("device", {"n": n})
    assert bus.position(None).n == 30
    assert bus.position("0badcafe-25").n == 25 and bus.position("0badcafe-25").lost is None
    assert bus.position("0badcafe-5").lost == "expired"  # older than the ring
    assert bus.position("deadbeef-25").lost == "restart"  # another hub process
    for bad in ("25", "0badcafe-x", "0badcafe-25; DROP", "0BADCAFE-1" + "9" * 30):
        with pytest.raises(InvalidInput, match="Last-Event-ID"):
            bus.position(bad)
    with pytest.raises(InvalidInput, match="has not happened yet"):
        bus.position("0badcafe-31")


# -- the API, with real processes around it ------------------------------------------------------
class Served:
    """The hub's app (lifespan and all: fleet service, live stream) on a real port."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(hub, scheduler=False),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 20, "the hub's HTTP server")
        self.viewer = hub.tokens.create(TokenCreate(name="watcher", role="viewer")).token

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def served(fleet_hub: Hub) -> Iterator[Served]:
    fleet_hub.settings.stream_sample_s = 0.1
    s = Served(fleet_hub)
    yield s
    s.close()


class Reader:
    """A stream read on a thread; events land in a queue."""

    def __init__(self, stream: HubStream) -> None:
        self.stream = stream
        self.events: queue.Queue[StreamEvent] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.stream.events():
                self.events.put(event)
        except BaseException as exc:  # the stream closed under it, or refused
            self.error = exc

    def next(
        self, kind: str, match: dict[str, Any] | None = None, timeout: float = 10
    ) -> StreamEvent:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} event matching {match} within {timeout}s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event.kind == kind and all(event.data.get(k) == v for k, v in (match or {}).items()):
                return event

    def close(self) -> None:
        self.stream.close()
        self.thread.join(timeout=10)


def telemetry(device: str, seq: int, cpu: float, backlog: int) -> TelemetryBatch:
    record = TelemetryRecord(
        seq=seq,
        ts=1_700_000_000.0 + seq * 5,
        cpu_percent=cpu,
        memory_percent=40.0,
        temperature_c=51.5,
        inferences={"3": 50},
        latency_ms={"3": {"p50": 4.0, "p99": 9.0}},
        outbox_pending=backlog,
        outbox_dropped=0,
    )
    return TelemetryBatch(device_id=device, epoch="e1", floor=seq, records=[record])


def test_the_stream_shows_a_device_come_online_send_telemetry_and_go_offline_by_its_last_will(
    served: Served, make_device: Any
) -> None:
    hub = served.hub
    hub.fleet.devices.register(DeviceCreate(id="cam-1", tags=["cam"], group="lab"))
    before = fetch_overview(served.url, served.viewer)
    assert [d["id"] for d in before["devices"]] == ["cam-1"]
    assert before["devices"][0]["status"] == "unknown"
    reader = Reader(HubStream(served.url, served.viewer, last_event_id=before["last_event_id"]))
    try:
        hello = reader.next("hello")
        assert hello.data["last_event_id"] == before["last_event_id"]
        dev: Device = make_device("cam-1")
        dev.send("status", DeviceStatus(device_id="cam-1", state="online", agent_version="1.2.3"))
        online = reader.next("device", {"id": "cam-1", "status": "online"})
        assert online.data["agent_version"] == "1.2.3" and online.data["status_since"] > 0
        dev.send("telemetry", telemetry("cam-1", 1, 12.5, 3))
        first = reader.next("telemetry", {"id": "cam-1"})
        assert first.data["cpu"] == 12.5 and first.data["outbox_backlog"] == 3
        assert first.data["latency_p99"] == 9.0
        assert first.data["last_seen"] >= online.data["status_since"]  # the hub's clock
        dev.send("telemetry", telemetry("cam-1", 2, 80.0, 7))
        second = reader.next("telemetry", {"id": "cam-1", "cpu": 80.0})
        assert second.data["inferences_per_s"] == 10.0  # 50 inferences over 5 s
        dev.kill()  # no DISCONNECT: the broker publishes the last will
        offline = reader.next("device", {"id": "cam-1", "status": "offline"})
        assert offline.data["status_since"] >= online.data["status_since"]

        now = fetch_overview(served.url, served.viewer)
        row = now["devices"][0]
        assert row["status"] == "offline" and row["cpu"] == 80.0 and row["outbox_backlog"] == 7
        assert row["tags"] == ["cam"] and row["group"] == "lab"
    finally:
        reader.close()

    # resuming after the online event replays what came after it, in order
    resumed = Reader(HubStream(served.url, served.viewer, last_event_id=online.id))
    try:
        resumed.next("hello")
        replayed = resumed.next("device", {"id": "cam-1", "status": "offline"})
        assert replayed.id == offline.id
    finally:
        resumed.close()


def test_a_new_deployment_and_its_progress_reach_the_stream(
    served: Served, onnx_bytes: bytes
) -> None:
    hub = served.hub
    hub.fleet.devices.register(DeviceCreate(id="pi-1"))
    reader = Reader(HubStream(served.url, served.viewer))
    try:
        reader.next("hello")
        version = register_model(hub, onnx_bytes, tflite=False)
        http = httpx.Client(base_url=served.url, headers=admin_headers(hub), timeout=30)
        made = http.post("/api/v1/deployments", json={"version": str(version.id), "device": "pi-1"})
        assert made.status_code == 201, made.text
        event = reader.next("deployment", {"id": made.json()["id"]})
        assert event.data["devices"]["total"] == 1 and event.data["progress"] == 0.0
    finally:
        reader.close()


def test_the_stream_refuses_what_it_cannot_serve(served: Served) -> None:
    url = f"{served.url}/api/v1/stream"
    assert httpx.get(url, timeout=5).status_code == 401  # no token
    bad = httpx.get(
        url,
        headers={"Authorization": f"Bearer {served.viewer}", "Last-Event-ID": "not-an-id"},
        timeout=5,
    )
    assert bad.status_code == 400
    assert "Last-Event-ID" in bad.json()["detail"]
    with pytest.raises(HubRefused, match="401"):
        fetch_overview(served.url, "ep_wrong")


def test_a_client_that_never_reads_does_not_hold_up_ingest_or_other_readers(
    served: Served, make_device: Any
) -> None:
    hub = served.hub
    hub.fleet.devices.register(DeviceCreate(id="busy"))
    stalled = httpx.Client(timeout=30)
    with stalled.stream(
        "GET", f"{served.url}/api/v1/stream", headers={"Authorization": f"Bearer {served.viewer}"}
    ) as never_read:
        assert never_read.status_code == 200  # opened, then never read again
        reader = Reader(HubStream(served.url, served.viewer))
        try:
            reader.next("hello")
            dev: Device = make_device("busy")
            for seq in range(1, 41):
                dev.send("telemetry", telemetry("busy", seq, float(seq), seq))
            dev.wait_ack(40)  # ingest kept up: every batch stored and acknowledged
            reader.next("telemetry", {"id": "busy", "cpu": 40.0})
        finally:
            reader.close()
    stalled.close()
