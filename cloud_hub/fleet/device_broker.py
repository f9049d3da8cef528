"""The broker as one device reaches it: the hub's broker settings with what its registration
changes (another address, topic root, or TLS on or off)."""

from __future__ import annotations

from cloud_hub.fleet.schemas import BrokerInfo


def broker_for_device(
    base: BrokerInfo,
    *,
    address: tuple[str, int] | None = None,
    topic_root: str | None = None,
    tls: bool | None = None,
) -> BrokerInfo:
    """`base` with the given parts replaced; the fleet CA goes along only while TLS is on."""
    if address is None and topic_root is None and tls is None:
        return base
    host, port = address or (base.host, base.port)
    secure = base.tls if tls is None else tls
    return base.model_copy(
        update={
            "host": host,
            "port": port,
            "topic_root": topic_root or base.topic_root,
            "tls": secure,
            "ca_pem": base.ca_pem if secure else None,
        }
    )
