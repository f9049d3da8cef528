"""The model registry: projects → models → versions → artifacts, experiments and runs.

All reads and writes go through here; the REST API, the CLI and the training pipeline share it.
Blobs go to the content-addressed store before the rows that name them are committed, so a crash
leaves at worst an unreferenced blob, never a row pointing at a missing file.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from cloud_hub.core.db import Database
from cloud_hub.core.errors import AlreadyExists, InvalidInput, NotFound
from cloud_hub.core.names import check_name
from cloud_hub.core.rows import model_from_row, row_dict
from cloud_hub.registry.artifacts import ArtifactStore
from cloud_hub.registry.schemas import (
    Artifact,
    Model,
    Project,
    Run,
    RunStep,
    Schedule,
    Version,
)
from cloud_hub.registry.signature import resolve_head, signature_from_model, stored_head


def process_id() -> str:
    """Who runs a run: host and pid (computed per call: a forked child has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _insert(db: sqlite_utils.Database, table: str, row: dict[str, Any]) -> int:
    """Insert one row and return its primary key."""
    pk = db.table(table).insert(row).last_pk
    assert isinstance(pk, int)
    return pk


def _is_id(ref: str | int) -> bool:
    return isinstance(ref, int) or ref.isdigit()


@dataclass
class NewArtifact:
    format: str
    precision: str
    data: bytes
    status: str = "ready"
    method: str | None = None
    signature: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def _fill_signatures(artifacts: list[NewArtifact]) -> None:
    """Every ready artifact gets its signature: one its maker did not give is read from the
    model (so its head is resolved against the real outputs, not guessed)."""
    for art in artifacts:
        if not art.signature and art.status == "ready":
            art.signature = signature_from_model(art.data, art.format)


class Registry:
    def __init__(self, db: Database, store: ArtifactStore) -> None:
        self.db = db
        self.store = store

    # -- projects ---------------------------------------------------------------------------
    def create_project(self, name: str, description: str = "") -> Project:
        check_name("project", name)
        with self.db.transaction() as db:
            try:
                pk = _insert(db, "projects", {"name": name, "description": description})
            except sqlite3.IntegrityError:
                raise AlreadyExists("project", name) from None
        return self.get_project(int(pk))

    def ensure_project(self, name: str) -> Project:
        try:
            return self.get_project(name)
        except NotFound:
            try:
                return self.create_project(name)
            except AlreadyExists:  # created by a concurrent writer meanwhile
                return self.get_project(name)

    def get_project(self, ref: str | int) -> Project:
        col = "id" if _is_id(ref) else "name"
        row = self.db.conn.execute(f"SELECT * FROM projects WHERE {col} = ?", [ref]).fetchone()
        if row is None:
            raise NotFound("project", ref)
        return model_from_row(Project, row)

    def list_projects(self) -> list[Project]:
        rows = self.db.conn.execute("SELECT * FROM projects ORDER BY id").fetchall()
        return [model_from_row(Project, r) for r in rows]

    # -- models -----------------------------------------------------------------------------
    _MODEL_SQL = """
        SELECT m.*, p.name AS project,
               (SELECT COUNT(*) FROM versions v WHERE v.model_id = m.id) AS version_count,
               (SELECT MAX(number) FROM versions v WHERE v.model_id = m.id) AS latest_version
        FROM models m JOIN projects p ON p.id = m.project_id"""

    def create_model(
        self, project: str | int, name: str, *, task: str = "classification", description: str = ""
    ) -> Model:
        check_name("model", name)
        proj = self.get_project(project)
        with self.db.transaction() as db:
            try:
                pk = _insert(
                    db,
                    "models",
                    {
                        "project_id": proj.id,
                        "name": name,
                        "task": task,
                        "description": description,
                    },
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("model", f"{proj.name}/{name}") from None
        return self.get_model_by_id(int(pk))

    def ensure_model(self, project: str, name: str) -> Model:
        self.ensure_project(project)
        try:
            return self.get_model(project, name)
        except NotFound:
            try:
                return self.create_model(project, name)
            except AlreadyExists:
                return self.get_model(project, name)

    def get_model(self, project: str | int, ref: str | int) -> Model:
        proj = self.get_project(project)
        col = "m.id" if _is_id(ref) else "m.name"
        row = self.db.conn.execute(
            f"{self._MODEL_SQL} WHERE m.project_id = ? AND {col} = ?", [proj.id, ref]
        ).fetchone()
        if row is None:
            raise NotFound("model", f"{proj.name}/{ref}")
        return model_from_row(Model, row)

    def get_model_by_id(self, model_id: int) -> Model:
        row = self.db.conn.execute(f"{self._MODEL_SQL} WHERE m.id = ?", [model_id]).fetchone()
        if row is None:
            raise NotFound("model", model_id)
        return model_from_row(Model, row)

    def list_models(self, project: str | int | None = None) -> list[Model]:
        if project is None:
            rows = self.db.conn.execute(f"{self._MODEL_SQL} ORDER BY m.id").fetchall()
        else:
            proj = self.get_project(project)
            rows = self.db.conn.execute(
                f"{self._MODEL_SQL} WHERE m.project_id = ? ORDER BY m.id", [proj.id]
            ).fetchall()
        return [model_from_row(Model, r) for r in rows]

    # -- versions and artifacts -------------------------------------------------------------
    def add_version(
        self,
        model_id: int,
        *,
        artifacts: list[NewArtifact],
        source: str,
        status: str = "ready",
        status_reason: str | None = None,
        parent_id: int | None = None,
        run_id: int | None = None,
        kind: str | None = None,
        metrics: dict[str, Any] | None = None,
        report: dict[str, Any] | None = None,
        preprocessing: dict[str, Any] | None = None,
        labels: list[str] | None = None,
        task: str | None = None,
        head: dict[str, Any] | None = None,
    ) -> Version:
        """Register a new version with its artifacts, all or nothing. Its task and head are
        resolved against the artifacts' signatures (`cloud_hub.registry.signature.resolve_head`: the
        default head when none is given); InvalidInput when the head does not fit."""
        if not artifacts:
            raise InvalidInput("a version needs at least one artifact")
        _fill_signatures(artifacts)
        task, head, labels = resolve_head(
            task=task, head=head, labels=labels, signatures=[a.signature for a in artifacts]
        )
        digests = [self.store.put(a.data) for a in artifacts]  # blobs first, rows after
        with self.db.transaction() as db:
            (latest,) = db.execute(
                "SELECT COALESCE(MAX(number), 0) FROM versions WHERE model_id = ?", [model_id]
            ).fetchone()
            version_id = _insert(
                db,
                "versions",
                {
                    "model_id": model_id,
                    "number": latest + 1,
                    "status": status,
                    "status_reason": status_reason,
                    "source": source,
                    "parent_id": parent_id,
                    "run_id": run_id,
                    "kind": kind,
                    "metrics": _json(metrics or {}),
                    "report": None if report is None else _json(report),
                    "preprocessing": None if preprocessing is None else _json(preprocessing),
                    "labels": _json(labels or []),
                    "task": task,
                    "head": None if head is None else _json(head),
                },
            )
            for art, digest in zip(artifacts, digests, strict=True):
                _insert(
                    db,
                    "artifacts",
                    {
                        "version_id": version_id,
                        "format": art.format,
                        "precision": art.precision,
                        "sha256": digest,
                        "size": len(art.data),
                        "status": art.status,
                        "method": art.method,
                        "signature": _json(art.signature),
                        "metrics": _json(art.metrics),
                    },
                )
        return self.get_version_by_id(int(version_id))

    def register_version(self, project: str, model: str, **kwargs: Any) -> Version:
        """Add a version to PROJECT/MODEL, creating both if needed, all in one transaction:
        if anything fails, neither the project, the model nor the version is left behind."""
        artifacts = kwargs.get("artifacts", [])
        _fill_signatures(artifacts)
        resolved = resolve_head(  # refused before a blob is stored
            task=kwargs.get("task"),
            head=kwargs.get("head"),
            labels=kwargs.get("labels"),
            signatures=[a.signature for a in artifacts],
        )
        kwargs["task"], kwargs["head"], kwargs["labels"] = resolved
        for art in artifacts:
            self.store.put(art.data)
        with self.db.transaction():
            mod = self.ensure_model(project, model)
            return self.add_version(mod.id, **kwargs)

    _VERSION_SQL = """
        SELECT v.*, m.name AS model, p.name AS project
        FROM versions v JOIN models m ON m.id = v.model_id JOIN projects p ON p.id = m.project_id"""

    def _version(self, row: sqlite3.Row) -> Version:
        data = row_dict(row, ("labels", "head", "metrics", "report", "preprocessing"))
        arts = self.db.conn.execute(
            "SELECT * FROM artifacts WHERE version_id = ? ORDER BY format, precision", [data["id"]]
        ).fetchall()
        artifacts = [
            model_from_row(
                Artifact,
                a,
                ("signature", "metrics"),
                download_url=f"/api/v1/artifacts/{a['sha256']}",
            )
            for a in arts
        ]
        head = data["head"]
        if head is None:  # registered before versions had heads: the default for its signature
            head = stored_head(data["task"], data["labels"], [a.signature for a in artifacts])
        return model_from_row(Version, data, head=head, artifacts=artifacts)

    def update_version_metadata(
        self,
        version_id: int,
        *,
        task: str,
        head: dict[str, Any] | None,
        labels: list[str],
        preprocessing: dict[str, Any] | None,
    ) -> Version:
        """Store a version's new task, head, labels and preprocessing (checked by the caller:
        `cloud_hub.registry.uploads.update_version`); its artifacts never change."""
        with self.db.transaction() as db:
            cur = db.execute(
                "UPDATE versions SET task = ?, head = ?, labels = ?, preprocessing = ? "
                "WHERE id = ?",
                [
                    task,
                    None if head is None else _json(head),
                    _json(labels),
                    None if preprocessing is None else _json(preprocessing),
                    version_id,
                ],
            )
            if cur.rowcount == 0:
                raise NotFound("version", version_id)
        return self.get_version_by_id(version_id)

    def get_version_by_id(self, version_id: int) -> Version:
        row = self.db.conn.execute(f"{self._VERSION_SQL} WHERE v.id = ?", [version_id]).fetchone()
        if row is None:
            raise NotFound("version", version_id)
        return self._version(row)

    def get_version(self, project: str | int, model: str | int, number: int | str) -> Version:
        mod = self.get_model(project, model)
        if number == "latest":
            if mod.latest_version is None:
                raise NotFound("version", f"{mod.project}/{mod.name}:latest")
            number = mod.latest_version
        row = self.db.conn.execute(
            f"{self._VERSION_SQL} WHERE v.model_id = ? AND v.number = ?", [mod.id, int(number)]
        ).fetchone()
        if row is None:
            raise NotFound("version", f"{mod.project}/{mod.name}:{number}")
        return self._version(row)

    def resolve_version(self, ref: str) -> Version:
        """`PROJECT/MODEL[:N|:latest]` or a numeric version id."""
        if ref.isdigit():
            return self.get_version_by_id(int(ref))
        path, _, number = ref.partition(":")
        project, sep, model = path.partition("/")
        if not sep or not project or not model:
            raise InvalidInput(
                f"version reference {ref!r}: expected PROJECT/MODEL[:VERSION] or an id"
            )
        if number and not (number.isdigit() or number == "latest"):
            raise InvalidInput(f"version reference {ref!r}: version must be a number or 'latest'")
        return self.get_version(project, model, number or "latest")

    def list_versions(self, project: str | int, model: str | int) -> list[Version]:
        mod = self.get_model(project, model)
        rows = self.db.conn.execute(
            f"{self._VERSION_SQL} WHERE v.model_id = ? ORDER BY v.number", [mod.id]
        ).fetchall()
        return [self._version(r) for r in rows]

    def artifact_blob(self, sha256: str) -> bytes:
        """The bytes of a registered artifact (only blobs that an artifact row names)."""
        row = self.db.conn.execute(
            "SELECT 1 FROM artifacts WHERE sha256 = ? LIMIT 1", [sha256]
        ).fetchone()
        if row is None:
            raise NotFound("artifact", sha256)
        try:
            return self.store.get(sha256)
        except KeyError:
            raise NotFound("artifact file", sha256) from None

    # -- experiments and runs ---------------------------------------------------------------
    def ensure_experiment(self, project_id: int, name: str) -> int:
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT id FROM experiments WHERE project_id = ? AND name = ?", [project_id, name]
            ).fetchone()
            if row is not None:
                return int(row[0])
            return _insert(db, "experiments", {"project_id": project_id, "name": name})

    def create_run(
        self,
        *,
        project: str,
        experiment: str,
        request: dict[str, Any],
        params: dict[str, Any],
        steps: list[str],
        parent_run_id: int | None = None,
        schedule_id: int | None = None,
        attempt: int = 1,
    ) -> Run:
        proj = self.ensure_project(project)
        exp_id = self.ensure_experiment(proj.id, experiment)
        with self.db.transaction() as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM runs WHERE experiment_id = ?", [exp_id]
            ).fetchone()
            name = f"{proj.name}.{experiment}.{count + 1}"
            run_id = _insert(
                db,
                "runs",
                {
                    "experiment_id": exp_id,
                    "name": name,
                    "request": _json(request),
                    "params": _json(params),
                    "status": "queued",
                    "parent_run_id": parent_run_id,
                    "schedule_id": schedule_id,
                    "attempt": attempt,
                    "owner": process_id(),
                },
            )
            for position, step in enumerate(steps):
                _insert(
                    db,
                    "run_steps",
                    {"run_id": run_id, "position": position, "step": step, "status": "pending"},
                )
        return self.get_run(int(run_id))

    def claim_run(self, run_id: int) -> None:
        """Mark this process as the one running `run_id`."""
        self.update_run(run_id, owner=process_id())

    def fail_orphaned_runs(self) -> list[int]:
        """Runs left queued or running by a process of this host that has ended are marked
        failed at the step they were in, so they can be resumed. Returns their ids."""
        host = socket.gethostname()
        rows = self.db.conn.execute(
            "SELECT id, owner FROM runs WHERE status IN ('queued', 'running') AND owner LIKE ?",
            [f"{host}:%"],
        ).fetchall()
        failed = []
        for row in rows:
            pid = int(row["owner"].rsplit(":", 1)[1])
            if _pid_alive(pid):
                continue
            with self.db.transaction() as db:
                step = db.execute(
                    "SELECT step FROM run_steps WHERE run_id = ? AND status IN ('running', "
                    "'pending') ORDER BY position LIMIT 1",
                    [row["id"]],
                ).fetchone()
                step_name = step["step"] if step else None
                message = f"interrupted: process {pid} ended while the run was at {step_name}"
                db.execute(
                    "UPDATE runs SET status = 'failed', failed_step = ?, error = ?, "
                    "finished_at = ? WHERE id = ? AND status IN ('queued', 'running')",
                    [step_name, message, utcnow(), row["id"]],
                )
                db.execute(
                    "UPDATE run_steps SET status = 'failed', error = ? "
                    "WHERE run_id = ? AND status = 'running'",
                    [message, row["id"]],
                )
            failed.append(int(row["id"]))
        return failed

    def update_run(self, run_id: int, **fields: Any) -> None:
        for key in ("params", "metrics", "request"):
            if key in fields:
                fields[key] = _json(fields[key])
        with self.db.transaction() as db:
            db.table("runs").update(run_id, fields)

    def update_step(self, run_id: int, step: str, **fields: Any) -> None:
        if "outputs" in fields:
            fields["outputs"] = _json(fields["outputs"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.db.transaction() as db:
            db.execute(
                f"UPDATE run_steps SET {sets} WHERE run_id = ? AND step = ?",
                [*fields.values(), run_id, step],
            )

    _RUN_SQL = """
        SELECT r.*, e.name AS experiment, p.name AS project
        FROM runs r JOIN experiments e ON e.id = r.experiment_id
        JOIN projects p ON p.id = e.project_id"""

    def _run(self, row: sqlite3.Row) -> Run:
        data = dict(row)
        steps = self.db.conn.execute(
            "SELECT * FROM run_steps WHERE run_id = ? ORDER BY position", [data["id"]]
        ).fetchall()
        return model_from_row(
            Run,
            data,
            ("request", "params", "metrics"),
            steps=[model_from_row(RunStep, step, ("outputs",)) for step in steps],
        )

    def get_run(self, ref: str | int) -> Run:
        col = "r.id" if _is_id(ref) else "r.name"
        row = self.db.conn.execute(f"{self._RUN_SQL} WHERE {col} = ?", [ref]).fetchone()
        if row is None:
            raise NotFound("run", ref)
        return self._run(row)

    def step_cache(self, run_id: int) -> dict[str, str | None]:
        rows = self.db.conn.execute(
            "SELECT step, cache_sha256 FROM run_steps WHERE run_id = ? ORDER BY position",
            [run_id],
        ).fetchall()
        return {r["step"]: r["cache_sha256"] for r in rows}

    def list_runs(
        self,
        *,
        project: str | None = None,
        status: str | None = None,
        schedule_id: int | None = None,
        limit: int = 100,
    ) -> list[Run]:
        where: list[str] = []
        args: list[Any] = []
        if project is not None:
            where.append("p.id = ?")
            args.append(self.get_project(project).id)
        if status is not None:
            where.append("r.status = ?")
            args.append(status)
        if schedule_id is not None:
            where.append("r.schedule_id = ?")
            args.append(schedule_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.conn.execute(
            f"{self._RUN_SQL}{clause} ORDER BY r.id DESC LIMIT ?", [*args, limit]
        ).fetchall()
        return [self._run(r) for r in rows]

    # -- schedules --------------------------------------------------------------------------
    def create_schedule(
        self,
        *,
        name: str,
        cron: str,
        request: dict[str, Any],
        next_run_at: str,
        max_retries: int,
        backoff_s: float,
    ) -> Schedule:
        check_name("schedule", name)
        with self.db.transaction() as db:
            try:
                pk = _insert(
                    db,
                    "schedules",
                    {
                        "name": name,
                        "cron": cron,
                        "request": _json(request),
                        "next_run_at": next_run_at,
                        "max_retries": max_retries,
                        "backoff_s": backoff_s,
                    },
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("schedule", name) from None
        return self.get_schedule(int(pk))

    def _schedule(self, row: sqlite3.Row) -> Schedule:
        return model_from_row(
            Schedule,
            row,
            ("request",),
            enabled=bool(row["enabled"]),
            running=row["claimed_by"] is not None,
        )

    def get_schedule(self, ref: str | int) -> Schedule:
        col = "id" if _is_id(ref) else "name"
        row = self.db.conn.execute(f"SELECT * FROM schedules WHERE {col} = ?", [ref]).fetchone()
        if row is None:
            raise NotFound("schedule", ref)
        return self._schedule(row)

    def list_schedules(self) -> list[Schedule]:
        rows = self.db.conn.execute("SELECT * FROM schedules ORDER BY id").fetchall()
        return [self._schedule(r) for r in rows]

    def delete_schedule(self, ref: str | int) -> None:
        sched = self.get_schedule(ref)
        with self.db.transaction() as db:
            db.execute("UPDATE runs SET schedule_id = NULL WHERE schedule_id = ?", [sched.id])
            db.execute("DELETE FROM schedules WHERE id = ?", [sched.id])

    def claim_due_schedule(self, now: str, worker: str, stale_before: str) -> Schedule | None:
        """Atomically claim one due schedule that nobody runs (or whose claim went stale)."""
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT * FROM schedules WHERE enabled = 1 AND next_run_at <= ? "
                "AND (claimed_by IS NULL OR claimed_at < ?) ORDER BY next_run_at LIMIT 1",
                [now, stale_before],
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE schedules SET claimed_by = ?, claimed_at = ? WHERE id = ?",
                [worker, now, row["id"]],
            )
        return self.get_schedule(int(row["id"]))

    def heartbeat_schedule(self, schedule_id: int, worker: str, now: str) -> None:
        with self.db.transaction() as db:
            db.execute(
                "UPDATE schedules SET claimed_at = ? WHERE id = ? AND claimed_by = ?",
                [now, schedule_id, worker],
            )

    def release_schedule(
        self, schedule_id: int, worker: str, *, next_run_at: str, run_id: int | None, status: str
    ) -> None:
        with self.db.transaction() as db:
            db.execute(
                "UPDATE schedules SET claimed_by = NULL, claimed_at = NULL, next_run_at = ?, "
                "last_run_id = ?, last_status = ? WHERE id = ? AND claimed_by = ?",
                [next_run_at, run_id, status, schedule_id, worker],
            )


# -- versions for the modules that only name them (monitoring's windows and alert rules) --------
def version_exists(conn: sqlite3.Connection, version_id: int) -> bool:
    return conn.execute("SELECT id FROM versions WHERE id = ?", [version_id]).fetchone() is not None


def version_id_by_name(
    conn: sqlite3.Connection, project: str, model: str, number: int
) -> int | None:
    """The id of version `number` of `project/model` (None: there is none)."""
    row = conn.execute(
        "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id "
        "JOIN projects p ON p.id = m.project_id "
        "WHERE p.name = ? AND m.name = ? AND v.number = ?",
        [project, model, number],
    ).fetchone()
    return None if row is None else int(row[0])


def version_labels(conn: sqlite3.Connection, version_id: int) -> list[str] | None:
    """The version's class labels (None: no such version)."""
    row = conn.execute("SELECT labels FROM versions WHERE id = ?", [version_id]).fetchone()
    return None if row is None else list(json.loads(row[0]))


def version_ref(conn: sqlite3.Connection, version_id: int) -> str | None:
    """`project/model:N` of the version (None: no such version)."""
    row = conn.execute(
        "SELECT p.name, m.name, v.number FROM versions v "
        "JOIN models m ON m.id = v.model_id JOIN projects p ON p.id = m.project_id "
        "WHERE v.id = ?",
        [version_id],
    ).fetchone()
    return None if row is None else f"{row[0]}/{row[1]}:{row[2]}"


def artifact_files(
    conn: sqlite3.Connection, artifact_ids: Iterable[int | None]
) -> dict[int, sqlite3.Row]:
    """id -> (id, format, precision, sha256, size) of each of the artifacts that exists."""
    ids = sorted({int(i) for i in artifact_ids if i is not None})
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = conn.execute(
        f"SELECT id, format, precision, sha256, size FROM artifacts WHERE id IN ({marks})", ids
    ).fetchall()
    return {int(r["id"]): r for r in rows}
