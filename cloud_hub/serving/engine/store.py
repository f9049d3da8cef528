"""Endpoint specs in the hub's SQLite database."""

from __future__ import annotations

import builtins
import json
import sqlite3

from pydantic import BaseModel

from cloud_hub.core.db import Database
from cloud_hub.core.errors import AlreadyExists, NotFound
from cloud_hub.core.rows import model_from_row
from cloud_hub.predlog import reports
from cloud_hub.predlog.reports import AbReport, Metric, ShadowReport
from cloud_hub.registry.registry import utcnow
from cloud_hub.serving.engine.params import EndpointParams
from cloud_hub.serving.engine.spec import EndpointSpec


class StoredEndpoint(BaseModel):
    name: str
    spec: EndpointSpec
    created_at: str
    updated_at: str


class EndpointStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _row(self, row: sqlite3.Row) -> StoredEndpoint:
        return model_from_row(StoredEndpoint, row, ("spec",))

    def create(self, spec: EndpointSpec) -> StoredEndpoint:
        with self.db.transaction() as db:
            try:
                now = utcnow()  # one format for both stamps: they are compared as text
                db.execute(
                    "INSERT INTO endpoints (name, spec, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?)",
                    [spec.name, spec.model_dump_json(), now, now],
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("endpoint", spec.name) from None
        return self.get(spec.name)

    def update(self, spec: EndpointSpec) -> StoredEndpoint:
        with self.db.transaction() as db:
            cur = db.execute(
                "UPDATE endpoints SET spec = ?, updated_at = ? WHERE name = ?",
                [spec.model_dump_json(), utcnow(), spec.name],
            )
            if cur.rowcount == 0:
                raise NotFound("endpoint", spec.name)
        return self.get(spec.name)

    def get(self, name: str) -> StoredEndpoint:
        row = self.db.conn.execute("SELECT * FROM endpoints WHERE name = ?", [name]).fetchone()
        if row is None:
            raise NotFound("endpoint", name)
        return self._row(row)

    def exists(self, name: str) -> bool:
        row = self.db.conn.execute("SELECT 1 FROM endpoints WHERE name = ?", [name]).fetchone()
        return row is not None

    def list(self) -> list[StoredEndpoint]:
        rows = self.db.conn.execute("SELECT * FROM endpoints ORDER BY name").fetchall()
        return [self._row(r) for r in rows]

    def delete(self, name: str) -> None:
        with self.db.transaction() as db:
            cur = db.execute("DELETE FROM endpoints WHERE name = ?", [name])
            if cur.rowcount == 0:
                raise NotFound("endpoint", name)
            db.execute("DELETE FROM endpoint_params WHERE endpoint = ?", [name])

    # -- run-time parameters ----------------------------------------------------------------
    def get_params(self, name: str) -> tuple[EndpointParams, str | None]:
        row = self.db.conn.execute(
            "SELECT params, updated_at FROM endpoint_params WHERE endpoint = ?", [name]
        ).fetchone()
        if row is None:
            return EndpointParams(), None
        return EndpointParams.model_validate(json.loads(row["params"])), row["updated_at"]

    def set_params(self, name: str, params: EndpointParams) -> str:
        with self.db.transaction() as db:
            if not self.exists(name):
                raise NotFound("endpoint", name)
            now = utcnow()
            db.execute(
                "INSERT INTO endpoint_params (endpoint, params, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (endpoint) DO UPDATE SET params = excluded.params, "
                "updated_at = excluded.updated_at",
                [name, params.model_dump_json(), now],
            )
        return now

    # -- reports from the endpoint's prediction log ------------------------------------------
    def ab_report(
        self, name: str, metric: Metric, *, since: float | None, order: builtins.list[str] | None
    ) -> AbReport:
        """The online A/B of the endpoint's variants (`predlog.reports.ab_report`)."""
        return reports.ab_report(self.db, name, metric, since=since, order=order)

    def shadow_report(self, name: str, *, since: float | None) -> ShadowReport:
        """Its shadow candidates against the primary (`predlog.reports.shadow_report`)."""
        return reports.shadow_report(self.db, name, since=since)

    def params_stamps(self) -> dict[str, str]:
        rows = self.db.conn.execute("SELECT endpoint, updated_at FROM endpoint_params")
        return {r["endpoint"]: r["updated_at"] for r in rows}
