"""The shared row mapper decodes JSON columns from real sqlite rows and dicts."""

from __future__ import annotations

import sqlite3

from pydantic import BaseModel

from cloud_hub.core.rows import model_from_row


class _Thing(BaseModel):
    name: str
    tags: list[str]
    meta: dict[str, int] | None = None


def test_model_from_sqlite_row_and_dict() -> None:
    db = sqlite3.connect(":memory:")
    db.row_factory = sqlite3.Row
    db.execute("CREATE TABLE t (name TEXT, tags TEXT, meta TEXT, extra INTEGER)")
    db.execute("""INSERT INTO t VALUES ('a', '["x","y"]', NULL, 3)""")
    row = db.execute("SELECT * FROM t").fetchone()
    thing = model_from_row(_Thing, row, json_fields=("tags", "meta"))
    assert thing == _Thing(name="a", tags=["x", "y"], meta=None)
    other = model_from_row(
        _Thing, {"name": "b", "tags": "[]", "meta": '{"k": 1}'}, ("tags", "meta"), name="c"
    )
    assert other == _Thing(name="c", tags=[], meta={"k": 1})
