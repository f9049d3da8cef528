"""Sequence integrity at the hub: logs and telemetry keyed by (device, outbox epoch, seq), marks
per epoch, and batches that claim too much refused, against a real Mosquitto and the hub's MQTT
service (and, for the outbox's floor steps, the agent's real forwarder and outbox beside it)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.core.migrations import MIGRATIONS
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.ingest import Ingest
from cloud_hub.fleet.mqtt_service import FleetService
from cloud_hub.fleet.schemas import DeviceCreate
from cloud_hub.hub import Hub
from cloud_hub.registry.registry import version_labels
from edge_agent.config import ForwarderSettings
from edge_agent.core.wire import (
    SEQ_WINDOW,
    Ack,
    LogBatch,
    LogRecord,
    TelemetryBatch,
    TelemetryRecord,
    Topics,
)
from edge_agent.forwarder import Forwarder
from edge_agent.outbox import Outbox
from tests.cloud_hub.conftest import Device, unique
from tests.waiting import wait_until

MakeDevice = Callable[[str], Device]
EPOCH_A = "a1a1a1a1a1a1a1a1"
EPOCH_B = "b2b2b2b2b2b2b2b2"


def _record(seq: int, request_id: str | None = None) -> LogRecord:
    return LogRecord(
        seq=seq,
        request_id=request_id or f"req-{seq}",
        model_version=1,
        input_digest="abc",
        output=[0.1, 0.9],
        latency_ms=0.5,
        ts=time.time(),
    )


def _payload(seq: int) -> dict[str, object]:
    """What the agent keeps in its outbox for a log: the record without its seq."""
    doc: dict[str, object] = json.loads(_record(seq).model_dump_json())
    doc.pop("seq")
    return doc


def _logs(
    dev_id: str, seqs: list[int] | range, *, epoch: str = EPOCH_A, floor: int = 1, tag: str = ""
) -> LogBatch:
    return LogBatch(
        device_id=dev_id,
        epoch=epoch,
        floor=floor,
        records=[_record(s, f"{tag}req-{s}" if tag else None) for s in seqs],
    )


def _acks(dev: Device, epoch: str | None = None) -> list[int]:
    """The acks `dev` received, in order (for one epoch when given)."""
    acks = [Ack.loads(m) for m in dev.messages("ack")]
    return [a.upto for a in acks if epoch is None or a.epoch == epoch]


def _wait_acks(dev: Device, epoch: str, count: int) -> list[int]:
    wait_until(lambda: len(_acks(dev, epoch)) >= count, 10, f"{count} ack(s) for {epoch!r}")
    return _acks(dev, epoch)


def _stored(hub: Hub, dev_id: str) -> list[tuple[str, int, str]]:
    rows = hub.db.conn.execute(
        "SELECT epoch, seq, request_id FROM inference_logs WHERE device_id = ? ORDER BY epoch, seq",
        [dev_id],
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def _marks(hub: Hub, dev_id: str) -> dict[str, int]:
    rows = hub.db.conn.execute(
        "SELECT epoch, acked_upto FROM device_epochs WHERE device_id = ?", [dev_id]
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def _register(hub: Hub, *ids: str) -> None:
    for device_id in ids:
        hub.fleet.devices.register(DeviceCreate(id=device_id))


# -- epochs -----------------------------------------------------------------------------------
def test_acks_name_the_epoch_and_two_outboxes_of_one_device_never_collide(
    fleet_hub: Hub, service: FleetService, make_device: MakeDevice
) -> None:
    """A re-flashed device (or a second outbox under its id, a forger in another epoch) numbers
    from 1 again: everything both send is stored, each epoch acknowledged on its own."""
    dev_id = unique("pi")
    _register(fleet_hub, dev_id)
    dev = make_device(dev_id)
    dev.send("logs", _logs(dev_id, range(1, 31), tag="old-"))
    assert _wait_acks(dev, EPOCH_A, 1) == [30]
    # the new outbox starts at 1, in its own epoch; the old epoch's mark does not answer it
    dev.send("logs", _logs(dev_id, [1], epoch=EPOCH_B, tag="new-"))
    assert _wait_acks(dev, EPOCH_B, 1) == [1]
    dev.send("logs", _logs(dev_id, range(2, 31), epoch=EPOCH_B, tag="new-"))
    assert _wait_acks(dev, EPOCH_B, 2) == [1, 30]
    dev.send(
        "telemetry",
        TelemetryBatch(
            device_id=dev_id,
            epoch=EPOCH_B,
            floor=31,
            records=[TelemetryRecord(seq=31, ts=time.time(), cpu_percent=3.0)],
        ),
    )
    assert _wait_acks(dev, EPOCH_B, 3) == [1, 30, 31]
    assert _acks(dev, EPOCH_A) == [30]
    stored = _stored(fleet_hub, dev_id)
    assert len(stored) == 60 and len({(e, s) for e, s, _ in stored}) == 60
    assert {r for e, _, r in stored if e == EPOCH_A} == {f"old-req-{i}" for i in range(1, 31)}
    assert {r for e, _, r in stored if e == EPOCH_B} == {f"new-req-{i}" for i in range(1, 31)}
    assert _marks(fleet_hub, dev_id) == {EPOCH_A: 30, EPOCH_B: 31}
    device = fleet_hub.fleet.devices.get(dev_id)
    assert (device.epoch, device.acked_upto, device.logs_stored) == (EPOCH_B, 31, 60)
    assert device.telemetry_stored == 1
    newest = fleet_hub.fleet.devices.logs(dev_id, limit=32)  # the new epoch first
    assert [(r.epoch, r.seq) for r in newest[:2]] == [(EPOCH_B, 30), (EPOCH_B, 29)]
    assert [(r.epoch, r.seq) for r in newest[-2:]] == [(EPOCH_A, 30), (EPOCH_A, 29)]
    assert service.stats().get("seq_conflicts", 0) == 0


def test_a_batch_of_an_agent_before_epochs_is_stored_in_the_legacy_epoch(
    fleet_hub: Hub, service: FleetService, make_device: MakeDevice
) -> None:
    dev_id = unique("old")
    _register(fleet_hub, dev_id)
    dev = make_device(dev_id)
    old_format = {  # what an agent of the release before epochs sends
        "v": 1,
        "device_id": dev_id,
        "floor": 1,
        "records": [json.loads(_record(s).model_dump_json()) for s in (1, 2)],
    }
    dev.send("logs", json.dumps(old_format).encode())
    wait_until(lambda: _acks(dev) == [2], what="the ack")
    assert json.loads(dev.messages("ack")[0]) == {"v": 1, "upto": 2, "epoch": ""}
    assert _stored(fleet_hub, dev_id) == [("", 1, "req-1"), ("", 2, "req-2")]
    assert fleet_hub.fleet.devices.get(dev_id).epoch == ""


# -- refusals ---------------------------------------------------------------------------------
def test_batches_claiming_too_much_are_refused_unacked_without_stalling_anyone(
    fleet_hub: Hub, service: FleetService, make_device: MakeDevice
) -> None:
    dev_id, other_id = unique("pi"), unique("pi")
    _register(fleet_hub, dev_id, other_id)
    dev, other = make_device(dev_id), make_device(other_id)
    window = fleet_hub.settings.fleet_seq_window
    cap = fleet_hub.settings.fleet_max_batch_records
    dev.send("logs", _logs(dev_id, range(1, 6)))
    assert _wait_acks(dev, EPOCH_A, 1) == [5]
    refused = [
        # a floor far ahead (the tester's 10^9, and one just past the window)
        (_logs(dev_id, [10**9], floor=10**9), "floor 1000000000 is more than"),
        (_logs(dev_id, [window + 7], floor=window + 7), f"floor {window + 7} is more than"),
        # a sequence far ahead of the mark, with an honest floor
        (_logs(dev_id, [5 + window + 1], floor=6), f"reaches sequence {5 + window + 1}"),
        # a floor above the batch's own first record
        (_logs(dev_id, [6, 7], floor=8), "floor 8 is above its first record 6"),
        # more records than one batch may carry, all within the window
        (_logs(dev_id, range(6, 6 + cap + 1), floor=6), f"batch of {cap + 1} records"),
    ]
    rejected = service.stats().get("rejected", 0)
    for n, (batch, reason) in enumerate(refused, 1):
        dev.send("logs", batch)
        # another device's traffic goes on at once
        other.send("logs", _logs(other_id, [n], floor=n))
        assert _wait_acks(other, EPOCH_A, n)[-1] == n
        wait_until(lambda n=n: service.stats().get("rejected", 0) >= rejected + n, 10, reason)
        last = fleet_hub.fleet.devices.get(dev_id).last_reason
        assert last is not None and reason in last, (reason, last)
    # nothing of the refused batches was stored, the mark did not move, nothing was acked
    assert [s for _, s, _ in _stored(fleet_hub, dev_id)] == [1, 2, 3, 4, 5]
    assert _marks(fleet_hub, dev_id) == {EPOCH_A: 5}
    assert fleet_hub.fleet.devices.get(dev_id).rejected == len(refused)
    # the device itself is not stalled: its next honest batch is stored and acknowledged
    dev.send("logs", _logs(dev_id, range(6, 11)))
    assert _wait_acks(dev, EPOCH_A, 2) == [5, 10]  # and no ack in between for a refused one
    assert len(_acks(dev)) == 2


def test_a_floor_jump_within_the_window_is_honoured_and_an_unseen_epoch_sets_its_base(
    fleet_hub: Hub, service: FleetService, make_device: MakeDevice
) -> None:
    """The agent dropped records under overflow: its floor says so, and the hub acks over the
    gap; the first batch of a new epoch may start anywhere (an outbox from before epochs)."""
    dev_id = unique("pi")
    _register(fleet_hub, dev_id)
    dev = make_device(dev_id)
    dev.send("logs", _logs(dev_id, [1, 2]))
    dev.send("logs", _logs(dev_id, [50_001, 50_002], floor=50_001))
    assert _wait_acks(dev, EPOCH_A, 2) == [2, 50_002]
    start = 10 * fleet_hub.settings.fleet_seq_window
    dev.send("logs", _logs(dev_id, [start], epoch=EPOCH_B, floor=start))
    assert _wait_acks(dev, EPOCH_B, 1) == [start]
    dev.send("logs", _logs(dev_id, [start + 1], epoch=EPOCH_B, floor=start))
    assert _wait_acks(dev, EPOCH_B, 2) == [start, start + 1]


def test_forged_records_ahead_in_the_same_epoch_are_bounded_and_counted(
    fleet_hub: Hub, service: FleetService, make_device: MakeDevice
) -> None:
    """What the bound guarantees in one epoch: a forged batch within the window is stored (the
    hub cannot tell it from the agent's), and the agent's records it shadows are counted as
    conflicts, not silently dropped as duplicates; one beyond the window is refused, so the
    agent's later numbers are untouched."""
    dev_id = unique("pi")
    _register(fleet_hub, dev_id)
    dev = make_device(dev_id)
    window = fleet_hub.settings.fleet_seq_window
    dev.send("logs", _logs(dev_id, range(1, 6)))
    assert _wait_acks(dev, EPOCH_A, 1) == [5]
    far = 5 + window + 1
    dev.send("logs", _logs(dev_id, [far], floor=6, tag="forged-"))  # refused
    dev.send("logs", _logs(dev_id, [6, 7], floor=6, tag="forged-"))  # within reach: stored
    assert _wait_acks(dev, EPOCH_A, 2) == [5, 7]
    # the agent's own records 6..8 arrive: 6 and 7 collide with the forgeries, 8 does not
    dev.send("logs", _logs(dev_id, [6, 7, 8], floor=6))
    assert _wait_acks(dev, EPOCH_A, 3) == [5, 7, 8]
    assert service.stats().get("seq_conflicts") == 2
    stored = dict(((s, r) for _, s, r in _stored(fleet_hub, dev_id)))
    assert stored[6] == "forged-req-6" and stored[8] == "req-8" and far not in stored
    # ... and far ahead, where the refused forgery aimed, the agent's record is its own
    dev.send("logs", _logs(dev_id, [far], floor=far))
    assert _wait_acks(dev, EPOCH_A, 4)[-1] == far
    assert dict(((s, r) for _, s, r in _stored(fleet_hub, dev_id)))[far] == f"req-{far}"
    assert service.stats().get("seq_conflicts") == 2


def test_the_prediction_log_pages_through_both_epochs_of_a_device_once(hub: Hub) -> None:
    """Records of two epochs may share a seq and a time: their keys differ, so keyset paging
    neither skips nor repeats one."""
    from cloud_hub.predlog.query import LogFilter, LogReader

    _register(hub, "pi-2")
    ingest = Ingest(hub.db)
    ts = 1_700_000_000.5
    for epoch in ("", EPOCH_A, EPOCH_B):
        batch = _logs("pi-2", [1, 2, 3], epoch=epoch, tag=f"{epoch or 'legacy'}-")
        for record in batch.records:
            record.ts = ts
        ingest.store_logs("pi-2", batch)
    want = sorted(f"{e}-req-{s}" for e in ("legacy", EPOCH_A, EPOCH_B) for s in (1, 2, 3))
    reader = LogReader(hub.db, lambda v: version_labels(hub.db.conn, v))
    for limit in (1, 2, 4):
        seen: list[str] = []
        cursor = None
        while True:
            page = reader.page(LogFilter(device_id="pi-2"), limit=limit, cursor=cursor)
            seen += [r["request_id"] for r in page.records]
            cursor = page.next
            if cursor is None:
                break
        assert sorted(seen) == want and len(seen) == len(set(seen)), limit


# -- the agent's forwarder and outbox against the hub ---------------------------------------------
class _Link:
    """What the agent's MQTT link does for the forwarder: publish batches, deliver acks."""

    def __init__(self, address: tuple[str, int], root: str, device_id: str) -> None:
        self.topics = Topics(root)
        self.device_id = device_id
        self.on_ack: Callable[[bytes], None] = lambda payload: None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("fwd"))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, msg: self.on_ack(bytes(msg.payload))
        self.client.connect(*address)
        self.client.loop_start()
        self.client.subscribe(self.topics.device(device_id, "ack"), 1)
        assert subscribed.wait(10)

    def send(self, kind: str, payload: bytes) -> bool:
        topic = self.topics.device(self.device_id, kind)  # type: ignore[arg-type]
        info = self.client.publish(topic, payload, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def link(
    fleet_settings: HubSettings, mosquitto: tuple[str, int]
) -> Iterator[Callable[[str], _Link]]:
    links: list[_Link] = []

    def make(device_id: str) -> _Link:
        links.append(_Link(mosquitto, fleet_settings.topic_root, device_id))
        return links[-1]

    yield make
    for made in links:
        made.close()


def test_an_outbox_that_dropped_more_than_the_window_steps_its_floor_and_loses_nothing_more(
    fleet_hub: Hub, service: FleetService, link: Callable[[str], _Link], tmp_path: Path
) -> None:
    """A long outage: the outbox (20 records) dropped 480 the hub never saw. The forwarder,
    whose batches reach at most `window` past its last ack, tells the hub in floor steps, then
    sends what it holds; the hub acks the whole run and stores all 20."""
    dev_id = unique("pi")
    _register(fleet_hub, dev_id)
    wire = link(dev_id)
    online = threading.Event()
    with Outbox(tmp_path / "outbox.sqlite3", max_records=20, durable=False) as outbox:
        outbox.append("log", _payload(1))
        forwarder = Forwarder(
            dev_id,
            outbox,
            ForwarderSettings(batch_size=8, max_in_flight=2, resend_after_s=2.0),
            wire.send,
            online.is_set,
            poll_s=0.05,
            window=50,
        )
        wire.on_ack = forwarder.on_ack
        forwarder.start()
        try:
            online.set()
            wait_until(lambda: outbox.stats().pending == 0, 10, "the first record acked")
            online.clear()  # the outage
            outbox.append_many([("log", _payload(s)) for s in range(2, 502)])
            assert outbox.floor() == 482 and outbox.stats().dropped_total == 480
            online.set()
            forwarder.wake()
            wait_until(lambda: outbox.stats().pending == 0, 20, "the outbox drained")
        finally:
            forwarder.stop()
        stats = forwarder.stats()
    assert stats["floor_steps"] == 9  # floors 52, 102, ... 452: then 482 is within reach
    assert stats["bad_acks"] == 0 and stats["epoch"] == outbox.epoch
    assert _marks(fleet_hub, dev_id) == {outbox.epoch: 501}
    assert [s for _, s, _ in _stored(fleet_hub, dev_id)] == [1, *range(482, 502)]
    assert service.stats().get("rejected", 0) == 0


def test_the_hubs_window_is_never_narrower_than_what_agents_reach() -> None:
    fields = HubSettings.model_fields
    assert fields["fleet_seq_window"].default >= SEQ_WINDOW
    with pytest.raises(ValueError, match="fleet_seq_window"):
        HubSettings(data_dir=Path("/tmp/x"), fleet_seq_window=SEQ_WINDOW - 1)


# -- migration 10 -----------------------------------------------------------------------------
def _database_at_migration_9(path: Path) -> None:
    """A hub database as the release with migration 9 left it (as Database.migrate makes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as raw:
        raw.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
        )
        for migration in MIGRATIONS:
            if migration.version > 9:
                break
            for statement in migration.statements:
                raw.execute(statement)
            raw.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                [migration.version, migration.name],
            )


def test_migration_10_keeps_every_row_in_the_legacy_epoch(tmp_path: Path) -> None:
    settings = HubSettings(data_dir=tmp_path / "hub", run_scheduler=False)
    _database_at_migration_9(settings.db_path)
    with sqlite3.connect(settings.db_path) as raw:
        for device_id, acked in (("cam-1", 3), ("cam-2", 0), ("idle", 0)):
            raw.execute(
                "INSERT INTO devices (id, name, password_hash, acked_upto) VALUES (?, ?, 'x', ?)",
                [device_id, device_id, acked],
            )
        raw.executemany(
            "INSERT INTO inference_logs (device_id, seq, request_id, model_version, "
            "input_digest, output, latency_ms, ts, source, role, thresholded, features) "
            "VALUES (?, ?, ?, 1, 'd', '[0.2, 0.8]', 1.5, ?, 'api', ?, ?, ?)",
            [
                ("cam-1", 1, "r1", 10.0, "active", 0, None),
                ("cam-1", 2, "r1", 10.5, "shadow", 1, b"\x01\x02"),
                ("cam-2", 7, "r7", 11.0, "active", 0, None),
            ],
        )
        raw.execute(
            "INSERT INTO telemetry (device_id, seq, ts, data) VALUES ('cam-1', 3, 12.0, '{}')"
        )
    hub = Hub.open(settings)
    try:
        conn = hub.db.conn
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == [m.version for m in MIGRATIONS] and 10 in versions
        logs = conn.execute(
            "SELECT device_id, epoch, seq, request_id, role, thresholded, features, output, ts "
            "FROM inference_logs ORDER BY device_id, seq"
        ).fetchall()
        assert [tuple(r) for r in logs] == [
            ("cam-1", "", 1, "r1", "active", 0, None, "[0.2, 0.8]", 10.0),
            ("cam-1", "", 2, "r1", "shadow", 1, b"\x01\x02", "[0.2, 0.8]", 10.5),
            ("cam-2", "", 7, "r7", "active", 0, None, "[0.2, 0.8]", 11.0),
        ]
        tele = conn.execute("SELECT device_id, epoch, seq, ts, data FROM telemetry").fetchall()
        assert [tuple(r) for r in tele] == [("cam-1", "", 3, 12.0, "{}")]
        assert _marks(hub, "cam-1") == {"": 3} and _marks(hub, "cam-2") == {"": 0}
        assert _marks(hub, "idle") == {}
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master "
                "WHERE type = 'index' AND tbl_name = 'inference_logs'"
            )
        }
        assert {
            "inference_logs_request",
            "inference_logs_ts",
            "inference_logs_version",
            "inference_logs_device_ts",
        } <= indexes
        # the key is (device, epoch, seq) now: seq 1 again in another epoch, not twice in one
        conn.execute(
            "INSERT INTO telemetry (device_id, epoch, seq, ts, data) "
            "VALUES ('cam-1', 'e1', 3, 0, '{}')"
        )
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO telemetry (device_id, epoch, seq, ts, data) "
                "VALUES ('cam-1', '', 3, 0, '{}')"
            )
        device = hub.fleet.devices.get("cam-1")
        assert (device.acked_upto, device.epoch, device.logs_stored) == (3, "", 2)
        assert device.telemetry_stored == 2
        assert [r.seq for r in hub.fleet.devices.logs("cam-1")] == [2, 1]
        # an agent before epochs carries on where it was
        ingest = Ingest(hub.db)
        legacy = LogBatch(device_id="cam-1", floor=4, records=[_record(4), _record(5)])
        assert ingest.store_logs("cam-1", legacy) == 5
        assert hub.fleet.devices.get("cam-1").acked_upto == 5
    finally:
        hub.close()


def test_a_batch_never_holds_more_payload_bytes_than_the_forwarder_allows(
    fleet_hub: Hub, service: FleetService, link: Callable[[str], _Link], tmp_path: Path
) -> None:
    """The broker disconnects a client whose packet is over `max_packet_size`; a batch of 250
    large records could be, and would be sent again after every reconnect, forever. The
    forwarder cuts batches by bytes too, and every record still reaches the hub once."""
    dev_id = unique("pi")
    _register(fleet_hub, dev_id)
    wire = link(dev_id)
    sizes: list[int] = []

    def send(kind: str, payload: bytes) -> bool:
        sizes.append(len(payload))
        return wire.send(kind, payload)

    limit = 16 * 1024
    with Outbox(tmp_path / "outbox.sqlite3", durable=False) as outbox:
        big = {**_payload(1), "output": [0.123456789] * 400}  # about 5 KB of JSON each
        outbox.append_many([("log", big) for _ in range(40)])
        forwarder = Forwarder(
            dev_id,
            outbox,
            ForwarderSettings(batch_size=250, max_batch_bytes=limit, resend_after_s=5.0),
            send,
            lambda: True,
            poll_s=0.05,
        )
        wire.on_ack = forwarder.on_ack
        forwarder.start()
        try:
            wait_until(lambda: outbox.stats().pending == 0, 20, "the outbox drained")
        finally:
            forwarder.stop()
    assert len(sizes) >= 10 and max(sizes) <= limit + 2048  # the records, and a small envelope
    assert [s for _, s, _ in _stored(fleet_hub, dev_id)] == list(range(1, 41))
