"""MQTT helpers every side uses (agent, hub, CLI): a TLS context that checks the broker, and
Nagle's algorithm off on the client's socket."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

__all__ = ["tcp_no_delay", "tls_context"]


def tls_context(ca_file: Path | None = None, ca_pem: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the broker: its chain against `ca_file` or `ca_pem` (else
    the system's CAs) and its host name against the certificate; TLS 1.2 at least."""
    if ca_file is not None or ca_pem is not None:
        ctx = ssl.create_default_context(
            cafile=str(ca_file) if ca_file is not None else None, cadata=ca_pem
        )
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def tcp_no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """Send small messages at once. paho leaves Nagle's algorithm on: a fetch request written
    while an earlier one is unacknowledged waits for the broker's delayed ACK (about 40 ms on
    Linux), which stalled every window of a model transfer."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
