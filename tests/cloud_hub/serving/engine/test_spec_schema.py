"""The published endpoint spec schema: one branch per step kind with its typed params, served at
GET /api/v1/endpoints/schema; real example specs validate against it, bad params do not."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from cloud_hub.serving import STEP_KINDS
from cloud_hub.serving.engine.spec import endpoint_spec_schema
from tests.cloud_hub.serving.conftest import EXAMPLES, example

EXAMPLE_SPECS = sorted(p.name for p in EXAMPLES.glob("*.json"))


def test_one_branch_per_kind() -> None:
    steps = endpoint_spec_schema()["properties"]["steps"]["items"]
    assert sorted(steps["discriminator"]["mapping"]) == sorted(STEP_KINDS)
    assert len(steps["oneOf"]) == len(STEP_KINDS)


def test_the_api_serves_the_schema(client: TestClient) -> None:
    response = client.get("/api/v1/endpoints/schema")
    assert response.status_code == 200
    assert response.json() == endpoint_spec_schema()


@pytest.mark.parametrize("name", EXAMPLE_SPECS)
def test_example_specs_validate(client: TestClient, name: str) -> None:
    schema = client.get("/api/v1/endpoints/schema").json()
    jsonschema_rs.validate(schema, example(name))


def test_a_bad_param_is_refused(client: TestClient) -> None:
    spec: dict[str, Any] = example(EXAMPLE_SPECS[0])
    spec["steps"][0]["params"]["no_such_param"] = 1
    errors = list(jsonschema_rs.validator_for(endpoint_spec_schema()).iter_errors(spec))
    assert errors
    response = client.post("/api/v1/endpoints", json=spec)
    assert 400 <= response.status_code < 500
    body = response.text
    assert "no_such_param" in body
    assert spec["steps"][0]["name"] in body
