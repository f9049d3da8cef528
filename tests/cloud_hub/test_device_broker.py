"""The broker as one device reaches it, and the names the broker's certificate is for."""

from __future__ import annotations

import socket

from cloud_hub.fleet.broker_setup import certificate_hosts
from cloud_hub.fleet.device_broker import broker_for_device
from cloud_hub.fleet.schemas import BrokerInfo

HUB = BrokerInfo(host="10.0.0.2", port=8883, topic_root="ep", tls=True, ca_pem="PEM")


def test_nothing_given_is_the_hubs_broker() -> None:
    assert broker_for_device(HUB) is HUB


def test_another_address_and_root_keep_tls_and_its_ca() -> None:
    got = broker_for_device(HUB, address=("broker.lan", 1884), topic_root="shop")
    assert (got.host, got.port, got.topic_root, got.tls, got.ca_pem) == (
        "broker.lan", 1884, "shop", True, "PEM"
    )  # fmt: skip


def test_tls_off_drops_the_ca() -> None:
    got = broker_for_device(HUB, tls=False)
    assert (got.host, got.tls, got.ca_pem) == ("10.0.0.2", False, None)


def test_certificate_names_given_win_else_the_hubs_hosts_and_this_machine() -> None:
    assert certificate_hosts(["a.lan"], "0.0.0.0", ["x"]) == ["a.lan"]
    got = certificate_hosts([], "0.0.0.0", ["broker.lan", None, "broker.lan"])
    assert got == list(
        dict.fromkeys(["broker.lan", socket.gethostname(), "localhost", "127.0.0.1"])
    )
    assert "192.168.1.5" in certificate_hosts([], "192.168.1.5", [])
