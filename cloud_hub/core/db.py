"""SQLite access for the hub: one connection per thread, WAL mode, explicit versioned migrations.

sqlite3 connections may not cross threads, and FastAPI runs sync routes on a thread pool, so each
thread gets its own connection. WAL lets readers run beside one writer; writers serialise through
`BEGIN IMMEDIATE` with a busy timeout, which also makes concurrent CLI processes safe.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from cloud_hub.core.migrations import MIGRATIONS

BUSY_TIMEOUT_S = 30.0


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.migrate()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            # a thread that ended never uses its connection again: close it, or a process
            # whose threads come and go (request workers, services started and stopped) keeps
            # two file descriptors per thread it ever had, past select()'s limit of 1024
            alive = []
            for thread, old in self._all:
                if thread.is_alive():
                    alive.append((thread, old))
                else:
                    with contextlib.suppress(sqlite3.ProgrammingError):
                        old.close()
            alive.append((threading.current_thread(), conn))
            self._all = alive
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over this thread's connection."""
        wrapped: sqlite_utils.Database | None = getattr(self._local, "db", None)
        if wrapped is None:
            wrapped = sqlite_utils.Database(self.conn)
            self._local.db = wrapped
        return wrapped

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction: taken at once (BEGIN IMMEDIATE), committed or rolled back whole."""
        conn = self.conn
        if conn.in_transaction:  # nested use joins the outer transaction
            yield self.db
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def migrate(self) -> int:
        """Apply pending migrations in order; returns the schema version now in force."""
        with self.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL "
                "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
            )
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for migration in MIGRATIONS:
                if migration.version in done:
                    continue
                for statement in migration.statements:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                    [migration.version, migration.name],
                )
            row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        with self._lock:
            for _, conn in self._all:
                with contextlib.suppress(sqlite3.ProgrammingError):  # closed elsewhere
                    conn.close()
            self._all.clear()
        self._local = threading.local()
