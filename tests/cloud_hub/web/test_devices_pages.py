"""A fleet of many devices: GET /api/v1/devices in pages, `devices list` across pages, and
registrations that arrive together stored together (one write of the broker's files), with the
hub's and accounts' password hashes made once and kept."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.core.errors import AlreadyExists
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_auth import (
    HUB_USER,
    Account,
    acl_rules,
    add_account,
    verify_password,
)
from cloud_hub.fleet.devices import RELOAD_COALESCE_FROM, RELOAD_GAP_S
from cloud_hub.fleet.schemas import DeviceCreate
from cloud_hub.hub import Hub
from tests.conftest import SecureMosquitto, admin_headers, run_cli
from tests.waiting import wait_until


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(hub, scheduler=False), headers=admin_headers(hub)) as c:
        yield c


def _register(hub: Hub, ids: list[str], **fields: object) -> None:
    for dev in ids:
        hub.fleet.devices.register(DeviceCreate(id=dev, **fields))  # type: ignore[arg-type]


def test_devices_come_in_pages_with_a_next_link_until_the_last(
    client: TestClient, hub: Hub
) -> None:
    ids = [f"cam-{i:02d}" for i in range(7)]
    _register(hub, ids[:4], tags=["lab"])
    _register(hub, ids[4:], group="yard")

    first = client.get("/api/v1/devices", params={"limit": 3})
    assert first.status_code == 200
    assert [d["id"] for d in first.json()] == ids[:3]
    assert first.headers["X-Next-After"] == "cam-02"
    link = first.headers["Link"]
    assert link.endswith('>; rel="next"') and "after=cam-02" in link and "limit=3" in link

    seen, url = [], "/api/v1/devices?limit=3"
    while url:
        page = client.get(url)
        seen += [d["id"] for d in page.json()]
        url = page.headers["Link"][1:].split(">;")[0] if "Link" in page.headers else ""
    assert seen == ids
    last = client.get("/api/v1/devices", params={"limit": 3, "after": "cam-05"})
    assert [d["id"] for d in last.json()] == ["cam-06"]
    assert "Link" not in last.headers and "X-Next-After" not in last.headers

    # the default page holds a small fleet whole: an old client reading one list sees all
    whole = client.get("/api/v1/devices")
    assert [d["id"] for d in whole.json()] == ids and "Link" not in whole.headers

    # filters page too
    lab = client.get("/api/v1/devices", params={"tag": "lab", "limit": 2})
    assert [d["id"] for d in lab.json()] == ["cam-00", "cam-01"]
    rest = client.get("/api/v1/devices", params={"tag": "lab", "limit": 2, "after": "cam-01"})
    assert [d["id"] for d in rest.json()] == ["cam-02", "cam-03"]
    yard = client.get("/api/v1/devices", params={"group": "yard"}).json()
    assert [d["id"] for d in yard] == ids[4:]

    for bad in ({"limit": 0}, {"limit": 1001}, {"after": "x" * 300}):
        refused = client.get("/api/v1/devices", params=bad)
        assert refused.status_code == 422 and "detail" in refused.json()


def test_devices_list_cli_reads_every_page(cli_env: dict[str, str]) -> None:
    ids = [f"node-{i:04d}" for i in range(1203)]  # more than two pages of 500
    cli_hub = Hub.open(
        HubSettings(data_dir=Path(cli_env["EDGEPILOT_DATA_DIR"]), run_scheduler=False)
    )
    try:
        with ThreadPoolExecutor(16) as pool:  # registrations at once: stored in batches
            list(pool.map(lambda dev: _register(cli_hub, [dev]), ids))
    finally:
        cli_hub.close()
    listed = run_cli(["devices", "list", "--json"], cli_env)
    assert listed.returncode == 0, listed.stderr
    assert [d["id"] for d in json.loads(listed.stdout)] == ids


def test_registrations_at_once_are_all_stored_and_all_in_the_broker_files(hub: Hub) -> None:
    store = hub.fleet.devices
    add_account(store.files, Account("grafana", "viewer"))
    ids = [f"pi-{i:03d}" for i in range(40)] + ["pi-007"]  # one id twice
    errors: list[BaseException] = []

    def register(dev: str) -> None:
        try:
            store.register(DeviceCreate(id=dev))
        except AlreadyExists as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(dev,)) for dev in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(errors) == 1 and "pi-007" in str(errors[0])
    stored = sorted({*ids})
    assert [d.id for d in store.all()] == stored
    users = [line.split(":", 1)[0] for line in store.files.password_file.read_text().split()]
    assert set(stored) <= set(users) and "grafana" in users and len(users) == len(set(users))

    # the ACL written from the per-device template says exactly what acl_rules says
    acl: dict[str, list[tuple[str, str]]] = {}
    user = ""
    for line in store.files.acl_file.read_text().splitlines():
        if line.startswith("user "):
            user = line[5:]
            acl[user] = []
        elif line.startswith("topic "):
            _, access, topic = line.split(" ")
            acl[user].append((access, topic))
    rules = acl_rules(stored, [Account("grafana", "viewer")], topic_root="ep")
    assert acl == {u: [(g.access, g.topic) for g in grants] for u, grants in rules.items()}


def test_a_failed_write_of_the_broker_files_stores_no_device(hub: Hub) -> None:
    store = hub.fleet.devices
    store.register(DeviceCreate(id="ok-1"))
    store.files.acl_file.unlink()
    store.files.acl_file.mkdir()  # the ACL cannot be replaced now
    with pytest.raises(OSError):
        store.register(DeviceCreate(id="lost-1"))
    assert [d.id for d in store.all()] == ["ok-1"]


def test_the_hub_password_is_hashed_once_and_again_when_it_changes(hub: Hub) -> None:
    store = hub.fleet.devices

    def hub_hash() -> str:
        for line in store.files.password_file.read_text().splitlines():
            if line.startswith(f"{HUB_USER}:"):
                return line.split(":", 1)[1]
        raise AssertionError("no hub line")

    store.register(DeviceCreate(id="a-1"))
    first = hub_hash()
    store.register(DeviceCreate(id="a-2"))
    assert hub_hash() == first  # kept, not re-salted on every registration
    secret = store.files.hub_secret
    assert verify_password(secret.read_text().strip(), first)
    assert oct(Path(f"{secret}.hash").stat().st_mode & 0o777) == "0o600"

    secret.write_text("a-new-hub-password\n")  # replaced by hand
    store.register(DeviceCreate(id="a-3"))
    assert hub_hash() != first and verify_password("a-new-hub-password", hub_hash())


def _try_connect(host: str, port: int, user: str, password: str) -> bool:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    result: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(user, password)
    client.on_connect = lambda c, u, f, reason, p: result.append(not reason.is_failure)
    client.connect(host, port)
    client.loop_start()
    try:
        wait_until(lambda: result, 5, "CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0]


def _connects(host: str, port: int, user: str, password: str, timeout: float) -> bool:
    """Connect as an agent does (again after a refusal) until the broker accepts, or time out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _try_connect(host, port, user, password):
            return True
        time.sleep(0.2)
    return False


def test_a_large_fleet_reloads_its_broker_at_most_once_a_second_and_after_the_last(
    tmp_path: Path, secure_mosquitto: Any
) -> None:
    data_dir = tmp_path / "hub"
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    with ThreadPoolExecutor(16) as pool:  # a fleet past the threshold, before the broker runs
        list(pool.map(lambda i: _register(hub, [f"old-{i:04d}"]), range(RELOAD_COALESCE_FROM)))
    broker: SecureMosquitto = secure_mosquitto(data_dir, tls=False)
    hub.close()
    hub = Hub.open(
        HubSettings(data_dir=data_dir, run_scheduler=False, broker_pid_file=broker.pid_file)
    )
    try:
        reloads = broker.reload_count()
        started = time.monotonic()
        passwords: dict[str, str] = {}

        def register(dev: str) -> None:
            passwords[dev] = hub.fleet.devices.register(DeviceCreate(id=dev)).password

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(register, [f"new-{i:03d}" for i in range(120)]))
        # the last one registered is let in once the trailing reload has run (an agent retries)
        assert _connects(broker.host, broker.port, "new-119", passwords["new-119"], 10)
        done = broker.reload_count() - reloads
        took = time.monotonic() - started  # up to the count: reloads while connecting count too
        assert 1 <= done <= int(took / RELOAD_GAP_S) + 2, (done, took)
    finally:
        hub.close()
