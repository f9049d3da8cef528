"""The fleet's stores, built from the hub's settings, database and registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud_hub.core.db import Database
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_auth import BrokerFiles, hub_ca_file
from cloud_hub.fleet.broker_reload import BrokerReloader
from cloud_hub.fleet.deployments import DeploymentStore
from cloud_hub.fleet.devices import DeviceStore
from cloud_hub.fleet.enroll_store import fleet_names
from cloud_hub.fleet.enrollment import EnrollmentService
from cloud_hub.fleet.schemas import BrokerInfo
from cloud_hub.registry.registry import Registry
from cloud_hub.registry.signing import HubSigner


def device_broker(settings: HubSettings) -> BrokerInfo:
    """The broker address handed to devices at registration."""
    tls = settings.mqtt_tls if settings.device_broker_tls is None else settings.device_broker_tls
    return BrokerInfo(
        host=settings.device_broker_host or settings.mqtt_host or "127.0.0.1",
        port=settings.device_broker_port or settings.mqtt_port,
        topic_root=settings.topic_root,
        tls=tls,
        ca_pem=_read_ca(hub_ca_file(settings)) if tls else None,
    )


def broker_reloader(settings: HubSettings) -> BrokerReloader:
    """How this hub has the broker re-read its files: the command, else the pid file, else the
    one the generated mosquitto.conf names (used only when a broker wrote it: started with -d)."""
    if settings.broker_reload_command is not None:
        return BrokerReloader(command=settings.broker_reload_command)
    default = BrokerFiles.in_data_dir(settings.data_dir).pid_file
    return BrokerReloader(pid_file=settings.broker_pid_file or default)


def _read_ca(path: Path | None) -> str | None:
    """The fleet CA's PEM (None: there is none yet, `DeviceStore.register` looks again)."""
    return path.read_text() if path is not None and path.is_file() else None


@dataclass
class Fleet:
    signer: HubSigner
    devices: DeviceStore
    deployments: DeploymentStore
    enrollment: EnrollmentService

    @classmethod
    def open(cls, settings: HubSettings, db: Database, registry: Registry) -> Fleet:
        signer = HubSigner.load_or_create(settings.signing_key_path)
        devices = DeviceStore(
            db,
            data_dir=settings.data_dir,
            broker=device_broker(settings),
            hub_public_key=signer.public_key_b64,
            fleet_names=fleet_names,
            reloader=broker_reloader(settings),
        )
        return cls(
            signer,
            devices,
            DeploymentStore(db, registry, devices),
            EnrollmentService(db, devices),
        )

    def close(self) -> None:
        self.devices.close()
