"""`edgepilot loadtest` and its open-loop generator (cloud_hub.devtools.loadtest), against a real
hub
(`edgepilot hub serve` in its own process, an endpoint posted over REST), a real agent process,
and small servers written here that are slow or answer errors on purpose."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cloud_hub.auth.roles import Role
from cloud_hub.auth.tokens import TokenCreate
from cloud_hub.devtools.loadtest import (
    LoadTestError,
    Payload,
    Target,
    payloads_for_endpoint,
    read_rows,
    run_load,
)
from cloud_hub.hub import Hub
from tests.agent_processes import AgentProc
from tests.cloud_hub.serving.conftest import digits_rows, example, serving_hub  # noqa: F401
from tests.conftest import BIN, REPO, admin_headers, free_port, run_cli, wait_for_port
from tests.edge_agent.conftest import (  # noqa: F401
    IrisModels,
    device_id,
    iris_models,
    make_agent,
    make_hub,
    signer,
)

JSON_KEYS = {
    "url",
    "requested_rate",
    "duration_s",
    "scheduled",
    "sent",
    "completed",
    "ok",
    "success_ratio",
    "dropped",
    "late",
    "late_ms",
    "in_flight_at_end",
    "status_codes",
    "errors",
    "achieved_rate",
    "throughput",
    "latency_ms",
    "lag_ms",
    "connections",
    "wall_s",
    "generator_cpu_s",
    "generator_cpu",
}
BODY = [Payload(b'{"inputs": [[0.5, 0.5]]}')]


# -- a small server written here: slow, or answering errors, on purpose ----------------------
class LocalServer:
    """An HTTP/1.1 keep-alive server on a loopback port, in a thread with its own event loop.
    Each request waits `delay_s`, then gets `status(n)` (n: its arrival number); arrival times
    are recorded. It speaks the agent's contract: POST /v1/predict, 404 elsewhere."""

    def __init__(self, delay_s: float = 0.0, status: Callable[[int], int] = lambda n: 200):
        self.delay_s = delay_s
        self.status = status
        self.arrivals: list[float] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LocalServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = len(self.arrivals)
                self.arrivals.append(time.monotonic())
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = json.loads(await reader.readexactly(length) or b"{}")
                path = head.split(b" ")[1]
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                status = self.status(n) if path == b"/v1/predict" else 404
                rows = body.get("inputs") or []
                doc = {"predictions": [{"label": "0"} for _ in rows]} if status == 200 else {}
                data = json.dumps(doc).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the server stops
        finally:
            writer.close()


# -- a real hub, as a user runs it ------------------------------------------------------------
@pytest.fixture(scope="module")
def hub_url(serving_hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    """`edgepilot hub serve` on the serving hub's data directory, with digits-sync posted."""
    port = free_port()
    log = tmp_path_factory.mktemp("loadtest-hub") / "hub.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                str(BIN / "edgepilot"),
                "--data-dir",
                str(serving_hub.settings.data_dir),
                "hub",
                "serve",
                "--port",
                str(port),
                "--no-scheduler",
                "--workers",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout=60, proc=proc)
        auth = admin_headers(serving_hub)
        resp = httpx.post(
            f"{base}/api/v1/endpoints", json=example("sync.json"), timeout=60, headers=auth
        )
        assert resp.status_code == 201, resp.text
        yield base
        httpx.delete(f"{base}/api/v1/endpoints/digits-sync", timeout=30, headers=auth)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def cli_env(cli_env: dict[str, str], serving_hub: Hub) -> dict[str, str]:  # noqa: F811
    """A remote CLI: its own data dir, the hub's token in EDGEPILOT_TOKEN."""
    return {**cli_env, "EDGEPILOT_TOKEN": serving_hub.admin_token}


def loadtest(args: list[str], env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    done = run_cli(["loadtest", *args], env, timeout=120)
    doc = json.loads(done.stdout) if done.returncode == 0 and "--json" in args else {}
    return done.returncode, doc, done.stderr if done.returncode else done.stdout


def test_hub_endpoint_at_a_fixed_rate_with_the_default_body(
    hub_url: str, cli_env: dict[str, str]
) -> None:
    token = cli_env["EDGEPILOT_TOKEN"]
    code, doc, out = loadtest(
        ["digits-sync", "--hub", hub_url, "--rate", "100", "--duration", "3", "--json"], cli_env
    )
    assert code == 0, out
    assert set(doc) == JSON_KEYS
    assert doc["url"] == f"{hub_url}/api/v1/endpoints/digits-sync/predict"
    assert doc["scheduled"] == doc["sent"] == doc["completed"] == doc["ok"] == 300
    assert doc["status_codes"] == {"200": 300} and doc["errors"] == {}
    assert doc["success_ratio"] == 1.0 and doc["dropped"] == 0
    assert abs(doc["achieved_rate"] - 100) <= 2, doc  # within 2 %
    assert set(doc["latency_ms"]) == {"min", "p50", "p90", "p99", "max", "mean"}
    lat = doc["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert doc["lag_ms"]["p50"] < 10, doc["lag_ms"]
    assert set(doc["connections"]) == {"opened", "peak_busy", "max"}
    assert doc["generator_cpu_s"] > 0
    stats = httpx.get(
        f"{hub_url}/api/v1/endpoints/digits-sync/stats",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert stats["requests"] >= 301  # and the probe


def test_hub_endpoint_with_rows_from_a_file_and_the_table(
    hub_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    x, _ = digits_rows()
    rows = tmp_path / "rows.npy"
    np.save(rows, x[:40])
    args = ["digits-sync", "--hub", hub_url, "--rate", "40", "--duration", "1"]
    code, doc, out = loadtest([*args, "--inputs", str(rows), "--rows", "4", "--json"], cli_env)
    assert code == 0, out
    assert doc["ok"] == doc["scheduled"] == 40
    csv = tmp_path / "rows.csv"
    csv.write_text(
        ",".join(f"f{i}" for i in range(64))
        + "\n"
        + "\n".join(",".join(str(v) for v in r) for r in x[:5])
    )
    code, _, out = loadtest([*args, "--inputs", str(csv)], cli_env)
    assert code == 0, out
    for line in ("achieved rate", "latency p50 / p90 / p99 ms", "success ratio", "100.00%", "200"):
        assert line in out, out


def test_cli_errors_are_messages_with_exit_code_2(
    hub_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    not_json = tmp_path / "body.json"
    not_json.write_text("{nope")
    cases = [
        (["digits-sync", "--hub", hub_url, "--rate", "0"], "--rate must be a positive"),
        (["digits-sync", "--hub", hub_url, "--rate", "-3"], "--rate must be a positive"),
        (["digits-sync", "--hub", hub_url, "--duration", "0"], "--duration must be a positive"),
        (["no-such-endpoint", "--hub", hub_url], "endpoint 'no-such-endpoint' not found"),
        (["digits-sync", "--hub", dead], "cannot reach the hub"),
        (["--url", dead, "--body", str(not_json)], "is not JSON"),
        (["--url", dead, "--inputs", str(tmp_path / "none.npy")], "no such file"),
        (["--url", f"{dead}/v1/predict"], "give --body FILE or --inputs FILE"),
        ([], "give an ENDPOINT"),
        (["--url", "https://example.org/x", "--body", str(not_json)], "only http://"),
    ]
    body = tmp_path / "ok.json"
    body.write_text('{"inputs": [[1.0]]}')
    cases.append((["--url", dead, "--body", str(body)], "cannot reach http://127.0.0.1"))
    nope = f"{hub_url}/api/v1/endpoints/nope/predict"
    cases.append((["--url", nope, "--body", str(body)], "refused the request (401)"))
    token = cli_env["EDGEPILOT_TOKEN"]
    cases.append((["--url", nope, "--body", str(body), "--agent-token", token], "404 not found"))
    for args, message in cases:
        # a test short unless the case is about --duration (given twice it is refused)
        short = [] if "--duration" in args else ["--duration", "1"]
        done = run_cli(["loadtest", *short, *args], cli_env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


# -- open loop, status codes and errors, against servers written here -------------------------
def test_open_loop_holds_when_the_server_is_slow() -> None:
    with LocalServer(delay_s=0.2) as server:
        target = Target.parse(server.url, default_path="/v1/predict")
        result = run_load(target, BODY, rate=50, duration_s=2)
        arrivals = [t - server.arrivals[0] for t in server.arrivals]
    # every request went out on schedule, though each answer took 200 ms
    assert result.scheduled == result.sent == result.ok == 100
    assert result.dropped == 0 and result.late <= 5  # a busy machine may delay a few
    assert 49 <= result.achieved_rate <= 51
    assert result.latency_ms.min is not None and result.latency_ms.min >= 200
    assert result.lag_ms.p50 is not None and result.lag_ms.p50 < 10
    assert result.in_flight_at_end >= 8  # about rate × latency = 10
    assert result.connections.peak_busy >= 9  # the pool grew: concurrency was not fixed
    assert len([t for t in arrivals if t < 1.0]) in range(45, 56)  # the server saw 50/s
    # a closed loop (one caller) would have managed 5/s: the difference is the point
    assert result.wall_s >= 2.1  # the last answers came in after the schedule ended


def test_the_connection_cap_drops_requests_and_counts_them() -> None:
    with LocalServer(delay_s=0.2) as server:
        target = Target.parse(server.url, default_path="/v1/predict")
        result = run_load(target, BODY, rate=50, duration_s=1, max_connections=4)
    assert result.connections.opened == 4 and result.connections.peak_busy == 4
    assert 12 <= result.sent <= 24  # 4 at a time, each 200 ms: about 20
    assert result.dropped == result.scheduled - result.sent
    assert result.success_ratio == pytest.approx(result.ok / 50)


def test_status_codes_are_counted() -> None:
    def status(n: int) -> int:
        return 500 if n % 4 == 1 else 422 if n % 4 == 2 else 200

    with LocalServer(status=status) as server:
        target = Target.parse(server.url, default_path="/v1/predict")
        result = run_load(target, BODY, rate=100, duration_s=1)
        unknown = run_load(Target.parse(server.url + "/v2/x"), BODY, rate=20, duration_s=0.5)
    assert result.status_codes == {"200": 50, "422": 25, "500": 25}
    assert result.ok == 50 and result.completed == 100 and result.success_ratio == 0.5
    assert result.errors == {}
    assert unknown.status_codes == {"404": 10} and unknown.success_ratio == 0.0


def test_transport_errors_are_counted() -> None:
    with LocalServer(delay_s=1.0) as server:
        target = Target.parse(server.url, default_path="/v1/predict")
        slow = run_load(target, BODY, rate=20, duration_s=0.5, timeout_s=0.2)
    assert slow.errors == {"timeout": 10} and slow.completed == 0 and slow.sent == 10
    assert slow.success_ratio == 0.0 and slow.latency_ms.p50 is None
    dead = Target.parse(f"http://127.0.0.1:{free_port()}/v1/predict")
    refused = run_load(dead, BODY, rate=20, duration_s=0.5)
    assert refused.errors == {"connect": 10} and refused.sent == 0


def test_bad_settings_are_refused() -> None:
    target = Target.parse("http://127.0.0.1:9/v1/predict")
    cases: list[tuple[float, float, str]] = [
        (0, 1, "rate"),
        (float("nan"), 1, "rate"),
        (10, -1, "duration"),
        (0.5, 0.5, "less than one request"),
    ]
    for rate, duration, word in cases:
        with pytest.raises(LoadTestError, match=word):
            run_load(target, BODY, rate=rate, duration_s=duration)


def test_bodies_derived_from_an_endpoint_and_read_from_files(tmp_path: Path) -> None:
    info = {
        "name": "e",
        "spec": {"steps": [{"name": "p", "kind": "preprocess", "params": {"model": "m"}}]},
        "models": [{"alias": "m", "input": {"shape": [None, 8, 8, 1], "dtype": "float32"}}],
    }
    payloads = payloads_for_endpoint(info, per_request=2, count=3)
    assert len({p.body for p in payloads}) == 3
    rows = json.loads(payloads[0].body)["inputs"]
    assert np.asarray(rows).shape == (2, 8, 8, 1)
    cached = {"name": "c", "spec": {"steps": [{"kind": "data_cache", "params": {}}]}}
    with pytest.raises(LoadTestError, match="ids"):
        payloads_for_endpoint(cached)
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    assert read_rows(csv) == [[1.0, 2.0], [3.0, 4.0]]
    js = tmp_path / "x.json"
    js.write_text('{"inputs": [[1, 2]]}')
    assert read_rows(js) == [[1, 2]]


# -- a real agent's local API ----------------------------------------------------------------
def test_a_real_agents_local_api(
    make_hub: Any,  # noqa: F811
    make_agent: Any,  # noqa: F811
    mosquitto: tuple[str, int],
    device_id: str,  # noqa: F811
    iris_models: IrisModels,  # noqa: F811
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    wire = make_hub(mosquitto, device_id)
    agent: AgentProc = make_agent(device_id, mosquitto)
    wire.deploy(wire.ref(iris_models.a, 1), iris_models.a, deployment_id=1)
    wire.wait_report(1, "active")
    rows = tmp_path / "iris.npy"
    np.save(rows, iris_models.X[:30])
    args = ["--url", agent.url, "--inputs", str(rows), "--rate", "50", "--duration", "2"]
    code, doc, out = loadtest([*args, "--json"], cli_env)
    assert code == 0, out
    assert doc["url"] == f"{agent.url}/v1/predict"
    assert doc["status_codes"] == {"200": 100} and doc["success_ratio"] == 1.0
    assert abs(doc["achieved_rate"] - 50) <= 1
    assert agent.status()["inference_count"] >= 101  # and the probe
    # a body the model cannot take: the run goes on, and the 422s are counted
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"inputs": [[1.0, 2.0]]}')
    args = ["--url", agent.url, "--body", str(wrong), "--rate", "20", "--duration", "1", "--json"]
    done = run_cli(["loadtest", *args], cli_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status_codes"] == {"422": 20}
    assert "warning" in done.stderr and "422" in done.stderr


# -- review fixes -----------------------------------------------------------------------------
def test_a_name_with_several_addresses_gets_the_one_that_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`localhost` is often ::1 first, and a device's local API listens on 127.0.0.1 only."""
    real = socket.getaddrinfo

    def localhost(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host != "localhost":
            return real(host, port, *args, **kw)
        v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))
        v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))
        return [v6, v4]

    monkeypatch.setattr(socket, "getaddrinfo", localhost)
    with LocalServer() as server:
        target = Target.parse(f"http://localhost:{server.port}", default_path="/v1/predict")
        result = run_load(target, BODY, rate=20, duration_s=0.5)
    assert result.errors == {} and result.status_codes == {"200": 10}


def test_a_bad_late_threshold_is_refused(cli_env: dict[str, str]) -> None:
    target = Target.parse("http://127.0.0.1:9/v1/predict")
    for late in (-1.0, float("nan")):
        with pytest.raises(LoadTestError, match="late"):
            run_load(target, BODY, rate=10, duration_s=1, late_ms=late)
    args = ["--url", "http://127.0.0.1:9", "--late-ms", "-5", "--body", "x.json"]
    done = run_cli(["loadtest", *args], cli_env)
    assert done.returncode == 2 and "--late-ms" in done.stderr, done.stderr


def test_a_remote_cli_without_a_token_is_told_so(
    hub_url: str,
    cli_env: dict[str, str],
    serving_hub: Hub,  # noqa: F811
) -> None:
    args = ["digits-sync", "--hub", hub_url, "--rate", "10", "--duration", "1"]
    no_token = {k: v for k, v in cli_env.items() if k != "EDGEPILOT_TOKEN"}
    code, _, out = loadtest(args, no_token)
    assert code == 2 and "refused the token (401)" in out and "EDGEPILOT_TOKEN" in out
    viewer = serving_hub.tokens.create(TokenCreate(name="loadtest-viewer", role=Role.viewer))
    code, doc, out = loadtest([*args, "--json", "--token", viewer.token], no_token)
    assert code == 0, out
    assert doc["status_codes"] == {"200": 10}
