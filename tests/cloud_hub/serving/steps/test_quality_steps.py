"""The quality step kinds one by one: circuit_breaker (its state machine on a flaky target, a
fixed-label fallback, a kill switch), http, ab_split (sticky by attribute and header), shadow,
threshold, condition (matchers, device lookup), the reports' statistics, bad specs refused
naming the field, and the CLI (`endpoints params`, `endpoints report`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cloud_hub.hub import Hub
from cloud_hub.serving import (
    STEP_KINDS,
    PredictRequest,
    RunContext,
    Signature,
    Step,
    StepParams,
    Value,
    register_step,
)
from cloud_hub.serving.steps.ab_split import choose
from cloud_hub.serving.steps.condition import Match, TimeOfDay
from cloud_hub.serving.steps.routing import bucket
from tests.cloud_hub.serving.conftest import EXAMPLES, digits_rows, reference_labels

API = "/api/v1/endpoints"
MODELS = {"mlp": "digits/digits-mlp:1", "logreg": "digits/digits-logreg:1"}


class FlakyParams(StepParams):
    pass


class Flaky(Step):
    """Uniform scores over the digits classes, or a failure / a slow answer, on demand."""

    kind = "test_flaky"
    Params = FlakyParams
    arity = (0, 0)
    mode = "ok"
    calls = 0

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return Signature("scores", (None, 10), tuple(str(i) for i in range(10)))

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        Flaky.calls += 1
        if Flaky.mode == "fail":
            raise RuntimeError("backend down")
        if Flaky.mode == "slow":
            time.sleep(0.5)
        rows = inputs[0].rows
        x = np.zeros((rows, 10), dtype=np.float32)
        x[:, 7] = 1.0
        return Value(kind="scores", rows=rows, x=x, labels=tuple(str(i) for i in range(10)))


@pytest.fixture
def flaky() -> Iterator[type[Flaky]]:
    register_step(Flaky)
    Flaky.mode, Flaky.calls = "ok", 0
    yield Flaky
    STEP_KINDS.pop(Flaky.kind)


def create(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(API, json=spec)
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def refused(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(API, json=spec)
    assert resp.status_code == 422, resp.text
    body: dict[str, Any] = resp.json()
    return body


def engine_of(client: TestClient) -> Any:
    return client.app.state.engine  # type: ignore[attr-defined]


def rows(n: int = 2) -> dict[str, Any]:
    x, _ = digits_rows()
    return {"inputs": x[:n].tolist()}


# -- circuit breaker -------------------------------------------------------------------------
def _breaker(fallback: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {
        "name": "breaker",
        "models": MODELS,
        "steps": [
            {"name": "remote", "kind": "test_flaky"},
            {"name": "local", "kind": "model", "params": {"model": "logreg"}},
            {"name": "mlp", "kind": "model", "params": {"model": "mlp"}},
            {
                "name": "guard",
                "kind": "circuit_breaker",
                "params": {"target": "remote", "fallback": fallback, **params},
            },
        ],
        "output": "guard",
    }


def test_breaker_state_machine_with_a_label_fallback(
    client: TestClient, flaky: type[Flaky]
) -> None:
    spec = _breaker({"label": "unknown"}, failures=2, window_s=5, cooldown_s=30)
    spec["steps"] = [s for s in spec["steps"] if s["name"] in ("remote", "guard")]
    spec["models"] = {}
    created = create(client, spec)
    assert created["signatures"]["guard"] == "scores [None, 11]"  # 'unknown': an extra class
    guard = engine_of(client).live("breaker").graph.steps["guard"]
    now = [1000.0]
    guard.clock = lambda: now[0]

    def ask() -> dict[str, Any]:
        resp = client.post(f"{API}/breaker/predict", json=rows(3))
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    out = ask()
    assert [p["label"] for p in out["predictions"]] == ["7"] * 3 and out["tags"] == {}
    assert out["labels"][-1] == "unknown" and out["predictions"][0]["scores"][-1] == 0.0
    Flaky.mode = "fail"
    out = ask()
    assert [p["label"] for p in out["predictions"]] == ["unknown"] * 3
    assert out["predictions"][0]["score"] == 1.0 and out["tags"] == {"fallback": "failed"}
    now[0] += 6  # the first failure left the window: still closed after the second
    ask()
    assert guard.state == "closed"
    ask()
    assert guard.state == "open"  # two within 5 s
    calls = Flaky.calls
    assert ask()["tags"]["fallback"] == "open" and Flaky.calls == calls
    now[0] += 31  # cool-down over: half-open, the trial succeeds
    Flaky.mode = "ok"
    out = ask()
    assert out["tags"] == {} and guard.state == "closed" and Flaky.calls == calls + 1
    stats = client.get(f"{API}/breaker/stats").json()["steps"]["guard"]
    assert stats["state"] == "closed" and stats["opened"] == 1 and stats["failures"] == 3
    assert [t["to"] for t in stats["transitions"]] == ["open", "half_open", "closed"]
    assert "3 failures" not in stats["transitions"][0]["reason"]  # 2 failures within 5 s
    assert stats["transitions"][0]["reason"] == "2 failures within 5 s"


def test_breaker_kill_switch_bad_input_and_runtime_params(
    client: TestClient, flaky: type[Flaky], serving_hub: Hub
) -> None:
    spec = _breaker({"step": "local"}, failures=1, cooldown_s=60)
    spec["steps"][3]["params"]["target"] = "mlp"
    spec["steps"] = [s for s in spec["steps"] if s["name"] != "remote"]
    create(client, spec)
    x, _ = digits_rows()
    logreg = reference_labels(serving_hub, MODELS["logreg"], x[:2])
    client.put(f"{API}/breaker/params", json={"kill": ["mlp"]})
    out = client.post(f"{API}/breaker/predict", json=rows()).json()
    assert out["tags"] == {"fallback": "killed"}
    assert [p["label"] for p in out["predictions"]] == logreg
    guard = engine_of(client).live("breaker").graph.steps["guard"]
    assert guard.state == "closed"  # a kill switch is not the backend's failure
    # bad input is the caller's: refused (422), not counted
    client.put(f"{API}/breaker/params", json={})
    resp = client.post(f"{API}/breaker/predict", json={"inputs": [[0.0, 1.0]]})
    assert resp.status_code == 422 and guard.state == "closed"
    # the breaker's own numbers change at run time; out of range is refused naming the field
    resp = client.put(f"{API}/breaker/params", json={"steps": {"guard": {"failures": 0}}})
    assert resp.status_code == 422 and "failures" in resp.json()["detail"]
    resp = client.put(f"{API}/breaker/params", json={"steps": {"guard": {"target": "local"}}})
    assert resp.status_code == 422 and "cannot change at run time" in resp.json()["detail"]


def test_breaker_timeout_answers_without_waiting(client: TestClient, flaky: type[Flaky]) -> None:
    spec = _breaker({"step": "local"}, timeout_ms=100, failures=1, cooldown_s=60)
    spec["steps"] = [s for s in spec["steps"] if s["name"] != "mlp"]
    create(client, spec)
    Flaky.mode = "slow"
    started = time.perf_counter()
    out = client.post(f"{API}/breaker/predict", json=rows()).json()
    assert time.perf_counter() - started < 0.4 and out["tags"] == {"fallback": "timeout"}
    stats = client.get(f"{API}/breaker/stats").json()["steps"]["guard"]
    assert stats["state"] == "open" and stats["timeouts"] == 1


def test_breaker_refusals_name_the_field(client: TestClient, flaky: type[Flaky]) -> None:
    spec = _breaker({"step": "local"})
    del spec["steps"][3]["params"]["fallback"]
    body = refused(client, spec)
    assert body["step"] == "guard" and "fallback: required" in body["detail"]
    for fallback, words in (
        ({}, "exactly one of 'label'"),
        ({"label": "x", "step": "local"}, "exactly one of 'label'"),
        ({"step": "remote"}, "fallback.step"),
        ({"step": "ghost"}, "'ghost', which is not a step"),
    ):
        body = refused(client, _breaker(fallback))
        assert words in body["detail"] and body["step"] == "guard", body
    body = refused(client, _breaker({"label": "x"}, timeout_ms=-1))
    assert "timeout_ms" in body["detail"]


# -- http --------------------------------------------------------------------------------------
def test_http_step_calls_another_endpoint_and_fails_when_it_is_gone(
    client: TestClient, serving_hub: Hub
) -> None:
    """An http step whose backend is unreachable fails (500 naming it); behind a breaker the
    fallback answers."""
    spec = {
        "name": "remote",
        "models": MODELS,
        "steps": [
            {
                "name": "far",
                "kind": "http",
                "params": {"url": "http://127.0.0.1:9/v1/predict", "model": "mlp"},
            },
            {"name": "local", "kind": "model", "params": {"model": "logreg"}},
            {
                "name": "guard",
                "kind": "circuit_breaker",
                "params": {"target": "far", "fallback": {"step": "local"}},
            },
        ],
        "output": "guard",
    }
    create(client, spec)
    resp = client.post(f"{API}/remote/predict?", json=rows())
    assert resp.status_code == 200 and resp.json()["tags"] == {"fallback": "failed"}
    direct = engine_of(client)
    from cloud_hub.serving import StepFailed

    with pytest.raises(StepFailed, match="far"):
        direct.predict("remote", PredictRequest(**rows()), step="far")
    spec["name"] = "remote-bad"
    body = refused(client, {**spec, "steps": [{"name": "far", "kind": "http", "params": {}}]})
    assert "url" in body["detail"]
    labels = {"url": "http://x/v1/predict", "labels": ["a"], "model": "mlp"}
    body = refused(client, {**spec, "steps": [{"name": "far", "kind": "http", "params": labels}]})
    assert "exactly one of 'labels' or 'model'" in body["detail"]


# -- ab_split ----------------------------------------------------------------------------------
def _split(sticky: str | None, weights: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": "split",
        "models": MODELS,
        "steps": [
            {"name": "mlp", "kind": "model", "params": {"model": "mlp"}},
            {"name": "logreg", "kind": "model", "params": {"model": "logreg"}},
            {
                "name": "ab",
                "kind": "ab_split",
                "params": {
                    "variants": {"control": "mlp", "treatment": "logreg"},
                    "weights": weights or {"control": 1, "treatment": 1},
                    "sticky": sticky,
                },
            },
        ],
    }


def test_ab_split_sticky_by_attribute_and_header(client: TestClient) -> None:
    create(client, _split("attribute:device_id"))
    engine = engine_of(client)
    x, _ = digits_rows()

    def variant(**extra: Any) -> str:
        got = engine.predict("split", PredictRequest(inputs=x[:1].tolist(), **extra))
        return str(got.tags["variant"])

    first = {d: variant(attributes={"device_id": d}) for d in ("d1", "d2", "d3", "d4", "d5")}
    for _ in range(3):
        assert {d: variant(attributes={"device_id": d}) for d in first} == first
    assert {variant() for _ in range(40)} == {"control", "treatment"}  # no key: random
    client.delete(f"{API}/split")

    create(client, _split("header:X-User"))
    got = {
        client.post(f"{API}/split/predict", json=rows(1), headers={"X-User": "ann"}).json()["tags"][
            "variant"
        ]
        for _ in range(5)
    }
    assert len(got) == 1


def test_ab_bucket_is_salted_and_uniform() -> None:
    points = [bucket("ep/ab", f"k{i}") for i in range(10_000)]
    assert min(points) >= 0 and max(points) < 1 and abs(np.mean(points) - 0.5) < 0.02
    assert bucket("ep/ab", "k1") == bucket("ep/ab", "k1") != bucket("other/ab", "k1")
    assert choose(["a", "b"], {"a": 1, "b": 3}, 0.24) == "a"
    assert choose(["a", "b"], {"a": 1, "b": 3}, 0.26) == "b"
    assert choose(["a", "b"], {"a": 0, "b": 3}, 0.0) == "b"
    assert choose(["a"], {"a": 0}, 0.5) is None


def test_ab_split_refusals_name_the_field(client: TestClient) -> None:
    for weights, words in (
        ({"control": 1}, "weights: no weight for variants ['treatment']"),
        ({"control": 1, "treatment": 1, "ghost": 1}, "weights: ['ghost'] are not variants"),
        ({"control": -1, "treatment": 1}, "negative"),
        ({"control": 0, "treatment": 0}, "sum to 0"),
    ):
        body = refused(client, _split("key", weights))
        assert words in body["detail"] and body["step"] == "ab", body
    body = refused(client, _split("cookie"))
    assert "sticky" in body["detail"]
    spec = _split("key")
    spec["steps"][2]["params"]["variants"]["control"] = "nowhere"
    assert "'nowhere', which is not a step" in refused(client, spec)["detail"]


def test_ab_split_error_rate_is_logged_per_variant(client: TestClient, flaky: type[Flaky]) -> None:
    """A variant that fails: the failed requests carry their variant into the log, and the
    error-rate test finds the difference."""
    spec = {**_split(None, {"control": 1, "treatment": 1}), "name": "split-errors"}
    spec["steps"][1] = {"name": "logreg", "kind": "test_flaky"}
    spec["models"] = {"mlp": MODELS["mlp"]}
    create(client, spec)
    Flaky.mode = "fail"
    url = f"{API}/split-errors/predict"
    codes = [client.post(url, json=rows(1)).status_code for _ in range(80)]
    assert set(codes) == {200, 500}
    engine_of(client).log.flush()
    report = client.get(f"{API}/split-errors/reports/ab", params={"metric": "error_rate"})
    report = report.json()
    by = {v["variant"]: v for v in report["variants"]}
    assert by["control"]["errors"] == 0 and by["treatment"]["errors"] == codes.count(500)
    assert by["treatment"]["mean"] == 1.0
    (cmp,) = report["comparisons"]
    assert cmp["significant"] and cmp["p_value"] < 1e-6
    assert report["verdict"].startswith("treatment's error rate (100.00%) is higher")


# -- reports: the statistics --------------------------------------------------------------------
def test_ab_report_statistics_match_scipy(serving_hub: Hub) -> None:
    from scipy import stats

    from cloud_hub.predlog.reports import ab_report
    from cloud_hub.predlog.writer import LogEntry, PredictionLogWriter

    rng = np.random.default_rng(3)
    a = rng.normal(0.80, 0.05, 300)
    b = rng.normal(0.82, 0.08, 200)
    writer = PredictionLogWriter(serving_hub.db)
    entries = []
    for variant, values in (("a", a), ("b", b)):
        for i, v in enumerate(values):
            entries.append(
                LogEntry(
                    ts=time.time(),
                    request_id=f"{variant}{i}",
                    endpoint="stats-report",
                    outcome="ok" if i % 10 else "failed",
                    variant=variant,
                    score=float(v) if i % 10 else None,
                    latency_ms=float(v) * 10 if i % 10 else None,
                )
            )
    writer.add(entries)
    writer.flush()
    report = ab_report(serving_hub.db, "stats-report", "score")
    xa, xb = [v for i, v in enumerate(a) if i % 10], [v for i, v in enumerate(b) if i % 10]
    want = stats.ttest_ind(xb, xa, equal_var=False)
    (cmp,) = report.comparisons
    assert cmp.p_value == pytest.approx(want.pvalue, rel=1e-4)
    assert cmp.statistic == pytest.approx(want.statistic, rel=1e-3)
    assert report.variants[0].mean == pytest.approx(np.mean(xa), abs=1e-5)
    err = ab_report(serving_hub.db, "stats-report", "error_rate")
    assert [v.errors for v in err.variants] == [30, 20]
    assert not err.comparisons[0].significant  # 10% against 10%
    assert "no significant difference in error rate" in err.verdict
    empty = ab_report(serving_hub.db, "no-such-endpoint", "latency")
    assert empty.variants == [] and empty.verdict.startswith("not enough data")


# -- threshold ---------------------------------------------------------------------------------
def test_threshold_refusals_name_the_field(client: TestClient) -> None:
    def spec(params: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": "gate",
            "models": MODELS,
            "steps": [
                {"name": "mlp", "kind": "model", "params": {"model": "mlp"}},
                {"name": "gate", "kind": "threshold", "inputs": ["mlp"], "params": params},
            ],
        }

    for params, words in (
        ({"min_score": 1.2, "default_label": "x"}, "min_score"),
        ({"min_score": -0.1, "default_label": "x"}, "min_score"),
        ({"per_class": {"3": 2}, "default_label": "x"}, "per_class.3"),
        ({"per_class": {"cat": 0.5}, "default_label": "x"}, "per_class: ['cat']"),
        ({"default_label": "x"}, "give 'min_score' and/or 'per_class'"),
        ({"min_score": 0.5}, "default_label"),
    ):
        body = refused(client, spec(params))
        assert words in body["detail"] and body["step"] == "gate", (params, body)


# -- condition ---------------------------------------------------------------------------------
def test_condition_matchers() -> None:
    def match(**test: Any) -> Match:
        return Match.model_validate({"name": "v", **test})

    assert match(equals="eu").holds("eu") and not match(equals="eu").holds("us")
    assert match(equals=3).holds("3") and match(equals=True).holds("true")
    assert match(**{"in": ["a", "b"]}).holds("b") and not match(**{"in": ["a"]}).holds(None)
    assert match(gte=2, lt=5).holds(2) and match(gt=2).holds("2.5") and not match(gt=2).holds(2)
    assert not match(lt=5).holds("many")
    assert match(exists=False).holds(None) and not match(exists=True).holds(None)
    day = TimeOfDay(start=9, end="17:30", tz="Europe/Paris")
    noon_utc = 1_750_000_000 - 1_750_000_000 % 86400 + 12 * 3600
    assert day.holds(noon_utc) and not day.holds(noon_utc + 6 * 3600)
    with pytest.raises(ValueError, match="not a known time zone"):
        TimeOfDay(start=1, end=2, tz="Mars/Olympus")
    with pytest.raises(ValueError, match="not a time of day"):
        TimeOfDay(start=25, end=2)


def test_condition_refusals_name_the_field(client: TestClient) -> None:
    def spec(when: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": "cond",
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

    for when, words in (
        ({}, "give a condition"),
        ({"time_of_day": {"start": 8, "end": 9, "tz": "Nowhere/City"}}, "routes.0.when"),
        ({"attribute": {"name": "tier"}}, "give a test"),
        ({"header": {"name": "x", "equals": "y", "regex": "z"}}, "regex"),
    ):
        body = refused(client, spec(when))
        assert words in body["detail"] and body["step"] == "route", (when, body)


def test_device_lookup_is_cached_briefly(serving_hub: Hub) -> None:
    from cloud_hub.serving.engine.device_lookup import DeviceLookup

    with serving_hub.db.transaction() as db:
        db.execute(
            "INSERT OR REPLACE INTO devices (id, name, hardware, tags, group_name, runtimes, "
            "password_hash) VALUES ('look-1', 'look-1', 'jetson', '[\"cam\"]', 'lab', "
            "'[\"onnxruntime\"]', 'x')"
        )
    now = [0.0]
    lookup = DeviceLookup(serving_hub.db, ttl_s=5, clock=lambda: now[0])
    facts = lookup("look-1")
    assert facts is not None and facts.tags == {"cam"} and facts.hardware == "jetson"
    assert facts.group == "lab" and facts.runtimes == ("onnxruntime",)
    assert lookup("look-1") is facts and lookup("ghost") is None and lookup.queries == 2
    now[0] = 6
    lookup("look-1")
    assert lookup.queries == 3


# -- shadow ------------------------------------------------------------------------------------
def test_shadow_refusals(client: TestClient) -> None:
    spec = json.loads((EXAMPLES / "shadow.json").read_text())
    spec["steps"][-1]["params"]["candidates"] = ["mlp"]
    assert "'mlp' is the primary" in refused(client, spec)["detail"]
    spec["steps"][-1]["params"]["candidates"] = ["logreg"]
    spec["steps"][-1]["params"]["sample"] = 1.5
    assert "sample" in refused(client, spec)["detail"]


# -- CLI -----------------------------------------------------------------------------------------
def cli(hub: Hub, *args: str) -> tuple[int, str, str]:
    from cloud_hub.cli.main import app

    result = CliRunner().invoke(
        app, ["--data-dir", str(hub.settings.data_dir), *args], env={"COLUMNS": "200"}
    )
    return result.exit_code, result.stdout, result.stderr


def test_cli_params_and_reports(client: TestClient, serving_hub: Hub, tmp_path: Path) -> None:
    spec = json.loads((EXAMPLES / "ab_test.json").read_text())
    create(client, spec)
    name = spec["name"]
    raw, _ = digits_rows(raw=True)
    for i in range(40):
        body = {"inputs": raw[i : i + 1].tolist(), "key": f"k{i}"}
        assert client.post(f"{API}/{name}/predict", json=body).status_code == 200
    engine_of(client).log.flush()

    code, out, err = cli(
        serving_hub,
        "endpoints",
        "params",
        name,
        "--kill",
        "logreg",
        "--set",
        'split.weights={"A": 1, "B": 3}',
        "--json",
    )
    assert code == 0, err
    assert json.loads(out) == {
        "kill": ["logreg"],
        "steps": {"split": {"weights": {"A": 1, "B": 3}}},
    }
    code, out, _ = cli(serving_hub, "endpoints", "params", name)
    assert code == 0 and "kill switch" in out and "weights" in out
    code, out, _ = cli(serving_hub, "endpoints", "params", name, "--unkill", "logreg", "--json")
    assert json.loads(out)["kill"] == []
    code, out, err = cli(serving_hub, "endpoints", "params", name, "--set", "split.weights=oops")
    assert code == 2 and "weights" in err
    code, _, err = cli(serving_hub, "endpoints", "params", name, "--set", "nodot")
    assert code == 2 and "STEP.FIELD=VALUE" in err
    code, out, _ = cli(serving_hub, "endpoints", "params", name, "--reset", "--json")
    assert json.loads(out) == {"kill": [], "steps": {}}

    code, out, err = cli(serving_hub, "endpoints", "report", name, "--ab", "--metric", "latency")
    assert code == 0, err
    assert "Welch" in out and "verdict" in out
    code, out, _ = cli(serving_hub, "endpoints", "report", name, "--ab", "--json")
    assert json.loads(out)["metric"] == "score"
    code, out, _ = cli(serving_hub, "endpoints", "report", name, "--shadow", "--json")
    assert code == 0 and json.loads(out)["candidates"] == []
    code, _, err = cli(serving_hub, "endpoints", "report", name)
    assert code == 2 and "--ab or --shadow" in err


def test_threshold_small_and_large_batches_agree(client: TestClient) -> None:
    """A few rows take a plain-Python path, many the numpy one: the same answers."""
    create(
        client,
        {
            "name": "gate-paths",
            "models": MODELS,
            "steps": [
                {"name": "logreg", "kind": "model", "params": {"model": "logreg"}},
                {
                    "name": "gate",
                    "kind": "threshold",
                    "inputs": ["logreg"],
                    "params": {"min_score": 0.8, "per_class": {"1": 0.95}, "default_label": "?"},
                },
            ],
        },
    )
    x, _ = digits_rows()
    url = f"{API}/gate-paths/predict"
    whole = client.post(url, json={"inputs": x[:120].tolist()}).json()
    one_by_one = [
        client.post(url, json={"inputs": x[i : i + 1].tolist()}).json()["predictions"][0]["label"]
        for i in range(120)
    ]
    labels = [p["label"] for p in whole["predictions"]]
    assert labels == one_by_one and "?" in labels and len(set(labels)) > 5
    stats = client.get(f"{API}/gate-paths/stats").json()["steps"]["gate"]
    assert stats["thresholded"] == 2 * labels.count("?") and stats["rows"] == 240
