"""Each table of the hub's database is read and written by one store module."""

from __future__ import annotations

from cloud_hub.devtools.tables import migration_tables, table_owners


def test_every_migration_table_is_listed_sorted() -> None:
    owners = table_owners()
    assert list(owners) == migration_tables()
    assert "devices" in owners and "inference_logs_v10" not in owners
    assert all(modules == sorted(modules) for modules in owners.values())


# Tables still read or written outside their owner store (issue 13). This list only shrinks: when
# a table's SQL moves into its store, remove it here; the goal is an empty set.
STILL_SHARED = frozenset(
    [
        "batch_predictions",
        "serving_jobs",
        "versions",
    ]
)


def test_each_table_has_exactly_one_owner_module() -> None:
    shared = {t for t, m in table_owners().items() if len(m) != 1}
    assert shared <= STILL_SHARED, sorted(shared - STILL_SHARED)
    assert all(len(m) == 1 for t, m in table_owners().items() if t not in STILL_SHARED)
