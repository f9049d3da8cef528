"""bench/peers.py's pieces that need no peer installed: the MobileNetV2-shaped model, the peers'
preprocessing against the hub's own, and the process-tree readings."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

PEERS = Path(__file__).resolve().parents[2] / "bench" / "peers"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_peers_{name}", PEERS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mobilenet_scores_1000_classes() -> None:
    import onnxruntime as ort

    mobilenet = _load("mobilenet")
    session = ort.InferenceSession(
        mobilenet.mobilenet_v2_bytes(), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    (scores,) = session.run(None, {"x": x})
    assert scores.shape == (2, 1000)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-4)


def test_peers_preprocess_as_the_hub() -> None:
    import cv2

    from edge_agent.core.preprocess import decode_image, prepare_image

    mobilenet, workload = _load("mobilenet"), _load("workload")
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (9, 9), 3)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    spec = mobilenet.PREPROCESSING
    hub, _ = prepare_image(decode_image(jpeg.tobytes(), spec), spec)
    peer = workload.jpeg_tensor(jpeg.tobytes())
    assert peer.shape == hub.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(peer, hub, atol=1e-5)


def test_process_tree_readings() -> None:
    procs = _load("procs")
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert child.pid in procs.tree(os.getpid())
        assert procs.rss_bytes(os.getpid()) > procs.rss_bytes(child.pid) > 0
        assert procs.cpu_s(os.getpid()) > 0
    finally:
        procs.stop([child.pid])
        assert child.wait(timeout=30) != 0  # terminated
