"""edge_agent.outbox: durable, bounded, sequence-numbered records on real SQLite files."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.core.wire import LogRecord, TelemetryRecord
from edge_agent.outbox import (
    BatchWriter,
    InvalidRecordError,
    Outbox,
    OutboxClosedError,
    OutboxError,
    RecordTooLargeError,
)

REPO = Path(__file__).resolve().parents[2]


def log_payload(i: int) -> dict[str, Any]:
    return {
        "request_id": f"req-{i}",
        "model_version": 3,
        "input_digest": f"{i:064x}",
        "output": [0.25, 0.75],
        "latency_ms": 1.5,
        "ts": 1_700_000_000.0 + i,
    }


def seqs_held(outbox: Outbox) -> list[int]:
    return [r.seq for r in outbox.pending(10**9)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def outbox(path: Path) -> Iterator[Outbox]:
    with Outbox(path, durable=False) as opened:
        yield opened


# -- sequence numbers ---------------------------------------------------------------------------
def test_sequences_start_at_one_and_are_shared_by_logs_and_telemetry(outbox: Outbox) -> None:
    assert outbox.append("log", log_payload(1)) == 1
    assert outbox.append("telemetry", {"ts": 1.0}) == 2
    assert outbox.append_many([("log", log_payload(2)), ("telemetry", {"ts": 2.0})]) == [3, 4]
    assert outbox.append("log", log_payload(3)) == 5
    assert [r.kind for r in outbox.pending(10)] == ["log", "telemetry", "log", "telemetry", "log"]


def test_sequences_survive_reopen_and_are_never_reused_after_ack(path: Path) -> None:
    with Outbox(path) as first:
        assert [first.append("log", log_payload(i)) for i in range(5)] == [1, 2, 3, 4, 5]
        assert first.ack(5) == 5
        assert first.stats().pending == 0
    with Outbox(path) as second:
        assert second.append("log", log_payload(6)) == 6
        assert second.floor() == 6
        stats = second.stats()
        assert (stats.next_seq, stats.acked_upto, stats.pending) == (7, 5, 1)


def test_two_handles_on_one_file_never_issue_the_same_seq(path: Path) -> None:
    with Outbox(path, durable=False) as a, Outbox(path, durable=False) as b:
        issued = [(a if i % 2 else b).append("log", log_payload(i)) for i in range(40)]
        assert issued == list(range(1, 41))
        assert a.stats().pending == b.stats().pending == 40


# -- reading, acknowledging, floor --------------------------------------------------------------
def test_pending_is_oldest_first_from_after_seq_and_payloads_round_trip(outbox: Outbox) -> None:
    before = time.time()
    outbox.append_many([("log", log_payload(i)) for i in range(10)])
    page = outbox.pending(3)
    assert [r.seq for r in page] == [1, 2, 3]
    assert [r.seq for r in outbox.pending(3, after_seq=page[-1].seq)] == [4, 5, 6]
    assert [r.seq for r in outbox.pending(100, after_seq=8)] == [9, 10]
    assert outbox.pending(100, after_seq=10) == []
    assert outbox.pending(0) == []
    record = outbox.pending(1, after_seq=4)[0]
    assert record.payload == log_payload(4)
    assert before <= record.created_at <= time.time()
    # What the forwarder builds from it is a valid wire record.
    assert LogRecord(seq=record.seq, **record.payload).request_id == "req-4"


def test_ack_deletes_only_up_to_upto_and_is_idempotent(outbox: Outbox) -> None:
    outbox.append_many([("log", log_payload(i)) for i in range(10)])
    assert outbox.ack(4) == 4
    assert seqs_held(outbox) == [5, 6, 7, 8, 9, 10]
    assert outbox.ack(4) == 0
    assert outbox.ack(2) == 0  # a late, older ack changes nothing
    assert outbox.stats().acked_upto == 4
    assert outbox.ack(0) == 0
    assert outbox.ack(7) == 3
    assert seqs_held(outbox) == [8, 9, 10]
    with pytest.raises(ValueError):
        outbox.ack(-1)


def test_ack_beyond_what_was_issued_deletes_nothing(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """The hub cannot have stored what was never issued: such an ack is about another outbox
    (this device's before its data was wiped) or forged, and must not clear this one."""
    outbox.append_many([("log", log_payload(i)) for i in range(3)])
    with caplog.at_level(logging.WARNING, logger="edge_agent.outbox"):
        assert outbox.ack(1000) == 0
    assert "only 3 issued" in caplog.text
    stats = outbox.stats()
    assert (stats.acked_upto, stats.next_seq, stats.pending) == (0, 4, 3)
    assert seqs_held(outbox) == [1, 2, 3]
    assert outbox.ack(3) == 3  # the exact last one issued is fine
    assert outbox.append("log", log_payload(4)) == 4


def test_ack_for_another_epoch_deletes_nothing(outbox: Outbox) -> None:
    outbox.append_many([("log", log_payload(i)) for i in range(3)])
    assert outbox.ack(2, "0123456789abcdef") == 0
    assert seqs_held(outbox) == [1, 2, 3]
    assert outbox.ack(2, outbox.epoch) == 2
    assert outbox.ack(3, "") == 1  # a hub before epochs sends none: about these numbers
    assert outbox.stats().acked_upto == 3


# -- epochs -------------------------------------------------------------------------------------
def test_each_new_outbox_file_has_its_own_epoch_kept_across_reopens(
    path: Path, tmp_path: Path
) -> None:
    with Outbox(path) as first:
        epoch = first.epoch
        assert len(epoch) == 16 and int(epoch, 16) >= 0
        assert first.stats().epoch == epoch
        first.append("log", log_payload(1))
    with Outbox(path) as again, Outbox(path) as beside:
        assert again.epoch == beside.epoch == epoch
    path.unlink()  # a wiped data directory
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with Outbox(path) as fresh:
        assert fresh.epoch != epoch
        assert fresh.append("log", log_payload(1)) == 1  # numbers start again, in a new epoch
    with Outbox(tmp_path / "other.db") as other:
        assert other.epoch not in (epoch, fresh.epoch)


def test_an_outbox_of_schema_1_is_upgraded_in_place_with_its_records(path: Path) -> None:
    """A file written before epochs (schema 1, as that release made it) is upgraded on open and
    keeps the legacy epoch "", under which the hub already holds what it sent: a record sent
    but not acked before the upgrade is not stored again under a new epoch."""
    with sqlite3.connect(path) as raw:
        raw.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE records (
                seq INTEGER PRIMARY KEY,
                kind TEXT NOT NULL CHECK (kind IN ('log', 'telemetry')),
                payload TEXT NOT NULL,
                size INTEGER NOT NULL,
                created_at REAL NOT NULL
            );
            INSERT INTO meta VALUES ('schema_version', 1), ('next_seq', 8), ('dropped_total', 2),
                ('acked_upto', 4), ('pending', 3), ('bytes', 30);
            INSERT INTO records VALUES (5, 'log', '{"a":1}', 10, 1.0),
                (6, 'telemetry', '{"ts":1.0}', 10, 2.0), (7, 'log', '{"a":2}', 10, 3.0);
            """
        )
    with Outbox(path) as upgraded:
        epoch = upgraded.epoch
        assert epoch == ""
        stats = upgraded.stats()
        assert (stats.next_seq, stats.acked_upto, stats.pending, stats.dropped_total) == (
            8,
            4,
            3,
            2,
        )
        assert [(r.seq, r.kind, r.payload) for r in upgraded.pending(10)] == [
            (5, "log", {"a": 1}),
            (6, "telemetry", {"ts": 1.0}),
            (7, "log", {"a": 2}),
        ]
        assert upgraded.append("log", log_payload(8)) == 8
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (2,)
    with Outbox(path) as again:
        assert again.epoch == epoch


def test_an_outbox_of_a_newer_schema_is_refused_untouched(path: Path) -> None:
    Outbox(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
        raw.execute("DROP TABLE meta_text")
    with pytest.raises(OutboxError, match="schema 99"):
        Outbox(path)
    with sqlite3.connect(path) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "meta_text" not in tables


def test_floor_is_lowest_seq_held_or_next_seq_when_empty(outbox: Outbox) -> None:
    assert outbox.floor() == 1
    outbox.append_many([("log", log_payload(i)) for i in range(5)])
    assert outbox.floor() == 1
    outbox.ack(3)
    assert outbox.floor() == 4
    outbox.ack(5)
    assert outbox.floor() == 6
    assert outbox.stats().oldest_seq is None


def test_stats_count_compact_json_bytes(outbox: Outbox) -> None:
    payloads = [log_payload(i) for i in range(4)]
    outbox.append_many([("log", p) for p in payloads])
    sizes = [len(json.dumps(p, separators=(",", ":"))) for p in payloads]
    stats = outbox.stats()
    assert (stats.pending, stats.pending_bytes, stats.oldest_seq) == (4, sum(sizes), 1)
    outbox.ack(1)
    assert outbox.stats().pending_bytes == sum(sizes[1:])
    # Stored compactly: what is on disk is exactly that JSON text.
    with sqlite3.connect(outbox.path) as raw:
        (text,) = raw.execute("SELECT payload FROM records WHERE seq = 2").fetchone()
    assert text == json.dumps(payloads[1], separators=(",", ":"))


# -- overflow: drop oldest ----------------------------------------------------------------------
def test_count_bound_drops_oldest_and_counts_them(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="edge_agent.outbox"),
        Outbox(path, max_records=100, durable=False) as outbox,
    ):
        for i in range(150):
            outbox.append("log", log_payload(i))
        stats = outbox.stats()
        assert (stats.pending, stats.dropped_total, stats.next_seq) == (100, 50, 151)
        assert seqs_held(outbox) == list(range(51, 151))
        assert outbox.floor() == 51
    assert "dropped" in caplog.text and "full" in caplog.text
    with Outbox(path, max_records=100, durable=False) as reopened:
        assert reopened.stats().dropped_total == 50  # persisted
        assert reopened.append("log", log_payload(150)) == 151
        assert reopened.stats().dropped_total == 51


def test_byte_bound_drops_oldest_and_counts_them(path: Path) -> None:
    payload = {"blob": "x" * 89}  # 100 bytes as compact JSON
    assert len(json.dumps(payload, separators=(",", ":"))) == 100
    with Outbox(path, max_bytes=100 * 100, durable=False) as outbox:
        for _ in range(150):
            outbox.append("telemetry", payload)
        stats = outbox.stats()
        assert (stats.pending, stats.pending_bytes, stats.dropped_total) == (100, 10_000, 50)
        assert seqs_held(outbox) == list(range(51, 151))
        # A bigger record pushes out as many old ones as it needs.
        outbox.append("telemetry", {"blob": "y" * 289})  # 300 bytes
        assert outbox.floor() == 54
        assert outbox.stats().pending_bytes <= 10_000


def test_batch_larger_than_the_bound_keeps_its_newest_records(path: Path) -> None:
    with Outbox(path, max_records=10, durable=False) as outbox:
        seqs = outbox.append_many([("log", log_payload(i)) for i in range(25)])
        assert seqs == list(range(1, 26))
        assert seqs_held(outbox) == list(range(16, 26))
        assert outbox.stats().dropped_total == 15


def test_record_larger_than_the_byte_bound_is_refused_without_using_a_seq(path: Path) -> None:
    with Outbox(path, max_bytes=1000, durable=False) as outbox:
        outbox.append("log", log_payload(0))
        with pytest.raises(RecordTooLargeError, match="exceeds"):
            outbox.append("log", {"blob": "x" * 2000})
        assert outbox.append("log", log_payload(1)) == 2
        assert outbox.stats().dropped_total == 0


def test_a_bad_item_makes_append_many_append_nothing(outbox: Outbox) -> None:
    outbox.append("log", log_payload(0))
    with pytest.raises(InvalidRecordError):
        outbox.append_many([("log", log_payload(1)), ("log", {"when": object()})])
    with pytest.raises(InvalidRecordError, match="kind"):
        outbox.append_many([("log", log_payload(1)), ("metrics", {})])  # type: ignore[list-item]
    assert seqs_held(outbox) == [1]
    assert outbox.append("log", log_payload(1)) == 2


# -- lifecycle and files ------------------------------------------------------------------------
def test_closed_outbox_refuses_work(path: Path) -> None:
    outbox = Outbox(path)
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxClosedError):
        outbox.append("log", log_payload(0))
    with pytest.raises(OutboxClosedError):
        outbox.stats()


def test_wal_mode_and_a_file_that_is_not_an_outbox(path: Path, tmp_path: Path) -> None:
    Outbox(path).close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database file at all" * 200)
    with pytest.raises(OutboxError, match="garbage.db"):
        Outbox(garbage)


def test_concurrent_appends_on_one_outbox(outbox: Outbox) -> None:
    results: list[list[int]] = [[] for _ in range(4)]

    def work(n: int) -> None:
        for i in range(100):
            results[n].append(outbox.append("log", log_payload(i)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    issued = sorted(s for r in results for s in r)
    assert issued == list(range(1, 401))
    assert all(r == sorted(r) for r in results)  # each thread sees its seqs increase
    assert seqs_held(outbox) == issued


# -- BatchWriter ---------------------------------------------------------------------------------
def test_batch_writer_under_eight_threads(path: Path) -> None:
    with Outbox(path) as outbox:
        writer = BatchWriter(outbox)
        results: list[list[int]] = [[] for _ in range(8)]

        def work(n: int) -> None:
            for i in range(500):
                results[n].append(writer.append("log", log_payload(i)))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        writer.close()
        issued = [s for r in results for s in r]
        assert len(issued) == len(set(issued)) == 4000
        assert sorted(issued) == list(range(1, 4001))
        assert seqs_held(outbox) == sorted(issued)
        assert outbox.stats().pending == 4000


def test_batch_writer_close_commits_everything_submitted(path: Path) -> None:
    with Outbox(path, durable=False) as outbox:
        writer = BatchWriter(outbox, max_batch=16, max_delay_s=0.05)
        futures = [writer.submit("telemetry", {"ts": float(i)}) for i in range(300)]
        writer.close()
        assert all(f.done() for f in futures)
        assert [f.result() for f in futures] == list(range(1, 301))
        with pytest.raises(OutboxClosedError):
            writer.submit("telemetry", {"ts": 0.0})
        writer.close()
    with Outbox(path) as reopened:
        held = reopened.pending(1000)
        assert [r.payload["ts"] for r in held] == [float(i) for i in range(300)]
        assert TelemetryRecord(seq=held[0].seq, **held[0].payload).ts == 0.0


def test_batch_writer_rejects_bad_records_in_the_caller(path: Path) -> None:
    with Outbox(path, durable=False) as outbox, BatchWriter(outbox) as writer:
        with pytest.raises(InvalidRecordError):
            writer.submit("log", {"bad": {1, 2}})
        assert writer.append("log", log_payload(0)) == 1


def test_a_lazy_record_is_built_on_the_writer_thread_and_a_failing_one_fails_alone(
    path: Path,
) -> None:
    """A frame source's log records are built by the writer (digests, JSON off its thread)."""
    built_on: list[str] = []

    def make() -> dict[str, object]:
        built_on.append(threading.current_thread().name)
        return log_payload(1)

    def broken() -> dict[str, object]:
        raise RuntimeError("cannot summarise")

    with Outbox(path, durable=False) as outbox, BatchWriter(outbox) as writer:
        good = writer.submit_lazy("log", make)
        bad = writer.submit_lazy("log", broken)
        unencodable = writer.submit_lazy("log", lambda: {"bad": {1, 2}})
        after = writer.append("log", log_payload(2))
        assert good.result(5) == 1 and after == 2
        with pytest.raises(RuntimeError, match="cannot summarise"):
            bad.result(5)
        with pytest.raises(InvalidRecordError):
            unencodable.result(5)
        assert [r.payload for r in outbox.pending(10)] == [log_payload(1), log_payload(2)]
    assert built_on and built_on[0] != threading.current_thread().name


def test_batch_writer_waits_out_a_busy_database_and_skips_cancelled_records(path: Path) -> None:
    with Outbox(path, durable=False) as outbox, BatchWriter(outbox) as writer:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        first = writer.submit("log", log_payload(0))
        deadline = time.monotonic() + 5
        while not first.running():  # the writer thread is now stuck committing it
            assert time.monotonic() < deadline
            time.sleep(0.001)
        dropped_by_caller = writer.submit("log", log_payload(1))
        third = writer.submit("log", log_payload(2))
        assert dropped_by_caller.cancel()
        time.sleep(0.05)
        assert not first.done()
        blocker.execute("COMMIT")
        blocker.close()
        assert (first.result(timeout=5), third.result(timeout=5)) == (1, 2)
        assert [r.payload["request_id"] for r in outbox.pending(10)] == ["req-0", "req-2"]


def test_batch_writer_reports_a_closed_outbox_to_every_waiter(path: Path) -> None:
    outbox = Outbox(path, durable=False)
    writer = BatchWriter(outbox)
    assert writer.append("log", log_payload(0)) == 1
    outbox.close()
    future = writer.submit("log", log_payload(1))
    with pytest.raises(OutboxClosedError):
        future.result(timeout=5)
    writer.close()


# -- crashes: a real process killed with SIGKILL -------------------------------------------------
CHILD_SINGLE = """
import sys
from pathlib import Path
from edge_agent.outbox import Outbox

outbox = Outbox(Path(sys.argv[1]), durable=sys.argv[2] == "durable")
i = 0
while True:
    seq = outbox.append("log", {"request_id": f"r{i}", "n": i})
    print(seq, flush=True)
    i += 1
"""

CHILD_BATCH = """
import sys, threading
from pathlib import Path
from edge_agent.outbox import BatchWriter, Outbox

outbox = Outbox(Path(sys.argv[1]), max_records=100)
writer = BatchWriter(outbox)
lock = threading.Lock()

def work():
    i = 0
    while True:
        seq = writer.append("telemetry", {"ts": float(i)})
        with lock:
            print(seq, flush=True)
        i += 1

for _ in range(4):
    threading.Thread(target=work).start()
"""


def run_and_kill(code: str, path: Path, *args: str, lines: int) -> list[int]:
    """Run ``code`` in a child, SIGKILL it once it printed ``lines`` seqs; every seq it printed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert child.stdout is not None and child.stderr is not None
    printed: list[int] = []
    try:
        deadline = time.monotonic() + 15
        while len(printed) < lines:
            line = child.stdout.readline()
            if not line:
                raise AssertionError(f"child ended early: {child.stderr.read().decode()}")
            printed.append(int(line))
            assert time.monotonic() < deadline, "child too slow"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        rest = child.stdout.read()  # what it printed before it died
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    complete = rest.decode().split("\n")[:-1]  # a half-written last line is not a claim
    return printed + [int(x) for x in complete]


@pytest.mark.parametrize("durability", ["durable", "fast"])
def test_kill_9_loses_no_committed_record_and_reuses_no_seq(path: Path, durability: str) -> None:
    printed = run_and_kill(CHILD_SINGLE, path, durability, lines=300)
    assert printed == list(range(1, len(printed) + 1))
    with Outbox(path) as reopened:
        held = seqs_held(reopened)
        stats = reopened.stats()
        assert set(printed) <= set(held)  # every seq the child was given is on disk
        assert len(held) == len(set(held))
        # At most the one append whose commit finished but whose print never happened.
        assert held == list(range(1, len(held) + 1))
        assert len(held) - len(printed) in (0, 1)
        assert stats.next_seq == held[-1] + 1
        assert reopened.append("log", {"after": "restart"}) == held[-1] + 1
        assert [r.payload["n"] for r in reopened.pending(len(printed))] == list(range(len(printed)))


def test_kill_9_during_group_commits_and_drops_keeps_the_books_straight(path: Path) -> None:
    printed = run_and_kill(CHILD_BATCH, path, lines=600)
    assert len(printed) == len(set(printed))
    with Outbox(path, max_records=100) as reopened:
        held = seqs_held(reopened)
        stats = reopened.stats()
        issued = stats.next_seq - 1
        assert issued >= max(printed)
        # Every seq ever issued is held or was counted as dropped: nothing vanished.
        assert stats.pending + stats.dropped_total == issued
        assert held == list(range(stats.next_seq - len(held), stats.next_seq))
        assert len(held) == 100
        assert {s for s in printed if s >= reopened.floor()} <= set(held)
        assert reopened.append("log", {"after": "restart"}) == issued + 1
