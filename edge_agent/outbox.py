"""The agent's local outbox: every inference log and telemetry sample, durable, in sequence order.

Records wait in one SQLite file (WAL mode) until the hub has acknowledged them. Each record gets
a sequence number from one sequence shared by logs and telemetry; the next number is kept in a
meta table and committed in the same transaction as the record, so a number is never issued
twice: not after deletes, not after a restart, not after kill -9 or a power cut.

The numbers belong to the file's *epoch*: a random id made when the file is created (a file of
schema 1, from before epochs, keeps the legacy epoch "", which the hub's own rows from before
epochs carry too). A wiped data directory or a re-flashed card makes a new file, hence a new
epoch, and its numbers start again at 1 without meeting the old file's numbers at the hub, which
keys what it stores on (device, epoch, seq).

An ack is checked before it deletes anything: one for another epoch, or above the last number
issued, deletes nothing (the hub cannot have stored what was never issued).

The outbox is bounded by record count and by payload bytes. Its overflow policy is "drop oldest":
an append that would exceed a bound first deletes the oldest records, counts them in a persisted
``dropped_total`` and logs a warning. ``floor()`` tells the hub the lowest sequence still held, so
it can tell a gap that will never be filled from one that is still on its way.

Every state change is one transaction that begins with ``BEGIN IMMEDIATE`` and reads the counters
from the meta table, so two processes (the agent and, say, a CLI) may open the same file safely.

``BatchWriter`` is the hot path: one thread commits what many callers submit, so concurrent
requests share one fsync (group commit).
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

__all__ = [
    "BatchWriter",
    "InvalidRecordError",
    "Outbox",
    "OutboxClosedError",
    "OutboxError",
    "OutboxRecord",
    "OutboxStats",
    "RecordKind",
    "RecordTooLargeError",
]

log = logging.getLogger(__name__)

RecordKind = Literal["log", "telemetry"]
RECORD_KINDS: tuple[RecordKind, ...] = get_args(RecordKind)

# 1: meta and records. 2: meta_text with the outbox's epoch (added in place to a file of 1).
SCHEMA_VERSION = 2
# Drops are logged at once the first time, then at most this often (a full outbox drops on
# every append, and the log would otherwise repeat itself on the hot path).
DROP_WARNING_INTERVAL_S = 10.0

_META_KEYS = ("schema_version", "next_seq", "dropped_total", "acked_upto", "pending", "bytes")


class OutboxError(Exception):
    """The outbox cannot do what was asked (unreadable file, newer schema, database failure)."""


class OutboxClosedError(OutboxError):
    """The outbox (or batch writer) was used after close()."""


class InvalidRecordError(OutboxError, ValueError):
    """A record that cannot be stored: unknown kind, or a payload that is not JSON-serialisable."""


class RecordTooLargeError(OutboxError, ValueError):
    """One record's payload alone is larger than the outbox's byte bound."""


@dataclass(frozen=True)
class OutboxRecord:
    seq: int
    kind: RecordKind
    payload: dict[str, Any]
    created_at: float
    size: int = 0  # the payload's JSON bytes, as stored


@dataclass(frozen=True)
class OutboxStats:
    epoch: str
    pending: int
    pending_bytes: int
    dropped_total: int
    next_seq: int
    oldest_seq: int | None
    acked_upto: int


@dataclass(frozen=True)
class _Encoded:
    """A record checked and serialised outside the lock, ready to insert."""

    kind: RecordKind
    text: str
    size: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta_text (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('log', 'telemetry')),
    payload TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
"""


class Outbox:
    """A durable, bounded, sequence-numbered queue of records in one SQLite file. Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        max_records: int = 100_000,
        max_bytes: int = 64 * 2**20,
        durable: bool = True,
    ) -> None:
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        self.path = Path(path)
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.durable = durable
        self._lock = threading.Lock()
        self._closed = False
        self._drops_unreported = 0
        self._last_drop_warning = float("-inf")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        try:
            self._setup()
        except sqlite3.Error as exc:
            self._db.close()
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        except OutboxError:
            self._db.close()
            raise

    def _setup(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("outbox %s: WAL mode unavailable (journal_mode=%s)", self.path, mode)
        self._db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        with self._transaction():
            version = self._schema_version()
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self.path} has schema {version}; this agent understands up to "
                    f"{SCHEMA_VERSION}"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            initial = {"schema_version": SCHEMA_VERSION, "next_seq": 1}
            self._db.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [(key, initial.get(key, 0)) for key in _META_KEYS],
            )
            # A new file gets a random epoch. A file of schema 1 (in-place upgrade) keeps the
            # legacy epoch "": the hub holds what that file sent before under "" too (its
            # migration 10), so records sent but not yet acked are not stored a second time
            # under a new epoch, and the numbering simply goes on.
            self._db.execute(
                "INSERT OR IGNORE INTO meta_text (key, value) VALUES ('epoch', ?)",
                ["" if version == 1 else secrets.token_hex(8)],
            )
            self._set_meta(schema_version=SCHEMA_VERSION)
            (epoch,) = self._db.execute(
                "SELECT value FROM meta_text WHERE key = 'epoch'"
            ).fetchone()
        self.epoch: str = str(epoch)

    def _schema_version(self) -> int:
        """The file's schema (0: a new, empty file), read before anything is created."""
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if has_meta is None:
            return 0
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row is not None else 0

    # -- writing -----------------------------------------------------------------------------
    def append(self, kind: RecordKind, payload: dict[str, Any]) -> int:
        """Store one record in its own durable commit and return its sequence number."""
        return self._append_encoded([self._encode(kind, payload)])[0]

    def append_many(self, items: Sequence[tuple[RecordKind, dict[str, Any]]]) -> list[int]:
        """Store several records in one transaction; their sequence numbers, in order.

        Every item is checked before anything is written: one bad item appends nothing. A batch
        larger than ``max_records`` keeps only its newest records (drop oldest, as always).
        """
        return self._append_encoded([self._encode(kind, payload) for kind, payload in items])

    def _encode(self, kind: RecordKind, payload: dict[str, Any]) -> _Encoded:
        if kind not in RECORD_KINDS:
            raise InvalidRecordError(
                f"unknown record kind {kind!r}; expected one of {RECORD_KINDS}"
            )
        if not isinstance(payload, dict):
            raise InvalidRecordError(f"payload must be a dict, not {type(payload).__name__}")
        try:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRecordError(f"payload is not JSON-serialisable: {exc}") from exc
        size = len(text.encode())
        if size > self.max_bytes:
            raise RecordTooLargeError(
                f"{kind} record of {size} bytes exceeds the outbox bound of {self.max_bytes} bytes"
            )
        return _Encoded(kind, text, size)

    def _append_encoded(self, records: Sequence[_Encoded]) -> list[int]:
        if not records:
            return []
        created_at = time.time()
        with self._locked(), self._transaction():
            meta = self._meta()
            first = meta["next_seq"]
            seqs = list(range(first, first + len(records)))
            self._db.executemany(
                "INSERT INTO records (seq, kind, payload, size, created_at) VALUES (?, ?, ?, ?, ?)",
                [
                    (s, r.kind, r.text, r.size, created_at)
                    for s, r in zip(seqs, records, strict=True)
                ],
            )
            pending = meta["pending"] + len(records)
            pending_bytes = meta["bytes"] + sum(r.size for r in records)
            dropped, dropped_bytes = self._drop_oldest(pending, pending_bytes)
            self._set_meta(
                next_seq=first + len(records),
                pending=pending - dropped,
                bytes=pending_bytes - dropped_bytes,
                dropped_total=meta["dropped_total"] + dropped,
            )
        if dropped:
            self._warn_dropped(dropped, meta["dropped_total"] + dropped)
        return seqs

    def _drop_oldest(self, pending: int, pending_bytes: int) -> tuple[int, int]:
        """Delete the oldest records until both bounds hold; (records, bytes) deleted."""
        excess_records = pending - self.max_records
        excess_bytes = pending_bytes - self.max_bytes
        if excess_records <= 0 and excess_bytes <= 0:
            return 0, 0
        dropped = dropped_bytes = 0
        cutoff = 0
        oldest_first = self._db.execute("SELECT seq, size FROM records ORDER BY seq")
        try:
            for seq, size in oldest_first:
                if dropped >= excess_records and dropped_bytes >= excess_bytes:
                    break
                dropped += 1
                dropped_bytes += size
                cutoff = seq
        finally:
            oldest_first.close()
        self._db.execute("DELETE FROM records WHERE seq <= ?", (cutoff,))
        return dropped, dropped_bytes

    def _warn_dropped(self, dropped: int, dropped_total: int) -> None:
        self._drops_unreported += dropped
        now = time.monotonic()
        if now - self._last_drop_warning < DROP_WARNING_INTERVAL_S:
            return
        log.warning(
            "outbox %s is full (max %d records, %d bytes): dropped the %d oldest record(s) "
            "(%d dropped in total)",
            self.path,
            self.max_records,
            self.max_bytes,
            self._drops_unreported,
            dropped_total,
        )
        self._drops_unreported = 0
        self._last_drop_warning = now

    def ack(self, upto: int, epoch: str = "") -> int:
        """Delete every record with seq <= upto; how many were deleted. Idempotent.

        An ack for another epoch, or above the last number issued, deletes nothing (it is logged
        and 0 returned): it is not about this file's records. Epoch "" is a hub from before
        epochs, whose acks are about this file's numbers."""
        if upto < 0:
            raise ValueError(f"ack upto must be >= 0, not {upto}")
        if epoch and epoch != self.epoch:
            log.warning(
                "outbox %s: ignoring an ack for epoch %r (this outbox is %r)",
                self.path,
                epoch,
                self.epoch,
            )
            return 0
        with self._locked(), self._transaction():
            meta = self._meta()
            issued = meta["next_seq"] - 1
            if upto > issued:
                log.warning(
                    "outbox %s: ignoring an ack up to %d: only %d issued", self.path, upto, issued
                )
                return 0
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE seq <= ?", (upto,)
            ).fetchone()
            acked_upto = max(meta["acked_upto"], upto)
            if count:
                self._db.execute("DELETE FROM records WHERE seq <= ?", (upto,))
            self._set_meta(
                pending=meta["pending"] - count, bytes=meta["bytes"] - size, acked_upto=acked_upto
            )
        return int(count)

    # -- reading -----------------------------------------------------------------------------
    def pending(self, limit: int, after_seq: int = 0) -> list[OutboxRecord]:
        """Up to ``limit`` records with seq > after_seq, oldest first."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        with self._locked():
            rows = self._db.execute(
                "SELECT seq, kind, payload, created_at, size FROM records WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            OutboxRecord(seq, kind, json.loads(text), created, size)
            for seq, kind, text, created, size in rows
        ]

    def issued(self) -> int:
        """The last sequence number issued (0 before the first record)."""
        with self._locked():
            row = self._db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        return int(row[0]) - 1

    def floor(self) -> int:
        """The lowest seq still held (next_seq when empty); all below it is acked or dropped."""
        with self._locked(), self._snapshot():
            oldest = self._db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
            return int(oldest) if oldest is not None else self._meta()["next_seq"]

    def stats(self) -> OutboxStats:
        with self._locked(), self._snapshot():
            meta = self._meta()
            oldest = self._db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
        return OutboxStats(
            epoch=self.epoch,
            pending=meta["pending"],
            pending_bytes=meta["bytes"],
            dropped_total=meta["dropped_total"],
            next_seq=meta["next_seq"],
            oldest_seq=oldest,
            acked_upto=meta["acked_upto"],
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the database; later calls raise OutboxClosedError. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise OutboxClosedError(f"outbox {self.path} is closed")
            try:
                yield
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction: the whole block commits (and fsyncs), or none of it does."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read transaction: meta and records seen at one instant, even with another writer."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _meta(self) -> dict[str, int]:
        return {key: int(value) for key, value in self._db.execute("SELECT key, value FROM meta")}

    def _set_meta(self, **values: int) -> None:
        self._db.executemany(
            "UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in values.items()]
        )


@dataclass(frozen=True)
class _Lazy:
    """A record to be built on the writer's thread (`BatchWriter.submit_lazy`)."""

    kind: RecordKind
    make: Callable[[], dict[str, Any]]


class _Stop:
    """Queued by close(): everything before it is committed, then the writer thread ends."""


_STOP = _Stop()


class BatchWriter:
    """Group commit for the hot path: one thread commits what many callers submit.

    ``submit`` checks and serialises the record in the caller's thread (a bad record raises
    there), queues it, and returns a future that resolves with the record's seq once the
    transaction holding it has committed. The writer thread takes whatever has queued up, waiting
    at most ``max_delay_s`` for more, up to ``max_batch`` records, and commits them with one
    transaction: under load, many requests share one fsync.

    A record submitted with ``deferred=True`` has nobody waiting for its commit (a frame source's
    log): a batch holding only such records waits up to ``deferred_delay_s`` for company, so a
    steady source pays one commit per that interval instead of one per frame. A waited-for record
    joining the batch brings the deadline back to ``max_delay_s``.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        max_batch: int = 256,
        max_delay_s: float = 0.002,
        deferred_delay_s: float = 0.01,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, not {max_delay_s}")
        if deferred_delay_s < 0:
            raise ValueError(f"deferred_delay_s must be >= 0, not {deferred_delay_s}")
        self.outbox = outbox
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.deferred_delay_s = deferred_delay_s
        self._queue: queue.SimpleQueue[tuple[_Encoded | _Lazy, Future[int], bool] | _Stop] = (
            queue.SimpleQueue()
        )
        self._state_lock = threading.Lock()
        self._wake = threading.Event()  # a waited-for record (or close) ends a deferred linger
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="outbox-batch-writer", daemon=True)
        self._thread.start()

    def submit(
        self, kind: RecordKind, payload: dict[str, Any], *, deferred: bool = False
    ) -> Future[int]:
        """Queue one record; the future resolves with its seq once committed. ``deferred``: no
        caller waits for this commit, so it may wait longer for others to share it."""
        encoded = self.outbox._encode(kind, payload)
        future: Future[int] = Future()
        with self._state_lock:
            if self._closed:
                raise OutboxClosedError("batch writer is closed")
            self._queue.put((encoded, future, deferred))
        if not deferred:
            self._wake.set()
        return future

    def submit_lazy(self, kind: RecordKind, make: Callable[[], dict[str, Any]]) -> Future[int]:
        """Queue a deferred record that `make()` builds on the writer's thread, just before its
        commit: what a frame source should not pay for on its own thread (digests, summaries,
        the JSON). `make` must only read what nobody changes meanwhile. A record `make` cannot
        build (or that does not encode) fails its future, not the batch."""
        if kind not in RECORD_KINDS:
            raise InvalidRecordError(
                f"unknown record kind {kind!r}; expected one of {RECORD_KINDS}"
            )
        future: Future[int] = Future()
        with self._state_lock:
            if self._closed:
                raise OutboxClosedError("batch writer is closed")
            self._queue.put((_Lazy(kind, make), future, True))
        return future

    def append(self, kind: RecordKind, payload: dict[str, Any]) -> int:
        """Submit one record and wait until it is committed; its seq."""
        return self.submit(kind, payload).result()

    def close(self) -> None:
        """Commit everything already submitted, then stop the thread. Safe to call twice."""
        with self._state_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
                self._wake.set()
        self._thread.join()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        target = 1  # how many waited-for records the previous batch held
        stopping = False
        while not stopping:
            batch: list[tuple[_Encoded | _Lazy, Future[int]]] = []
            item = self._queue.get()
            started = time.monotonic()
            waited_for = 0  # how many of this batch's records someone waits for
            while True:
                if isinstance(item, _Stop):
                    stopping = True
                    break
                encoded, future, deferred = item
                batch.append((encoded, future))
                waited_for += not deferred
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                    continue
                except queue.Empty:
                    pass
                # Queue drained. With a caller waiting, linger for more only until the batch
                # holds as many waited-for records as the last one: callers released by the last
                # commit come straight back, and waiting for them is worth it; waiting the whole
                # delay for nobody is not, nor for records nobody waits for (a source's or a
                # shadow's logs: counting them would make a caller wait for the next of them).
                # With nobody waiting, linger for the whole deferred delay.
                if waited_for:
                    remaining = started + self.max_delay_s - time.monotonic()
                    if waited_for >= target or remaining <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                    continue
                # Nobody waits: do not wake up for every record (each wake-up costs the thread
                # that submitted it a hand-over of the GIL); sleep until the deferred deadline,
                # or until a waited-for record (or close) sets `_wake`, then take what came.
                remaining = started + self.deferred_delay_s - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:  # whatever was queued before the clear
                    item = self._queue.get_nowait()
                    continue
                except queue.Empty:
                    pass
                self._wake.wait(remaining)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                if waited_for:
                    target = waited_for
                self._commit(batch)

    def _commit(self, batch: list[tuple[_Encoded | _Lazy, Future[int]]]) -> None:
        # A future its caller cancelled is not written at all.
        live: list[tuple[_Encoded, Future[int]]] = []
        for rec, fut in batch:
            if not fut.set_running_or_notify_cancel():
                continue
            if isinstance(rec, _Lazy):
                try:
                    rec = self.outbox._encode(rec.kind, rec.make())
                except Exception as exc:
                    fut.set_exception(exc)
                    continue
            live.append((rec, fut))
        if not live:
            return
        try:
            seqs = self.outbox._append_encoded([rec for rec, _ in live])
        except Exception as exc:  # every waiter hears about it; the thread carries on
            for _, fut in live:
                fut.set_exception(exc)
            return
        for (_, fut), seq in zip(live, seqs, strict=True):
            fut.set_result(seq)
