"""Group commit: many log/telemetry batches of many devices in one SQLite transaction, stored off
paho's network thread by the ingest worker, each stored once by (device, epoch, seq) and acked
only after its transaction committed; against a real SQLite file and (for the service) a real
Mosquitto."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.core.db import Database
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.errors import Rejected
from cloud_hub.fleet.ingest import Ingest, Item
from cloud_hub.fleet.ingest_worker import IngestWorker, Pending
from cloud_hub.fleet.mqtt_service import FleetService
from cloud_hub.fleet.schemas import DeviceCreate
from cloud_hub.hub import Hub
from edge_agent.core.wire import Ack, LogBatch, LogRecord, TelemetryBatch, TelemetryRecord, Topics
from tests.cloud_hub.conftest import Device, unique
from tests.waiting import wait_until

MakeDevice = Callable[[str], Device]

EPOCH = "c3c3c3c3c3c3c3c3"


def _record(seq: int, tag: str = "") -> LogRecord:
    return LogRecord(
        seq=seq,
        request_id=f"{tag}req-{seq}",
        model_version=1,
        input_digest="abc",
        output=[0.2, 0.8],
        latency_ms=0.5,
        ts=time.time(),
    )


def _logs(dev: str, seqs: range | list[int], *, floor: int | None = None) -> LogBatch:
    seqs = list(seqs)
    first = floor if floor is not None else (seqs[0] if seqs else 1)
    return LogBatch(device_id=dev, epoch=EPOCH, floor=first, records=[_record(s) for s in seqs])


def _telemetry(dev: str, seq: int) -> TelemetryBatch:
    return TelemetryBatch(
        device_id=dev,
        epoch=EPOCH,
        floor=seq,
        records=[TelemetryRecord(seq=seq, ts=time.time(), cpu_percent=12.5)],
    )


def _unstorable(dev: str, seq: int) -> LogBatch:
    """A batch that passes the rules but cannot be stored (an output JSON cannot encode): only
    a bug could build it, which is what the worker's fallback is for."""
    bad = LogRecord.model_construct(**{**_record(seq).model_dump(), "output": {"x": {1, 2}}})
    return LogBatch(device_id=dev, epoch=EPOCH, floor=seq, records=[]).model_copy(
        update={"records": [bad]}
    )


def _rows(path: Path, dev: str) -> list[int]:
    """Seqs stored for `dev`, read on a connection of our own (what another process sees)."""
    with sqlite3.connect(path) as conn:
        logs = conn.execute("SELECT seq FROM inference_logs WHERE device_id = ?", [dev])
        tele = conn.execute("SELECT seq FROM telemetry WHERE device_id = ?", [dev])
        return sorted([r[0] for r in logs] + [r[0] for r in tele])


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "hub.sqlite3")
    yield database
    database.close()


# -- Ingest.store_many ---------------------------------------------------------------------------
def test_one_transaction_stores_each_batch_once_and_refuses_only_the_bad_one(
    db: Database,
) -> None:
    ingest = Ingest(db, max_batch_records=10)
    items: list[Item] = [
        ("a", _logs("a", range(1, 4))),
        ("b", _logs("b", range(1, 3))),
        ("a", _logs("a", range(4, 6))),  # same (device, epoch): the mark goes on from 3
        ("a", _logs("a", range(4, 6))),  # a duplicate in the same group
        ("b", _logs("b", range(1, 12))),  # 11 records: refused, nothing of it stored
        ("c", _telemetry("c", 1)),
        ("b", _telemetry("b", 3)),  # logs and telemetry share the epoch's sequence
        ("c", _logs("c", [3], floor=5)),  # floor above its first record: refused
    ]
    outcomes = ingest.store_many(items)
    assert outcomes[:4] == [3, 2, 5, 5]
    assert isinstance(outcomes[4], Rejected) and "more than the 10" in str(outcomes[4])
    assert outcomes[5:7] == [1, 3]
    assert isinstance(outcomes[7], Rejected) and "above its first record" in str(outcomes[7])
    assert _rows(db.path, "a") == [1, 2, 3, 4, 5]
    assert _rows(db.path, "b") == [1, 2, 3]
    assert _rows(db.path, "c") == [1]
    marks = dict(db.conn.execute("SELECT device_id, acked_upto FROM device_epochs").fetchall())
    assert marks == {"a": 5, "b": 3, "c": 1}


def test_an_unexpected_error_rolls_the_whole_group_back(db: Database) -> None:
    ingest = Ingest(db)
    with pytest.raises(TypeError, match="JSON serializable"):
        ingest.store_many([("a", _logs("a", [1])), ("a", _unstorable("a", 2))])
    assert _rows(db.path, "a") == []
    assert db.conn.execute("SELECT count(*) FROM device_epochs").fetchone()[0] == 0


# -- the worker ------------------------------------------------------------------------------------
class Outcomes:
    """What the worker hands on, with the rows another connection saw at that moment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.stored: list[tuple[str, int, list[int]]] = []
        self.refused: list[tuple[str, str, str]] = []

    def on_stored(self, item: Pending, mark: int) -> None:
        seen = _rows(self.path, item.device_id)
        with self.lock:
            self.stored.append((item.device_id, mark, seen))

    def on_refused(self, counter: str, item: Pending, reason: str) -> None:
        with self.lock:
            self.refused.append((counter, item.device_id, reason))


def _pending(batch: LogBatch | TelemetryBatch) -> Pending:
    return Pending(batch.device_id, f"t/{batch.device_id}/logs", batch)


def test_stop_drains_the_queue_in_one_commit_and_hands_on_only_committed_marks(
    db: Database,
) -> None:
    seen = Outcomes(db.path)
    worker = IngestWorker(
        Ingest(db),
        stored=seen.on_stored,
        refused=seen.on_refused,
        max_messages=1000,
        max_delay_s=30.0,  # would wait: stop() must not
    )
    worker.start()
    for n in range(1, 21):
        for dev in ("a", "b", "c"):
            worker.put(_pending(_logs(dev, [n])))
    started = time.monotonic()
    worker.stop()
    assert time.monotonic() - started < 10
    assert len(seen.stored) == 60 and seen.refused == []
    for dev in ("a", "b", "c"):
        marks = [(m, rows) for d, m, rows in seen.stored if d == dev]
        assert [m for m, _ in marks] == list(range(1, 21))
        # every mark was handed on once all 20 rows were readable elsewhere: after the commit
        assert all(rows == list(range(1, 21)) for _, rows in marks)
    stats = worker.stats()
    assert (stats["commits"], stats["batches_per_commit_max"], stats["ingest_queue"]) == (1, 60, 0)
    worker.put(_pending(_logs("a", [21])))  # after stop: stored at once, here
    assert seen.stored[-1][:2] == ("a", 21)


def test_a_group_that_fails_is_stored_item_by_item_and_the_worker_goes_on(
    db: Database,
) -> None:
    seen = Outcomes(db.path)
    worker = IngestWorker(
        Ingest(db), stored=seen.on_stored, refused=seen.on_refused, max_messages=3
    )
    worker.start()
    try:
        for batch in (_logs("a", [1]), _unstorable("b", 1), _logs("c", [1])):
            worker.put(_pending(batch))
        wait_until(lambda: len(seen.stored) + len(seen.refused) == 3, what="the group handled")
        assert sorted(d for d, _, _ in seen.stored) == ["a", "c"]
        assert [(c, d) for c, d, _ in seen.refused] == [("errors", "b")]
        assert "hub error" in seen.refused[0][2] and "JSON serializable" in seen.refused[0][2]
        worker.put(_pending(_logs("b", [1])))  # the thread is alive and b can still send
        wait_until(lambda: ("b", 1, [1]) in seen.stored, what="b's next batch stored")
        assert worker.stats()["commit_errors"] == 1
    finally:
        worker.stop()


def test_a_full_queue_makes_put_wait_and_loses_nothing(db: Database) -> None:
    seen = Outcomes(db.path)
    worker = IngestWorker(
        Ingest(db),
        stored=seen.on_stored,
        refused=seen.on_refused,
        max_messages=5,
        max_delay_s=0.0,
        queue_size=2,
    )
    worker.start()
    try:
        for n in range(1, 101):
            worker.put(_pending(_logs("a", [n])))
            assert worker.depth() <= 2 + 5  # the queue, and the group being gathered
        wait_until(lambda: len(seen.stored) == 100, what="all 100 stored")
        assert [m for _, m, _ in seen.stored] == list(range(1, 101))
        assert _rows(db.path, "a") == list(range(1, 101))
    finally:
        worker.stop()


# -- the fleet service over Mosquitto ---------------------------------------------------------
class AckWitness:
    """A client beside the devices: on every ack, reads the device's rows on a connection of its
    own, i.e. what was committed when the ack reached the broker's subscribers."""

    def __init__(self, address: tuple[str, int], root: str, db_path: Path) -> None:
        self.db_path = db_path
        self.seen: list[tuple[str, int, list[int]]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("witness"))
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(*address)
        self.client.loop_start()
        self.client.subscribe(Topics(root).all_devices("ack"), qos=1)
        assert subscribed.wait(30), "the witness got no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        device_id = msg.topic.split("/")[-2]
        rows = _rows(self.db_path, device_id)
        with self._lock:
            self.seen.append((device_id, Ack.loads(bytes(msg.payload)).upto, rows))

    def acks(self) -> list[tuple[str, int, list[int]]]:
        with self._lock:
            return list(self.seen)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _service(settings: HubSettings, **update: object) -> tuple[Hub, FleetService]:
    hub = Hub.open(settings.model_copy(update=update))
    svc = FleetService.from_hub(hub)
    svc.start()
    assert svc.wait_connected(10), "the hub's MQTT client did not connect"
    return hub, svc


def _acks(dev: Device) -> list[int]:
    return [Ack.loads(m).upto for m in dev.messages("ack")]


def test_batches_of_several_devices_share_one_commit_and_each_is_acked_once_after_it(
    fleet_settings: HubSettings, mosquitto: tuple[str, int], make_device: MakeDevice
) -> None:
    ids = [unique(f"pi{n}") for n in range(4)]
    # 4 devices x 3 messages + 1 refused: the group closes on its 13th message, not on time
    hub, svc = _service(
        fleet_settings, fleet_commit_max_messages=13, fleet_commit_max_delay_ms=9000
    )
    witness = AckWitness(mosquitto, fleet_settings.topic_root, hub.db.path)
    try:
        for device_id in ids:
            hub.fleet.devices.register(DeviceCreate(id=device_id))
        devices = [make_device(device_id) for device_id in ids]
        for dev in devices:
            dev.send("logs", _logs(dev.id, range(1, 4)))
            dev.send("telemetry", _telemetry(dev.id, 4))
            dev.send("logs", _logs(dev.id, range(1, 4)))  # sent again (a lost ack): stored once
        devices[1].send("logs", _logs(devices[1].id, [9], floor=10))  # floor above its record
        wait_until(lambda: all(len(_acks(d)) == 3 for d in devices), what="3 acks per device")
        wait_until(lambda: svc.stats().get("rejected") == 1, what="the refusal")
        stats = svc.stats()
        assert (stats["commits"], stats["batches_per_commit_last"]) == (1, 13)
        for dev in devices:
            assert _acks(dev) == [3, 4, 4]
            assert _rows(hub.db.path, dev.id) == [1, 2, 3, 4]
        wait_until(lambda: len(witness.acks()) == 12, what="the witness saw the 12 acks")
        # every ack, even each device's first (mark 3), found the whole group committed
        assert all(rows == [1, 2, 3, 4] for _, _, rows in witness.acks())
        refused = hub.fleet.devices.get(devices[1].id)
        assert refused.rejected == 1 and "above its first record" in (refused.last_reason or "")
        assert all(
            hub.fleet.devices.get(d.id).rejected == 0 for d in devices if d is not devices[1]
        )
        assert stats["acks"] == 12 and stats["records"] == 4 * 7
    finally:
        witness.close()
        svc.stop()
        hub.close()


def test_stopping_the_service_stores_and_acks_what_is_queued(
    fleet_settings: HubSettings, make_device: MakeDevice
) -> None:
    hub, svc = _service(fleet_settings, fleet_commit_max_delay_ms=10_000)
    stopped = False
    try:
        ids = [unique("pi"), unique("pi")]
        for device_id in ids:
            hub.fleet.devices.register(DeviceCreate(id=device_id))
        a, b = (make_device(device_id) for device_id in ids)
        for n in range(1, 4):
            a.send("logs", _logs(a.id, [n]))
        b.send("telemetry", _telemetry(b.id, 1))
        b.send("logs", _logs(b.id, [2]))
        # all five wait for the group to fill or its 10 s to pass
        wait_until(lambda: svc.stats()["ingest_queue"] == 5, 5, what="five waiting")
        assert _rows(hub.db.path, a.id) == [] and _acks(a) == [] and _acks(b) == []
        svc.stop()
        stopped = True
        assert _rows(hub.db.path, a.id) == [1, 2, 3] and _rows(hub.db.path, b.id) == [1, 2]
        wait_until(lambda: _acks(a) == [1, 2, 3] and _acks(b) == [1, 2], what="the acks")
        assert svc.stats()["commits"] == 1
    finally:
        if not stopped:
            svc.stop()
        hub.close()


class SeenTelemetry:
    """A FleetObserver that notes, for each telemetry batch it is told of, what was committed."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.calls: list[tuple[str, list[int], list[int]]] = []

    def device_changed(self, device_id: str) -> None:
        pass

    def report_applied(self, device_id: str, deployment_id: int | None) -> None:
        pass

    def telemetry_stored(self, device_id: str, records: Sequence[TelemetryRecord]) -> None:
        rows = _rows(self.db_path, device_id)
        self.calls.append((device_id, [r.seq for r in records], rows))


def test_the_observer_hears_of_each_telemetry_batch_once_after_its_group_committed(
    fleet_settings: HubSettings, make_device: MakeDevice
) -> None:
    settings = fleet_settings.model_copy(
        update={"fleet_commit_max_messages": 4, "fleet_commit_max_delay_ms": 10_000}
    )
    hub = Hub.open(settings)
    seen = SeenTelemetry(hub.db.path)
    svc = FleetService.from_hub(hub, observer=seen)
    svc.start()
    try:
        assert svc.wait_connected(10)
        device_id = unique("pi")
        hub.fleet.devices.register(DeviceCreate(id=device_id))
        dev = make_device(device_id)
        for seq in (1, 2, 3):
            dev.send("telemetry", _telemetry(device_id, seq))
        dev.send("logs", _logs(device_id, [4]))
        wait_until(lambda: len(_acks(dev)) == 4, what="4 acks")
        assert _acks(dev) == [1, 2, 3, 4] and svc.stats()["commits"] == 1
        assert seen.calls == [(device_id, [s], [1, 2, 3, 4]) for s in (1, 2, 3)]
    finally:
        svc.stop()
        hub.close()
