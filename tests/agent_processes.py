"""Agent processes for tests: a config file like the hub writes, a real `edgepilot-agent run`.

Shared by the agent's own tests and the end-to-end tests (tests/e2e), which run agents against
the real hub.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import BIN, REPO
from tests.waiting import wait_until

AGENT = BIN / "edgepilot-agent"


# -- agent processes --------------------------------------------------------------------------
def agent_toml(
    device_id: str, data_dir: Path, address: tuple[str, int], public_key: str, **sections: Any
) -> str:
    base: dict[str, dict[str, Any]] = {
        "mqtt": {"host": address[0], "port": address[1], "topic_root": "ep"},
        "http": {"host": "127.0.0.1", "port": 0},
        "telemetry": {"interval_s": 3600},
        "transfer": {"chunk_size": 4096, "window": 4, "timeout_s": 2.0},
        "forwarder": {"resend_after_s": 3.0},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    lines = [
        f'device_id = "{device_id}"',
        f'data_dir = "{data_dir}"',
        f'hub_public_key = "{public_key}"',
    ]
    for section, values in base.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


class AgentProc:
    def __init__(self, config: Path, data_dir: Path, log: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 20.0) -> AgentProc:
        (self.data_dir / "http.port").unlink(missing_ok=True)
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(AGENT), "run", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=REPO,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> AgentProc:
        """Until the started agent's HTTP API answers (its port is in data_dir/http.port)."""
        port_file = self.data_dir / "http.port"

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.stderr()}")
            return port_file.is_file() and port_file.read_text().strip() != ""

        wait_until(ready, timeout, "the agent's http.port")
        self.port = int(port_file.read_text())
        wait_until(lambda: self.get("/v1/health")[0] == 200, timeout, "agent health")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, ConnectionError):
            return 0, {}

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return self.request("GET", path)

    def predict(self, inputs: Any) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"inputs": inputs}).encode()
        return self.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})

    def status(self) -> dict[str, Any]:
        code, doc = self.get("/v1/status")
        assert code == 200, doc
        return doc

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)
