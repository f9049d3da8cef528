"""Setting the fleet's broker up (`edgepilot hub broker-config`): the accounts beside the
devices, the password and ACL files, the TLS server certificate, and a mosquitto.conf that uses
them."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloud_hub.core.errors import InvalidInput
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_auth import (
    Account,
    BrokerFiles,
    add_account,
    min_packet_size,
    mosquitto_conf,
    remove_account,
)
from cloud_hub.fleet.devices import DeviceStore
from cloud_hub.fleet.tls import ensure_server_certificate

Address = tuple[str, int]


@dataclass(frozen=True)
class BrokerConfig:
    conf: str  # the mosquitto.conf text
    files: BrokerFiles  # the auth files it names
    account_secrets: list[Path]  # the password file of each account added
    certificate_issued: bool  # a new server certificate: the broker must restart


def certificate_hosts(
    explicit: Sequence[str], listen_host: str, settings_hosts: Sequence[str | None]
) -> list[str]:
    """The names the server certificate is for: those given, else the hub's broker hosts, the
    listener's host (unless a wildcard), this machine's name, localhost and 127.0.0.1."""
    if explicit:
        return list(explicit)
    hosts = [h for h in settings_hosts if h]
    if listen_host not in ("0.0.0.0", "::", ""):
        hosts.append(listen_host)
    hosts += [socket.gethostname(), "localhost", "127.0.0.1"]
    return list(dict.fromkeys(hosts))


def configure_broker(
    devices: DeviceStore,
    settings: HubSettings,
    *,
    plain: Address | None,
    secure: Address | None,
    tls_hosts: Sequence[str] = (),
    add: Sequence[Account] = (),
    remove: Sequence[str] = (),
    persistence: bool = True,
    max_packet_size: int,
) -> BrokerConfig:
    """Remove and add accounts, write the auth files, make the server certificate when there is
    a TLS listener (`secure`), and return the config; nothing is saved when an argument is bad."""
    least = min_packet_size(settings.chunk_size)
    if max_packet_size < least:
        raise InvalidInput(
            f"--max-packet-size {max_packet_size} is too small for the hub's model chunks "
            f"of {settings.chunk_size} bytes: at least {least}"
        )
    for account in add:  # before anything is saved: a clash would block registrations
        if devices.exists(account.name):
            raise InvalidInput(f"{account.name!r} is a device id: pick another account name")
    for name in remove:
        if not remove_account(devices.files, name):
            raise InvalidInput(f"no broker account {name!r}")
    secrets = [add_account(devices.files, account) for account in add]
    files = devices.write_broker_files()
    issued = False
    if secure is not None:
        hosts = certificate_hosts(
            tls_hosts, secure[0], [settings.device_broker_host, settings.mqtt_host]
        )
        issued = ensure_server_certificate(files.tls, hosts)
    conf = mosquitto_conf(
        files,
        host=plain[0] if plain else None,
        port=plain[1] if plain else None,
        tls_host=secure[0] if secure else None,
        tls_port=secure[1] if secure else None,
        persistence=persistence,
        max_packet_size=max_packet_size,
    )
    return BrokerConfig(conf, files, secrets, issued)
