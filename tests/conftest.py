"""Shared fixtures: a hub on a temporary data dir, its REST app, a real Mosquitto broker."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_until

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from cloud_hub.core.settings import HubSettings  # noqa: E402
from cloud_hub.hub import Hub  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout, f"something listening on 127.0.0.1:{port}", interval=0.05)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    opened = Hub.open(HubSettings(data_dir=tmp_path / "hub", run_scheduler=False))
    yield opened
    opened.close()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running `edgepilot` as a real process against a fresh data dir."""
    env = dict(os.environ)
    env["EDGEPILOT_DATA_DIR"] = str(tmp_path / "cli-data")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgepilot"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _mosquitto() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("mosquitto is not installed: scripts/test installs it (apt-get)")
    return found


class Mosquitto:
    """A real Mosquitto on a loopback port, with the queue limits raised (see docs/DEPENDENCIES.md).

    `stop()` / `start()` restart it on the same port, for tests of what survives a broker restart.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 1000\n"
            "message_size_limit 0\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [_mosquitto(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """One shared broker for the session: (host, port). Use unique device ids per test."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker.address
    finally:
        broker.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own, which the test may stop and start again."""
    broker = Mosquitto(_mkdir(tmp_path / "broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread() -> Iterator[None]:
    """Small scikit-learn fits are faster (and not erratic on a busy CPU) with one BLAS thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def admin_headers(hub: Hub) -> dict[str, str]:
    """What a test's HTTP client sends to be the hub machine's admin (the token `Hub.open`
    writes into the data dir)."""
    return {"Authorization": f"Bearer {hub.admin_token}"}


class SecureMosquitto:
    """A real Mosquitto configured by `edgepilot hub broker-config` for a hub's data dir: its
    passwords, the direction-specific ACL, the username as client id, the packet size limit and
    (`tls`) a TLS-only listener with the fleet CA's certificate for 127.0.0.1 and localhost.

    The only line added to the generated config sends the broker's log to `log` (tests read
    what it did: who connected as whom, whom it disconnected and why). `configure()` runs the
    CLI again (after registrations: `reload()` sends SIGHUP for the password and ACL files).
    """

    def __init__(
        self, data_dir: Path, workdir: Path, *, tls: bool = True, args: tuple[str, ...] = ()
    ) -> None:
        self.data_dir = data_dir
        self.workdir = workdir
        self.tls = tls
        self.args = args
        self.host = "127.0.0.1"
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.pid_file = workdir / "mosquitto.pid"  # what a supervisor would keep: the hub's
        # `broker_pid_file`, so that it reloads the broker itself after enrollments/revocations
        self.ca_file = data_dir / "mosquitto" / "ca.crt"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def configure(self) -> None:
        listen = f"{self.host}:{self.port}"
        cmd = ["hub", "broker-config", "--no-persistence", "-o", str(self.conf)]
        if self.tls:
            cmd += ["--tls", "--tls-listen", listen, "--tls-host", "127.0.0.1"]
            cmd += ["--tls-host", "localhost"]
        else:
            cmd += ["--listen", listen]
        env = {**os.environ, "EDGEPILOT_DATA_DIR": str(self.data_dir), "COLUMNS": "200"}
        done = run_cli([*cmd, *self.args], env, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"broker-config failed ({done.returncode}): {done.stderr}")
        with self.conf.open("a") as fh:
            fh.write(f"log_dest file {self.log}\n")

    def start(self) -> SecureMosquitto:
        if not self.conf.exists():
            self.configure()
        self.proc = subprocess.Popen(
            [_mosquitto(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        self.pid_file.write_text(f"{self.proc.pid}\n")
        return self

    def reload_count(self) -> int:
        """How many times the broker re-read its files (reloads are logged)."""
        return self.log_text().count("Reloading config")

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads the password and ACL files again, keeping its clients."""
        assert self.proc is not None
        before = self.log_text().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: self.log_text().count("Reloading config") > before,
            10,
            "the broker to reload its config",
            interval=0.05,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def secure_mosquitto(tmp_path: Path) -> Iterator[Callable[..., SecureMosquitto]]:
    """`secure_mosquitto(hub_data_dir, tls=True, args=())`: a started SecureMosquitto for the
    hub of that data dir (register its devices first, or `configure()` and `reload()` after)."""
    brokers: list[SecureMosquitto] = []

    def make(data_dir: Path, *, tls: bool = True, args: tuple[str, ...] = ()) -> SecureMosquitto:
        broker = SecureMosquitto(
            data_dir, _mkdir(tmp_path / f"secure-broker-{len(brokers)}"), tls=tls, args=args
        )
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture(scope="session")
def agent_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project as a wheel (built once a session), for install.sh and the first-boot
    scripts to pip-install offline."""
    from tests.wheel import project_wheel

    return project_wheel(tmp_path_factory.mktemp("wheel"))
