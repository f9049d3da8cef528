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
    Migration(
        5,
        "serving: the job queue (async predictions, deferred steps, batches) and batch results",
        (
            f"""CREATE TABLE serving_jobs (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL CHECK (kind IN ('predict', 'batch')),
                endpoint TEXT NOT NULL,
                step TEXT,
                request TEXT NOT NULL,
                state TEXT NOT NULL
                    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
                attempts INTEGER NOT NULL DEFAULT 0,
                max_attempts INTEGER NOT NULL DEFAULT 3,
                not_before TEXT NOT NULL DEFAULT {NOW},
                owner TEXT,
                lease_until TEXT,
                history TEXT NOT NULL DEFAULT '[]',
                early TEXT,
                result TEXT,
                error TEXT,
                done INTEGER NOT NULL DEFAULT 0,
                total INTEGER,
                next_job TEXT,
                created_at TEXT NOT NULL DEFAULT {NOW},
                started_at TEXT,
                finished_at TEXT)""",
            "CREATE INDEX serving_jobs_queue ON serving_jobs (state, not_before)",
            "CREATE INDEX serving_jobs_endpoint ON serving_jobs (endpoint, kind)",
            f"""CREATE TABLE batch_predictions (
                source TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                row_id TEXT NOT NULL,
                job_id TEXT NOT NULL,
                label TEXT NOT NULL,
                score REAL NOT NULL,
                scores TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT {NOW},
                PRIMARY KEY (source, endpoint, row_id)) WITHOUT ROWID""",
            "CREATE INDEX batch_predictions_job ON batch_predictions (job_id)",
        ),
    ),
    Migration(
        6,
        "fleet: shadow candidates and serving parameters at the edge; log roles",
        (
            "ALTER TABLE deployments ADD COLUMN shadow_version_id INTEGER REFERENCES versions(id)",
            "ALTER TABLE deployments ADD COLUMN shadow_artifact TEXT",
            "ALTER TABLE deployments ADD COLUMN params_rev INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE deployments ADD COLUMN promoted_to INTEGER REFERENCES deployments(id)",
            "ALTER TABLE deployments ADD COLUMN promoted_from INTEGER REFERENCES deployments(id)",
            "ALTER TABLE deployment_devices ADD COLUMN shadow_artifact_id INTEGER "
            "REFERENCES artifacts(id)",
            "ALTER TABLE deployment_devices ADD COLUMN shadow_state TEXT",
            "ALTER TABLE deployment_devices ADD COLUMN shadow_reason TEXT",
            "ALTER TABLE deployment_devices ADD COLUMN params_rev INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE inference_logs ADD COLUMN role TEXT NOT NULL DEFAULT 'active'",
            "ALTER TABLE inference_logs ADD COLUMN thresholded INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX inference_logs_request ON inference_logs (device_id, request_id)",
        ),
    ),
    Migration(
        7,
        "prediction log (every prediction of every endpoint, one record per row) and the "
        "endpoints' run-time parameters",
        (
            """CREATE TABLE prediction_logs (
                id INTEGER PRIMARY KEY,
                ts REAL NOT NULL,
                request_id TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                step TEXT,
                role TEXT NOT NULL DEFAULT 'answer',
                model_version INTEGER,
                variant TEXT,
                row INTEGER NOT NULL DEFAULT 0,
                input_digest TEXT,
                label TEXT,
                score REAL,
                output TEXT,
                latency_ms REAL,
                outcome TEXT NOT NULL,
                error TEXT,
                tags TEXT,
                features TEXT)""",
            "ALTER TABLE inference_logs ADD COLUMN features TEXT",
            "CREATE INDEX prediction_logs_endpoint ON prediction_logs (endpoint, ts)",
            "CREATE INDEX prediction_logs_request ON prediction_logs (request_id)",
            "CREATE INDEX prediction_logs_version ON prediction_logs (model_version, ts)",
            "CREATE INDEX prediction_logs_ts ON prediction_logs (ts)",
            "CREATE INDEX inference_logs_ts ON inference_logs (ts)",
            "CREATE INDEX inference_logs_version ON inference_logs (model_version, ts)",
            "CREATE INDEX inference_logs_device_ts ON inference_logs (device_id, ts)",
            f"""CREATE TABLE endpoint_params (
                endpoint TEXT PRIMARY KEY,
                params TEXT NOT NULL,
                updated_at TEXT NOT NULL DEFAULT {NOW})""",
        ),
    ),
    Migration(
        8,
        "monitoring: training baselines of versions, alert rules and alerts",
        (
            f"""CREATE TABLE baselines (
                version_id INTEGER PRIMARY KEY REFERENCES versions(id),
                source TEXT NOT NULL,
                samples INTEGER NOT NULL,
                data TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT {NOW})""",
            f"""CREATE TABLE alert_rules (
                id INTEGER PRIMARY KEY,
                name TEXT,
                metric TEXT NOT NULL,
                threshold REAL NOT NULL,
                scope TEXT NOT NULL CHECK (scope IN ('all', 'version', 'endpoint', 'device')),
                target TEXT,
                window_s REAL NOT NULL,
                last_n INTEGER,
                min_count INTEGER NOT NULL,
                created_at TEXT NOT NULL DEFAULT {NOW})""",
            f"""CREATE TABLE alerts (
                id INTEGER PRIMARY KEY,
                rule TEXT NOT NULL,
                metric TEXT NOT NULL,
                scope TEXT NOT NULL CHECK (scope IN ('version', 'endpoint', 'device')),
                target TEXT NOT NULL,
                threshold REAL NOT NULL,
                value REAL NOT NULL,
                last_value REAL NOT NULL,
                count INTEGER NOT NULL,
                message TEXT NOT NULL,
                opened_at TEXT NOT NULL DEFAULT {NOW},
                resolved_at TEXT,
                resolution TEXT)""",
            "CREATE UNIQUE INDEX alerts_open ON alerts (rule, scope, target) "
            "WHERE resolved_at IS NULL",
            "CREATE INDEX alerts_opened ON alerts (opened_at)",
        ),
    ),
    Migration(
        9,
        "auth: API tokens (hashed), their role, expiry and last use",
        (
            f"""CREATE TABLE api_tokens (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
                token_hash TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                expires_at TEXT,
                last_used_at TEXT,
                revoked_at TEXT,
                created_at TEXT NOT NULL DEFAULT {NOW})""",
            "CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) "
            "WHERE revoked_at IS NULL",
        ),
    ),
    Migration(
        10,
        "fleet: logs and telemetry keyed by (device, outbox epoch, seq), contiguous marks per "
        "epoch (device_epochs; devices.acked_upto is no longer used)",
        (
            # Everything stored so far came from agents before epochs: epoch '' (legacy). A
            # device's mark moves to its '' epoch.
            f"""CREATE TABLE device_epochs (
                id INTEGER PRIMARY KEY,
                device_id TEXT NOT NULL,
                epoch TEXT NOT NULL,
                acked_upto INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL DEFAULT {NOW},
                updated_at TEXT NOT NULL DEFAULT {NOW},
                UNIQUE (device_id, epoch))""",
            "INSERT INTO device_epochs (device_id, epoch, acked_upto) "
            "SELECT d.id, '', d.acked_upto FROM devices d WHERE d.acked_upto > 0 "
            "OR EXISTS (SELECT 1 FROM inference_logs l WHERE l.device_id = d.id) "
            "OR EXISTS (SELECT 1 FROM telemetry t WHERE t.device_id = d.id) ORDER BY d.id",
            # SQLite cannot change a primary key: new tables, rows copied, old ones replaced.
            """CREATE TABLE inference_logs_v10 (
                device_id TEXT NOT NULL,
                epoch TEXT NOT NULL DEFAULT '',
                seq INTEGER NOT NULL,
                request_id TEXT NOT NULL,
                model_version INTEGER,
                input_digest TEXT NOT NULL,
                output TEXT NOT NULL,
                latency_ms REAL NOT NULL,
                ts REAL NOT NULL,
                source TEXT NOT NULL,
                role TEXT NOT NULL DEFAULT 'active',
                thresholded INTEGER NOT NULL DEFAULT 0,
                features TEXT,
                PRIMARY KEY (device_id, epoch, seq)) WITHOUT ROWID""",
            "INSERT INTO inference_logs_v10 (device_id, epoch, seq, request_id, model_version, "
            "input_digest, output, latency_ms, ts, source, role, thresholded, features) "
            "SELECT device_id, '', seq, request_id, model_version, input_digest, output, "
            "latency_ms, ts, source, role, thresholded, features FROM inference_logs",
            "DROP TABLE inference_logs",
            "ALTER TABLE inference_logs_v10 RENAME TO inference_logs",
            # the indexes migrations 6 and 7 made, which went with the old table
            "CREATE INDEX inference_logs_request ON inference_logs (device_id, request_id)",
            "CREATE INDEX inference_logs_ts ON inference_logs (ts)",
            "CREATE INDEX inference_logs_version ON inference_logs (model_version, ts)",
            "CREATE INDEX inference_logs_device_ts ON inference_logs (device_id, ts)",
            """CREATE TABLE telemetry_v10 (
                device_id TEXT NOT NULL,
                epoch TEXT NOT NULL DEFAULT '',
                seq INTEGER NOT NULL,
                ts REAL NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (device_id, epoch, seq)) WITHOUT ROWID""",
            "INSERT INTO telemetry_v10 (device_id, epoch, seq, ts, data) "
            "SELECT device_id, '', seq, ts, data FROM telemetry",
            "DROP TABLE telemetry",
            "ALTER TABLE telemetry_v10 RENAME TO telemetry",
        ),
    ),
    Migration(
        11,
        "registry: a version's task and task head (JSON; NULL for versions registered before: "
        "they read as the default head of their task and signature)",
        (
            "ALTER TABLE versions ADD COLUMN task TEXT NOT NULL DEFAULT 'classification'",
            "ALTER TABLE versions ADD COLUMN head TEXT",
        ),
    ),
    Migration(
        12,
        "logs: the sha256 of each answer's raw output tensors (the tensors themselves are not "
        "kept); NULL for records from before and from agents that do not send it",
        (
            "ALTER TABLE prediction_logs ADD COLUMN outputs_digest TEXT",
            "ALTER TABLE inference_logs ADD COLUMN outputs_digest TEXT",
        ),
    ),
    Migration(
        13,
        "fleets and their enrollment tokens (hashed); a device's fleet, hardware id (one device "
        "per hardware: a re-flashed card enrolls as itself), its own public key, the token that "
        "enrolled it and when it was revoked",
        (
            f"""CREATE TABLE fleets (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                group_name TEXT,
                tags TEXT NOT NULL DEFAULT '[]',
                device_prefix TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT {NOW})""",
            f"""CREATE TABLE enroll_tokens (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                fleet_id INTEGER NOT NULL REFERENCES fleets(id),
                token_hash TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT {NOW},
                expires_at TEXT,
                max_uses INTEGER,
                uses INTEGER NOT NULL DEFAULT 0,
                last_used_at TEXT,
                revoked_at TEXT)""",
            "ALTER TABLE devices ADD COLUMN fleet_id INTEGER REFERENCES fleets(id)",
            "ALTER TABLE devices ADD COLUMN hardware_id TEXT",
            "ALTER TABLE devices ADD COLUMN public_key TEXT",
            "ALTER TABLE devices ADD COLUMN enroll_token_id INTEGER REFERENCES enroll_tokens(id)",
            "ALTER TABLE devices ADD COLUMN revoked_at TEXT",
            "CREATE UNIQUE INDEX devices_hardware_id ON devices (hardware_id) "
            "WHERE hardware_id IS NOT NULL",
        ),
    ),
    Migration(
        14,
        "telemetry history: each record's numeric metrics as raw points, and 1-minute and "
        "1-hour rollups (min, max, sum, count, last) kept incrementally at ingest",
        (
            """CREATE TABLE metric_points (
                device_id TEXT NOT NULL,
                metric TEXT NOT NULL,
                ts REAL NOT NULL,
                value REAL NOT NULL)""",
            "CREATE UNIQUE INDEX metric_points_series ON metric_points (device_id, metric, ts)",
            "CREATE INDEX metric_points_ts ON metric_points (ts)",
            """CREATE TABLE metric_rollups (
                device_id TEXT NOT NULL,
                metric TEXT NOT NULL,
                step INTEGER NOT NULL,
                bucket REAL NOT NULL,
                vmin REAL NOT NULL,
                vmax REAL NOT NULL,
                vsum REAL NOT NULL,
                n INTEGER NOT NULL,
                vlast REAL NOT NULL,
                last_ts REAL NOT NULL)""",
            "CREATE UNIQUE INDEX metric_rollups_series "
            "ON metric_rollups (device_id, metric, step, bucket)",
            "CREATE INDEX metric_rollups_age ON metric_rollups (step, bucket)",
        ),
    ),
    Migration(
        15,
        "devices: when the status last changed (the last will's instant for an offline device), "
        "for the live views",
        ("ALTER TABLE devices ADD COLUMN status_since REAL",),
    ),
    Migration(
        16,
        "--artifact auto: a deployment's accuracy budget; per device the candidate artifacts it "
        "measures, the threads and how the artifact was chosen; the measurements, per hardware "
        "type, reused for the next device of that type",
        (
            "ALTER TABLE deployments ADD COLUMN accuracy_budget REAL",
            "ALTER TABLE deployment_devices ADD COLUMN candidate_artifact_ids TEXT",
            "ALTER TABLE deployment_devices ADD COLUMN threads INTEGER",
            "ALTER TABLE deployment_devices ADD COLUMN choice TEXT",
            """CREATE TABLE variant_timings (
                id INTEGER PRIMARY KEY,
                device_id TEXT NOT NULL,
                deployment_id INTEGER NOT NULL,
                version_id INTEGER NOT NULL,
                hardware TEXT NOT NULL,
                cpu_count INTEGER NOT NULL,
                artifact_id INTEGER NOT NULL,
                threads INTEGER NOT NULL,
                load_ms REAL,
                p50_ms REAL,
                p99_ms REAL,
                rss_mb REAL,
                runs INTEGER NOT NULL,
                error TEXT,
                measured_at TEXT NOT NULL)""",
            "CREATE UNIQUE INDEX variant_timings_one "
            "ON variant_timings (deployment_id, device_id, artifact_id, threads)",
            "CREATE INDEX variant_timings_kind ON variant_timings (version_id, hardware)",
        ),
    ),
)
