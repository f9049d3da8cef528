"""The fleet loop on a hardened broker: TLS, passwords and the direction-specific ACL, as
`edgepilot hub broker-config --tls` writes them, with the real hub and a real agent process.

The agent's config is the one the hub renders at registration (with the fleet CA in it). The
attacks are the tester's: a device's own credentials forging a retained kill switch and an ack
while the hub is away, and other accounts connecting with the hub's and the agent's client ids.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.agent_config import agent_config
from cloud_hub.fleet.broker_auth import BrokerFiles, account_password
from cloud_hub.fleet.mqtt_service import FleetService
from cloud_hub.fleet.schemas import DeploymentCreate, DeviceCreate
from cloud_hub.hub import Hub
from edge_agent.core.mqtt import tls_context
from edge_agent.core.wire import Ack, Chunk, DesiredState, ServingParams, Topics
from tests.agent_processes import AgentProc, agent_toml
from tests.conftest import SecureMosquitto
from tests.e2e.test_fleet_loop import IRIS_SAMPLE, iris_onnx, register
from tests.waiting import wait_until

__all__ = ["iris_onnx"]  # the module fixture, shared with the plain fleet loop

T = Topics("ep")


class SecureFleet:
    def __init__(self, tmp_path: Path, start_broker: Callable[..., SecureMosquitto]) -> None:
        self.tmp_path = tmp_path
        data_dir = tmp_path / "hub"
        # As an operator would: the broker (and its CA) first, then the devices, then a reload.
        self.broker = start_broker(data_dir, args=("--viewer", "ops"))
        self.settings = HubSettings(
            data_dir=data_dir,
            run_scheduler=False,
            mqtt_host="127.0.0.1",
            mqtt_port=self.broker.port,
            mqtt_tls=True,
            topic_root="ep",
            chunk_size=4096,
            fleet_poll_s=0.1,
        )
        self.hub = Hub.open(self.settings)
        self.registrations = {
            dev: self.hub.fleet.devices.register(DeviceCreate(id=dev)) for dev in ("cam-1", "cam-2")
        }
        self.broker.reload()
        self.service: FleetService | None = None
        self.agents: list[AgentProc] = []

    def start_service(self) -> None:
        self.service = FleetService.from_hub(self.hub)
        self.service.start()
        assert self.service.wait_connected(10), "the hub did not connect over TLS"

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def agent(self, device_id: str) -> AgentProc:
        """A real agent on the config the hub rendered for the device (with its own data dir and
        a free HTTP port)."""
        reg = self.registrations[device_id]
        rendered = tomllib.loads(agent_config(reg))
        mqtt_section: dict[str, Any] = rendered["mqtt"]
        assert mqtt_section["tls"] is True and "BEGIN CERTIFICATE" in mqtt_section["ca_pem"]
        root = self.tmp_path / device_id
        root.mkdir()
        config = root / "agent.toml"
        config.write_text(
            agent_toml(
                device_id,
                root / "data",
                self.broker.address,
                rendered["hub_public_key"],
                mqtt=mqtt_section,
                transfer={"chunk_size": 4096, "window": 4, "timeout_s": 2.0},
                forwarder={"resend_after_s": 2.0},
            )
        )
        agent = AgentProc(config, root / "data", root / "agent.log")
        self.agents.append(agent)
        return agent.start()

    def logs_at_hub(self, device_id: str) -> list[Any]:
        return self.hub.fleet.devices.logs(device_id, limit=10_000)

    def close(self) -> None:
        for agent in self.agents:
            agent.kill()
        self.stop_service()
        self.hub.close()


@pytest.fixture
def secure_fleet(
    tmp_path: Path, secure_mosquitto: Callable[..., SecureMosquitto]
) -> Iterator[SecureFleet]:
    fleet = SecureFleet(tmp_path, secure_mosquitto)
    yield fleet
    fleet.close()


class Intruder:
    """Someone holding an account's credentials, with whatever client id they like."""

    def __init__(
        self, broker: SecureMosquitto, username: str, password: str, client_id: str
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self.client.username_pw_set(username, password)
        self.client.tls_set_context(tls_context(broker.ca_file))
        self.client.reconnect_delay_set(60, 120)
        self.messages: list[tuple[str, bytes]] = []
        self.connacks: list[bool] = []
        self.subacks = 0
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.append(not rc.is_failure)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))

        def suback(*args: object) -> None:
            self.subacks += 1

        self.client.on_subscribe = suback
        self.client.connect(*broker.address)
        self.client.loop_start()
        wait_until(lambda: self.connacks, 10, f"CONNACK for {username}")

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        wait_until(lambda: self.subacks, 10, "SUBACK")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _predict(agent: AgentProc) -> str:
    code, body = agent.predict(IRIS_SAMPLE)
    assert code == 200, body
    return str(body["request_id"])


def test_over_tls_a_model_deploys_logs_arrive_and_forged_messages_change_nothing(
    secure_fleet: SecureFleet, iris_onnx: list[bytes]
) -> None:
    fleet = secure_fleet
    fleet.start_service()
    agent = fleet.agent("cam-1")
    version = register(fleet.hub, iris_onnx[0])
    dep = fleet.hub.fleet.deployments.create(
        DeploymentCreate(version=str(version.id), device="cam-1")
    )
    wait_until(lambda: agent.status()["active_version"] == version.id, 60, "v1 active over TLS")
    made = {_predict(agent) for _ in range(10)}
    wait_until(lambda: len(fleet.logs_at_hub("cam-1")) == 10, 30, "10 logs at the hub")

    # The device's own credentials, while its agent is down: a retained kill switch.
    agent.terminate()
    cam1 = fleet.registrations["cam-1"].password
    forger = Intruder(fleet.broker, "cam-1", cam1, f"forger-{uuid.uuid4().hex[:6]}")
    forger.subscribe(T.device("cam-1", "desired"))
    wait_until(lambda: forger.messages, 10, "the retained desired state")
    real = DesiredState.loads(forger.messages[0][1])
    forged = real.model_copy(update={"params": ServingParams(disabled=True)})
    forger.publish(T.device("cam-1", "desired"), forged.dumps(), retain=True)
    forger.close()

    # The hub goes away; the agent serves and holds its logs.
    fleet.stop_service()
    agent.start()
    made |= {_predict(agent) for _ in range(15)}
    wait_until(lambda: agent.status()["mqtt_connected"], 20, "the agent back on the broker")
    issued = int(agent.status()["outbox"]["next_seq"]) - 1
    assert agent.status()["outbox"]["pending"] == 15

    # The device's credentials again: an ack for all it issued, a chunk. Neither reaches it.
    forger = Intruder(fleet.broker, "cam-1", cam1, f"forger-{uuid.uuid4().hex[:6]}")
    forger.publish(T.device("cam-1", "ack"), Ack(upto=issued).dumps())
    assert real.model is not None and real.deployment_id is not None
    chunk = Chunk(real.deployment_id, real.model.sha256, 0, real.model.size, b"\0" * 64)
    forger.publish(T.device("cam-1", "chunk"), chunk.encode())
    forger.close()

    # The hub returns and changes a parameter: once the agent runs with it, it has handled
    # every desired state the broker gave it before, the forged one too had there been one.
    fleet.start_service()
    fleet.hub.fleet.deployments.set_params(dep.id, ServingParams(min_score=0.01))
    wait_until(
        lambda: agent.status()["params"].get("min_score") == 0.01, 30, "the hub's new parameter"
    )

    def logged() -> str | None:
        text = agent.stderr()
        return text if "'min_score': 0.01" in text else None

    log = wait_until(logged, 10, "the agent's log of the new parameter")
    assert "'disabled': True" not in log
    _predict(agent)

    wait_until(lambda: len(fleet.logs_at_hub("cam-1")) == 26, 30, "every log at the hub")
    stored = fleet.logs_at_hub("cam-1")
    assert made <= {r.request_id for r in stored}
    assert len({(getattr(r, "epoch", ""), r.seq) for r in stored}) == 26


def test_other_accounts_cannot_take_over_the_hubs_or_the_agents_client_id(
    secure_fleet: SecureFleet, iris_onnx: list[bytes]
) -> None:
    fleet = secure_fleet
    fleet.start_service()
    agent = fleet.agent("cam-1")
    version = register(fleet.hub, iris_onnx[0])
    fleet.hub.fleet.deployments.create(DeploymentCreate(version=str(version.id), device="cam-1"))
    wait_until(lambda: agent.status()["active_version"] == version.id, 60, "v1 active over TLS")

    cam2 = fleet.registrations["cam-2"].password
    ops = account_password(BrokerFiles.in_data_dir(fleet.settings.data_dir), "ops")
    intruders = [
        Intruder(fleet.broker, "cam-2", cam2, fleet.settings.mqtt_client_id),
        Intruder(fleet.broker, "ops", ops, "edgepilot-agent-cam-1"),
    ]
    try:
        assert [i.connacks for i in intruders] == [[True], [True]]
        log = fleet.broker.log_text()
        assert " as cam-2 (" in log and " as ops (" in log
        assert "already connected" not in log
        made = {_predict(agent) for _ in range(5)}
        wait_until(lambda: len(fleet.logs_at_hub("cam-1")) == 5, 30, "5 logs at the hub")
        assert {r.request_id for r in fleet.logs_at_hub("cam-1")} == made
        assert agent.status()["mqtt_connected"]
        assert fleet.service is not None and fleet.service.connected
        assert "already connected" not in fleet.broker.log_text()
    finally:
        for intruder in intruders:
            intruder.close()
