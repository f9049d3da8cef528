"""Binary predict bodies straight into numpy (application/x-npy, octet-stream with a shape
header) give the answers the same rows as JSON give; image bodies keep their bytes; `top_k`
ranks each row's classes; every malformed body, header or value is a 4xx naming the problem."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.cloud_hub.serving.conftest import digits_rows, example, png_b64, wait_job

API = "/api/v1/endpoints"
URL = f"{API}/digits-sync/predict"


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def _answer(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    for varying in ("latency_ms", "request_id"):
        out.pop(varying)
    return out


@pytest.fixture
def sync(client: TestClient) -> TestClient:
    assert client.post(API, json=example("sync.json")).status_code == 201
    return client


def test_npy_and_octet_stream_bodies_answer_as_json_rows(sync: TestClient) -> None:
    x, _ = digits_rows()
    rows = x[:5]
    as_json = _answer(sync.post(URL, json={"inputs": rows.tolist()}))
    npy = sync.post(URL, content=_npy(rows), headers={"content-type": "application/x-npy"})
    assert _answer(npy) == as_json
    for other in (rows.astype(np.float64), np.asfortranarray(rows)):
        resp = sync.post(URL, content=_npy(other), headers={"content-type": "application/x-npy"})
        assert _answer(resp) == as_json
    raw = sync.post(
        URL,
        content=rows.tobytes(),
        headers={
            "content-type": "application/octet-stream",
            "x-tensor-shape": "5,64",
            "x-tensor-dtype": "float32",
        },
    )
    assert _answer(raw) == as_json
    pixels = (rows * 255).round().astype(np.uint8)  # integers are numbers too
    resp = sync.post(URL, content=_npy(pixels), headers={"content-type": "application/x-npy"})
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == 5


@pytest.mark.parametrize(
    ("body", "headers", "words"),
    [
        (b"\x93NUMPY garbage", {}, "not a .npy array"),
        (b"", {}, "not a .npy array"),
        (_npy(np.zeros((2, 64), np.float32))[:-4], {}, "data is 508 bytes"),
        (_npy(np.zeros((2, 64), bool)), {}, "dtype must be numeric"),
        (_npy(np.zeros((2, 64), np.complex64)), {}, "dtype must be numeric"),
        (_npy(np.array(["a", "b"])), {}, "dtype must be numeric"),
        (_npy(np.zeros(64, np.float32)), {}, "a batch of rows"),
        (_npy(np.zeros((0, 64), np.float32)), {}, "has no rows"),
        (_npy(np.full((2, 64), np.nan, np.float32)), {}, "row 0 contains NaN or infinity"),
        (_npy(np.zeros((2, 3), np.float32)), {}, "takes input shape [None, 64], got (2, 3)"),
    ],
)
def test_a_bad_npy_body_is_a_422_naming_the_problem(
    sync: TestClient, body: bytes, headers: dict[str, str], words: str
) -> None:
    resp = sync.post(URL, content=body, headers={"content-type": "application/x-npy"})
    assert resp.status_code == 422, resp.text
    assert words in resp.json()["detail"], resp.json()


def test_an_object_npy_is_refused_without_unpickling(sync: TestClient) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    resp = sync.post(URL, content=buf.getvalue(), headers={"content-type": "application/x-npy"})
    assert resp.status_code == 422 and "dtype must be numeric" in resp.json()["detail"]


@pytest.mark.parametrize(
    ("shape", "dtype", "size", "words"),
    [
        (None, "float32", 512, "needs the headers X-Tensor-Shape"),
        ("2,64", None, 512, "needs the headers X-Tensor-Shape"),
        ("2,x", "float32", 512, "X-Tensor-Shape must be"),
        ("2,-64", "float32", 512, "X-Tensor-Shape must be"),
        ("", "float32", 512, "X-Tensor-Shape must be"),
        (",".join(["1"] * 9), "float32", 4, "X-Tensor-Shape must be"),
        ("99999999999,64", "float32", 512, "X-Tensor-Shape must be"),
        ("2,64", "object", 512, "X-Tensor-Dtype must be one of"),
        ("2,64", "float32", 500, "data is 500 bytes; shape (2, 64) of float32 is 512 bytes"),
        ("2,64", "float64", 512, "is 1024 bytes"),
        ("512", "uint8", 512, "a batch of rows"),
    ],
)
def test_a_bad_octet_stream_body_is_a_422_naming_the_problem(
    sync: TestClient, shape: str | None, dtype: str | None, size: int, words: str
) -> None:
    headers = {"content-type": "application/octet-stream"}
    if shape is not None:
        headers["x-tensor-shape"] = shape
    if dtype is not None:
        headers["x-tensor-dtype"] = dtype
    resp = sync.post(URL, content=b"\0" * size, headers=headers)
    assert resp.status_code == 422, resp.text
    assert words in resp.json()["detail"], resp.json()


def test_top_k_ranks_each_rows_classes_on_request(sync: TestClient) -> None:
    x, _ = digits_rows()
    body = {"inputs": x[:3].tolist()}
    plain = sync.post(URL, json=body)
    again = sync.post(URL, json=body)
    assert b"top_k" not in plain.content
    # without top_k the answer is what it was: byte for byte, but for latency and id
    assert _answer(plain) == _answer(again)
    ranked = sync.post(URL, params={"top_k": 3}, json=body).json()["predictions"]
    for row, p in zip(plain.json()["predictions"], ranked, strict=True):
        scores = row["scores"]
        best = sorted(range(10), key=lambda c: -scores[c])[:3]
        assert p["top_k"] == [{"label": str(c), "score": scores[c]} for c in best]
        assert p["top_k"][0]["label"] == row["label"]
        assert {k: v for k, v in p.items() if k != "top_k"} == row
    in_body = sync.post(URL, json={**body, "top_k": 10}).json()["predictions"]
    assert [len(p["top_k"]) for p in in_body] == [10, 10, 10]
    npy = sync.post(
        URL, params={"top_k": 1}, content=_npy(x[:2]), headers={"content-type": "application/x-npy"}
    )
    assert [len(p["top_k"]) for p in npy.json()["predictions"]] == [1, 1]


@pytest.mark.parametrize(
    ("params", "extra", "words"),
    [
        ({"top_k": 11}, {}, "top_k is 11, but this endpoint answers 10 classes"),
        ({}, {"top_k": 11}, "top_k is 11, but this endpoint answers 10 classes"),
        ({"top_k": 0}, {}, "greater than or equal to 1"),
        ({"top_k": "many"}, {}, "valid integer"),
        ({}, {"top_k": 0}, "top_k: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_top_k_is_a_422_naming_it(
    sync: TestClient, params: dict[str, Any], extra: dict[str, Any], words: str
) -> None:
    x, _ = digits_rows()
    resp = sync.post(URL, params=params, json={"inputs": x[:1].tolist(), **extra})
    assert resp.status_code == 422, resp.text
    assert words in json.dumps(resp.json()), resp.json()


def test_an_image_body_is_kept_as_bytes_through_a_deferred_job(client: TestClient) -> None:
    """An image body reaches the model as its bytes; queued as a job, it is written as base64
    once, for the job's record."""
    # an endpoint of its own: other tests list the example's jobs
    spec = {**example("async.json"), "name": "bytes-async"}
    assert client.post(API, json=spec).status_code == 201
    png = base64.b64decode(png_b64(3))
    resp = client.post(
        f"{API}/bytes-async/jobs", content=png, headers={"content-type": "image/png"}
    )
    assert resp.status_code == 202, resp.text
    via_json = client.post(f"{API}/bytes-async/jobs", json={"image_b64": png_b64(3)})
    done = wait_job(client, resp.json()["id"])
    assert done["state"] == "succeeded", done
    expected = wait_job(client, via_json.json()["id"])["result"]["predictions"]
    assert done["result"]["predictions"] == expected
