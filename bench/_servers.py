"""Benchmark servers: each its own process on a loopback port, started before a measurement
and stopped after it (the script runs itself with `--serve KIND --port N`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    key: str
    port: int
    path: str
    proc: subprocess.Popen[bytes]

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ready(port: int, health: str | None) -> bool:
    if health is None:  # listening is enough
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}{health}", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def start_server(
    script: Path,
    key: str,
    args: list[str],
    path: str,
    *,
    health: str | None = None,
    cwd: Path | None = None,
) -> Iterator[Server]:
    """`script --serve ARGS --port N` as a process, once it listens (or answers 200 on
    `health`); terminated on exit."""
    port = free_port()
    cmd = [sys.executable, str(script), "--serve", *args, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=cwd or script.parents[1])
    try:
        deadline = time.monotonic() + 120
        while not _ready(port, health):
            if proc.poll() is not None:
                raise RuntimeError(f"server {key} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {key} did not start")
            time.sleep(0.2)
        yield Server(key, port, path, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
