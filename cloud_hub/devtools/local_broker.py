"""A broker on a loopback port for the demo: Mosquitto when it is installed, else an embedded one.

The hub is never the broker in production (see docs/architecture.md); this exists so that `edgepilot
demo` needs nothing the user has to set up. Mosquitto gets a config with the queue limits raised:
its default `max_queued_messages 1000` silently drops QoS 1 messages to a slow subscriber.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

__all__ = [
    "BrokerChoice",
    "BrokerError",
    "LocalBroker",
    "find_mosquitto",
    "free_port",
    "mosquitto_conf",
]

BrokerChoice = Literal["auto", "mosquitto", "embedded"]

_SBIN = "/usr/sbin:/usr/local/sbin"


class BrokerError(RuntimeError):
    """No broker could be started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    """The mosquitto binary on PATH (or in sbin, where Debian puts it), or None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path=_SBIN)


def mosquitto_conf(port: int, host: str = "127.0.0.1") -> str:
    """A Mosquitto config for a loopback listener that never drops QoS 1 messages it queued."""
    return (
        f"listener {port} {host}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 1000\n"
        "message_size_limit 0\n"
    )


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise BrokerError(f"the broker exited with {proc.returncode}: {err.strip()[-500:]}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise BrokerError(f"the broker is not listening on {host}:{port} after {timeout:.0f} s")


class LocalBroker:
    """Start with `with LocalBroker(workdir) as broker:`; `broker.kind` says which one it is.

    `prefer="auto"` takes Mosquitto when it is installed, else the embedded broker.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefer: BrokerChoice = "auto",
    ) -> None:
        self.workdir = Path(workdir)
        self.prefer = prefer
        self.host = host
        self.port = port or free_port(host)
        self.kind = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalBroker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        binary = None if self.prefer == "embedded" else find_mosquitto()
        if binary is None and self.prefer == "mosquitto":
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        if binary is not None:
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(mosquitto_conf(self.port, self.host))
            cmd = [binary, "-c", str(conf)]
            self.kind = "mosquitto"
        else:
            cmd = [
                sys.executable,
                "-m",
                "cloud_hub.devtools.embedded_broker",
                "--host",
                self.host,
                "--port",
                str(self.port),
            ]
            self.kind = "embedded"
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        _wait_for_port(self.host, self.port, self._proc, timeout=30)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
