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
    Migration(
        3,
        "fleet: devices, deployments and per-device rollout state, inference logs, telemetry",
        (
            f"""CREATE TABLE devices (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                hardware TEXT NOT NULL DEFAULT '',
                runtimes TEXT NOT NULL DEFAULT '[]',
                tags TEXT NOT NULL DEFAULT '[]',
                group_name TEXT,
                password_hash TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'unknown'
                    CHECK (status IN ('unknown', 'online', 'offline')),
                agent_version TEXT,
                reported_runtimes TEXT NOT NULL DEFAULT '[]',
                last_seen TEXT,
                active_version_id INTEGER,
                desired_version_id INTEGER REFERENCES versions(id),
                desired_deployment_id INTEGER REFERENCES deployments(id),
                desired_artifact_id INTEGER REFERENCES artifacts(id),
                acked_upto INTEGER NOT NULL DEFAULT 0,
                rejected INTEGER NOT NULL DEFAULT 0,
                last_reason TEXT,
                created_at TEXT NOT NULL DEFAULT {NOW})""",
            f"""CREATE TABLE deployments (
                id INTEGER PRIMARY KEY,
                version_id INTEGER NOT NULL REFERENCES versions(id),
                artifact TEXT NOT NULL DEFAULT 'best',
                target_kind TEXT NOT NULL CHECK (target_kind IN ('device', 'tag', 'group')),
                target TEXT NOT NULL,
                strategy TEXT NOT NULL CHECK (strategy IN ('all_at_once', 'canary')),
                canary_count INTEGER,
                canary_percent REAL,
                failure_threshold REAL NOT NULL DEFAULT 0.5,
                promote_after_s REAL NOT NULL DEFAULT 0,
                threads INTEGER NOT NULL DEFAULT 1,
                probation TEXT NOT NULL DEFAULT '{{}}',
                params TEXT NOT NULL DEFAULT '{{}}',
                status TEXT NOT NULL CHECK (status IN
                    ('canary', 'rolling_out', 'completed', 'halted', 'superseded')),
                reason TEXT,
                created_at TEXT NOT NULL DEFAULT {NOW},
                updated_at TEXT NOT NULL DEFAULT {NOW})""",
            f"""CREATE TABLE deployment_devices (
                deployment_id INTEGER NOT NULL REFERENCES deployments(id),
                device_id TEXT NOT NULL REFERENCES devices(id),
                phase TEXT NOT NULL CHECK (phase IN ('canary', 'rest')),
                state TEXT NOT NULL CHECK (state IN ('waiting', 'pending', 'transferring',
                    'verified', 'active', 'failed', 'rolled_back', 'superseded')),
                artifact_id INTEGER REFERENCES artifacts(id),
                reason TEXT,
                received_bytes INTEGER NOT NULL DEFAULT 0,
                published_at TEXT,
                active_since TEXT,
                updated_at TEXT NOT NULL DEFAULT {NOW},
                PRIMARY KEY (deployment_id, device_id))""",
            "CREATE INDEX deployment_devices_device ON deployment_devices (device_id)",
            "CREATE INDEX deployment_devices_pending ON deployment_devices (state, published_at)",
            """CREATE TABLE inference_logs (
                device_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                request_id TEXT NOT NULL,
                model_version INTEGER,
                input_digest TEXT NOT NULL,
                output TEXT NOT NULL,
                latency_ms REAL NOT NULL,
                ts REAL NOT NULL,
                source TEXT NOT NULL,
                PRIMARY KEY (device_id, seq)) WITHOUT ROWID""",
            """CREATE TABLE telemetry (
                device_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                ts REAL NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (device_id, seq)) WITHOUT ROWID""",
        ),
    ),
    Migration(
        4,
        "serving: endpoint specs, loaded when the hub starts",
        (
            f"""CREATE TABLE endpoints (
                name TEXT PRIMARY KEY,
                spec TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT {NOW},
                updated_at TEXT NOT NULL DEFAULT {NOW})""",
        ),
    ),
)
