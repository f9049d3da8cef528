"""Device windows kept up to date incrementally: each evaluation reads only the device records
stored since the previous one and the records that just left the window, not every device's
whole window again.

Why. `WindowReader` recomputes a window from its records: for the default `device-input-drift`
rule that is every device's last 300 s of inference logs at every pass, each record's answer
parsed and its features decoded again and again (at 1,000 devices × 3 records/s, 900k records a
pass). Here each record is read twice in its life: when it arrives and when it leaves.

What is kept, per window length (`window_s`; one `DeviceView` each) and device: running sums
over the records in [now − window_s, now] — records, per version its records, answer labels and
the training-baseline bin counts of its features (the histogram PSI is computed from: the exact
bins `stats.bin_index` files the window's records in), records per task, and two sorted arrays
(latencies, request-id hashes: the exact percentiles and the requests counted once).

The cursor. Device logs are keyed by (device, outbox epoch, seq) and the ingest keeps per epoch
a contiguous mark (`device_epochs.acked_upto`): every seq up to it is stored. So each pass reads
the marks first, then, per epoch, the records with seq above the mark of the previous pass (in
one query); records above a mark (stored out of order) are remembered by seq so that a later
pass does not count them twice. A late record (an outbox drained after an outage, with old
timestamps) is therefore counted like any other. Records leaving the window are those with ts in
[previous since, since): one range query on the log's ts index; each is subtracted if the cursor
had read it before.

Exactness. The window's numbers equal `WindowReader.window("device", ...)` on the same data (a
test compares them). Where the sums cannot decide what the full computation would — more records
than the window's `last_n` cap, a request id logged twice, detection or embedding answers (their
summaries need every answer), a tie between tasks or between baseline versions — that device's
window is computed in full, as before. The state is rebuilt from the database (one read of the
window) at the first pass, when `now` goes backwards or jumps past a whole window, and when a
baseline is created or replaced.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud_hub.core.db import Database
from cloud_hub.fleet.ingest import epoch_marks
from cloud_hub.monitoring import stats
from cloud_hub.monitoring.baseline import DECIMALS, Baseline, BaselineStore
from cloud_hub.monitoring.windows import (
    TOP_FEATURES,
    Drift,
    FeatureDrift,
    WindowReader,
    WindowStats,
    top_label,
)
from cloud_hub.predlog import device_logs
from cloud_hub.registry.registry import version_labels
from edge_agent.core.features import decode as decode_features

log = logging.getLogger(__name__)

Pair = tuple[str, str]  # (device id, outbox epoch)
NO_SEQ = -(2**62)  # the cursor of an epoch without a mark: every seq is above it
_CHUNK = 900  # epochs per cursor query (3 parameters each)
_FULL_TASKS = ("detection", "embedding")


@dataclass(slots=True)
class _Row:
    device: str
    pair: Pair
    seq: int
    ts: float
    request: int  # hash of the request id
    version: int | None
    label: str | None
    task: str
    latency: float | None  # finite latencies only
    features: bytes | str | None


@dataclass
class _VersionSums:
    records: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    samples: int = 0  # records with features of the baseline's width
    other: int = 0  # ... of another width
    bad: int = 0  # ... unreadable
    bins: np.ndarray | None = None  # flat bin counts, every feature's bins in a row


@dataclass
class _DeviceSums:
    count: int = 0
    versions: dict[int | None, _VersionSums] = field(default_factory=dict)
    tasks: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    requests: array[int] = field(default_factory=lambda: array("q"))
    repeated: int = 0  # request hashes held more than once (extra copies)


@dataclass
class _Cursor:
    low: int  # every seq up to it has been read (or is older than the window)
    above: dict[int, float] = field(default_factory=dict)  # seqs above `low` read: their ts

    def read(self, seq: int) -> bool:
        return seq <= self.low or seq in self.above


class _Bins:
    """A baseline's feature bins laid out flat: feature i's bins at offsets[i] + bin."""

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.width = len(baseline.features)
        self.row_bytes = 4 * self.width  # a summary as edge_agent.core.features.encode stores it
        sizes = [stats.bin_count(fb.edges) for fb in baseline.features]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.sizes = sizes
        self.total = int(sum(sizes))
        self._grouped: dict[int, tuple[np.ndarray, np.ndarray, int, np.ndarray]] | None = None

    def count(self, owners: Sequence[str], rows: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Flat bin counts per owner of the rows (stored feature summaries, `row_bytes` each;
        one owner, a device, per row): every row binned in one pass per feature."""
        stacked = np.frombuffer(b"".join(rows), dtype="<f4").reshape(len(rows), self.width)
        matrix = np.round(stacked.astype(np.float32), DECIMALS)
        names = sorted(set(owners))
        code = {name: i for i, name in enumerate(names)}
        flat = np.empty(matrix.shape, dtype=np.int64)
        for i, fb in enumerate(self.baseline.features):
            flat[:, i] = stats.bin_index(fb.edges, matrix[:, i]) + self.offsets[i]
        flat += (np.array([code[o] for o in owners], dtype=np.int64) * self.total)[:, None]
        counts = np.bincount(flat.ravel(), minlength=len(names) * self.total)
        table = counts.reshape(len(names), self.total)
        return {name: table[i] for i, name in enumerate(names)}

    def psis(self, counts: np.ndarray, samples: int) -> np.ndarray:
        """Every feature's PSI (`stats.psi` of its shares against the baseline's), features of
        the same number of bins computed together (the same sums, in the same order)."""
        out = np.empty(self.width, dtype=np.float64)
        for features, starts, size, expected in self._groups.values():
            shares = counts[starts[:, None] + np.arange(size)] / samples
            a = np.maximum(shares, stats.EPSILON)
            out[features] = np.sum((a - expected) * np.log(a / expected), axis=1)
        return out

    @property
    def _groups(self) -> dict[int, tuple[np.ndarray, np.ndarray, int, np.ndarray]]:
        if self._grouped is None:
            by_size: dict[int, list[int]] = {}
            for i, size in enumerate(self.sizes):
                by_size.setdefault(size, []).append(i)
            self._grouped = {
                size: (
                    np.array(features),
                    self.offsets[features],
                    size,
                    np.maximum(
                        np.array(
                            [self.baseline.features[i].expected for i in features],
                            dtype=np.float64,
                        ),
                        stats.EPSILON,
                    ),
                )
                for size, features in by_size.items()
            }
        return self._grouped


class DeviceView:
    """The devices' windows of one length, updated by `advance(now)`."""

    def __init__(self, db: Database, window_s: float, *, max_records: int) -> None:
        self.db = db
        self.window_s = window_s
        self.max_records = max_records
        self.devices: dict[str, _DeviceSums] = {}
        self.cursors: dict[Pair, _Cursor] = {}
        self.pending: list[_Row] = []  # read, but stamped after `now` (a clock ahead)
        self.now: float | None = None
        self.high_ts = -math.inf  # the newest ts read: new epochs are looked for above it
        self.fingerprint: tuple[tuple[int, str], ...] | None = None
        self._bins: dict[int, _Bins | None] = {}
        self._labels: dict[int, list[str]] = {}
        self.rows_read = 0  # records read on arrival so far (the bench reports it)
        self.rows_left = 0  # ... and read again leaving the window

    @property
    def since(self) -> float:
        assert self.now is not None
        return self.now - self.window_s

    # -- updating -----------------------------------------------------------------------------
    def advance(self, now: float) -> None:
        """Bring the window to [now − window_s, now]."""
        fingerprint = self._fingerprint()
        if (
            self.now is None
            or now < self.now
            or now - self.window_s > self.now
            or fingerprint != self.fingerprint
        ):
            self._rebuild(now, fingerprint)
            return
        conn = self.db.conn
        marks = self._marks()
        old_since, self.now = self.since, now
        since = self.since
        # 1. what left the window: subtract the records the cursor had read
        if since > old_since:
            gone = device_logs.active_between(conn, old_since, since)
            self.rows_left += len(gone)
            leaving = [r for r in (self._row(x) for x in gone) if self._was_read(r.pair, r.seq)]
            self._apply(leaving, -1)
        # 2. what was stamped ahead of the clock and is due now
        due = [r for r in self.pending if r.ts <= now]
        self.pending = [r for r in self.pending if r.ts > now]
        self._apply([r for r in due if r.ts >= since], +1)
        # 3. what arrived: above each epoch's previous mark, not read before
        for pair in self._new_pairs(marks):
            self.cursors.setdefault(pair, _Cursor(low=NO_SEQ))
        fresh: list[_Row] = []
        for rows in self._above_cursors(since):
            for row in rows:
                r = self._row(row)
                if not self._was_read(r.pair, r.seq):
                    fresh.append(r)
        self._take(fresh, now, since)
        # 4. the cursors move on to this pass's marks
        for pair, cursor in self.cursors.items():
            mark = marks.get(pair)
            if mark is not None and mark > cursor.low:
                cursor.low = mark
            cursor.above = {s: t for s, t in cursor.above.items() if s > cursor.low and t >= since}
        self._forget_empty()

    def _rebuild(self, now: float, fingerprint: tuple[tuple[int, str], ...]) -> None:
        """The state from scratch: one read of the window (and anything stamped after it)."""
        self.devices, self.cursors, self.pending = {}, {}, []
        self._bins, self._labels = {}, {}
        self.fingerprint, self.now, self.high_ts = fingerprint, now, -math.inf
        marks = self._marks()
        since = self.since
        rows = device_logs.active_since(self.db.conn, since)
        for pair, mark in marks.items():
            self.cursors[pair] = _Cursor(low=mark)
        read = [self._row(x) for x in rows]
        for r in read:
            self.cursors.setdefault(r.pair, _Cursor(low=NO_SEQ))
        self._take(read, now, since)
        self._forget_empty()

    def _take(self, rows: list[_Row], now: float, since: float) -> None:
        """Rows just read: remembered by the cursor, counted (or held while stamped ahead)."""
        for r in rows:
            cursor = self.cursors.setdefault(r.pair, _Cursor(low=NO_SEQ))
            if r.seq > cursor.low:
                cursor.above[r.seq] = r.ts
            self.high_ts = max(self.high_ts, r.ts)
        self.rows_read += len(rows)
        self.pending += [r for r in rows if r.ts > now]
        self._apply([r for r in rows if since <= r.ts <= now], +1)

    def _was_read(self, pair: Pair, seq: int) -> bool:
        cursor = self.cursors.get(pair)
        return cursor is not None and cursor.read(seq)

    def _fingerprint(self) -> tuple[tuple[int, str], ...]:
        return BaselineStore(self.db).stamps()

    def _marks(self) -> dict[Pair, int]:
        return epoch_marks(self.db.conn)

    def _new_pairs(self, marks: dict[Pair, int]) -> Iterable[Pair]:
        """Epochs with a mark the cursor does not know yet, and epochs without one (records not
        stored by the ingest) with records stamped after the newest read."""
        yield from (p for p in marks if p not in self.cursors)
        after = self.high_ts if math.isfinite(self.high_ts) else self.since
        yield from device_logs.epochs_stamped_after(self.db.conn, after)

    def _above_cursors(self, since: float) -> Iterable[list[Any]]:
        """Per epoch, its records with seq above the cursor and ts in the window or later: one
        query per `_CHUNK` epochs, each epoch a seek on the table's primary key."""
        pairs = list(self.cursors.items())
        for start in range(0, len(pairs), _CHUNK):
            chunk = pairs[start : start + _CHUNK]
            cursors = [(device, epoch, cursor.low) for (device, epoch), cursor in chunk]
            yield device_logs.active_above(self.db.conn, cursors, since)

    def _forget_empty(self) -> None:
        for device in [d for d, s in self.devices.items() if s.count == 0]:
            del self.devices[device]

    # -- one record in or out -----------------------------------------------------------------
    def _row(self, row: Sequence[Any]) -> _Row:
        device, epoch, seq, ts, request_id, version, output, latency, features = row
        label, task = self._answer(output, version)
        lat = float(latency) if latency is not None and math.isfinite(latency) else None
        return _Row(
            device=str(device),
            pair=(str(device), str(epoch)),
            seq=int(seq),
            ts=float(ts),
            request=hash(str(request_id)),
            version=None if version is None else int(version),
            label=label,
            task=task,
            latency=lat,
            features=features,
        )

    def _answer(self, output: Any, version: int | None) -> tuple[str | None, str]:
        """(label, task) of a logged answer, as WindowReader's `_label` and `_task_of`."""
        if output is None:
            return None, "classification"
        try:
            doc = json.loads(output)
        except ValueError:
            return None, "classification"
        task = "classification"
        if (
            isinstance(output, str)
            and output.startswith("{")
            and isinstance(doc, dict)
            and isinstance(doc.get("task"), str)
        ):
            task = str(doc["task"])
        return top_label(doc, self._version_labels(version)), task

    def _apply(self, rows: Sequence[_Row], sign: int) -> None:
        features: dict[int, tuple[list[str], list[bytes]]] = {}
        for r in rows:
            sums = self.devices.get(r.device)
            if sums is None:
                sums = self.devices[r.device] = _DeviceSums()
            sums.count += sign
            if sums.count < 0:
                raise RuntimeError("incremental window out of step: a record left twice")
            sums.tasks[r.task] = sums.tasks.get(r.task, 0) + sign
            vs = sums.versions.get(r.version)
            if vs is None:
                vs = sums.versions[r.version] = _VersionSums()
            vs.records += sign
            if r.label is not None:
                sums.labels[r.label] = sums.labels.get(r.label, 0) + sign
                vs.labels[r.label] = vs.labels.get(r.label, 0) + sign
            if r.latency is not None:
                _change(sums.latencies, r.latency, sign)
            if _change(sums.requests, r.request, sign):
                sums.repeated += sign
            if r.features is None or r.version is None:
                continue
            bins = self._baseline_bins(r.version)
            if bins is None:
                continue
            raw = r.features
            if not (isinstance(raw, bytes) and len(raw) == bins.row_bytes):
                values = decode_features(raw)  # JSON text, or a damaged record
                if values is None:
                    vs.bad += sign
                    continue
                if len(values) != bins.width:
                    vs.other += sign
                    continue
                raw = np.asarray(values, dtype="<f4").tobytes()
            vs.samples += sign
            owners, blobs = features.setdefault(r.version, ([], []))
            owners.append(r.device)
            blobs.append(raw)
        for version, (owners, matrix) in features.items():
            bins = self._baseline_bins(version)
            assert bins is not None
            for device, counted in bins.count(owners, matrix).items():
                vs = self.devices[device].versions[version]
                vs.bins = counted * sign if vs.bins is None else vs.bins + counted * sign

    # -- lookups ------------------------------------------------------------------------------
    def _baseline_bins(self, version: int | None) -> _Bins | None:
        if version is None:
            return None
        if version not in self._bins:
            found = BaselineStore(self.db).find(version)
            self._bins[version] = None if found is None else _Bins(found)
        return self._bins[version]

    def _version_labels(self, version: int | None) -> list[str]:
        if version is None:
            return []
        if version not in self._labels:
            self._labels[version] = version_labels(self.db.conn, version) or []
        return self._labels[version]

    # -- reading a window ---------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Devices with records in the window."""
        return sorted(d for d, s in self.devices.items() if s.count > 0)

    def window(self, reader: WindowReader, key: str, *, last_n: int | None = None) -> WindowStats:
        """The device's window, equal to `reader.window("device", key, ...)` (computed by it
        where the sums cannot decide: the module's docstring)."""
        assert self.now is not None
        n = min(last_n or self.max_records, self.max_records)
        sums = self.devices.get(key)
        head: dict[str, Any] = {
            "by": "device",
            "key": key,
            "name": key,
            "window_s": self.window_s,
            "last_n": n,
            "since": self.since,
            "until": self.now,
        }
        if sums is None or sums.count == 0:
            return WindowStats(**head, **_EMPTY)
        task, task_tie = _top(sums.tasks)
        base, base_tie = self._base_version(sums)
        if sums.count > n or sums.repeated or task in _FULL_TASKS or task_tie or base_tie:
            return reader.window("device", key, window_s=self.window_s, last_n=last_n, now=self.now)
        requests = len(sums.requests) - sums.repeated
        out: dict[str, Any] = {
            "count": sums.count,
            "requests": requests,
            "errors": 0,
            "error_rate": 0.0 if requests else None,
            "outcomes": {"ok": requests} if requests else {},
            "latency_ms": stats.sorted_percentiles(sums.latencies),
            "output": stats.shares_of_counts(sums.labels),
            "versions": {
                str(v): vs.records
                for v, vs in sorted(sums.versions.items(), key=lambda kv: -kv[1].records)
                if v is not None and vs.records > 0
            },
            "notes": [],
            "task": task,
        }
        if task is not None and task != "classification":
            out["notes"].append(f"no output shift for {task} answers: it is not measured")
        if base is None:
            out["notes"].append("no training baseline for the versions in this window")
            return WindowStats(**head, **out)
        bins = self._baseline_bins(base)
        assert bins is not None
        baseline = bins.baseline
        mine = sums.versions[base]
        out["baseline_version"] = base
        answers = +mine.labels
        if answers and baseline.class_distribution:
            out["output_shift"] = stats.total_variation(
                stats.shares_of_counts(answers), baseline.class_distribution
            )
        out["drift"], note = _drift(bins, mine)
        if note:
            out["notes"].append(note)
        return WindowStats(**head, **out)

    def _base_version(self, sums: _DeviceSums) -> tuple[int | None, bool]:
        """The most common version with a baseline, and whether another one ties with it."""
        counts = sorted(
            (
                (vs.records, v)
                for v, vs in sums.versions.items()
                if v is not None and vs.records > 0 and self._baseline_bins(v) is not None
            ),
            reverse=True,
        )
        if not counts:
            return None, False
        return counts[0][1], len(counts) > 1 and counts[1][0] == counts[0][0]


_EMPTY: dict[str, Any] = {
    "count": 0,
    "requests": 0,
    "errors": 0,
    "error_rate": None,
    "outcomes": {},
    "latency_ms": {},
    "output": {},
    "versions": {},
    "notes": [],
    "task": None,
}


def _top(counter: Counter[str]) -> tuple[str | None, bool]:
    live = [(c, k) for k, c in counter.items() if c > 0]
    if not live:
        return None, False
    live.sort(reverse=True)
    return live[0][1], len(live) > 1 and live[1][0] == live[0][0]


def _change(values: array[Any], value: float | int, sign: int) -> bool:
    """Insert (sign 1) or remove (−1) one value of a sorted array; True when another copy of
    it is (or was) held beside it. A value to remove that is not held is an error."""
    i = bisect.bisect_left(values, value)
    held = i < len(values) and values[i] == value
    if sign > 0:
        values.insert(i, value)
        return held
    if not held:
        raise RuntimeError("incremental window out of step: a record left that never came")
    values.pop(i)
    return i < len(values) and values[i] == value


def _drift(bins: _Bins, vs: _VersionSums) -> tuple[Drift | None, str | None]:
    """As WindowReader._drift, from the bin counts."""
    notes = []
    if vs.other:
        notes.append(f"{vs.other} records with other than {bins.width}-value features left out")
    if vs.bad:
        notes.append(f"{vs.bad} records with unreadable features left out")
    note = "; ".join(notes) or None
    if not vs.samples or vs.bins is None:
        return None, note or "no input features logged for the baseline's version"
    psis = bins.psis(vs.bins, vs.samples)
    order = np.argsort(-psis, kind="stable")[:TOP_FEATURES]
    return (
        Drift(
            samples=vs.samples,
            psi_max=round(float(psis.max()), 4),
            psi_mean=round(float(psis.mean()), 4),
            top=[FeatureDrift(feature=int(i), psi=round(float(psis[i]), 4)) for i in order],
        ),
        note,
    )


class DeviceWindows:
    """The incremental device views a Monitor keeps between passes, one per window length."""

    def __init__(self, db: Database, *, max_records: int) -> None:
        self.db = db
        self.max_records = max_records
        self.views: dict[float, DeviceView] = {}

    def advance(self, lengths: Iterable[float], now: float) -> dict[float, DeviceView | None]:
        """Each needed view brought to `now` (None: it failed; the caller computes those
        windows in full and the view is rebuilt at the next pass). Views no rule needs any
        more are dropped."""
        wanted = set(lengths)
        self.views = {w: v for w, v in self.views.items() if w in wanted}
        out: dict[float, DeviceView | None] = {}
        for length in sorted(wanted):
            view = self.views.get(length) or DeviceView(
                self.db, length, max_records=self.max_records
            )
            try:
                view.advance(now)
            except Exception:
                log.exception(
                    "alert monitor: the device windows of %g s could not be updated", length
                )
                self.views.pop(length, None)
                out[length] = None
                continue
            self.views[length] = out[length] = view
        return out

    def window(
        self, view: DeviceView, reader: WindowReader, key: str, *, last_n: int | None
    ) -> WindowStats:
        return view.window(reader, key, last_n=last_n)
