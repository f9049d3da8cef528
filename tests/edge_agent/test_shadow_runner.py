"""ShadowRunner on its own: its stop never hangs on a slow shadow, its totals belong to the pair
of versions loaded now, the kill switch's answers are logged once and never reach it (a stand-in
manager: what ShadowRunner and InferenceService use of ModelManager, and a real outbox), and a
detection shadow is compared with the active model box by box (a real manager and runtimes)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from edge_agent.core.heads.spec import ClassificationHead
from edge_agent.core.wire import ServingParams
from edge_agent.inference import InferenceService, ServingDisabled
from edge_agent.model_manager import ModelManager, Prediction
from edge_agent.outbox import BatchWriter, Outbox
from edge_agent.shadow import ShadowRunner
from edge_agent.telemetry import LatencyTracker


@dataclass(frozen=True)
class _Installed:
    version_id: int


class _Manager:
    def __init__(self, active: int, shadow: int) -> None:
        self.active: Any = _Installed(active)
        self.shadow: Any = _Installed(shadow)
        self.gate = threading.Event()  # the shadow's predictions wait for it
        self.started = threading.Event()

    def predict_shadow(self, x: np.ndarray) -> Prediction:
        self.started.set()
        self.gate.wait(30)
        scores = np.tile(np.asarray([[0.2, 0.8]], np.float32), (len(x), 1))
        return Prediction(
            outputs={"scores": scores},
            head=ClassificationHead(output="scores"),
            version_id=self.shadow.version_id,
            latency_ms=1.0,
            rows=len(x),
        )


def _submit(runner: ShadowRunner, request_id: str, active_version: int = 1) -> bool:
    x = np.zeros((1, 4), np.float32)
    return runner.submit(
        x,
        request_id=request_id,
        active_version=active_version,
        active_answers=[{"task": "classification", "class": 0, "score": 0.9}],
        active_latency_ms=0.5,
        digests=["d"],
        source="test",
    )


def test_stop_does_not_wait_for_a_slow_shadow_to_empty_a_full_queue(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    writer = BatchWriter(outbox)
    manager = _Manager(1, 2)
    runner = ShadowRunner(cast(ModelManager, manager), writer, queue_size=4)
    runner.start()
    try:
        assert _submit(runner, "r0")
        assert manager.started.wait(5)  # the thread is busy with r0
        assert all(_submit(runner, f"r{i}") for i in range(1, 5))  # the queue is full
        assert not _submit(runner, "r5")
        stopper = threading.Thread(target=runner.stop, kwargs={"timeout": 0.5})
        began = time.monotonic()
        stopper.start()
        stopper.join(5)
        assert not stopper.is_alive(), "stop() hung on the shadow's full queue"
        assert time.monotonic() - began < 3
        manager.gate.set()  # r0 finishes; r1..r4 were never run on the shadow
        runner._thread.join(5)
        assert not runner._thread.is_alive()
        stats = runner.window(reset=False)
        assert stats is not None
        assert (stats.compared, stats.dropped) == (1, 5)
    finally:
        manager.gate.set()
        writer.close()
    logs = [r.payload for r in outbox.pending(100)]
    assert [(r["request_id"], r["role"]) for r in logs] == [("r0", "shadow")]
    outbox.close()


def test_totals_are_of_the_pair_loaded_now(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    writer = BatchWriter(outbox)
    manager = _Manager(1, 3)
    manager.gate.set()
    runner = ShadowRunner(cast(ModelManager, manager), writer)
    runner.start()
    try:
        assert _submit(runner, "a")
        assert runner.drain(5)
        totals = runner.totals()
        assert totals is not None and totals["active_version"] == 1 and totals["compared"] == 1
        # the active model said class 0, the shadow class 1: compared per task, no agreement
        assert (totals["task"], totals["agreed"], totals["similarity"]) == ("classification", 0, 0)
        manager.active = _Installed(2)  # a new active model, the same shadow beside it
        assert runner.totals() is None  # nothing compared between 2 and 3 yet
        assert _submit(runner, "b", active_version=2)
        assert runner.drain(5)
        totals = runner.totals()
        assert totals is not None and totals["active_version"] == 2 and totals["compared"] == 1
    finally:
        runner.stop()
        writer.close()
        outbox.close()


def test_the_kill_switch_logs_each_sample_once_and_never_reaches_the_shadow(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    writer = BatchWriter(outbox)
    manager = _Manager(1, 2)
    manager.gate.set()
    runner = ShadowRunner(cast(ModelManager, manager), writer)
    runner.start()
    params = ServingParams(disabled=True, default_label="off")
    service = InferenceService(
        cast(ModelManager, manager), writer, LatencyTracker(), params=lambda: params, shadow=runner
    )
    try:
        x = np.zeros((3, 4), np.float32)
        result = service.infer(x, request_id="k")
        assert result.disabled and len(result.seqs) == 3
        service.infer(x[:1], request_id="f", wait=False)  # a frame source's call
        service.flush(5)
        params = ServingParams(disabled=True)  # ... and with no default answer: refused
        with pytest.raises(ServingDisabled):
            service.infer(x[:1], request_id="refused")
        assert runner.drain(5)
    finally:
        runner.stop()
        writer.close()
    logs = [r.payload for r in outbox.pending(100)]
    assert [r["request_id"] for r in logs] == ["k/0", "k/1", "k/2", "f"]
    assert all(r["model_version"] is None and r.get("role", "active") == "active" for r in logs)
    assert all(r["output"] == {"disabled": True, "label": "off"} for r in logs)
    assert runner.window() is None  # the shadow saw nothing
    outbox.close()


def test_a_detection_shadow_is_compared_box_by_box(tmp_path: Path) -> None:
    """Real ModelManager and runtimes: the zoo's box detector as the active model (score
    threshold 0.3) and, as the shadow, the same model with a threshold of 0.95."""
    import hashlib

    from edge_agent.core.wire import ModelRef
    from edge_agent.model_store import ModelStore
    from tests.model_zoo import box_detector

    zoo = box_detector()
    head = dict(zoo.head or {})
    store = ModelStore(tmp_path / "store")

    def ref(version_id: int, threshold: float) -> ModelRef:
        return ModelRef(
            version_id=version_id,
            ref=f"test/boxes:{version_id}",
            format="onnx",
            precision="fp32",
            sha256=hashlib.sha256(zoo.data).hexdigest(),
            size=len(zoo.data),
            signature="unchecked",
            head={**head, "score_threshold": threshold},
        )

    manager = ModelManager(store)
    manager.activate(store.install(ref(1, 0.3), zoo.data))
    manager.set_shadow(store.install(ref(2, 0.95), zoo.data))
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    writer = BatchWriter(outbox)
    runner = ShadowRunner(manager, writer)
    runner.start()
    service = InferenceService(manager, writer, LatencyTracker(), shadow=runner)
    boxes = [[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9], [0.3, 0.0, 0.4, 0.1], [0.0, 0.6, 0.1, 0.7]]
    # row 0: two cats for the active model, one for the shadow; row 1: one cat for both
    row0 = [*np.ravel(boxes), 0.99, 0.0, 0.6, 0.0, 0.0, 0.1, 0.0, 0.2]
    row1 = [*np.ravel(boxes), 0.99, 0.0, 0.1, 0.0, 0.0, 0.1, 0.0, 0.2]
    try:
        result = service.infer(np.asarray([row0, row1], np.float32), request_id="d")
        assert [len(p["detections"]) for p in result.predictions] == [2, 1]
        assert runner.drain(10)
        totals = runner.totals()
    finally:
        runner.stop()
        writer.close()
    assert totals is not None
    assert (totals["task"], totals["compared"], totals["agreed"]) == ("detection", 2, 1)
    assert totals["similarity"] == 0.75  # matched boxes: 1 of 2, then 1 of 1
    shadow_logs = [r.payload for r in outbox.pending(100) if r.payload.get("role") == "shadow"]
    assert [len(r["output"]["detections"]) for r in shadow_logs] == [1, 1]
    outbox.close()
