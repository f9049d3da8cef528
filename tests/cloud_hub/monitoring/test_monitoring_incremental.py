"""The monitor's incremental device windows equal the full recomputation on the same data.

A real SQLite file, device logs stored through the fleet's real ingest (marks, epochs, batches
out of order), a version with a training baseline; the clock moves over several passes while
records arrive on time, late (an outbox drained after an outage), ahead of the clock, out of
order above the mark, twice under one request id, damaged, and on a device busy enough to hit
the window's record cap. At every pass each device's window from `DeviceView` equals
`WindowReader.window` field for field, and a Monitor that keeps its views between passes opens
and resolves the same alerts as one that starts from nothing at each pass.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cloud_hub.core.db import Database
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.ingest import Ingest
from cloud_hub.hub import Hub
from cloud_hub.monitoring import AlertRuleIn, Monitor, RuleStore, WindowReader
from cloud_hub.monitoring.baseline import BaselineStore, compute_baseline
from cloud_hub.monitoring.incremental import DeviceView
from cloud_hub.registry.registry import NewArtifact
from edge_agent.core.wire import LogBatch, LogRecord

LABELS = ["a", "b", "c"]
WIDTH = 8


def _records(
    rng: np.random.Generator,
    seq0: int,
    n: int,
    ts0: float,
    *,
    version: int,
    shift: float = 0.0,
    request: str = "r",
) -> list[LogRecord]:
    out = []
    for i in range(n):
        scores = rng.random(3).tolist()
        values = rng.random(WIDTH) + shift
        values[:2] = rng.integers(0, 2), rng.integers(0, 4)  # few bins: PSI over short sums
        features = values.round(4).tolist()
        out.append(
            LogRecord(
                seq=seq0 + i,
                request_id=f"{request}-{seq0 + i}",
                model_version=version,
                input_digest="ab" * 8,
                output={"task": "classification", "scores": scores}
                if i % 3
                else scores,  # head results and bare class scores (older agents)
                latency_ms=float(rng.integers(1, 40)) + i / 7,
                ts=ts0 + i * 0.3,
                features=features if i % 11 else None,
            )
        )
    return out


def _store(db: Database, device: str, epoch: str, floor: int, records: list[LogRecord]) -> None:
    Ingest(db).store_logs(
        device, LogBatch(device_id=device, epoch=epoch, floor=floor, records=records)
    )


def _same(view: DeviceView, reader: WindowReader, now: float, window_s: float) -> int:
    full = [
        w
        for w in (
            reader.window("device", k, window_s=window_s, now=now)
            for k in reader.keys("device", now - window_s, now)
        )
        if w.count > 0
    ]
    assert view.keys() == [w.key for w in full]
    for want in full:
        got = view.window(reader, want.key)
        assert got.model_dump() == want.model_dump(), want.key
    return len(full)


def test_incremental_device_windows_equal_the_full_recomputation(
    tmp_path: Path, onnx_bytes: bytes
) -> None:
    hub = Hub.open(HubSettings(data_dir=tmp_path / "hub", run_scheduler=False, monitor=False))
    try:
        db = hub.db
        version = hub.registry.register_version(
            "p",
            "m",
            artifacts=[NewArtifact("onnx", "fp32", onnx_bytes)],
            source="uploaded",
            labels=LABELS,
        ).id
        other = hub.registry.register_version(
            "p",
            "m",
            artifacts=[NewArtifact("onnx", "fp32", onnx_bytes)],
            source="uploaded",
            labels=LABELS,
        ).id  # no baseline
        rng = np.random.default_rng(7)
        BaselineStore(db).save(
            compute_baseline(
                version,
                np.column_stack(
                    [rng.integers(0, 2, 500), rng.integers(0, 4, 500), rng.random((500, WIDTH - 2))]
                ).astype(np.float32),
                source="training",
                labels=LABELS,
                y=rng.integers(0, 3, 500),
            )
        )
        window_s = 30.0
        t0 = time.time() - 3600
        view = DeviceView(db, window_s, max_records=240)
        kept = Monitor(db, max_records=240)
        RuleStore(db).create(
            AlertRuleIn(
                metric="psi_max", threshold=3.0, scope="device", window_s=window_s, min_count=20
            )
        )
        RuleStore(db).create(
            AlertRuleIn(
                metric="latency_p99_ms",
                threshold=30,
                scope="device",
                window_s=window_s,
                min_count=20,
            )
        )
        seqs = {f"cam-{i}": 1 for i in range(12)}
        kept_events: list[tuple[str, str, str]] = []
        fresh_events: list[tuple[str, str, str]] = []
        judged = 0
        for step in range(14):
            now = t0 + step * 5
            for i, device in enumerate(seqs):
                if i == 11 and step > 6:
                    continue  # goes quiet: its window empties
                n = 60 if i == 0 else 24  # cam-0 is over the record cap (240 a window)
                shift = 2.0 if i in (3, 4) and step >= 5 else 0.0
                v = other if i == 5 and step % 2 else version
                recs = _records(rng, seqs[device], n, now - 4, version=v, shift=shift)
                if i == 6 and step == 4:  # out of order: the upper half first, a gap under it
                    half = n // 2
                    _store(db, device, "e1", 1, recs[half:])
                    view.advance(now - 2)
                    _store(db, device, "e1", 1, recs[:half])
                elif i == 7 and step == 6:  # an outbox drained after an outage: old stamps
                    for r in recs:
                        r.ts -= 20
                    _store(db, device, "e1", 1, recs)
                elif i == 8 and step == 3:  # a clock ahead of the hub's
                    for r in recs:
                        r.ts += 12
                    _store(db, device, "e1", 1, recs)
                elif i == 9 and step == 8:  # the same request id twice
                    recs[1].request_id = recs[0].request_id
                    _store(db, device, "e1", 1, recs)
                else:
                    _store(db, device, "e1", 1, recs)
                seqs[device] += n
            if step == 5:  # a re-flashed card: a new epoch from seq 1
                _store(db, "cam-2", "e2", 1, _records(rng, 1, 12, now - 3, version=version))
            if step == 7:  # a damaged record, written by hand above the mark
                with db.transaction():
                    db.conn.execute(
                        "INSERT INTO inference_logs (device_id, epoch, seq, request_id, "
                        "model_version, input_digest, output, latency_ms, ts, source, features) "
                        "VALUES ('cam-1', 'e1', ?, 'bad', ?, 'x', 'not json', ?, ?, 'api', "
                        "'[1, \"a\"')",
                        [seqs["cam-1"] + 5, version, float("inf"), now - 1],
                    )
            view.advance(now)
            reader = WindowReader(db, max_records=240)
            judged += _same(view, reader, now, window_s)
            kept_events += [(e.event, e.alert.metric, e.alert.target) for e in kept.evaluate(now)]
            fresh_events += [
                (e.event, e.alert.metric, e.alert.target)
                for e in Monitor(db, max_records=240).evaluate(now)
            ]
        assert judged > 100
        # the drifting cameras' alerts opened from the kept views; a monitor computing every
        # window in full at the same instant, right after, finds nothing to open or resolve
        assert ("opened", "psi_max", "cam-3") in kept_events
        assert ("opened", "psi_max", "cam-4") in kept_events
        drifted = {t for e, m, t in kept_events if e == "opened" and m == "psi_max"}
        assert drifted == {"cam-3", "cam-4"}
        assert fresh_events == []
        # each record was read once on arrival (and once more leaving), not at every pass
        stored = db.conn.execute("SELECT count(*) FROM inference_logs").fetchone()[0]
        assert view.rows_read <= stored
    finally:
        hub.close()
