"""Sequence integrity with the real parts: the hub's fleet service, Mosquitto, a real agent
process whose data directory is wiped between two runs (a re-flashed card, same device id)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud_hub.fleet.schemas import DeploymentCreate
from tests.agent_processes import AgentProc
from tests.e2e.test_fleet_loop import IRIS_SAMPLE, Fleet, _iris_onnx, register
from tests.waiting import wait_until


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[[tuple[str, int]], Fleet]]:
    fleets: list[Fleet] = []

    def make(address: tuple[str, int]) -> Fleet:
        fleets.append(Fleet(tmp_path, address))
        return fleets[-1]

    yield make
    for fleet in fleets:
        fleet.close()


def _predict(agent: AgentProc, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        code, body = agent.predict(IRIS_SAMPLE)
        assert code == 200, body
        ids.append(str(body["request_id"]))
    return ids


def test_a_wiped_data_directory_starts_a_new_epoch_and_every_log_reaches_the_hub(
    make_fleet: Callable[[tuple[str, int]], Fleet], mosquitto: tuple[str, int]
) -> None:
    fleet = make_fleet(mosquitto)
    fleet.start_service()
    agent = fleet.add_agent("wipe-1")
    v1 = register(fleet.hub, _iris_onnx(16, 0))
    fleet.hub.fleet.deployments.create(DeploymentCreate(version=str(v1.id), device="wipe-1"))
    fleet.wait_active(v1, "wipe-1")
    first = _predict(agent, 30)
    wait_until(lambda: len(fleet.logs_at_hub("wipe-1")) == 30, 20, "30 logs at the hub")
    wait_until(lambda: agent.status()["outbox"]["pending"] == 0, 10, "outbox emptied by acks")
    old_epoch = agent.status()["forwarder"]["epoch"]

    assert agent.terminate() == 0
    shutil.rmtree(agent.data_dir)  # the card re-flashed: same id and credentials, no data
    agent.start()
    wait_until(lambda: agent.status()["active_version"] == v1.id, 30, "the model again")
    new_epoch = agent.status()["forwarder"]["epoch"]
    assert new_epoch != old_epoch
    second = _predict(agent, 30)

    wait_until(lambda: len(fleet.logs_at_hub("wipe-1")) == 60, 20, "60 logs at the hub")
    wait_until(lambda: agent.status()["outbox"]["pending"] == 0, 10, "outbox emptied by acks")
    stored = fleet.logs_at_hub("wipe-1")
    assert sorted(log.request_id for log in stored) == sorted(first + second)
    by_epoch = {
        e: sorted(log.seq for log in stored if log.epoch == e) for e in (old_epoch, new_epoch)
    }
    assert len(by_epoch[old_epoch]) == len(by_epoch[new_epoch]) == 30
    assert set(by_epoch[old_epoch]) & set(by_epoch[new_epoch]), "the new outbox numbers from 1"
    device = fleet.device("wipe-1")
    assert device.epoch == new_epoch and device.logs_stored == 60
    status = agent.status()
    assert status["forwarder"]["bad_acks"] == 0
    assert device.acked_upto == status["outbox"]["next_seq"] - 1
    assert fleet.service is not None and fleet.service.stats().get("rejected", 0) == 0
