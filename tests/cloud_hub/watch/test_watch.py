"""`edgepilot watch`: the state model (merge, filter, sort, stale) and the screens.

The state tests feed FleetState documents shaped as the hub's /overview and stream events
(cloud_hub/stream/events.py); the screen tests drive WatchApp with Textual's pilot, one of them
against a real hub process, Mosquitto and agent processes (tests/live_fleet.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Label, Sparkline, TabbedContent

from cloud_hub.watch.app import DeviceScreen, WatchApp
from cloud_hub.watch.feed import Feed
from cloud_hub.watch.state import (
    COLUMNS,
    FilterError,
    FleetState,
    bar,
    clock,
    parse_filter,
    sort_devices,
)
from tests.cloud_hub.conftest import unique
from tests.conftest import free_port, run_cli
from tests.live_fleet import LiveFleet, iris_model


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


# -- the screens against a real hub, Mosquitto and agent processes -------------------------------
@pytest.fixture
def watched(tmp_path: Path, mosquitto: tuple[str, int]) -> Iterator[LiveFleet]:
    """The shared live fleet (tests/live_fleet.py) with its hub only: the test registers its
    own devices, with the tags and groups it filters on."""
    fleet = LiveFleet(tmp_path / "fleet", mosquitto, devices=0, deploy=False)
    fleet.telemetry_interval_s = 0.5
    try:
        yield fleet.start()
    finally:
        fleet.close()


def kill_hub(fleet: LiveFleet) -> None:
    assert fleet.proc is not None
    fleet.proc.kill()
    fleet.proc.wait(10)


def restart_hub(fleet: LiveFleet) -> None:
    """The same hub (port, data) again: a new process, so a new boot of its event ids."""
    fleet.http.close()
    fleet.start_hub()


async def until(pilot: Pilot[None], condition: Any, timeout: float, what: str) -> None:
    """Let the app run until `condition()` holds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


@pytest.mark.slow  # about 25 s: a hub, three agents, a deployment, a hub restart
def test_watch_follows_a_real_fleet(watched: LiveFleet) -> None:
    """The table lists the devices; a filter narrows it; a deployment's progress shows per
    device; Enter opens a device whose sparkline has points; a stopped agent's row turns
    offline; a stopped hub makes the view stale with the rows kept, and a restarted one live."""
    fleet = watched
    cam, door, pi = unique("cam"), unique("door"), unique("pi")
    mine = {cam, door, pi}
    fleet.register_device(cam, tags=["cam"], group="lab")
    fleet.register_device(door, tags=["cam", "door"], group="yard")
    fleet.register_device(pi, group="lab")
    with ThreadPoolExecutor(4) as pool:  # processes that start slowly: all at once
        refused = pool.submit(
            run_cli, ["watch", "--hub", fleet.url, "--token", "ep_wrong"], {**os.environ}
        )
        version = pool.submit(fleet.register_model, iris_model())
        for agent in pool.map(fleet.start_agent, [cam, door, pi]):
            assert agent.port
    assert refused.result().returncode == 2
    assert "refused the token (401)" in refused.result().stderr
    made = version.result()
    ref = f"{made['project']}/{made['model']}:{made['number']}"
    feed = Feed(fleet.url, fleet.viewer_token, backoff=(0.2, 1.0))  # a viewer is enough
    app = WatchApp(feed, refresh_s=0.1)

    def cell(device_id: str, column: str) -> str:
        index = [c.key for c in COLUMNS].index(column)
        return app.shown_cells.get(device_id, ("",) * len(COLUMNS))[index]

    def rollout_states() -> dict[str, str]:
        return {d["device_id"]: d["state"] for d in (app.rollout or {}).get("devices", ())}

    async def scenario() -> None:
        async with app.run_test(size=(220, 50)) as pilot:
            await until(
                pilot,
                lambda: all(cell(d, "status") == "online" for d in mine),
                30,
                "the three devices online in the table",
            )
            assert app.headline.startswith("live |")

            await pilot.press("slash", *"tag:cam group:lab")
            await until(pilot, lambda: app.shown_ids == [cam], 5, "the filter to keep cam")
            await pilot.press("enter")  # from the filter to the table

            dep = fleet.deploy(ref, tag="cam")
            await pilot.press("d")
            await until(
                pilot,
                lambda: rollout_states() == {cam: "active", door: "active"},
                40,
                "both cameras active in the deployment's per-device progress",
            )
            assert app.rollout is not None and app.rollout["id"] == dep["id"]
            await until(
                pilot,
                lambda: app.shown_deployments[str(dep["id"])]["progress"] == 1.0,
                10,
                "the deployment's progress at 100%",
            )
            await until(pilot, lambda: cell(cam, "model") == ref, 10, "cam's model")
            fleet.predict(cam)
            await until(pilot, lambda: fleet.api_get(f"/devices/{cam}/logs"), 15, "its log")

            await pilot.press("f", "enter")  # the fleet tab; open the device under the cursor
            await until(pilot, lambda: isinstance(app.screen, DeviceScreen), 5, "device screen")
            screen = app.screen
            assert isinstance(screen, DeviceScreen) and screen.device_id == cam
            await until(
                pilot,
                lambda: any(len(s.data or ()) >= 2 for s in screen.query(Sparkline)),
                20,
                "a sparkline with points",
            )
            history = screen.query_one("#dev-deployments", DataTable)
            await until(pilot, lambda: history.row_count == 1, 10, "cam's deployment history")
            assert history.get_row_at(0)[5] == "active"
            logs = screen.query_one("#dev-logs", DataTable)
            await until(pilot, lambda: logs.row_count == 1, 10, "cam's newest log")
            assert logs.get_row_at(0)[2] == "active"  # the active model answered it
            await pilot.press("s")  # the fleet's keys do nothing here
            assert app.sort_key == "id" and isinstance(app.screen, DeviceScreen)
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, DeviceScreen), 5, "back")

            await pilot.press("slash", "ctrl+a", "ctrl+k", "enter")  # no filter
            await until(pilot, lambda: mine <= set(app.shown_ids), 5, "the whole fleet again")
            await pilot.press("s")  # sort by the next column: status (offline first)
            assert app.sort_key == "status"
            fleet.stop_agent(door)  # its last will: offline
            await until(
                pilot, lambda: cell(door, "status").startswith("offline since "), 20, "offline"
            )
            assert cell(cam, "status") == "online"
            await until(pilot, lambda: app.shown_ids[0] == door, 10, "the offline row on top")

            boot = (feed.state.last_event_id or "").split("-")[0]
            kill_hub(fleet)
            await until(pilot, lambda: app.headline.startswith("STALE: "), 10, "stale")
            assert app.headline.startswith("STALE: hub unreachable since ")
            assert ", retrying" in app.headline
            assert mine <= set(app.shown_ids) and cell(door, "status").startswith("offline")

            restart_hub(fleet)  # a new boot: the stream says `missed`, the view refetches
            await until(pilot, lambda: app.headline.startswith("live |"), 20, "live again")
            assert mine <= set(app.shown_ids) and cell(cam, "status") == "online"
            await until(  # `missed` (another boot): the overview again, the new hub's events
                pilot,
                lambda: not (feed.state.last_event_id or "").startswith(boot),
                10,
                "events of the new hub",
            )

    asyncio.run(scenario())


def test_watch_refuses_bad_input_with_a_message(cli_env: dict[str, str]) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    for args, message in [
        (["--filter", "colour:red", "--token", "ep_x"], "--filter: unknown filter 'colour'"),
        (["--sort", "colour", "--token", "ep_x"], "--sort 'colour'"),
        (["--hub", "localhost:8000", "--token", "ep_x"], "give the hub's URL"),
        (["--hub", nowhere, "--token", "ep_x"], f"cannot reach the hub at {nowhere}"),
    ]:
        out = run_cli(["watch", *args], cli_env, timeout=60)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and "ep_x" not in out.stderr


def test_without_its_hub_the_view_is_stale_and_still_sorts_and_filters() -> None:
    """A hub that went away before the screen opened: the last overview stays on screen,
    marked stale; a click on a header sorts by it (again: the other way); a filter that means
    nothing is explained and the table keeps the last one that did."""
    state = fleet()
    feed = Feed(f"http://127.0.0.1:{free_port()}", "ep_token", state, backoff=(0.2, 0.5))
    app = WatchApp(feed, refresh_s=0.05)

    async def scenario() -> None:
        async with app.run_test(size=(220, 40)) as pilot:
            await until(pilot, lambda: app.headline.startswith("STALE: "), 10, "stale")
            assert "hub unreachable since" in app.headline and "connection refused" in app.headline
            assert app.shown_ids == ["cam-1", "cam-2", "pi-9"]
            table = app.fleet_table
            x = sum(c.get_render_width(table) for c in table.ordered_columns[:7]) + 2
            await pilot.click("#fleet", offset=(x, 0))  # the "cpu %" header
            await until(pilot, lambda: app.sort_key == "cpu", 5, "sorted by cpu")
            assert app.shown_ids == ["cam-1", "cam-2", "pi-9"]
            assert str(table.columns["cpu"].label).startswith("cpu % ▲")  # type: ignore[index]
            await pilot.click("#fleet", offset=(x, 0))
            await until(pilot, lambda: app.shown_ids == ["cam-2", "cam-1", "pi-9"], 5, "reverse")
            await pilot.press("slash", *"status:offline")
            await until(pilot, lambda: app.shown_ids == ["pi-9"], 5, "the offline device")
            await pilot.press(*",sleepy")
            error = app.query_one("#filter-error", Label)
            await until(pilot, lambda: "a status is online" in str(error.render()), 5, "why")
            assert app.shown_ids == ["pi-9"]
            await pilot.press("e")  # typed into the filter, not a tab switch
            assert app.query_one(TabbedContent).active == "fleet-tab"

    asyncio.run(scenario())
