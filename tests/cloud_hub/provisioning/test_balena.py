"""`edgepilot balena setup` / `config`: the real balena-sdk against a local fake of balena's API
(tests/balena_fake.py), asserting the requests the SDK made and what they left behind."""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.fleet.enrollment import EnrollmentRefused
from cloud_hub.hub import Hub
from cloud_hub.provisioning.balena import (
    DEVICE_DATA_DIR,
    ENV_DATA_DIR,
    ENV_HUB,
    ENV_TOKEN,
    BalenaClient,
    BalenaError,
    setup,
    token_name,
)
from edge_agent.config import load_config, needs_enrollment
from edge_agent.core.wire import EnrollRequest
from edge_agent.enroll import signed_request
from tests.balena_fake import FakeBalena
from tests.conftest import free_port, run_cli

KEY = "balena-test-key"
HUB_URL = "http://hub.example:8000"


@pytest.fixture
def fake() -> Iterator[FakeBalena]:
    server = FakeBalena(api_keys={KEY})
    yield server
    server.stop()


@pytest.fixture
def env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {**cli_env, "BALENA_API_KEY": KEY, "HOME": str(home)}


def _setup(fake: FakeBalena, env: dict[str, str], *extra: str) -> tuple[int, str, str]:
    done = run_cli(
        ["balena", "setup", "--fleet", "cams", "--hub-url", HUB_URL, "--balena-api", fake.url]
        + list(extra),
        env,
    )
    return done.returncode, done.stdout, done.stderr


def _tokens(env: dict[str, str]) -> list[dict[str, object]]:
    listed = run_cli(["enroll-tokens", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    found: list[dict[str, object]] = json.loads(listed.stdout)
    return found


def test_setup_creates_the_balena_fleet_sets_its_variables_and_a_rerun_replaces_the_token(
    fake: FakeBalena, env: dict[str, str]
) -> None:
    rc, out, err = _setup(fake, env, "--org", "acme", "--json")
    assert rc == 0, err
    result = json.loads(out)
    app_id = result["balena_fleet_id"]
    assert result["balena_fleet_created"] and result["balena_fleet_slug"] == "acme/cams"
    assert result["fleet"] == "cams" and result["fleet_created"]
    assert result["variables"] == {
        ENV_HUB: "created",
        ENV_DATA_DIR: "created",
        ENV_TOKEN: "created",
    }

    # What the SDK asked balena, in order: the key, the fleet by name, then its creation.
    assert all(r.authorization == f"Bearer {KEY}" for r in fake.requests if r.path != "/ping")
    assert [(r.method, r.path) for r in fake.requests[:5]] == [
        ("GET", "/actor/v1/whoami"),
        ("GET", "/v7/application"),
        ("GET", "/v7/device_type"),
        ("GET", "/v7/organization(handle='acme')"),
        ("POST", "/v7/application"),
    ]
    assert "slug eq 'acme/cams'" in fake.requests[1].filter  # with --org: by its slug
    assert "is_referenced_by__alias eq 'raspberrypi5'" in fake.requests[2].filter
    assert fake.requests[4].body == {
        "app_name": "cams",
        "is_for__device_type": 101,
        "organization": 7,
    }
    listing = fake.api_requests("GET", "/v7/application_environment_variable")
    assert len(listing) == 1 and f"application eq {app_id}" in listing[0].filter
    posted = fake.api_requests("POST", "/v7/application_environment_variable")
    assert [(p.body["application"], p.body["name"]) for p in posted] == [
        (app_id, ENV_HUB),
        (app_id, ENV_DATA_DIR),
        (app_id, ENV_TOKEN),
    ]
    variables = fake.app_vars(app_id)
    first_token = variables[ENV_TOKEN]
    assert variables[ENV_HUB] == HUB_URL and variables[ENV_DATA_DIR] == DEVICE_DATA_DIR
    assert first_token.startswith("ept_")
    assert first_token not in out + err and KEY not in out + err
    tokens = _tokens(env)
    assert [(t["name"], t["fleet"], t["state"]) for t in tokens] == [
        (token_name(app_id), "cams", "live")
    ]
    assert str(first_token).startswith(str(tokens[0]["prefix"]))
    assert not (Path(env["HOME"]) / ".balena").exists()  # the SDK kept off the home directory

    # Again: the same fleet, the token variable updated in place (the SDK's upsert: POST, 409,
    # PATCH), the unchanged ones left alone, and the token it replaced revoked.
    fake.requests.clear()
    rc, out, err = _setup(fake, env)
    assert rc == 0, err
    assert not fake.api_requests("POST", "/v7/application")
    posted = fake.api_requests("POST", "/v7/application_environment_variable")
    assert [p.body["name"] for p in posted] == [ENV_TOKEN]
    (patch,) = fake.api_requests("PATCH", "/v7/application_environment_variable")
    assert f"application eq {app_id}" in patch.filter
    assert f"name eq '{ENV_TOKEN}'" in patch.filter
    assert set(patch.body) == {"value"}
    assert len(fake.env_vars) == 3 and len(fake.apps) == 1
    second_token = fake.app_vars(app_id)[ENV_TOKEN]
    assert second_token != first_token and second_token.startswith("ept_")
    assert second_token not in out + err and KEY not in out + err
    assert "acme/cams" in out and "raspberrypi5" in out
    assert "unchanged" in out and "revoked tokens" in out
    assert [t["state"] for t in _tokens(env)] == ["revoked", "live"]


def test_setup_reuses_a_balena_fleet_by_slug(fake: FakeBalena, hub: Hub) -> None:
    app_id = fake.add_app("yard-cams")
    client = BalenaClient(KEY, api_url=fake.url, timeout_s=10)
    result = setup(
        client,
        hub.enrollment,
        fleet="yard",
        balena_fleet="acme/yard-cams",
        device_type="raspberrypi5",
        org=None,
        hub_url=HUB_URL + "/",
        expires_s=3600,
        max_uses=5,
    )
    assert result.balena_fleet_id == app_id and not result.balena_fleet_created
    assert result.balena_device_type == "raspberrypi5"
    lookups = fake.api_requests("GET", "/v7/application")
    assert len(lookups) == 1 and "slug eq 'acme/yard-cams'" in lookups[0].filter
    assert not fake.api_requests("POST", "/v7/application")
    assert fake.app_vars(app_id)[ENV_HUB] == HUB_URL  # without the trailing slash
    (token,) = hub.enrollment.list_tokens(fleet="yard")
    assert token.max_uses == 5 and token.name == token_name(app_id)


def test_setup_revokes_its_new_token_when_balena_refuses_the_variables(
    fake: FakeBalena, hub: Hub
) -> None:
    fake.add_app("cams")
    fake.refuse_env_var = ENV_TOKEN
    client = BalenaClient(KEY, api_url=fake.url, timeout_s=10)
    with pytest.raises(
        BalenaError, match="set the fleet variable .*HTTP 400: Invalid value"
    ) as err:
        setup(
            client,
            hub.enrollment,
            fleet="cams",
            balena_fleet="cams",
            device_type="raspberrypi5",
            org=None,
            hub_url=HUB_URL,
            expires_s=3600,
            max_uses=None,
        )
    assert [t.state for t in hub.enrollment.list_tokens()] == ["revoked"]
    assert ENV_TOKEN in str(err.value) and "ept_…" in str(err.value)  # balena quoted the body:
    assert not re.search(r"ept_[A-Za-z0-9]", str(err.value))  # its secret is not repeated


def test_config_writes_config_json_0600_and_keeps_an_existing_one(
    fake: FakeBalena, env: dict[str, str], tmp_path: Path
) -> None:
    jetson = "jetson-orin-nano-devkit-nvme"
    app_id = fake.add_app("cams", device_type=jetson)
    psk = tmp_path / "psk"
    psk.write_text("correct horse battery\n")
    out = tmp_path / "out" / "config.json"
    cmd = ["balena", "config", "--fleet", "cams", "-o", str(out), "--balena-api", fake.url]
    done = run_cli([*cmd, "--wifi-ssid", "shop", "--wifi-psk-file", str(psk)], env)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    config = json.loads(out.read_text())
    assert config["applicationId"] == app_id and config["apiKey"] == "provisioning-key-secret"
    assert config["wifiSsid"] == "shop" and config["version"] == "6.0.13"
    (download,) = fake.api_requests("POST", "/download-config")
    assert download.body == {
        "network": "wifi",
        "wifiSsid": "shop",
        "wifiKey": "correct horse battery",
        "deviceType": jetson,  # the fleet's, read from balena
        "version": "6.0.13",  # the recommended balenaOS, asked of balena
        "appId": app_id,
    }
    hostapps = [r for r in fake.api_requests("GET", "/v7/application") if "is_host" in r.filter]
    assert hostapps and f"'{jetson}'" in hostapps[0].filter
    assert "correct horse" not in done.stdout + done.stderr
    assert "provisioning-key-secret" not in done.stdout + done.stderr
    assert f"has no {ENV_TOKEN}" in done.stderr  # setup has not run on this fleet

    out.write_text("mine")
    again = run_cli([*cmd, "--version", "5.3.10"], env)
    assert again.returncode == 2 and "--force" in again.stderr and out.read_text() == "mine"
    forced = run_cli([*cmd, "--version", "5.3.10", "--network", "ethernet", "--force"], env)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(out.read_text())["version"] == "5.3.10"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    missing = run_cli([*cmd, "--force", "--wifi-ssid", "x", "--wifi-psk-file", "/nope"], env)
    assert missing.returncode == 2 and "/nope" in missing.stderr
    unknown = run_cli(
        [
            "balena",
            "config",
            "--fleet",
            "elsewhere",
            "-o",
            str(tmp_path / "c.json"),
            "--balena-api",
            fake.url,
        ],
        env,
    )
    assert unknown.returncode == 2 and "'elsewhere' not found" in unknown.stderr


def test_a_refused_key_exits_2_and_makes_no_token(fake: FakeBalena, env: dict[str, str]) -> None:
    env = {**env, "BALENA_API_KEY": "wrong-key-1234"}
    rc, out, err = _setup(fake, env)
    assert rc == 2
    assert "refused the API key" in err and fake.url in err
    assert "wrong-key-1234" not in out + err and "Traceback" not in err
    assert [r.path for r in fake.requests] == ["/actor/v1/whoami", "/ping"]
    assert _tokens(env) == []


def test_a_token_file_is_read_and_its_key_never_shown(
    fake: FakeBalena, env: dict[str, str], tmp_path: Path
) -> None:
    key_file = tmp_path / "balena-key"
    key_file.write_text("a-key-from-a-file\n")
    fake.api_keys.add("a-key-from-a-file")
    env = {k: v for k, v in env.items() if k != "BALENA_API_KEY"}
    rc, _, err = _setup(fake, env)
    assert rc == 2 and "no balena API key" in err and not fake.requests
    rc, out, err = _setup(fake, env, "--balena-token-file", str(key_file))
    assert rc == 0, err
    assert fake.requests[0].authorization == "Bearer a-key-from-a-file"
    assert "a-key-from-a-file" not in out + err


def test_an_unreachable_api_exits_2(env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    done = run_cli(
        ["balena", "setup", "--fleet", "cams", "--hub-url", HUB_URL, "--balena-api", url], env
    )
    assert done.returncode == 2
    assert f"the balena API at {url} is unreachable (connection refused)" in done.stderr
    assert KEY not in done.stdout + done.stderr


def test_an_api_that_never_answers_times_out(fake: FakeBalena, env: dict[str, str]) -> None:
    fake.hang = True
    rc, _, err = _setup(fake, env, "--balena-timeout", "1")
    assert rc == 2 and "unreachable (no answer within 1 s" in err


def test_setup_refuses_a_hub_url_devices_cannot_reach(
    fake: FakeBalena, env: dict[str, str]
) -> None:
    done = run_cli(
        [
            "balena",
            "setup",
            "--fleet",
            "cams",
            "--hub-url",
            "http://127.0.0.1:8000",
            "--balena-api",
            fake.url,
        ],
        env,
    )
    assert done.returncode == 2 and "loopback" in done.stderr
    assert not fake.api_requests("POST")


def test_a_device_of_the_balena_fleet_enrolls_with_what_setup_left_there(
    fake: FakeBalena, hub: Hub, tmp_path: Path
) -> None:
    """The fleet's variables, read by the agent's own config loader, make an enrollment the
    hub accepts; after a rerun the replaced token is refused and the new one accepted."""
    client = BalenaClient(KEY, api_url=fake.url, timeout_s=10)

    def run_setup() -> int:
        return setup(
            client,
            hub.enrollment,
            fleet="yard",
            balena_fleet="yard-cams",
            device_type="raspberrypi5",
            org="acme",
            hub_url=HUB_URL,
            expires_s=3600,
            max_uses=None,
        ).balena_fleet_id

    def device_request(variables: dict[str, str], serial: str) -> EnrollRequest:
        (tmp_path / "agent.toml").write_text("")  # what the image ships: the rest is in env
        config = load_config(tmp_path / "agent.toml", variables)
        assert config.enroll is not None and needs_enrollment(config)
        assert config.enroll.hub == HUB_URL and config.data_dir == Path(DEVICE_DATA_DIR)
        assert config.enroll.token is not None
        return signed_request(
            config.enroll.token,
            serial,
            tmp_path / serial,  # the device's key (its data volume on balena)
            hardware="Raspberry Pi 5 Model B Rev 1.0",
            clock=time.time,
        )

    app_id = run_setup()
    first = fake.app_vars(app_id)
    enrolled = hub.enrollment.enroll(device_request(first, "10000000aaaa0001"))
    assert enrolled.fleet == "yard"

    run_setup()
    second = fake.app_vars(app_id)
    with pytest.raises(EnrollmentRefused, match="revoked"):
        hub.enrollment.enroll(device_request(first, "10000000aaaa0002"))
    assert hub.enrollment.enroll(device_request(second, "10000000aaaa0002")).fleet == "yard"


def test_a_server_error_quoting_the_token_shows_neither_it_nor_a_traceback(
    fake: FakeBalena, env: dict[str, str]
) -> None:
    fake.refuse_env_var, fake.refuse_status = ENV_TOKEN, 500
    rc, out, err = _setup(fake, env, "--org", "acme", "--json")
    assert rc == 2 and "HTTP 500" in err and "Traceback" not in err
    assert out == ""  # the SDK's own print of the answer kept off stdout
    assert not re.search(r"ept_[A-Za-z0-9]", out + err)
    assert [t["state"] for t in _tokens(env)] == ["revoked"]
