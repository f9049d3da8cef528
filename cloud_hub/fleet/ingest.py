"""Logs and telemetry from devices' outboxes: checked, stored idempotently, acknowledged
contiguously, per outbox epoch.

Logs and telemetry share one sequence per outbox *epoch* (a random id the agent makes with its
outbox file: a wiped data directory or a re-flashed card starts a new epoch at sequence 1; "" is
the legacy epoch of agents from before epochs). Each batch is checked, then stored in a
transaction, its own or a group's (below), by INSERT OR IGNORE on (device, epoch, seq): a batch
sent twice is stored once. Then the epoch's contiguous mark (`device_epochs.acked_upto`) is
advanced: first to `floor - 1` (the agent no longer holds anything below its floor: it was
acknowledged or dropped under its overflow policy), then over every sequence stored just above
it in either table. The caller acknowledges the mark, with the epoch, only after this returns,
i.e. after the commit: the hub never acks more than it stored contiguously for that epoch or
than the agent said it no longer holds.

Group commit. `store_many` stores many batches, of any devices, in ONE transaction (one COMMIT
for all, not one per batch), each batch inside its own SAVEPOINT: a batch the rules
refuse is rolled back to its savepoint and returned as its Rejected, the others are kept. The
batches are applied in the order given, so several batches of one (device, epoch) in a group
advance the mark exactly as they would one transaction each, and each one's returned mark is the
epoch's mark right after it (a later batch of the group may raise it further; both are committed
together). Every mark returned is committed when `store_many` returns; an unexpected error rolls
the whole group back and propagates (nothing of it is stored: the caller may retry each batch
alone). Conflicts (`on_conflict`) are reported after the commit, so a group rolled back reports
none. `store_logs` / `store_telemetry` are a group of one.

What a batch may claim. With M the epoch's mark, f the batch's floor, W `seq_window` and C
`max_batch_records`, a batch is refused (Rejected: nothing stored, mark unchanged, not acked) when
  1. it carries more than C records;
  2. f is above its lowest record (it would claim to have dropped records it carries);
  3. the epoch is known and f - 1 > M + W (its floor jumps more than W past the mark);
  4. its highest record is above max(M, f - 1) + W.
The first batch of an epoch the hub has not seen sets the epoch's base from its floor (rule 3
does not apply): a new outbox starts at floor 1, an outbox upgraded from before epochs at
whatever it still holds. Rules 1, 2 and 4 still do.

Why an honest agent is never refused. Its outbox holds one contiguous run [floor, next_seq); it
sends at most `ForwarderSettings.batch_size` ≤ wire.MAX_BATCH_RECORDS = the default C records per
batch; its floor is read before its records (so f ≤ its first record); it never lets a batch
reach past max(A, f - 1) + wire.SEQ_WINDOW, where A ≤ M is the last ack it accepted, and W ≥
SEQ_WINDOW (a setting cannot go lower). Its floor may legitimately jump far past M: overflow
dropped records the hub never received (a long outage). The jump is unbounded in time, so no
fixed bound on f could admit it; instead the agent steps: record-less batches whose floor is at
most SEQ_WINDOW past its last ack, one per ack, until its real floor is within reach. An agent
from before epochs does not step: after an outage that dropped more than W records it is refused
until it is upgraded (its rejection reason says so; an upgraded agent opens a new epoch).

What the bounds guarantee, and what not. Epochs keep outboxes apart: a clone, a re-flashed card
or anyone numbering in another epoch cannot make an agent's records collide with theirs. In the
same epoch (someone holding the device's credentials who learnt its epoch, a bug) one batch
stores at most C rows and touches only sequences ≤ M + 2W: it cannot make the agent's later
records vanish as "duplicates", nor push the mark out of the agent's reach in one message. A
sender who repeats such batches can walk the mark on; the agent then ignores the acks (above
what it issued) and counts them, and records stored over by another's are counted here as
`conflicts` (same seq, other content) rather than passing silently as duplicates.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence

from cloud_hub.core.db import Database
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.errors import Rejected
from cloud_hub.fleet.metrics_store import record_new as record_metrics
from cloud_hub.predlog import device_logs
from cloud_hub.registry.registry import utcnow
from edge_agent.core.features import encode as encode_features
from edge_agent.core.wire import LogBatch, TelemetryBatch

__all__ = ["Batch", "Ingest", "Item", "Outcome"]

_DEFAULTS = HubSettings.model_fields

# (device id, number of records whose seq was already stored with other content)
OnConflict = Callable[[str, int], None]
Batch = LogBatch | TelemetryBatch
Item = tuple[str, Batch]  # (device id, its batch)
Outcome = int | Rejected  # the epoch's new mark, or why the batch was refused


class Ingest:
    def __init__(
        self,
        db: Database,
        *,
        max_batch_records: int = _DEFAULTS["fleet_max_batch_records"].default,
        seq_window: int = _DEFAULTS["fleet_seq_window"].default,
        on_conflict: OnConflict | None = None,
    ) -> None:
        if max_batch_records < 1 or seq_window < 1:
            raise ValueError("max_batch_records and seq_window must be at least 1")
        self.db = db
        self.max_batch_records = max_batch_records
        self.seq_window = seq_window
        self._on_conflict = on_conflict

    def store_logs(self, device_id: str, batch: LogBatch) -> int:
        """Store a log batch; returns the epoch's new contiguous mark. Rejected: refused."""
        return self._store_one(device_id, batch)

    def store_telemetry(self, device_id: str, batch: TelemetryBatch) -> int:
        """Store a telemetry batch; returns the epoch's new contiguous mark. Rejected: refused."""
        return self._store_one(device_id, batch)

    def store_many(self, items: Sequence[Item]) -> list[Outcome]:
        """Store the batches in one transaction, in order, a savepoint each (module docstring).

        Returns one outcome per item: the epoch's new mark, or the Rejected that refused it
        (nothing of that batch stored). Any other exception rolls the whole group back."""
        conflicts: list[tuple[str, int]] = []
        outcomes: list[Outcome] = []
        with self.db.transaction() as db:
            conn = db.conn
            for device_id, batch in items:
                conn.execute("SAVEPOINT ingest_batch")
                try:
                    mark = self._store(conn, device_id, batch, conflicts)
                except Rejected as exc:
                    conn.execute("ROLLBACK TO ingest_batch")
                    conn.execute("RELEASE ingest_batch")
                    outcomes.append(exc)
                    continue
                conn.execute("RELEASE ingest_batch")
                outcomes.append(mark)
        if self._on_conflict is not None:
            for device_id, count in conflicts:
                self._on_conflict(device_id, count)
        return outcomes

    def _store_one(self, device_id: str, batch: Batch) -> int:
        (outcome,) = self.store_many([(device_id, batch)])
        if isinstance(outcome, Rejected):
            raise outcome
        return outcome

    def _store(
        self,
        conn: sqlite3.Connection,
        device_id: str,
        batch: Batch,
        conflicts: list[tuple[str, int]],
    ) -> int:
        if isinstance(batch, LogBatch):
            self._store_logs(conn, device_id, batch, conflicts)
        else:
            self._store_telemetry(conn, device_id, batch, conflicts)
        return self._advance(conn, device_id, batch.epoch, batch.floor)

    def _store_logs(
        self,
        conn: sqlite3.Connection,
        device_id: str,
        batch: LogBatch,
        conflicts: list[tuple[str, int]],
    ) -> None:
        records = batch.records
        self._check(conn, device_id, batch.epoch, batch.floor, [r.seq for r in records])
        if records:
            self._conflicts(
                device_id,
                lambda low, high: device_logs.digests_between(
                    conn, device_id, batch.epoch, low, high
                ),
                {r.seq: f"{r.request_id}/{r.input_digest}" for r in records},
                conflicts,
            )
        device_logs.insert(
            conn,
            [
                (
                    device_id,
                    batch.epoch,
                    r.seq,
                    r.request_id,
                    r.model_version,
                    r.input_digest,
                    json.dumps(r.output),
                    r.latency_ms,
                    r.ts,
                    r.source,
                    r.role,
                    int(r.thresholded),
                    None if r.features is None else encode_features(r.features),
                    r.outputs_digest,
                )
                for r in records
            ],
        )

    def _store_telemetry(
        self,
        conn: sqlite3.Connection,
        device_id: str,
        batch: TelemetryBatch,
        conflicts: list[tuple[str, int]],
    ) -> None:
        records = batch.records
        self._check(conn, device_id, batch.epoch, batch.floor, [r.seq for r in records])
        if records:
            self._conflicts(
                device_id,
                lambda low, high: conn.execute(
                    "SELECT seq, ts FROM telemetry "
                    "WHERE device_id = ? AND epoch = ? AND seq BETWEEN ? AND ?",
                    [device_id, batch.epoch, low, high],
                ),
                {r.seq: r.ts for r in records},
                conflicts,
            )
        record_metrics(  # before the insert: counts only new records
            conn,
            device_id,
            records,
            lambda low, high: [
                int(r[0])
                for r in conn.execute(
                    "SELECT seq FROM telemetry WHERE device_id = ? AND epoch = ? "
                    "AND seq BETWEEN ? AND ?",
                    [device_id, batch.epoch, low, high],
                )
            ],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO telemetry (device_id, epoch, seq, ts, data) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (device_id, batch.epoch, r.seq, r.ts, r.model_dump_json(exclude={"seq", "ts"}))
                for r in records
            ],
        )

    # -- the rules (module docstring) ---------------------------------------------------------
    def _check(
        self, conn: sqlite3.Connection, device_id: str, epoch: str, floor: int, seqs: list[int]
    ) -> None:
        label = f"epoch {epoch!r}" if epoch else "the legacy epoch (an agent before epochs)"
        if len(seqs) > self.max_batch_records:
            raise Rejected(
                f"batch of {len(seqs)} records, more than the {self.max_batch_records} allowed"
            )
        if seqs and floor > min(seqs):
            raise Rejected(f"batch floor {floor} is above its first record {min(seqs)}")
        row = conn.execute(
            "SELECT acked_upto FROM device_epochs WHERE device_id = ? AND epoch = ?",
            [device_id, epoch],
        ).fetchone()
        mark = 0 if row is None else int(row[0])
        if row is not None and floor - 1 > mark + self.seq_window:
            hint = "" if epoch else "; an agent before epochs cannot step its floor: upgrade it"
            raise Rejected(
                f"batch floor {floor} is more than {self.seq_window} past what {label} has "
                f"stored contiguously ({mark}){hint}"
            )
        base = max(mark, floor - 1)
        if seqs and max(seqs) > base + self.seq_window:
            raise Rejected(
                f"batch reaches sequence {max(seqs)}, more than {self.seq_window} past "
                f"{label}'s mark ({base})"
            )

    def _conflicts(
        self,
        device_id: str,
        stored_between: Callable[[int, int], Iterable[tuple[int, object]]],
        incoming: dict[int, object],
        found: list[tuple[str, int]],
    ) -> None:
        """Note records whose seq is stored already with other content (kept: the first).
        `stored_between(low, high)`: (seq, content) of the stored records in that range."""
        if self._on_conflict is None:
            return
        stored = stored_between(min(incoming), max(incoming))
        conflicts = sum(1 for seq, value in stored if seq in incoming and incoming[seq] != value)
        if conflicts:
            found.append((device_id, conflicts))

    @staticmethod
    def _advance(conn: sqlite3.Connection, device_id: str, epoch: str, floor: int) -> int:
        conn.execute(
            "INSERT OR IGNORE INTO device_epochs (device_id, epoch) VALUES (?, ?)",
            [device_id, epoch],
        )
        (mark,) = conn.execute(
            "SELECT acked_upto FROM device_epochs WHERE device_id = ? AND epoch = ?",
            [device_id, epoch],
        ).fetchone()
        mark = max(int(mark), floor - 1)
        telemetry = conn.execute(
            "SELECT seq FROM telemetry WHERE device_id = ? AND epoch = ? AND seq > ?",
            [device_id, epoch, mark],
        )
        above = set(device_logs.seqs_above(conn, device_id, epoch, mark))
        above.update(int(r[0]) for r in telemetry)
        for seq in sorted(above):
            if seq != mark + 1:
                break
            mark = seq
        conn.execute(
            "UPDATE device_epochs SET acked_upto = ?, updated_at = ? "
            "WHERE device_id = ? AND epoch = ?",
            [mark, utcnow(), device_id, epoch],
        )
        return int(mark)


# -- the outbox tables for the other modules (device listings, incremental monitoring) ----------
def _chunks(ids: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def telemetry_counts(conn: sqlite3.Connection, device_ids: Sequence[str]) -> dict[str, int]:
    """Stored telemetry records of each of the devices (those with none left out)."""
    out: dict[str, int] = {}
    for chunk in _chunks(device_ids):
        marks = ", ".join("?" for _ in chunk)
        rows = conn.execute(
            f"SELECT device_id, COUNT(*) FROM telemetry WHERE device_id IN ({marks}) "
            "GROUP BY device_id",
            list(chunk),
        )
        out.update({str(r[0]): int(r[1]) for r in rows})
    return out


def current_epochs(
    conn: sqlite3.Connection, device_ids: Sequence[str]
) -> dict[str, tuple[str, int]]:
    """Each device's current outbox epoch (the one that stored a batch last) and its mark:
    device id -> (epoch, acked_upto); devices with no epoch left out."""
    out: dict[str, tuple[str, int]] = {}
    for chunk in _chunks(device_ids):
        marks = ", ".join("?" for _ in chunk)
        rows = conn.execute(
            f"SELECT device_id, epoch, acked_upto FROM device_epochs WHERE device_id IN ({marks}) "
            "ORDER BY device_id, updated_at DESC, id DESC",
            list(chunk),
        )
        for device, epoch, acked in rows:
            out.setdefault(str(device), (str(epoch), int(acked)))
    return out


def epochs_newest_first(conn: sqlite3.Connection, device_id: str) -> list[str]:
    """The device's outbox epochs, the one it started last first."""
    sql = "SELECT epoch FROM device_epochs WHERE device_id = ? ORDER BY id DESC"
    return [str(r[0]) for r in conn.execute(sql, [device_id])]


def epoch_marks(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(device id, epoch) -> what is stored contiguously, of every epoch."""
    rows = conn.execute("SELECT device_id, epoch, acked_upto FROM device_epochs")
    return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}
