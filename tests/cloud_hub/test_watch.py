"""`edgepilot watch`: the state model (merge, filter, sort, stale) and the screens.

The state tests feed FleetState documents shaped as the hub's /overview and stream events
(docs: /tmp contract, cloud_hub/stream); the screen tests drive WatchApp with Textual's pilot.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from cloud_hub.watch.state import (
    COLUMNS,
    FilterError,
    FleetState,
    bar,
    clock,
    parse_filter,
    sort_devices,
)


def device(ident: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": ident,
        "name": ident,
        "status": "online",
        "status_since": 1000.0,
        "last_seen": 1000.0,
        "tags": [],
        "group": None,
        "agent_version": "1.0",
        "hardware": "rpi4",
        "active_version_id": None,
        "active_model": None,
        "artifact": None,
        "shadow": None,
        "cpu": None,
        "memory": None,
        "memory_rss": None,
        "temperature": None,
        "inferences_per_s": None,
        "latency_p50": None,
        "latency_p99": None,
        "outbox_backlog": None,
        "outbox_drops": None,
        "telemetry_ts": None,
        "open_alerts": 0,
    }
    base.update(fields)
    return base


def overview(*devices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "server_time": 1000.0,
        "last_event_id": "abcd0123-5",
        "devices": list(devices),
        "deployments": extra.get("deployments", []),
        "alerts": extra.get("alerts", []),
        "endpoints": extra.get("endpoints", []),
    }


def fleet() -> FleetState:
    state = FleetState()
    state.load_overview(
        overview(
            device("cam-1", tags=["cam"], group="lab", cpu=40.0, active_model="p/m:3"),
            device("cam-2", tags=["cam", "door"], group="yard", cpu=90.5),
            device("pi-9", status="offline", status_since=1700000000.0, cpu=None),
        )
    )
    return state


def cells(state: FleetState, **kw: Any) -> dict[str, dict[str, str]]:
    keys = [c.key for c in COLUMNS]
    return {i: dict(zip(keys, row, strict=True)) for i, row in state.rows(**kw)}


# -- merging ------------------------------------------------------------------------------------
def test_overview_then_events_merge_by_the_contract() -> None:
    state = fleet()
    assert state.last_event_id == "abcd0123-5"
    rev = state.revision
    assert state.apply("telemetry", {"id": "cam-1", "cpu": 12.0, "latency_p99": 7.25}, "b-6") == (
        "ok"
    )
    assert state.revision > rev and state.last_event_id == "b-6"
    row = cells(state)["cam-1"]
    assert (row["cpu"], row["p99"], row["model"]) == ("12", "7.2", "p/m:3")  # others kept
    state.apply("device", {"id": "cam-1", "status": "offline", "status_since": 1700000000.0})
    assert cells(state)["cam-1"]["status"] == f"offline since {clock(1700000000.0)}"
    assert cells(state)["cam-1"]["cpu"] == "12"  # the last telemetry stays


def test_unknown_device_and_missed_ask_for_the_overview() -> None:
    state = fleet()
    assert state.apply("device", {"id": "new-1", "status": "online"}) == "refetch"
    assert state.apply("telemetry", {"id": "new-1", "cpu": 1.0}) == "refetch"
    assert state.apply("missed", {"reason": "restart", "missed": None}) == "refetch"
    assert "new-1" not in state.devices
    state.load_overview(overview(device("new-1")))
    assert list(state.devices) == ["new-1"]  # the overview replaces everything
    assert state.apply("some-future-kind", {"x": 1}) == "ok"


def test_alerts_open_and_close_and_count_on_the_device() -> None:
    state = fleet()
    alert = {"id": 7, "rule": "r", "severity": "warning", "state": "open", "subject": "cam-2"}
    state.apply("alert", {**alert, "message": "hot", "since": "2026", "open": True})
    assert cells(state)["cam-2"]["alerts"] == "1"
    assert state.device_alerts("cam-2")[0]["message"] == "hot"
    state.apply("alert", {**alert, "message": "hot", "since": "2026", "open": False})
    assert cells(state)["cam-2"]["alerts"] == "0" and state.alerts == {}


def test_deployments_replace_by_id_live_first() -> None:
    state = fleet()
    state.apply("deployment", {"id": 1, "version": "p/m:1", "progress": 1.0, "devices": {}})
    state.apply("deployment", {"id": 2, "version": "p/m:2", "progress": 0.5, "devices": {}})
    state.apply("deployment", {"id": 3, "version": "p/m:3", "progress": 1.0, "devices": {}})
    assert [d["id"] for d in state.deployment_list()] == [2, 3, 1]
    state.apply("deployment", {"id": 2, "version": "p/m:2", "progress": 1.0, "devices": {}})
    assert [d["id"] for d in state.deployment_list()] == [3, 2, 1]
    assert bar(0.5, 10) == "█████░░░░░  50%"


# -- filter and sort ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("", ["cam-1", "cam-2", "pi-9"]),
        ("status:offline", ["pi-9"]),
        ("status:online,offline", ["cam-1", "cam-2", "pi-9"]),
        ("tag:cam", ["cam-1", "cam-2"]),
        ("tag:door", ["cam-2"]),
        ("group:lab", ["cam-1"]),
        ("tag:cam group:yard", ["cam-2"]),
        ("CAM", ["cam-1", "cam-2"]),
        ("9", ["pi-9"]),
        ("model:p/m", ["cam-1"]),
        ("tag:nothing", []),
    ],
)
def test_filter(text: str, ids: list[str]) -> None:
    assert [i for i, _ in fleet().rows(parse_filter(text))] == ids


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour:red", "unknown filter 'colour'"),
        ("status:sleepy", "a status is"),
        ("tag:", "value"),
    ],
)
def test_a_bad_filter_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filter(text)


def test_sort_by_a_column_missing_values_last() -> None:
    state = fleet()
    assert [i for i, _ in state.rows(sort="cpu")] == ["cam-1", "cam-2", "pi-9"]
    assert [i for i, _ in state.rows(sort="cpu", reverse=True)] == ["cam-2", "cam-1", "pi-9"]
    assert [i for i, _ in state.rows(sort="status")] == ["pi-9", "cam-1", "cam-2"]
    assert [i for i, _ in state.rows(sort="id", reverse=True)] == ["pi-9", "cam-2", "cam-1"]
    with pytest.raises(FilterError, match="unknown sort column"):
        sort_devices([], "colour")


# -- stale ------------------------------------------------------------------------------------
def test_stale_keeps_the_data_and_says_since_when() -> None:
    state = fleet()
    assert state.headline(2000.0).startswith("live | 3 devices, 2 online")
    state.mark_unreachable(1700000000.0, "connection refused", retry_at=1700000004.0)
    state.mark_unreachable(1700000005.0, "connection refused", retry_at=1700000010.0)
    assert state.stale
    head = state.headline(1700000006.0)
    assert head.startswith(f"STALE: hub unreachable since {clock(1700000000.0)}, retrying in 4 s")
    assert "3 devices" in head and len(state.rows()) == 3
    state.mark_reachable()
    assert not state.stale and state.headline(time.time()).startswith("live")
