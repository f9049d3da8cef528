"""Each table of the hub's database is read and written by one store module."""

from __future__ import annotations

from cloud_hub.devtools.tables import migration_tables, table_owners


def test_every_migration_table_is_listed_sorted() -> None:
    owners = table_owners()
    assert list(owners) == migration_tables()
    assert "devices" in owners and "inference_logs_v10" not in owners
    assert all(modules == sorted(modules) for modules in owners.values())


def test_each_table_has_exactly_one_owner_module() -> None:
    """A table's SQL lives in its store: any other module asks that store (issue 13)."""
    shared = {t: m for t, m in table_owners().items() if len(m) != 1}
    assert shared == {}
