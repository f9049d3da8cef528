"""Batch inference over a CSV file, a folder of images and a table of the hub database: only
rows without a prediction are predicted, results are written back, progress is shown, and a
batch can run on a schedule."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cloud_hub.cli.main import app
from cloud_hub.hub import Hub
from tests.cloud_hub.serving.conftest import (
    EXAMPLES,
    digits_rows,
    example,
    reference_labels,
    wait_for,
)

API = "/api/v1"
FINAL = ("succeeded", "failed", "cancelled")


def start(client: TestClient, body: dict[str, Any], name: str = "digits-batch") -> dict[str, Any]:
    resp = client.post(f"{API}/endpoints/{name}/batches", json=body)
    assert resp.status_code == 202, resp.text
    out: dict[str, Any] = resp.json()
    return out


def wait_batch(client: TestClient, batch_id: str, timeout: float = 20) -> dict[str, Any]:
    out: dict[str, Any] = wait_for(
        lambda: client.get(f"{API}/batches/{batch_id}").json(),
        lambda b: b["state"] in FINAL,
        timeout,
        what=f"batch {batch_id}",
    )
    return out


def predictions(client: TestClient, batch_id: str) -> dict[str, str]:
    resp = client.get(f"{API}/batches/{batch_id}/predictions")
    assert resp.status_code == 200, resp.text
    return {p["row_id"]: p["label"] for p in resp.json()}


def write_csv(path: Path, start: int, stop: int, *, append: bool = False) -> None:
    raw, _ = digits_rows(raw=True)
    with path.open("a" if append else "w", newline="") as handle:
        out = csv.writer(handle)
        if not append:
            out.writerow(["id", *(f"p{i}" for i in range(64))])
        for i in range(start, stop):
            out.writerow([f"row-{i:03d}", *(int(v) for v in raw[i])])


def test_csv_batch_predicts_only_new_rows_and_writes_them_back(
    client: TestClient, serving_hub: Hub, tmp_path: Path
) -> None:
    assert client.post(f"{API}/endpoints", json=example("batch.json")).status_code == 201
    table = tmp_path / "digits.csv"
    shutil.copy(EXAMPLES / "data" / "digits.csv", table)
    body = {"source": {"kind": "csv", "path": str(table)}, "chunk_size": 6}
    first = start(client, body)
    assert first["state"] == "queued" and first["source"]["kind"] == "csv"
    done = wait_batch(client, first["id"])
    assert done["state"] == "succeeded", done
    assert (done["done"], done["total"], done["progress"]) == (20, 20, 1.0)
    assert done["result"]["predicted"] == 20 and done["result"]["skipped"] == 0
    x, _ = digits_rows()
    expected = reference_labels(serving_hub, "digits/digits-mlp:1", x[:30])
    got = predictions(client, first["id"])
    assert got == {f"row-{i:02d}": expected[i] for i in range(20)}

    again = wait_batch(client, start(client, body)["id"])  # nothing new: nothing predicted
    assert again["result"]["predicted"] == 0 and again["result"]["skipped"] == 20
    assert again["done"] == again["total"] == 20

    write_csv(table, 20, 30, append=True)  # ten rows more (ids row-020..row-029)
    with table.open("a") as handle:
        handle.write("row-bad," + ",".join(["x"] * 64) + "\n")
    more = wait_batch(client, start(client, body)["id"])
    assert more["state"] == "succeeded"
    assert more["result"]["predicted"] == 10 and more["result"]["skipped"] == 20
    assert more["result"]["errors"] == 1 and "row-bad" in more["result"]["row_errors"]
    got = predictions(client, more["id"])
    assert len(got) == 30
    assert [got[f"row-{i:03d}"] for i in range(20, 30)] == expected[20:30]


def test_image_folder_and_table_batches(client: TestClient, serving_hub: Hub) -> None:
    assert client.post(f"{API}/endpoints", json=example("batch.json")).status_code == 201
    folder = EXAMPLES / "data" / "digits"
    images = wait_batch(
        client, start(client, {"source": {"kind": "images", "path": str(folder)}})["id"]
    )
    assert images["state"] == "succeeded" and images["total"] == 10
    got = predictions(client, images["id"])
    assert sorted(got) == [f"digit-{i}.png" for i in range(10)]
    assert np.mean([got[f"digit-{i}.png"] == str(i) for i in range(10)]) >= 0.8

    raw, _ = digits_rows(raw=True)
    cols = [f"p{i}" for i in range(64)]
    with serving_hub.db.transaction() as db:
        db.execute("DROP TABLE IF EXISTS test_pixels")
        db.execute(
            "CREATE TABLE test_pixels (key TEXT PRIMARY KEY, note TEXT, "
            + ", ".join(f"{c} REAL" for c in cols)
            + ")"
        )
        for i in range(12):
            db.execute(
                f"INSERT INTO test_pixels VALUES (?, 'n', {', '.join('?' * 64)})",
                [f"k{i}", *(float(v) for v in raw[i])],
            )
    source = {"kind": "table", "table": "test_pixels", "id_column": "key", "columns": cols}
    table = wait_batch(client, start(client, {"source": source})["id"])
    assert table["state"] == "succeeded" and table["done"] == table["total"] == 12
    x, _ = digits_rows()
    expected = reference_labels(serving_hub, "digits/digits-mlp:1", x[:12])
    got = predictions(client, table["id"])
    assert [got[f"k{i}"] for i in range(12)] == expected


def test_a_scheduled_batch_runs_again_on_its_cron(client: TestClient, tmp_path: Path) -> None:
    assert client.post(f"{API}/endpoints", json=example("batch.json")).status_code == 201
    table = tmp_path / "growing.csv"
    write_csv(table, 0, 5)
    body = {"source": {"kind": "csv", "path": str(table)}, "cron": "* * * * * *"}  # each second
    first = wait_batch(client, start(client, body)["id"])
    assert first["result"]["predicted"] == 5 and first["next_batch"]
    write_csv(table, 5, 8, append=True)
    second = wait_batch(client, first["next_batch"], timeout=10)
    assert second["state"] == "succeeded" and second["cron"] == "* * * * * *"
    assert second["result"]["predicted"] == 3 and second["result"]["skipped"] == 5
    # cancelling the queued next run ends the schedule
    nxt = second["next_batch"]
    while True:
        resp = client.delete(f"{API}/batches/{nxt}")
        if resp.status_code == 200:
            break
        nxt = wait_batch(client, nxt)["next_batch"]  # it was already running: stop the next
    assert resp.json()["state"] == "cancelled"
    assert client.get(f"{API}/batches/{nxt}").json()["next_batch"] is None


def test_bad_batches_are_refused(client: TestClient, tmp_path: Path) -> None:
    assert client.post(f"{API}/endpoints", json=example("batch.json")).status_code == 201
    missing = client.get(f"{API}/batches/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    csv_path = str(EXAMPLES / "data" / "digits.csv")
    resp = client.post(
        f"{API}/endpoints/ghost/batches", json={"source": {"kind": "csv", "path": csv_path}}
    )
    assert resp.status_code == 404
    for source, words in (
        ({"kind": "csv", "path": str(tmp_path / "none.csv")}, "does not exist"),
        ({"kind": "csv", "path": csv_path, "id_column": "key"}, "no column 'key'"),
        ({"kind": "images", "path": str(tmp_path / "none")}, "does not exist"),
        ({"kind": "table", "table": "no_such_table"}, "no table"),
    ):
        resp = client.post(f"{API}/endpoints/digits-batch/batches", json={"source": source})
        assert resp.status_code == 422 and words in resp.json()["detail"], resp.text
    for body in (
        {"source": {"kind": "csv"}},
        {"source": {"kind": "table", "table": "x; DROP TABLE y"}},
        {"source": {"kind": "parquet", "path": csv_path}},
    ):
        resp = client.post(f"{API}/endpoints/digits-batch/batches", json=body)
        assert resp.status_code == 422, resp.text
    resp = client.post(
        f"{API}/endpoints/digits-batch/batches",
        json={"source": {"kind": "csv", "path": csv_path}, "cron": "every day"},
    )
    assert resp.status_code == 422 and "cron" in resp.json()["detail"]
    # a job id is not a batch id
    job = client.post(f"{API}/endpoints/digits-batch/jobs", json={"inputs": [[0.0] * 64]})
    assert client.get(f"{API}/batches/{job.json()['id']}").status_code == 404


def test_cli_batch_with_progress(serving_hub: Hub, tmp_path: Path) -> None:
    from cloud_hub.serving.spec import EndpointSpec
    from cloud_hub.serving.store import EndpointStore

    store = EndpointStore(serving_hub.db)
    store.create(EndpointSpec.model_validate({**example("batch.json"), "name": "cli-batch"}))
    try:
        table = tmp_path / "cli.csv"
        write_csv(table, 0, 7)
        runner = CliRunner()
        args = ["--data-dir", str(serving_hub.settings.data_dir), "endpoints", "batch"]
        result = runner.invoke(
            app,
            [*args, "cli-batch", "--csv", str(table), "--here", "--chunk-size", "3"],
            env={"COLUMNS": "200"},
        )
        assert result.exit_code == 0, result.output
        assert "succeeded, 7/7 rows" in result.stdout and "predicted 7" in result.stdout
        result = runner.invoke(app, [*args, "cli-batch", "--csv", str(table), "--here", "--json"])
        assert result.exit_code == 0, result.output
        import json

        view = json.loads(result.stdout)
        assert view["result"]["skipped"] == 7 and view["state"] == "succeeded"
        bad = runner.invoke(app, [*args, "cli-batch", "--csv", str(tmp_path / "nope.csv")])
        assert bad.exit_code == 2 and "does not exist" in " ".join(bad.stderr.split())
    finally:
        store.delete("cli-batch")
