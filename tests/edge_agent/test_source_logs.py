"""A frame source's logs: submitted without waiting for each commit, and every one stored.

The agent's source path (`InferenceService.infer(..., wait=False)`) does not wait for its log's
fsync, but bounds the logs not yet committed and flushes them on stop; these tests run the
agent's real components in-process (FrameSource on a folder of PNGs, prepare_frame, ModelStore,
ModelManager, InferenceService, durable Outbox + BatchWriter).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.core.digests import input_digest
from edge_agent.core.wire import ModelRef
from edge_agent.inference import InferenceService
from edge_agent.model_manager import ModelManager
from edge_agent.model_store import ModelStore
from edge_agent.outbox import BatchWriter, Outbox
from edge_agent.source import FrameSource
from edge_agent.telemetry import LatencyTracker

SPEC: dict[str, Any] = {
    "input_kind": "image",
    "color": "gray",
    "size": [8, 8],
    "scale": 1 / 255,
    "flatten": True,
}


def linear_onnx() -> bytes:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "w", "b"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()  # type: ignore[no-any-return]


class Parts:
    def __init__(self, directory: Path, *, deferred_delay_s: float, max_unflushed: int) -> None:
        self.outbox = Outbox(directory / "outbox.sqlite3")
        self.writer = BatchWriter(self.outbox, deferred_delay_s=deferred_delay_s)
        data = linear_onnx()
        store = ModelStore(directory / "store")
        ref = ModelRef(
            version_id=1,
            ref="test/linear:1",
            format="onnx",
            precision="fp32",
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            signature="unchecked",
            preprocessing=SPEC,
        )
        self.manager = ModelManager(store)
        self.manager.activate(store.install(ref, data))
        self.service = InferenceService(
            self.manager, self.writer, LatencyTracker(), max_unflushed=max_unflushed
        )

    def close(self) -> None:
        self.writer.close()
        self.outbox.close()


def test_every_frame_of_a_source_is_logged(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((8, 8), i * 40, np.uint8))
    parts = Parts(tmp_path, deferred_delay_s=0.01, max_unflushed=8)

    asked: dict[str, np.ndarray] = {}

    def infer(x: np.ndarray, name: str) -> object:  # what Agent._infer_frame does
        asked[input_digest(x)] = x
        return parts.service.infer(x, source=name, wait=False)

    source = FrameSource(str(folder), 1e6, infer, lambda: SPEC, name="cam")
    source.start()
    deadline = time.monotonic() + 10
    while source.frames < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    source.stop()
    parts.service.flush()
    frames = source.frames
    assert frames >= 200
    records = parts.outbox.pending(10_000)
    assert len(records) == frames == parts.service.count
    assert {r.kind for r in records} == {"log"}
    assert {r.payload["source"] for r in records} == {"cam"}
    assert [r.seq for r in records] == list(range(1, frames + 1))
    # built on the writer's thread, each record still names what the frame was and gave
    assert {r.payload["input_digest"] for r in records} <= set(asked)
    assert all(len(r.payload["outputs_digest"]) == 64 for r in records)
    assert all(r.payload["features"] for r in records)
    parts.close()


def test_source_logs_left_uncommitted_are_bounded_and_flushed(tmp_path: Path) -> None:
    # A long deferred delay: nothing commits by itself while the calls run.
    parts = Parts(tmp_path, deferred_delay_s=0.3, max_unflushed=4)
    x = np.zeros((1, 64), np.float32)
    for _ in range(10):
        result = parts.service.infer(x, source="cam", wait=False)
        assert result.seqs == []
        assert len(parts.service._unflushed) <= 4
    parts.service.flush()
    assert parts.outbox.stats().pending == 10
    assert not parts.service._unflushed
    # A request someone waits for is durable when it returns, deferred logs or not.
    parts.service.infer(x, source="cam", wait=False)
    answered = parts.service.infer(x, source="api")
    assert answered.seqs == [12]
    assert parts.outbox.stats().pending == 12
    parts.close()


def test_waited_for_record_does_not_wait_for_the_deferred_delay(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3") as outbox:
        writer = BatchWriter(outbox, deferred_delay_s=5.0)
        payload = {
            "request_id": "r",
            "model_version": 1,
            "input_digest": "0" * 16,
            "output": [1.0],
            "latency_ms": 1.0,
            "ts": 0.0,
            "source": "cam",
        }
        deferred = writer.submit("log", payload, deferred=True)
        started = time.monotonic()
        assert writer.append("log", payload) == 2
        assert time.monotonic() - started < 1.0
        assert deferred.result(1) == 1
        writer.close()


@pytest.mark.parametrize("bad", [0, -1])
def test_max_unflushed_must_be_positive(tmp_path: Path, bad: int) -> None:
    with Outbox(tmp_path / "o.sqlite3") as outbox, BatchWriter(outbox) as writer:
        manager = ModelManager(ModelStore(tmp_path / "store"))
        with pytest.raises(ValueError, match="max_unflushed"):
            InferenceService(manager, writer, LatencyTracker(), max_unflushed=bad)
