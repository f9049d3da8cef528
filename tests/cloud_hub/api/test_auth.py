"""Hub authentication: every route declares its role; tokens, roles, devices, OpenAPI."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.auth.roles import Role
from cloud_hub.auth.tokens import LOCAL_ADMIN, TokenCreate, TokenStore
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.rollout import Rollout
from cloud_hub.hub import Hub
from tests.cloud_hub.conftest import register_model
from tests.conftest import admin_headers, run_cli

Operation = tuple[str, str, str]  # (method, path template, the role it declares)


def operations(app: FastAPI) -> list[Operation]:
    """Every operation with the role its OpenAPI security names (3.1 lists roles of an http
    scheme): "public" without security, "device+viewer" when a device may call it too."""
    found = []
    for path, item in app.openapi()["paths"].items():
        for method, op in item.items():
            security = op.get("security")
            if security is None:
                role = "public"
            else:
                roles = sorted(r for entry in security for r in entry.get("token", []))
                assert len(roles) == 1, (method, path, security)
                devices = any("device" in entry for entry in security)
                role = ("device+" if devices else "") + roles[0]
            found.append((method.upper(), path, role))
    return found


@pytest.fixture
def app(hub: Hub) -> FastAPI:
    return create_app(hub, scheduler=False, fleet=False)


@pytest.fixture
def anon(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_for(hub: Hub, role: Role, name: str | None = None) -> str:
    return hub.tokens.create(TokenCreate(name=name or f"t-{role.value}", role=role)).token


def fill(path: str) -> str:
    """A concrete URL for a route's path template (the values need not exist: auth comes
    before any lookup)."""
    return re.sub(r"\{(\w+)\}", lambda m: "1" if m.group(1).endswith("id") else "x", path)


def test_every_route_declares_exactly_one_role(app: FastAPI) -> None:
    ops = operations(app)
    assert len(ops) > 60
    # the health check, and enrollment: a device's fleet token (in the body) is its credential
    public = [(m, p) for m, p, role in ops if role == "public"]
    assert sorted(public) == [("GET", "/api/v1/health"), ("POST", "/api/v1/enroll")]
    roles = {(m, p): role for m, p, role in ops}
    assert roles[("POST", "/api/v1/devices")] == "admin"
    assert roles[("POST", "/api/v1/tokens")] == "admin"
    assert roles[("POST", "/api/v1/enroll-tokens")] == "admin"
    assert roles[("POST", "/api/v1/devices/{device_id}/revoke")] == "admin"
    assert roles[("POST", "/api/v1/deployments")] == "operator"
    assert roles[("PUT", "/api/v1/deployments/{deployment_id}/params")] == "operator"
    assert roles[("GET", "/api/v1/logs")] == "viewer"
    assert roles[("GET", "/api/v1/devices/{device_id}")] == "device+viewer"
    assert roles[("GET", "/api/v1/artifacts/{sha256}")] == "device+operator"
    # every route of the app is in the schema, or is /metrics (declared, not documented)
    paths = {r.path for r in app.routes if hasattr(r, "methods")}  # type: ignore[attr-defined]
    undocumented = {p for p in paths - {p for _, p, _ in ops} if not p.startswith("/docs")}
    assert undocumented <= {"/metrics", "/redoc", "/openapi.json"}


def test_no_token_is_401_on_every_route_but_health(app: FastAPI, anon: TestClient) -> None:
    checked = 0
    for method, path, role in operations(app) + [("GET", "/metrics", "viewer")]:
        if role == "public":
            continue
        resp = anon.request(method, fill(path), json={})
        assert resp.status_code == 401, (method, path, resp.text)
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert "detail" in resp.json()
        checked += 1
    assert checked > 60
    assert anon.get("/api/v1/health").status_code == 200


def test_a_role_too_small_is_403_and_enough_passes_auth(hub: Hub, app: FastAPI) -> None:
    viewer, operator = token_for(hub, Role.viewer), token_for(hub, Role.operator)
    with TestClient(app) as c:
        for method, path, role in operations(app):
            url = fill(path)
            # a stream answered 200 never ends: a bad resume id makes it a 400, after auth
            extra = {"Last-Event-ID": "bad"} if path == "/api/v1/stream" else {}
            as_viewer = c.request(method, url, json={}, headers=bearer(viewer) | extra)
            as_operator = c.request(method, url, json={}, headers=bearer(operator) | extra)
            needed = role.removeprefix("device+")
            if needed == "operator":
                assert as_viewer.status_code == 403, (method, url, as_viewer.text)
                assert "needs operator" in as_viewer.json()["detail"]
                assert as_operator.status_code not in (401, 403), (method, url)
            elif needed == "admin":
                assert as_viewer.status_code == 403, (method, url)
                assert as_operator.status_code == 403, (method, url)
                assert "needs admin" in as_operator.json()["detail"]
            else:
                assert as_viewer.status_code not in (401, 403), (method, url, as_viewer.text)


def test_the_fuzzers_finds_are_refused_without_a_token(anon: TestClient, hub: Hub) -> None:
    """What a stranger did before: mint broker credentials, deploy, switch serving off."""
    minted = anon.post("/api/v1/devices", json={"id": "rogue-1", "runtimes": ["onnxruntime"]})
    assert minted.status_code == 401
    assert anon.post("/api/v1/deployments", json={"version": "1", "device": "x"}).status_code == 401
    assert anon.put("/api/v1/deployments/1/params", json={"disabled": True}).status_code == 401
    assert anon.get("/api/v1/logs").status_code == 401
    assert anon.get("/metrics").status_code == 401
    assert hub.db.conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0] == 0


def test_token_lifecycle_over_rest(hub: Hub, app: FastAPI) -> None:
    with TestClient(app, headers=admin_headers(hub)) as admin, TestClient(app) as other:
        made = admin.post("/api/v1/tokens", json={"name": "ci", "role": "operator"})
        assert made.status_code == 201
        secret = made.json()["token"]
        assert secret.startswith("ep_") and made.json()["prefix"] == secret[:10]
        listed = admin.get("/api/v1/tokens").json()
        assert {t["name"] for t in listed} == {LOCAL_ADMIN, "ci"}
        assert all("token" not in t for t in listed)  # never the secret again
        assert secret not in admin.get("/api/v1/tokens").text
        assert "token_hash" not in admin.get("/api/v1/tokens").text

        created = other.post("/api/v1/projects", json={"name": "p1"}, headers=bearer(secret))
        assert created.status_code == 201
        used = {t["name"]: t for t in admin.get("/api/v1/tokens").json()}["ci"]
        assert used["last_used_at"] is not None

        assert admin.delete("/api/v1/tokens/ci").status_code == 200
        refused = other.get("/api/v1/projects", headers=bearer(secret))
        assert refused.status_code == 401
        assert secret not in refused.text
        assert admin.delete("/api/v1/tokens/ci").status_code == 404
        revoked = admin.get("/api/v1/tokens", params={"include_revoked": True}).json()
        assert [t["revoked_at"] is not None for t in revoked if t["name"] == "ci"] == [True]


def test_an_expired_token_is_refused(tmp_path: os.PathLike[str]) -> None:
    hub = Hub.open(HubSettings(data_dir=tmp_path / "h", run_scheduler=False, token_cache_s=0))
    try:
        secret = hub.tokens.create(
            TokenCreate(name="short", role=Role.viewer, expires_in_s=3600)
        ).token
        with TestClient(create_app(hub, scheduler=False, fleet=False)) as c:
            assert c.get("/api/v1/projects", headers=bearer(secret)).status_code == 200
            later = TokenStore(hub.db, clock=lambda: datetime.now(UTC) + timedelta(hours=2))
            assert later.verify(secret) is None
            hub.db.conn.execute(  # the hour has passed
                "UPDATE api_tokens SET expires_at = '2000-01-01T00:00:00.000000Z' "
                "WHERE name = 'short'"
            )
            assert c.get("/api/v1/projects", headers=bearer(secret)).status_code == 401
    finally:
        hub.close()


def test_garbage_credentials_are_401(anon: TestClient) -> None:
    for header in ("Bearer nope", "Bearer ep_" + "x" * 43, "Basic !!!", "Token abc", "Bearer"):
        resp = anon.get("/api/v1/projects", headers={"Authorization": header})
        assert resp.status_code == 401, header


def test_the_admin_token_file_is_private_and_kept(tmp_path: os.PathLike[str]) -> None:
    settings = HubSettings(data_dir=tmp_path / "h", run_scheduler=False)
    first = Hub.open(settings)
    secret = first.admin_token
    path = settings.admin_token_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == secret
    first.close()
    again = Hub.open(settings)
    assert again.admin_token == secret  # the same token on every start
    again.tokens.revoke(LOCAL_ADMIN)
    replaced = again.admin_token  # revoked: a new one, written to the file
    assert replaced != secret and path.read_text().strip() == replaced
    assert again.tokens.verify(secret) is None
    again.close()


def test_metrics_needs_a_token_unless_configured_open(tmp_path: os.PathLike[str]) -> None:
    for public in (False, True):
        hub = Hub.open(
            HubSettings(
                data_dir=tmp_path / f"h{public}", run_scheduler=False, metrics_public=public
            )
        )
        try:
            with TestClient(create_app(hub, scheduler=False, fleet=False)) as c:
                assert c.get("/metrics").status_code == (200 if public else 401)
                assert c.get("/metrics", headers=admin_headers(hub)).status_code == 200
                assert c.get("/api/v1/projects").status_code == 401  # only /metrics opens
        finally:
            hub.close()


def test_a_device_reads_itself_and_its_own_artifact_only(
    hub: Hub, app: FastAPI, onnx_bytes: bytes
) -> None:
    version = register_model(hub, onnx_bytes, tflite=False)
    with TestClient(app, headers=admin_headers(hub)) as admin, TestClient(app) as device:
        regs = {
            d: admin.post("/api/v1/devices", json={"id": d, "runtimes": ["onnxruntime"]}).json()
            for d in ("pi-a", "pi-b")
        }
        creds = {d: (r["username"], r["password"]) for d, r in regs.items()}
        assert device.get("/api/v1/devices/pi-a", auth=creds["pi-a"]).status_code == 200
        assert device.get("/api/v1/devices/pi-b", auth=creds["pi-a"]).status_code == 403
        assert device.get("/api/v1/devices/pi-a", auth=("pi-a", "wrong")).status_code == 401
        assert device.get("/api/v1/devices", auth=creds["pi-a"]).status_code == 401
        sha = version.artifacts[0].sha256
        # nothing deployed yet: not its artifact
        assert device.get(f"/api/v1/artifacts/{sha}", auth=creds["pi-a"]).status_code == 403
        deployed = admin.post(
            "/api/v1/deployments", json={"version": version.ref, "device": "pi-a"}
        )
        assert deployed.status_code == 201, deployed.text
        rollout = Rollout(hub.db)  # what the fleet service does before it publishes
        assert all(rollout.claim_desired(a) for a in rollout.unpublished())
        got = device.get(f"/api/v1/artifacts/{sha}", auth=creds["pi-a"])
        assert got.status_code == 200 and got.content == onnx_bytes
        assert device.get(f"/api/v1/artifacts/{sha}", auth=creds["pi-b"]).status_code == 403
        assert device.get(f"/api/v1/artifacts/{sha}", auth=("pi-b", "x")).status_code == 401


def test_openapi_documents_the_schemes(app: FastAPI) -> None:
    schema = app.openapi()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["token"]["description"],
    }
    assert schemes["device"]["scheme"] == "basic"
    projects = schema["paths"]["/api/v1/projects"]["post"]
    assert projects["security"] == [{"token": ["operator"]}]
    device = schema["paths"]["/api/v1/devices/{device_id}"]["get"]
    assert {"device": []} in device["security"] and {"token": ["viewer"]} in device["security"]
    assert "security" not in schema["paths"]["/api/v1/health"]["get"]


def test_tokens_cli_shows_the_secret_once(cli_env: dict[str, str]) -> None:
    made = run_cli(["tokens", "create", "ci", "--role", "operator", "--json"], cli_env)
    assert made.returncode == 0, made.stderr
    listed = run_cli(["tokens", "list", "--json"], cli_env)
    assert listed.returncode == 0
    assert '"ci"' in listed.stdout and '"token"' not in listed.stdout
    import json

    secret = json.loads(made.stdout)["token"]
    assert secret not in listed.stdout
    table = run_cli(["tokens", "list"], cli_env)
    assert "operator" in table.stdout and "local-admin" in table.stdout
    dup = run_cli(["tokens", "create", "ci"], cli_env)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    bad = run_cli(["tokens", "create", "x", "--expires", "soon"], cli_env)
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    assert run_cli(["tokens", "revoke", "ci"], cli_env).returncode == 0
    gone = run_cli(["tokens", "revoke", "ci"], cli_env)
    assert gone.returncode == 2 and "not found" in gone.stderr
