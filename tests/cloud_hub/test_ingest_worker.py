"""Group commit: many log/telemetry batches of many devices in one SQLite transaction, stored off
paho's network thread by the ingest worker, each stored once by (device, epoch, seq) and acked
only after its transaction committed; against a real SQLite file and (for the service) a real
Mosquitto."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.db import Database
from cloud_hub.fleet.errors import Rejected
from cloud_hub.fleet.ingest import Ingest, Item
from cloud_hub.fleet.ingest_worker import IngestWorker, Pending
from edge_agent.wire import LogBatch, LogRecord, TelemetryBatch, TelemetryRecord
from tests.cloud_hub.conftest import wait_until

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
            assert worker.depth() <= 2
        wait_until(lambda: len(seen.stored) == 100, what="all 100 stored")
        assert [m for _, m, _ in seen.stored] == list(range(1, 101))
        assert _rows(db.path, "a") == list(range(1, 101))
    finally:
        worker.stop()
