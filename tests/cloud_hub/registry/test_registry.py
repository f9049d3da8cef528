"""The registry on a real SQLite file: names, versions, artifacts, concurrency, migrations."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from cloud_hub.core.db import Database
from cloud_hub.core.errors import AlreadyExists, InvalidInput, NotFound
from cloud_hub.core.migrations import MIGRATIONS
from cloud_hub.core.settings import HubSettings
from cloud_hub.hub import Hub
from cloud_hub.registry.artifacts import ArtifactStore, sha256_hex
from cloud_hub.registry.registry import NewArtifact, Registry


def test_projects_by_id_and_name(hub: Hub) -> None:
    reg = hub.registry
    created = reg.create_project("digits", "handwritten digits")
    assert reg.get_project("digits") == created
    assert reg.get_project(created.id) == created
    assert reg.get_project(str(created.id)) == created
    assert [p.name for p in reg.list_projects()] == ["digits"]
    with pytest.raises(AlreadyExists, match="project 'digits' already exists"):
        reg.create_project("digits")
    with pytest.raises(NotFound, match="project 'nope' not found"):
        reg.get_project("nope")


@pytest.mark.parametrize("bad", ["", "1abc", "has space", "x" * 65, "semi;colon"])
def test_invalid_names_are_refused(hub: Hub, bad: str) -> None:
    with pytest.raises(InvalidInput, match="name"):
        hub.registry.create_project(bad)
    assert hub.registry.list_projects() == []


def test_versions_number_up_and_keep_their_artifacts(hub: Hub) -> None:
    reg = hub.registry
    model = reg.ensure_model("p", "m")
    v1 = reg.add_version(
        model.id,
        artifacts=[NewArtifact("onnx", "fp32", b"one"), NewArtifact("onnx", "int8", b"two")],
        source="uploaded",
        labels=["a", "b"],
    )
    v2 = reg.add_version(
        model.id,
        artifacts=[NewArtifact("tflite", "fp32", b"three")],
        source="uploaded",
        parent_id=v1.id,
    )
    assert (v1.number, v2.number) == (1, 2)
    assert v2.parent_id == v1.id
    assert reg.get_model("p", "m").latest_version == 2
    assert reg.resolve_version("p/m").id == v2.id
    assert reg.resolve_version("p/m:1").id == v1.id
    assert reg.resolve_version(str(v1.id)).id == v1.id
    art = {a.precision: a for a in v1.artifacts}
    assert art["int8"].sha256 == sha256_hex(b"two")
    assert art["int8"].size == 3
    assert reg.artifact_blob(art["int8"].sha256) == b"two"
    assert v1.labels == ["a", "b"]
    with pytest.raises(NotFound):
        reg.resolve_version("p/m:3")
    with pytest.raises(InvalidInput, match="expected PROJECT/MODEL"):
        reg.resolve_version("just-a-name")


def test_a_failed_version_insert_leaves_no_rows(hub: Hub) -> None:
    reg = hub.registry
    model = reg.ensure_model("p", "m")
    dup = [NewArtifact("onnx", "fp32", b"a"), NewArtifact("onnx", "fp32", b"b")]  # same slot twice
    with pytest.raises(sqlite3.IntegrityError):
        reg.add_version(model.id, artifacts=dup, source="uploaded")
    assert reg.list_versions("p", "m") == []
    count = hub.db.conn.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0]
    assert count == 0


def test_artifact_store_is_content_addressed_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    digest = store.put(b"model bytes")
    assert digest == sha256_hex(b"model bytes")
    assert store.put(b"model bytes") == digest
    assert store.path_for(digest).read_bytes() == b"model bytes"
    files = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert files == [store.path_for(digest)]
    with pytest.raises(ValueError, match="not a sha256"):
        store.path_for("../../etc/passwd")


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.db")
    assert db.migrate() == MIGRATIONS[-1].version
    db.close()
    again = Database(tmp_path / "r.db")  # re-opening applies nothing twice
    rows = again.conn.execute("SELECT version FROM schema_migrations").fetchall()
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
    assert again.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_threads_get_distinct_version_numbers(hub: Hub) -> None:
    model = hub.registry.ensure_model("p", "m")
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for j in range(5):
                hub.registry.add_version(
                    model.id,
                    artifacts=[NewArtifact("onnx", "fp32", f"{i}-{j}".encode())],
                    source="uploaded",
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    numbers = [v.number for v in hub.registry.list_versions("p", "m")]
    assert numbers == list(range(1, 21))


def _process_writer(data_dir: str, tag: int) -> None:
    hub = Hub.open(HubSettings(data_dir=Path(data_dir)))
    model = hub.registry.ensure_model("shared", "m")
    for j in range(5):
        hub.registry.add_version(
            model.id,
            artifacts=[NewArtifact("onnx", "fp32", f"{tag}/{j}".encode())],
            source="uploaded",
        )
    hub.close()


def test_concurrent_processes_share_one_registry(tmp_path: Path) -> None:
    """Like several CLI invocations at once against one data dir."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_writer, args=(str(tmp_path), i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    reg = Registry(Database(tmp_path / "registry.db"), ArtifactStore(tmp_path / "artifacts"))
    versions = reg.list_versions("shared", "m")
    assert [v.number for v in versions] == list(range(1, 16))
    assert len({v.artifacts[0].sha256 for v in versions}) == 15
