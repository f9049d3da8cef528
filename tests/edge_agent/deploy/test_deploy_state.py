"""deploy.json: the deployer's saved state loads from the files earlier agents wrote (a plain
JSON object, keys as below), survives a round trip, and a damaged part costs only that part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_hub.registry.signing import HubSigner
from edge_agent.config import AgentSettings
from edge_agent.core.wire import ServingParams
from edge_agent.deploy.state import DeployState, DeployStateFile, ShadowOutcome, load_state
from edge_agent.deployer import Deployer
from edge_agent.model_manager import ModelManager
from edge_agent.model_store import ModelStore

SHA_MODEL = "ab" * 32
SHA_SHADOW = "cd" * 32

#: What an agent before the typed state wrote (json.dumps of its dict, in its key order).
OLD_FILE = json.dumps(
    {
        "params": {
            "min_score": 0.5,
            "default_label": "unknown",
            "disabled": False,
            "shadow_sample": 0.25,
        },
        "threads": 2,
        "deployment_id": 7,
        "version_id": 3,
        "sha256": SHA_MODEL,
        "state": "active",
        "reason": None,
        "received_bytes": 1234,
        "shadow": {
            "deployment_id": 7,
            "version_id": 4,
            "sha256": SHA_SHADOW,
            "state": "failed",
            "reason": "cannot load model: bad file",
        },
    }
)

OLD_OUTCOME = {
    "deployment_id": 7,
    "version_id": 3,
    "sha256": SHA_MODEL,
    "state": "active",
    "reason": None,
    "received_bytes": 1234,
    "shadow": {
        "deployment_id": 7,
        "version_id": 4,
        "sha256": SHA_SHADOW,
        "state": "failed",
        "reason": "cannot load model: bad file",
    },
}


def test_an_old_file_loads_field_for_field(tmp_path: Path) -> None:
    path = tmp_path / "deploy.json"
    path.write_text(OLD_FILE)
    state = load_state(path)
    assert state.params == ServingParams(min_score=0.5, default_label="unknown", shadow_sample=0.25)
    assert state.threads == 2
    assert (state.deployment_id, state.version_id, state.sha256) == (7, 3, SHA_MODEL)
    assert (state.state, state.reason, state.received_bytes) == ("active", None, 1234)
    assert state.shadow == ShadowOutcome(
        deployment_id=7,
        version_id=4,
        sha256=SHA_SHADOW,
        state="failed",
        reason="cannot load model: bad file",
    )
    assert state.outcome() == OLD_OUTCOME


def test_a_saved_state_loads_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "deploy.json"
    path.write_text(OLD_FILE)
    file = DeployStateFile(path)
    with file.editing() as state:
        state.state = "rolled_back"
        state.reason = "too slow"
        state.threads = 3
    again = load_state(path)
    assert again == file.read()
    assert (again.state, again.reason, again.threads) == ("rolled_back", "too slow", 3)
    assert again.params == ServingParams(min_score=0.5, default_label="unknown", shadow_sample=0.25)
    # still the old shape: an agent of the previous release reads the same keys
    raw = json.loads(path.read_text())
    assert {k: raw[k] for k in OLD_OUTCOME} == {
        **OLD_OUTCOME,
        "state": "rolled_back",
        "reason": "too slow",
    }


def test_before_any_report_the_outcome_is_empty(tmp_path: Path) -> None:
    assert load_state(tmp_path / "deploy.json").outcome() == {}
    only_params = tmp_path / "params.json"
    only_params.write_text(json.dumps({"params": {"disabled": True}, "threads": 4}))
    state = load_state(only_params)
    assert state.outcome() == {}
    assert state.params.disabled and state.threads == 4


@pytest.mark.parametrize(
    ("saved", "params", "threads"),
    [
        ({"params": {"shadow_sample": 7}, "threads": 2}, ServingParams(), 2),
        ({"params": {"disabled": True}, "threads": 0}, ServingParams(disabled=True), None),
        ({"params": None, "threads": "two"}, ServingParams(), None),
    ],
)
def test_damaged_params_or_threads_fall_back_alone(
    tmp_path: Path, saved: dict[str, object], params: ServingParams, threads: int | None
) -> None:
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps({**saved, "deployment_id": 7, "version_id": 3, "state": "failed"}))
    state = load_state(path)
    assert (state.params, state.threads) == (params, threads)
    assert (state.deployment_id, state.version_id, state.state) == (7, 3, "failed")


@pytest.mark.parametrize("text", ["", "{not json", "[]", '{"state": "exploded"}'])
def test_an_unreadable_file_gives_an_empty_state(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deploy.json"
    path.write_text(text)
    assert load_state(path) == DeployState()


def test_the_deployer_takes_up_an_old_file(tmp_path: Path, signer: HubSigner) -> None:
    settings = AgentSettings(
        device_id="pi-state", data_dir=tmp_path / "data", hub_public_key=signer.public_key_b64
    )
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "deploy.json").write_text(OLD_FILE)
    store = ModelStore(settings.data_dir / "store")
    manager = ModelManager(store)
    deployer = Deployer(
        settings, manager, store, publish_report=lambda _r: None, send_fetch=lambda _r: False
    )
    assert deployer.params == ServingParams(
        min_score=0.5, default_label="unknown", shadow_sample=0.25
    )
    assert manager.threads == 2
    assert deployer.snapshot() == OLD_OUTCOME
