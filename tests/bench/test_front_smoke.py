"""bench/front.py's pieces that need no granian venv: its arguments, its table, and the front
of today (`edgepilot hub serve`, one uvicorn process) end to end on the MobileNetV2-shaped
model with JPEG bodies, as the benchmark drives it (one short round, no timing asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _front() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_front", ROOT / "bench" / "front.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_arguments() -> None:
    front = _front()
    args = front.parse_args([])
    assert (args.rounds, args.seconds, args.concurrency, args.processes) == (3, 3.0, [16, 64], 2)
    assert args.fronts == list(front.FRONTS) and args.workloads == ["cnn", "jpeg"]
    assert args.json == ROOT / "bench" / "results" / "front.json" and not args.batching
    quick = front.parse_args(["--quick", "--fronts", "uvicorn", "workers", "--processes", "3"])
    assert (quick.rounds, quick.seconds, quick.json) == (1, 1.0, None)
    assert quick.fronts == ["uvicorn", "workers"]
    for bad in (["--processes", "0"], ["--fronts", "gunicorn"], ["--workloads", "raw"]):
        with pytest.raises(SystemExit):
            front.parse_args(bad)


def test_granian_is_pinned() -> None:
    front = _front()
    lines = (ROOT / "bench" / "peers" / "requirements-granian.txt").read_text().splitlines()
    pins = [line for line in lines if line and not line.startswith("#")]
    assert pins == [f"granian=={front.granian_version()}"]
    assert front.granian_version().count(".") == 2
    assert front.granian_version() in front.label("granian", 2)


def test_processes_each_say_they_started() -> None:
    front = _front()
    assert front.expected_starts("workers", 3) == front.expected_starts("reuseport", 3) == 3
    assert front.expected_starts("uvicorn", 3) == 1
    assert front.expected_starts("granian", 3) == 0  # its one worker: the health check


def _cell(rps: float, share: float | None = None) -> dict[str, object]:
    return {
        "rps": rps,
        "round_rps": [rps - 10, rps, rps + 5],
        "p50_ms": 10.0,
        "p99_ms": 30.0,
        "cpu_ms_per_req": 0.75,
        "idle_rss_mb": 150.0,
        "peak_rss_mb": 160.0,
        "busiest_process_cpu_share": share,
    }


def test_table() -> None:
    front = _front()
    results = {
        "cnn": {"uvicorn@16": _cell(1000), "reuseport@16": _cell(1500, 0.55)},
        "jpeg": {"granian@16": _cell(200, None)},  # no uvicorn cell: no ratio
    }
    lines = front.table(results, [16], 2).splitlines()
    assert len(lines) == 2 + 3
    today, reuse, granian = lines[2:]
    assert "hub serve today" in today and "| 1000 (990–1005) | 1.00× |" in today
    assert "2 uvicorn processes, SO_REUSEPORT" in reuse and "| 1.50× |" in reuse
    assert reuse.endswith("| 55% |") and today.endswith("| - |")
    assert "MobileNetV2" in granian and "| 200 (190–205) | - |" in granian
    assert "| 0.75 ms | 150 → 160 MB |" in granian


def test_uvicorn_front_end_to_end(tmp_path: Path) -> None:
    front = _front()
    hub_data = tmp_path / "hub"
    model = front.peers.register_mobilenet(hub_data)
    front.serving.use_token(hub_data)
    labels = hub_data / "labels.json"
    labels.write_text(front.json.dumps([f"class{i}" for i in range(1000)]))
    load = front.peers.Workload("jpeg", model, labels, front.peers.jpeg_images(2), True)
    args = front.parse_args(
        ["--quick", "--fronts", "uvicorn", "--concurrency", "2", "--hub-data", str(hub_data)]
    )
    cells = front.run_workload(load, args)
    assert list(cells) == ["uvicorn@2"]
    cell = cells["uvicorn@2"]
    assert cell["rps"] > 0 and cell["p99_ms"] >= cell["p50_ms"] > 0
    assert cell["peak_rss_mb"] >= cell["idle_rss_mb"] > 0
    assert cell["busiest_process_cpu_share"] is None  # one process
    assert "hub serve today" in front.table({"jpeg": cells}, [2], 2)
