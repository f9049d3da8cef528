"""Batch inference over a CSV file, a folder of images and a table of the hub database: only
rows without a prediction are predicted, results are written back, progress is shown, and a
batch can run on a schedule."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cloud_hub.cli.main import app
from cloud_hub.hub import Hub
from tests.clocks import ManualUtcClock
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
    from cloud_hub.serving.engine.spec import EndpointSpec
    from cloud_hub.serving.engine.store import EndpointStore

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


def test_a_resumed_batch_counts_what_its_earlier_attempt_wrote_as_predicted(
    serving_hub: Hub, tmp_path: Path
) -> None:
    """A worker dies mid-batch; the job is taken again and resumes. The rows its first attempt
    wrote are this job's predictions, not rows some earlier run had ("skipped")."""
    from cloud_hub.serving.engine.engine import ServingEngine
    from cloud_hub.serving.engine.spec import EndpointSpec
    from cloud_hub.serving.jobs.batch import BatchRunner
    from cloud_hub.serving.jobs.queue import JobQueue
    from cloud_hub.serving.jobs.worker import JobWorker

    engine = ServingEngine(serving_hub.registry, serving_hub.db, threads=4)
    engine.create(EndpointSpec.model_validate({**example("batch.json"), "name": "resume-batch"}))
    try:
        table = tmp_path / "resume.csv"
        write_csv(table, 0, 9)
        clock = ManualUtcClock()
        queue = JobQueue(serving_hub.db, lease_s=0.3, clock=clock)
        body = {"source": {"kind": "csv", "path": str(table)}, "chunk_size": 3}
        job = queue.submit("batch", "resume-batch", body)
        claimed = queue.claim("dead-worker", job_id=job.id)
        assert claimed is not None

        class Died(Exception):
            pass

        chunks: list[int] = []

        def dies_on_the_third_chunk(request: Any) -> Any:
            chunks.append(1)
            if len(chunks) == 3:
                raise Died
            return engine.predict("resume-batch", request)

        runner = BatchRunner(queue, serving_hub.db, tmp_path)
        with pytest.raises(Died):
            runner.run(claimed, "dead-worker", dies_on_the_third_chunk)
        assert queue.get(job.id).done == 6  # two chunks written, then the worker was gone
        clock.advance(0.35)  # its lease runs out
        worker = JobWorker(queue, engine, name="second", endpoint="resume-batch")
        try:
            final = worker.run_once()
        finally:
            worker.close()
        assert final is not None and final.state == "succeeded" and final.attempts == 2
        assert final.result is not None
        assert (final.result["predicted"], final.result["skipped"]) == (9, 0)
        assert final.done == final.total == 9
        stored = runner.results(final)
        assert len(stored) == 9 and {p.job_id for p in stored} == {job.id}
        # a second batch over the same rows: all of them were predicted before, by the first
        again = queue.submit("batch", "resume-batch", body)
        worker = JobWorker(queue, engine, name="third", endpoint="resume-batch")
        try:
            rerun = worker.run_once()
        finally:
            worker.close()
        assert rerun is not None and rerun.id == again.id and rerun.result is not None
        assert (rerun.result["predicted"], rerun.result["skipped"]) == (0, 9)
    finally:
        engine.delete("resume-batch")
        engine.close()


def test_rows_refused_as_bad_input_are_kept_in_the_result_and_not_retried_unchanged(
    client: TestClient, tmp_path: Path
) -> None:
    assert client.post(f"{API}/endpoints", json=example("batch.json")).status_code == 201
    table = tmp_path / "bad.csv"
    write_csv(table, 0, 5)
    with table.open("a") as handle:
        handle.write("row-bad," + ",".join(["x"] * 64) + "\n")
    body: dict[str, Any] = {"source": {"kind": "csv", "path": str(table)}}
    first = wait_batch(client, start(client, body)["id"])
    r = first["result"]
    assert (r["predicted"], r["errors"], r["not_retried"]) == (5, 1, 0)
    assert list(r["failed_rows"]) == ["row-bad"] and "not numeric" in r["row_errors"]["row-bad"]
    assert r["failed_rows"]["row-bad"]["job_id"] == first["id"]
    assert "not numeric" in r["failed_rows"]["row-bad"]["error"]

    # the next run (or scheduled run) does not try the same bad row again...
    second = wait_batch(client, start(client, body)["id"])
    r = second["result"]
    assert (r["predicted"], r["skipped"], r["errors"], r["not_retried"]) == (0, 5, 0, 1)
    assert r["failed_rows"]["row-bad"]["job_id"] == first["id"]  # still on record
    assert second["done"] == second["total"] == 6
    # ...unless asked to
    forced = wait_batch(client, start(client, {**body, "retry_errors": True})["id"])
    r = forced["result"]
    assert (r["errors"], r["not_retried"]) == (1, 0)
    assert r["failed_rows"]["row-bad"]["job_id"] == forced["id"]

    # once the row is fixed, its content differs: the next run predicts it
    lines = table.read_text().splitlines()
    lines[-1] = "row-bad," + ",".join(["0"] * 64)
    table.write_text("\n".join(lines) + "\n")
    fixed = wait_batch(client, start(client, body)["id"])
    r = fixed["result"]
    assert (r["predicted"], r["errors"], r["not_retried"], r["failed_rows"]) == (1, 0, 0, {})
    assert "row-bad" in predictions(client, fixed["id"])
