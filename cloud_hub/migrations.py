"""The registry's schema, as explicit numbered migrations. Append; never edit a shipped one."""

from __future__ import annotations

from dataclasses import dataclass

NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ','now'))"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "registry: projects, models, versions, artifacts, experiments, runs, schedules",
        (
            f"""CREATE TABLE projects (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                description TEXT NOT NULL DEFAULT '',
                created_at TEXT NOT NULL DEFAULT {NOW})""",
            f"""CREATE TABLE models (
                id INTEGER PRIMARY KEY,
                project_id INTEGER NOT NULL REFERENCES projects(id),
                name TEXT NOT NULL,
                task TEXT NOT NULL DEFAULT 'classification',
                description TEXT NOT NULL DEFAULT '',
                created_at TEXT NOT NULL DEFAULT {NOW},
                UNIQUE (project_id, name))""",
            f"""CREATE TABLE versions (
                id INTEGER PRIMARY KEY,
                model_id INTEGER NOT NULL REFERENCES models(id),
                number INTEGER NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('ready', 'failed')),
                source TEXT NOT NULL CHECK (source IN ('trained', 'uploaded', 'converted')),
                parent_id INTEGER REFERENCES versions(id),
                run_id INTEGER REFERENCES runs(id),
                kind TEXT,
                metrics TEXT NOT NULL DEFAULT '{{}}',
                report TEXT,
                preprocessing TEXT,
                labels TEXT NOT NULL DEFAULT '[]',
                status_reason TEXT,
                created_at TEXT NOT NULL DEFAULT {NOW},
                UNIQUE (model_id, number))""",
            f"""CREATE TABLE artifacts (
                id INTEGER PRIMARY KEY,
                version_id INTEGER NOT NULL REFERENCES versions(id),
                format TEXT NOT NULL CHECK (format IN ('onnx', 'tflite')),
                precision TEXT NOT NULL CHECK (precision IN ('fp32', 'int8')),
                sha256 TEXT NOT NULL,
                size INTEGER NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('ready', 'failed')),
                method TEXT,
                signature TEXT NOT NULL DEFAULT '{{}}',
                metrics TEXT NOT NULL DEFAULT '{{}}',
                created_at TEXT NOT NULL DEFAULT {NOW},
                UNIQUE (version_id, format, precision))""",
            "CREATE INDEX artifacts_sha256 ON artifacts (sha256)",
            f"""CREATE TABLE experiments (
                id INTEGER PRIMARY KEY,
                project_id INTEGER NOT NULL REFERENCES projects(id),
                name TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT {NOW},
                UNIQUE (project_id, name))""",
            f"""CREATE TABLE runs (
                id INTEGER PRIMARY KEY,
                experiment_id INTEGER NOT NULL REFERENCES experiments(id),
                name TEXT NOT NULL UNIQUE,
                request TEXT NOT NULL,
                params TEXT NOT NULL DEFAULT '{{}}',
                metrics TEXT NOT NULL DEFAULT '{{}}',
                status TEXT NOT NULL
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
                failed_step TEXT,
                error TEXT,
                version_id INTEGER REFERENCES versions(id),
                parent_run_id INTEGER REFERENCES runs(id),
                schedule_id INTEGER REFERENCES schedules(id),
                attempt INTEGER NOT NULL DEFAULT 1,
                created_at TEXT NOT NULL DEFAULT {NOW},
                started_at TEXT,
                finished_at TEXT)""",
            """CREATE TABLE run_steps (
                id INTEGER PRIMARY KEY,
                run_id INTEGER NOT NULL REFERENCES runs(id),
                position INTEGER NOT NULL,
                step TEXT NOT NULL,
                status TEXT NOT NULL
                    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cached')),
                outputs TEXT NOT NULL DEFAULT '{}',
                cache_sha256 TEXT,
                error TEXT,
                started_at TEXT,
                finished_at TEXT,
                duration_s REAL,
                UNIQUE (run_id, step))""",
            f"""CREATE TABLE schedules (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                cron TEXT NOT NULL,
                request TEXT NOT NULL,
                enabled INTEGER NOT NULL DEFAULT 1,
                max_retries INTEGER NOT NULL DEFAULT 3,
                backoff_s REAL NOT NULL DEFAULT 30,
                next_run_at TEXT NOT NULL,
                claimed_by TEXT,
                claimed_at TEXT,
                last_run_id INTEGER,
                last_status TEXT,
                created_at TEXT NOT NULL DEFAULT {NOW})""",
        ),
    ),
    Migration(
        2,
        "runs: the process that runs them, so a run orphaned by a killed process is found",
        ("ALTER TABLE runs ADD COLUMN owner TEXT",),
    ),
)
