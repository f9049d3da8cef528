"""Regressions found reviewing the quality patterns: bad numbers refused at create (not a 500),
the breaker's one half-open trial and its cool-down in force, an http backend's errors that are
not the caller's, a shadow's candidates kept out of the answer and its late records never lost
(the endpoint retired, the hub stopping, the request failing after it), and a sticky split whose
buckets are the same in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.hub import Hub
from cloud_hub.predlog.writer import LogEntry, PredictionLogWriter
from cloud_hub.registry.registry import version_labels
from cloud_hub.serving import (
    STEP_KINDS,
    PredictRequest,
    RunContext,
    ServingEngine,
    Signature,
    Step,
    StepParams,
    Value,
    register_step,
)
from cloud_hub.serving.engine.spec import EndpointSpec
from cloud_hub.serving.engine.store import EndpointStore
from cloud_hub.serving.steps.routing import bucket
from tests.cloud_hub.serving.conftest import REPO, digits_rows
from tests.waiting import wait_for

API = "/api/v1/endpoints"
MODELS = {"mlp": "digits/digits-mlp:1", "logreg": "digits/digits-logreg:1"}
DIGITS = tuple(str(i) for i in range(10))


class _Params(StepParams):
    pass


class Gate(Step):
    """Answers digit 7 for every row; `hold` makes it wait for `release` (a slow backend)."""

    kind = "test_gate"
    Params = _Params
    arity = (0, 0)
    hold = False
    release = threading.Event()
    calls = 0
    lock = threading.Lock()

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return Signature("scores", (None, 10), DIGITS)

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        with Gate.lock:
            Gate.calls += 1
        if Gate.hold:
            assert Gate.release.wait(10)
        x = np.zeros((inputs[0].rows, 10), dtype=np.float32)
        x[:, 7] = 1.0
        return Value(kind="scores", rows=inputs[0].rows, x=x, labels=DIGITS)


class SlowPass(Step):
    """Its input's value, after `delay` seconds; or a failure (`fail`)."""

    kind = "test_slow_pass"
    Params = _Params
    arity = (1, 1)
    delay = 0.0
    failing = False

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return inputs[0]

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        time.sleep(SlowPass.delay)
        if SlowPass.failing:
            raise RuntimeError("the step after the shadow failed")
        return inputs[0]


@pytest.fixture
def kinds() -> Iterator[None]:
    for cls in (Gate, SlowPass):
        register_step(cls)
    Gate.hold, Gate.calls = False, 0
    Gate.release = threading.Event()
    SlowPass.delay, SlowPass.failing = 0.0, False
    yield
    Gate.release.set()
    for cls in (Gate, SlowPass):
        STEP_KINDS.pop(cls.kind)


def engine_of(client: TestClient) -> Any:
    return client.app.state.engine  # type: ignore[attr-defined]


def rows(n: int = 2) -> dict[str, Any]:
    x, _ = digits_rows()
    return {"inputs": x[:n].tolist()}


def logged(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    assert engine_of(client).log.flush()
    got: list[dict[str, Any]] = client.get("/api/v1/logs", params=params).json()["records"]
    return got


# -- bad numbers refused at create, naming the field (not a 500) -------------------------------
def _condition(when: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "cond-bad",
        "models": MODELS,
        "steps": [
            {"name": "mlp", "kind": "model", "params": {"model": "mlp"}},
            {"name": "logreg", "kind": "model", "params": {"model": "logreg"}},
            {
                "name": "route",
                "kind": "condition",
                "params": {"routes": [{"when": when, "step": "logreg"}], "default": "mlp"},
            },
        ],
    }


def test_a_bad_time_of_day_is_refused_naming_the_field_not_a_500(
    client: TestClient,
) -> None:
    # 1e400 is a valid JSON number that Python reads as inf: round(inf) raised OverflowError
    body = json.dumps(_condition({"time_of_day": {"start": 1, "end": 5}})).replace(
        '"start": 1,', '"start": 1e400,'
    )
    resp = client.post(API, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["step"] == "route" and "time_of_day.start" in resp.json()["detail"]
    # a zone name that is a folder of tzdata, or too long a name: OSError, not a known zone
    for tz in ("Europe", "x" * 300):
        spec = _condition({"time_of_day": {"start": 1, "end": 5, "tz": tz}})
        resp = client.post(API, json=spec)
        assert resp.status_code == 422, resp.text
        assert "time_of_day.tz" in resp.json()["detail"] and "not a known time zone" in resp.text


def test_ab_weights_whose_sum_overflows_are_refused(client: TestClient) -> None:
    spec = {
        "name": "split-huge",
        "models": MODELS,
        "steps": [
            {"name": "mlp", "kind": "model", "params": {"model": "mlp"}},
            {"name": "logreg", "kind": "model", "params": {"model": "logreg"}},
            {
                "name": "ab",
                "kind": "ab_split",
                # each finite, the sum inf: every share was 0, every caller went to the last
                "params": {
                    "variants": {"a": "mlp", "b": "logreg"},
                    "weights": {"a": 1e308, "b": 1e308},
                },
            },
        ],
    }
    resp = client.post(API, json=spec)
    assert resp.status_code == 422, resp.text
    assert resp.json()["step"] == "ab" and "weights" in resp.json()["detail"]
    assert "finite" in resp.json()["detail"]


# -- circuit breaker ---------------------------------------------------------------------------
def _breaker(**params: Any) -> dict[str, Any]:
    return {
        "name": "guarded",
        "models": {"logreg": MODELS["logreg"]},
        "steps": [
            {"name": "remote", "kind": "test_gate"},
            {"name": "local", "kind": "model", "params": {"model": "logreg"}},
            {
                "name": "guard",
                "kind": "circuit_breaker",
                "params": {"target": "remote", "fallback": {"step": "local"}, **params},
            },
        ],
        "output": "guard",
    }


def test_half_open_lets_exactly_one_trial_through_under_concurrent_requests(
    client: TestClient, kinds: None
) -> None:
    assert client.post(API, json=_breaker(failures=1, cooldown_s=30)).status_code == 201
    engine = engine_of(client)
    guard = engine.live("guarded").graph.steps["guard"]
    now = [1000.0]
    guard.clock = lambda: now[0]
    with guard._lock:  # opened a while ago
        guard._move("open", "test")
    now[0] += 31
    Gate.hold, Gate.calls = True, 0
    results: list[dict[str, str]] = []

    def ask() -> None:
        got = engine.predict("guarded", PredictRequest(**rows(1)))
        results.append(got.tags)

    trial = threading.Thread(target=ask)
    trial.start()
    wait_for(lambda: Gate.calls, lambda n: n == 1, what="the trial call")
    others = [threading.Thread(target=ask) for _ in range(8)]
    for t in others:
        t.start()
    for t in others:
        t.join(10)
    # while the trial runs, every other request gets the fallback without calling
    assert [r.get("fallback") for r in results] == ["half_open"] * 8 and Gate.calls == 1
    Gate.release.set()
    trial.join(10)
    assert results[-1] == {} and guard.state == "closed" and Gate.calls == 1


def test_breaker_stats_count_down_the_cooldown_in_force(client: TestClient, kinds: None) -> None:
    assert client.post(API, json=_breaker(failures=1, cooldown_s=600)).status_code == 201
    resp = client.put(f"{API}/guarded/params", json={"steps": {"guard": {"cooldown_s": 2}}})
    assert resp.status_code == 200, resp.text
    guard = engine_of(client).live("guarded").graph.steps["guard"]
    with guard._lock:
        guard._move("open", "test")
    out = client.post(f"{API}/guarded/predict", json=rows()).json()
    assert out["tags"] == {"fallback": "open"}
    stats = client.get(f"{API}/guarded/stats").json()["steps"]["guard"]
    # the run-time cool-down (2 s), not the spec's 600
    assert stats["state"] == "open" and stats["half_open_in_s"] <= 2


# -- http: which backend errors are the caller's -----------------------------------------------
class Backend:
    """An HTTP backend on loopback that answers every POST with `status`."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        backend = self
        self.status = 200

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (the stdlib's name)
                self.rfile.read(int(self.headers.get("content-length", 0)))
                body = b"nope"
                self.send_response(backend.status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/predict"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_http_backend_auth_errors_are_the_backends_not_the_callers(client: TestClient) -> None:
    backend = Backend()
    spec = {
        "name": "remote-auth",
        "models": {"logreg": MODELS["logreg"]},
        "steps": [
            {
                "name": "far",
                "kind": "http",
                "params": {"url": backend.url, "labels": list(DIGITS)},
            },
            {"name": "local", "kind": "model", "params": {"model": "logreg"}},
            {
                "name": "guard",
                "kind": "circuit_breaker",
                "params": {"target": "far", "fallback": {"step": "local"}, "failures": 100},
            },
        ],
        "output": "guard",
    }
    try:
        assert client.post(API, json=spec).status_code == 201
        for code in (401, 403, 404):
            backend.status = code
            resp = client.post(f"{API}/remote-auth/predict", json=rows())
            # a wrong token or URL in this spec: the backend failed, the fallback answers
            assert resp.status_code == 200, (code, resp.text)
            assert resp.json()["tags"] == {"fallback": "failed"}, code
        backend.status = 422  # the backend refused the caller's rows: the caller's bad input
        resp = client.post(f"{API}/remote-auth/predict", json=rows())
        assert resp.status_code == 422 and "refused the input" in resp.json()["detail"], resp.text
        stats = client.get(f"{API}/remote-auth/stats").json()["steps"]
        assert stats["far"]["calls"] == 4 and stats["far"]["failures"] == 3
        assert stats["guard"]["failures"] == 3
    finally:
        backend.close()


# -- shadow -------------------------------------------------------------------------------------
def _shadow(name: str, after: bool = True) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"name": "mlp", "kind": "model", "params": {"model": "mlp"}},
        {"name": "logreg", "kind": "model", "params": {"model": "logreg"}},
        # a candidate that tags and counts: every row is below 1.01
        {
            "name": "always0",
            "kind": "threshold",
            "inputs": ["logreg"],
            "params": {"min_score": 1.0, "default_label": "0"},
        },
        {
            "name": "mirror",
            "kind": "shadow",
            "params": {"primary": "mlp", "candidates": ["always0"]},
        },
    ]
    if after:
        steps.append({"name": "after", "kind": "test_slow_pass", "inputs": ["mirror"]})
    return {"name": name, "models": MODELS, "steps": steps, "output": steps[-1]["name"]}


def test_shadow_candidates_tags_and_counters_never_show_in_the_answer(
    client: TestClient, kinds: None
) -> None:
    assert client.post(API, json=_shadow("shadow-quiet")).status_code == 201
    SlowPass.delay = 0.3  # the candidate ends before the answer is made
    out = client.post(f"{API}/shadow-quiet/predict", json=rows()).json()
    assert "thresholded" not in out["tags"], out["tags"]
    assert not any(k.startswith("always0") for k in out["counters"]), out["counters"]
    assert "always0" not in out["steps"] and "logreg" not in out["steps"]
    records = wait_for(
        lambda: logged(client, request_id=out["request_id"]),
        lambda r: len(r) == 4,
        what="the answer and shadow records",
    )
    answer = [r for r in records if r["role"] == "answer"]
    shadow = [r for r in records if r["role"] == "shadow"]
    assert [r["label"] for r in shadow] == ["0", "0"]  # it ran, and was logged
    assert all("thresholded" not in r["tags"] for r in answer)


def test_shadow_records_are_logged_when_the_request_fails_after_it(
    client: TestClient, kinds: None
) -> None:
    assert client.post(API, json=_shadow("shadow-fails")).status_code == 201
    SlowPass.failing = True
    resp = client.post(f"{API}/shadow-fails/predict", json={**rows(), "request_id": "sf-1"})
    assert resp.status_code == 500
    records = wait_for(
        lambda: logged(client, request_id="sf-1"),
        lambda r: len(r) == 3,
        what="the failure and the shadow's records",
    )
    assert sorted(r["role"] for r in records) == ["answer", "shadow", "shadow"]
    assert {r["label"] for r in records if r["role"] == "shadow"} == {"0"}


def test_shadow_records_in_flight_when_the_hub_stops_are_written(
    serving_hub: Hub, kinds: None
) -> None:
    name = "shadow-stopping"
    spec = {
        "name": name,
        "models": {"mlp": MODELS["mlp"]},
        "steps": [
            {"name": "mlp", "kind": "model", "params": {"model": "mlp"}},
            {"name": "slow", "kind": "test_gate"},
            {
                "name": "mirror",
                "kind": "shadow",
                "params": {"primary": "mlp", "candidates": ["slow"]},
            },
        ],
    }
    writer = PredictionLogWriter(serving_hub.db).start()
    engine = ServingEngine(serving_hub.registry, serving_hub.db, threads=4, log=writer)
    try:
        engine.create(EndpointSpec.model_validate(spec))
        Gate.hold = True
        got = engine.predict(name, PredictRequest(**rows(), request_id="stop-1"))
        assert [p.label for p in got.predictions]  # answered at once, the candidate still runs
        threading.Timer(0.3, Gate.release.set).start()
        engine.close()  # retires the endpoint: waits for the mirrored call, then the log
    finally:
        EndpointStore(serving_hub.db).delete(name)
    roles = serving_hub.db.conn.execute(
        "SELECT role FROM prediction_logs WHERE request_id = 'stop-1' ORDER BY role"
    ).fetchall()
    assert [r["role"] for r in roles] == ["answer", "answer", "shadow", "shadow"]


def test_records_added_after_the_writer_closed_are_written(serving_hub: Hub) -> None:
    writer = PredictionLogWriter(serving_hub.db).start()
    writer.close()
    writer.add([LogEntry(ts=time.time(), request_id="late-1", endpoint="x", outcome="ok")])
    (n,) = serving_hub.db.conn.execute(
        "SELECT count(*) FROM prediction_logs WHERE request_id = 'late-1'"
    ).fetchone()
    assert n == 1 and writer.stats()["written"] == 1


# -- sticky split: the same bucket in every process ---------------------------------------------
def test_sticky_buckets_are_the_same_in_every_process() -> None:
    """Python's hash() of a str changes with each process (PYTHONHASHSEED): a split on it would
    move callers at every restart. Two fresh processes with other seeds agree with this one."""
    code = (
        "from cloud_hub.serving.steps.routing import bucket; "
        "print(repr([bucket('digits-ab/split', f'user-{i}') for i in range(20)]))"
    )
    here = [bucket("digits-ab/split", f"user-{i}") for i in range(20)]
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert json.loads(out) == here


class _Abort(BaseException):
    """Something no step catches (as KeyboardInterrupt or SystemExit would be)."""


def test_a_trial_ended_by_a_base_exception_does_not_leave_the_breaker_half_open(
    client: TestClient, kinds: None
) -> None:
    assert client.post(API, json=_breaker(failures=1, cooldown_s=30)).status_code == 201
    engine = engine_of(client)
    guard = engine.live("guarded").graph.steps["guard"]
    now = [1000.0]
    guard.clock = lambda: now[0]
    with guard._lock:
        guard._move("open", "test")
    now[0] += 31
    real = Gate.run

    def abort(self: Gate, ctx: RunContext, inputs: list[Value]) -> Value:
        raise _Abort

    Gate.run = abort  # type: ignore[method-assign]
    try:
        with pytest.raises(_Abort):
            engine.predict("guarded", PredictRequest(**rows(1)))
    finally:
        Gate.run = real  # type: ignore[method-assign]
    assert guard.state == "open"  # the trial failed: open again, not half-open with a trial
    now[0] += 31
    out = engine.predict("guarded", PredictRequest(**rows(1)))
    assert out.tags == {} and guard.state == "closed"  # the next trial goes through


def test_pages_split_inside_equal_timestamps_of_both_origins(serving_hub: Hub) -> None:
    """Every record once, in order, however the pages cut a run of records with the same ts
    (the rows of one request; device records of the same instant)."""
    from cloud_hub.predlog.query import LogFilter, LogReader

    ts = 1_700_000_000.125
    writer = PredictionLogWriter(serving_hub.db)
    writer.add(
        [
            LogEntry(ts=ts, request_id=f"tie-{i}", endpoint="ties", outcome="ok", row=i)
            for i in range(7)
        ]
    )
    writer.flush()
    with serving_hub.db.transaction():
        serving_hub.db.conn.executemany(
            "INSERT INTO inference_logs (device_id, seq, request_id, model_version, "
            "input_digest, output, latency_ms, ts, source) VALUES (?, ?, ?, NULL, 'd', '[]', "
            "1.0, ?, 'test')",
            [(f"tie-dev-{i % 2}", i, f"tie-d{i}", ts) for i in range(5)],
        )
    reader = LogReader(serving_hub.db, lambda v: version_labels(serving_hub.db.conn, v))
    want = {f"tie-{i}" for i in range(7)} | {f"tie-d{i}" for i in range(5)}
    for limit in (1, 2, 3, 5):
        seen: list[str] = []
        cursor = None
        while True:
            page = reader.page(LogFilter(since=ts, until=ts + 0.001), limit=limit, cursor=cursor)
            seen += [r["request_id"] for r in page.records]
            cursor = page.next
            if cursor is None:
                break
        assert len(seen) == len(want) and set(seen) == want, (limit, seen)
