"""Devices: registration (broker credentials, Mosquitto auth files), listing, stored logs."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_hub.core.db import Database
from cloud_hub.core.errors import AlreadyExists, InvalidInput, NotFound, RegistryError
from cloud_hub.core.names import check_name
from cloud_hub.core.rows import model_from_row, row_dict
from cloud_hub.fleet.broker_auth import BrokerFiles, hash_password, new_password, write_auth_files
from cloud_hub.fleet.broker_reload import BrokerReloader, ReloadOutcome
from cloud_hub.fleet.ingest import current_epochs, epochs_newest_first, telemetry_counts
from cloud_hub.fleet.schemas import (
    RUNTIMES,
    BrokerInfo,
    Device,
    DeviceCreate,
    DeviceRegistration,
    InferenceLog,
)
from cloud_hub.predlog import device_logs
from edge_agent.core.wire import DeviceStatus

# Registrations reload the broker at most once a RELOAD_GAP_S in fleets this large
# (`DeviceStore._reload_soon`).
RELOAD_COALESCE_FROM = 500
RELOAD_GAP_S = 1.0

# Pages of `DeviceStore.page` (GET /api/v1/devices): the default size and the largest.
DEFAULT_PAGE = 500
MAX_PAGE = 1000

# A device's outbox epochs and telemetry are the ingest's (`fleet.ingest`): its current epoch
# (the one that stored a batch last; devices.acked_upto is no longer used: marks are per epoch)
# and its telemetry count are read from there for each page of devices, its stored logs from
# `predlog.device_logs`, its fleet's name from the fleets' store (`FleetNames`).
_DEVICE_SQL = "SELECT d.* FROM devices d"

# fleet ids -> their names (`enroll_store.fleet_names`)
FleetNames = Callable[[sqlite3.Connection, Iterable[int | None]], dict[int, str]]


@dataclass(frozen=True)
class DeviceRow:
    """A device as the live views need it (`DeviceStore.live_rows`)."""

    id: str
    name: str
    hardware: str
    tags: list[str]
    group: str | None
    status: str
    status_since: float | None
    last_seen: str | None
    agent_version: str | None
    active_version_id: int | None
    desired_deployment_id: int | None


def device_from_row(
    row: sqlite3.Row,
    *,
    epoch: tuple[str, int] | None = None,
    telemetry_stored: int = 0,
    fleet: str | None = None,
    logs_stored: int = 0,
) -> Device:
    """A device from its row (of `_DEVICE_SQL`), its current outbox epoch (epoch, acked_upto),
    its stored telemetry and log counts and its fleet's name."""
    d = row_dict(row)
    return model_from_row(
        Device,
        d,
        ("runtimes", "tags", "reported_runtimes"),
        group=d["group_name"],
        acked_upto=(epoch[1] if epoch is not None else 0) or 0,
        epoch=None if epoch is None else epoch[0],
        logs_stored=logs_stored,
        telemetry_stored=telemetry_stored,
        fleet=fleet,
    )


def _devices(
    conn: sqlite3.Connection, rows: list[sqlite3.Row], fleet_names: FleetNames
) -> list[Device]:
    ids = [str(r["id"]) for r in rows]
    epochs = current_epochs(conn, ids)
    counts = telemetry_counts(conn, ids)
    logs = device_logs.counts(conn, ids)
    fleets = fleet_names(conn, [r["fleet_id"] for r in rows])
    return [
        device_from_row(
            r,
            epoch=epochs.get(r["id"]),
            telemetry_stored=counts.get(r["id"], 0),
            fleet=None if r["fleet_id"] is None else fleets.get(r["fleet_id"]),
            logs_stored=logs.get(r["id"], 0),
        )
        for r in rows
    ]


class DeviceStore:
    """Devices in the hub's database. `broker` is what registration hands to new devices."""

    def __init__(
        self,
        db: Database,
        *,
        data_dir: Path,
        broker: BrokerInfo,
        hub_public_key: str,
        fleet_names: FleetNames,
        reloader: BrokerReloader | None = None,
    ) -> None:
        self.db = db
        self.fleet_names = fleet_names
        self.files = BrokerFiles.in_data_dir(data_dir)
        self.broker = broker
        self.hub_public_key = hub_public_key
        self.reloader = reloader or BrokerReloader()
        self.last_reload: ReloadOutcome | None = None
        self._batcher = _Batcher(self._register_batch)
        self._reload_lock = threading.Lock()
        self._reloaded_at = float("-inf")  # monotonic
        self._reload_timer: threading.Timer | None = None
        self._accounts = 0  # device accounts in the files written last

    def register(
        self, body: DeviceCreate, *, broker: BrokerInfo | None = None
    ) -> DeviceRegistration:
        """Store a new device with a fresh broker password (only its hash is kept), rewrite
        the broker's password and ACL files and have the broker re-read them. A duplicate id
        raises AlreadyExists.

        Registrations that arrive while the files are being written (concurrent API requests)
        are stored together: one transaction inserts them all, the files are written once for
        them inside it and the broker is reloaded once; a failure writing the files stores
        none of them. At 5,000 devices a write of the files is some 10-30 ms, so a provisioning
        client with a few requests in flight registers hundreds a second."""
        check_device(body)
        password = new_password()
        job = _Registration(body, hash_password(password))
        if self.db.conn.in_transaction:  # the caller's transaction: join it, batch alone
            self._register_batch([job])
            if job.error is not None:
                raise job.error
        else:
            self._batcher.submit(job)
        return self.registration(body.id, password, broker=broker)

    def _register_batch(self, jobs: list[_Registration]) -> None:
        """The batcher's leader: insert every job's device (each on a savepoint: a taken id
        fails that job alone), write the files once, commit, reload the broker once."""
        conn = self.db.conn
        stored = 0
        with self.db.transaction():
            for job in jobs:
                conn.execute("SAVEPOINT register_device")
                try:
                    _insert_device(conn, job.body, job.password_hash)
                except AlreadyExists as exc:
                    conn.execute("ROLLBACK TO register_device")
                    job.error = exc
                else:
                    stored += 1
                conn.execute("RELEASE register_device")
            if stored:
                self.write_broker_files()  # inside the transaction: a failure stores nothing
        if stored:
            self._reload_soon()

    def registration(
        self, device_id: str, password: str, *, broker: BrokerInfo | None = None
    ) -> DeviceRegistration:
        return DeviceRegistration(
            device=self.get(device_id),
            username=device_id,
            password=password,
            broker=self._with_ca(broker or self.broker),
            hub_public_key=self.hub_public_key,
        )

    def enroll(self, conn: sqlite3.Connection, enrollment: Enrollment) -> tuple[str, bool]:
        """Inside the caller's transaction: the device of this hardware id with a new broker
        password (created in the enrollment's fleet when there is none). Returns (password,
        reenrolled). A revoked device raises DeviceRevoked. The caller writes the broker files
        (`write_broker_files`) in the same transaction and reloads the broker after it."""
        row = conn.execute(
            "SELECT id, revoked_at FROM devices WHERE hardware_id = ?", [enrollment.hardware_id]
        ).fetchone()
        password = new_password()
        if row is not None:
            if row["revoked_at"] is not None:
                raise DeviceRevoked(row["id"], row["revoked_at"])
            conn.execute(
                "UPDATE devices SET password_hash = ?, public_key = ?, fleet_id = ?, "
                "enroll_token_id = ?, runtimes = ?, hardware = ?, agent_version = ? "
                "WHERE id = ?",
                [
                    hash_password(password),
                    enrollment.public_key,
                    enrollment.fleet_id,
                    enrollment.token_id,
                    json.dumps(list(enrollment.device.runtimes)),
                    enrollment.device.hardware,
                    enrollment.agent_version or None,
                    row["id"],
                ],
            )
            return password, True
        body = enrollment.device
        check_device(body)
        _insert_device(
            conn,
            body,
            hash_password(password),
            fleet_id=enrollment.fleet_id,
            hardware_id=enrollment.hardware_id,
            public_key=enrollment.public_key,
            enroll_token_id=enrollment.token_id,
            agent_version=enrollment.agent_version or None,
        )
        return password, False

    def revoke(self, device_id: str, *, when: str) -> Device:
        """Cut the device off: its broker account goes (the broker, reloaded, disconnects it
        and refuses it since) and enrolling again with its hardware id is refused. What it
        sent is kept."""
        with self.db.transaction() as db:
            cur = db.conn.execute(
                "UPDATE devices SET revoked_at = ?, status = 'offline' "
                "WHERE id = ? AND revoked_at IS NULL",
                [when, device_id],
            )
            if cur.rowcount == 0:
                device = self.get(device_id)  # NotFound, or revoked already
                raise InvalidInput(f"device {device.id!r} was revoked at {device.revoked_at}")
            self.write_broker_files()
        self.reload_broker()
        return self.get(device_id)

    def reload_broker(self) -> ReloadOutcome:
        self.last_reload = self.reloader.reload()
        return self.last_reload

    def _reload_soon(self) -> None:
        """The broker's reload after registrations. Mosquitto 2.0 re-reads its ACL in time
        that grows with the square of its users (broker CPU per reload, measured: 40 ms at
        1,000 devices, 120 ms at 2,000, 300-380 ms at 5,000, while it serves no one), so in a
        fleet of more than RELOAD_COALESCE_FROM devices reloads are at most one a
        RELOAD_GAP_S: the first at once, later ones at the end of the gap (a device
        registered meanwhile is refused until then and reconnects, as agents do). A smaller
        fleet's broker is reloaded after every registration, and a revocation always at once."""
        if self._accounts < RELOAD_COALESCE_FROM:
            self.reload_broker()
            return
        with self._reload_lock:
            now = time.monotonic()
            wait = self._reloaded_at + RELOAD_GAP_S - now
            if wait <= 0:
                self._reloaded_at = now
            elif self._reload_timer is None:
                self._reload_timer = threading.Timer(wait, self._deferred_reload)
                self._reload_timer.daemon = True
                self._reload_timer.start()
        if wait <= 0:
            self.reload_broker()

    def _deferred_reload(self) -> None:
        with self._reload_lock:
            self._reload_timer = None
            self._reloaded_at = time.monotonic()
        self.reload_broker()

    def close(self) -> None:
        """Run a reload still waiting for its gap now, so that the devices registered last are
        let in, and none fires after the hub has stopped (e.g. into the next hub's broker)."""
        with self._reload_lock:
            timer, self._reload_timer = self._reload_timer, None
        if timer is not None:
            timer.cancel()
            self.reload_broker()

    def _with_ca(self, broker: BrokerInfo) -> BrokerInfo:
        """A TLS broker's info with the fleet CA, when it was made after this store opened."""
        ca = self.files.tls.ca_cert
        if broker.tls and broker.ca_pem is None and ca.is_file():
            return broker.model_copy(update={"ca_pem": ca.read_text()})
        return broker

    def write_broker_files(self) -> BrokerFiles:
        """The password and ACL files for every device that is not revoked."""
        cur = self.db.conn.cursor()
        cur.row_factory = None  # plain tuples: 5,000 sqlite3.Row objects cost more than the query
        rows = cur.execute(
            "SELECT id, password_hash FROM devices WHERE revoked_at IS NULL"
        ).fetchall()
        write_auth_files(self.files, rows, topic_root=self.broker.topic_root)
        self._accounts = len(rows)
        return self.files

    def get(self, device_id: str) -> Device:
        conn = self.db.conn
        row = conn.execute(f"{_DEVICE_SQL} WHERE d.id = ?", [device_id]).fetchone()
        if row is None:
            raise NotFound("device", device_id)
        return _devices(conn, [row], self.fleet_names)[0]

    def exists(self, device_id: str) -> bool:
        return device_exists(self.db.conn, device_id)

    def all(self, *, tag: str | None = None, group: str | None = None) -> list[Device]:
        """Every device (with the tag / in the group), by id."""
        devices: list[Device] = []
        after: str | None = None
        while True:
            page, after = self.page(tag=tag, group=group, limit=MAX_PAGE, after=after)
            devices += page
            if after is None:
                return devices

    def page(
        self,
        *,
        tag: str | None = None,
        group: str | None = None,
        limit: int = DEFAULT_PAGE,
        after: str | None = None,
    ) -> tuple[list[Device], str | None]:
        """Up to `limit` devices (with the tag / in the group) whose ids sort after `after`, by
        id, and the cursor of the next page: the last id, or None when there are no more."""
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, not {limit}")
        where, params = ["1 = 1"], []
        if after is not None:
            where.append("d.id > ?")
            params.append(after)
        if tag is not None:  # tags: a JSON list of checked names
            where.append("EXISTS (SELECT 1 FROM json_each(d.tags) WHERE json_each.value = ?)")
            params.append(tag)
        if group is not None:
            where.append("d.group_name = ?")
            params.append(group)
        conn = self.db.conn
        rows = conn.execute(
            f"{_DEVICE_SQL} WHERE {' AND '.join(where)} ORDER BY d.id LIMIT ?",
            [*params, limit + 1],
        ).fetchall()
        devices = _devices(conn, rows[:limit], self.fleet_names)
        more = len(rows) > limit
        return devices, devices[-1].id if more else None

    def live_rows(self, device_id: str | None = None) -> list[DeviceRow]:
        """What the live views show of each device (or of one), without the per-device counts
        of stored logs that `all()` makes: one indexed read however large the history."""
        sql = (
            "SELECT id, name, hardware, tags, group_name, status, status_since, last_seen, "
            "agent_version, active_version_id, desired_deployment_id FROM devices"
        )
        if device_id is None:
            rows = self.db.conn.execute(f"{sql} ORDER BY id").fetchall()
        else:
            rows = self.db.conn.execute(f"{sql} WHERE id = ?", [device_id]).fetchall()
        return [
            DeviceRow(
                id=r["id"],
                name=r["name"],
                hardware=r["hardware"],
                tags=json.loads(r["tags"]),
                group=r["group_name"],
                status=r["status"],
                status_since=r["status_since"],
                last_seen=r["last_seen"],
                agent_version=r["agent_version"],
                active_version_id=r["active_version_id"],
                desired_deployment_id=r["desired_deployment_id"],
            )
            for r in rows
        ]

    def logs(self, device_id: str, *, limit: int = 100) -> list[InferenceLog]:
        """The device's newest stored inference logs, newest first: its latest outbox epoch
        first (a wiped device's new epoch before the old one), each by sequence."""
        self.get(device_id)
        conn = self.db.conn
        epochs = epochs_newest_first(conn, device_id)
        if "" not in epochs:  # rows written without the ingest (tests, imports) are legacy
            epochs.append("")
        rows: list[sqlite3.Row] = []
        for epoch in epochs:
            if len(rows) >= limit:
                break
            rows += device_logs.newest(conn, device_id, epoch, limit - len(rows))
        return [_log(r) for r in rows]


class DeviceRevoked(RegistryError):
    def __init__(self, device_id: str, revoked_at: str) -> None:
        super().__init__(f"device {device_id!r} was revoked at {revoked_at}: enrollment refused")
        self.device_id = device_id


@dataclass
class _Registration:
    """One device waiting in the registration batcher."""

    body: DeviceCreate
    password_hash: str
    error: BaseException | None = None
    done: bool = False


class _Batcher:
    """Group commit for registrations: a caller whose job finds no batch running runs one
    with every job waiting then (its own first); the others wait for theirs to be done."""

    def __init__(self, run: Callable[[list[_Registration]], None]) -> None:
        self._run = run
        self._cond = threading.Condition()
        self._pending: list[_Registration] = []
        self._busy = False

    def submit(self, job: _Registration) -> None:
        """Return once the job is stored; raise its error (AlreadyExists, or the batch's)."""
        with self._cond:
            self._pending.append(job)
            while not job.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch, self._pending = self._pending, []
                self._cond.release()
                try:
                    self._run(batch)
                except BaseException as exc:
                    for other in batch:
                        other.error = other.error or exc
                finally:
                    self._cond.acquire()
                    self._busy = False
                    for other in batch:
                        other.done = True
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error


@dataclass(frozen=True)
class Enrollment:
    """What an accepted enrollment stores for its device."""

    device: DeviceCreate  # id, name, hardware, runtimes, the fleet's tags and group
    fleet_id: int
    token_id: int
    hardware_id: str
    public_key: str
    agent_version: str


def _insert_device(
    conn: sqlite3.Connection, body: DeviceCreate, password_hash: str, **enrolled: object
) -> None:
    """One new row of `devices` (a registration, or an enrollment with its `enrolled`
    columns); a taken id raises AlreadyExists."""
    columns = {
        "id": body.id,
        "name": body.name or body.id,
        "hardware": body.hardware,
        "runtimes": json.dumps(list(body.runtimes)),
        "tags": json.dumps(sorted(set(body.tags))),
        "group_name": body.group,
        "password_hash": password_hash,
        **enrolled,
    }
    try:
        conn.execute(
            f"INSERT INTO devices ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})",
            list(columns.values()),
        )
    except sqlite3.IntegrityError:
        raise AlreadyExists("device", body.id) from None


def check_device(body: DeviceCreate) -> None:
    check_name("device", body.id)
    if not body.runtimes:
        raise InvalidInput("a device needs at least one runtime: onnxruntime or litert")
    unknown = [r for r in body.runtimes if r not in RUNTIMES]
    if unknown:
        raise InvalidInput(f"unknown runtime(s) {unknown}: choose from {list(RUNTIMES)}")
    if len(set(body.runtimes)) != len(body.runtimes):
        raise InvalidInput(f"runtimes {body.runtimes} name one twice")
    for tag in body.tags:
        check_name("tag", tag)
    if body.group is not None:
        check_name("group", body.group)


def _log(row: sqlite3.Row) -> InferenceLog:
    return model_from_row(InferenceLog, row, ("output",))


# -- the devices table for the other modules (presence, rollout, enrollment, auth, monitoring,
# routing): each takes the connection, so a caller's transaction holds its read or write.
def device_exists(conn: sqlite3.Connection, device_id: str) -> bool:
    return conn.execute("SELECT 1 FROM devices WHERE id = ?", [device_id]).fetchone() is not None


def password_hash(conn: sqlite3.Connection, device_id: str) -> str | None:
    """The hash of the device's broker password (None: no such device)."""
    row = conn.execute("SELECT password_hash FROM devices WHERE id = ?", [device_id]).fetchone()
    return None if row is None else str(row[0])


def enrolled_with(conn: sqlite3.Connection, hardware_id: str) -> tuple[str, int | None] | None:
    """(device id, enrollment token id) of the device enrolled with this hardware id."""
    row = conn.execute(
        "SELECT id, enroll_token_id FROM devices WHERE hardware_id = ?", [hardware_id]
    ).fetchone()
    return None if row is None else (str(row["id"]), row["enroll_token_id"])


def fleet_sizes(conn: sqlite3.Connection, fleet_id: int | None = None) -> dict[int, int]:
    """Devices per fleet id (of every fleet with one, or of `fleet_id`)."""
    sql = "SELECT fleet_id, COUNT(*) FROM devices WHERE fleet_id IS NOT NULL"
    args: list[object] = []
    if fleet_id is not None:
        sql, args = sql + " AND fleet_id = ?", [fleet_id]
    return {int(r[0]): int(r[1]) for r in conn.execute(f"{sql} GROUP BY fleet_id", args)}


def record_status(
    conn: sqlite3.Connection, device_id: str, status: DeviceStatus, *, now: float, seen: str
) -> None:
    """A status message: `status_since` moves (to `now`) only when the state changes."""
    conn.execute(
        "UPDATE devices SET status_since = CASE WHEN status IS ? THEN status_since "
        "ELSE ? END, status = ?, agent_version = COALESCE(NULLIF(?, ''), "
        "agent_version), reported_runtimes = CASE WHEN ? = '[]' THEN reported_runtimes "
        "ELSE ? END, active_version_id = COALESCE(?, active_version_id), last_seen = ? "
        "WHERE id = ?",
        [
            status.state,
            now,
            status.state,
            status.agent_version,
            json.dumps(status.runtimes),
            json.dumps(status.runtimes),
            status.active_version,
            seen,
            device_id,
        ],
    )


def set_last_seen(conn: sqlite3.Connection, device_id: str, seen: str) -> None:
    conn.execute("UPDATE devices SET last_seen = ? WHERE id = ?", [seen, device_id])


def count_rejection(conn: sqlite3.Connection, device_id: str, reason: str) -> None:
    conn.execute(
        "UPDATE devices SET rejected = rejected + 1, last_reason = ? WHERE id = ?",
        [reason, device_id],
    )


def set_last_reason(conn: sqlite3.Connection, device_id: str, reason: str) -> None:
    conn.execute("UPDATE devices SET last_reason = ? WHERE id = ?", [reason, device_id])


def set_active_version(conn: sqlite3.Connection, device_id: str, version_id: int) -> None:
    conn.execute("UPDATE devices SET active_version_id = ? WHERE id = ?", [version_id, device_id])


def desired_deployments(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """(desired deployment id, device id) of every device that has one."""
    rows = conn.execute(
        "SELECT desired_deployment_id, id FROM devices WHERE desired_deployment_id IS NOT NULL"
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def claim_desired(
    conn: sqlite3.Connection,
    device_id: str,
    deployment_id: int,
    *,
    version_id: int,
    artifact_id: int | None,
) -> bool:
    """Make the deployment the device's desired one, unless a newer one holds it."""
    cur = conn.execute(
        "UPDATE devices SET desired_deployment_id = ?, desired_version_id = ?, "
        "desired_artifact_id = ? WHERE id = ? AND (desired_deployment_id IS NULL "
        "OR desired_deployment_id <= ?)",
        [deployment_id, version_id, artifact_id, device_id, deployment_id],
    )
    return cur.rowcount == 1


def retarget_desired(
    conn: sqlite3.Connection, device_id: str, deployment_id: int, artifact_id: int
) -> None:
    """The device's desired deployment now gets another of its artifacts (`--artifact auto`
    settled): fetches are allowed for that one."""
    conn.execute(
        "UPDATE devices SET desired_artifact_id = ? WHERE id = ? AND desired_deployment_id = ?",
        [artifact_id, device_id, deployment_id],
    )


def hardware_of(conn: sqlite3.Connection, device_id: str) -> str:
    """The device's hardware type as registered or enrolled ("" when none is known)."""
    row = conn.execute("SELECT hardware FROM devices WHERE id = ?", [device_id]).fetchone()
    return "" if row is None or row[0] is None else str(row[0])


def desired_of(conn: sqlite3.Connection, device_id: str) -> tuple[int | None, int | None] | None:
    """(desired deployment id, desired artifact id) of the device (None: no such device)."""
    row = conn.execute(
        "SELECT desired_deployment_id, desired_artifact_id FROM devices WHERE id = ?",
        [device_id],
    ).fetchone()
    return None if row is None else (row[0], row[1])


def statuses(
    conn: sqlite3.Connection, device_id: str | None = None
) -> list[tuple[str, str, float | None]]:
    """(id, status, status_since) of every device, or of one."""
    sql = "SELECT id, status, status_since FROM devices"
    args: list[object] = []
    if device_id is not None:
        sql, args = sql + " WHERE id = ?", [device_id]
    return [(r[0], r[1], r[2]) for r in conn.execute(sql, args)]


def routing_row(conn: sqlite3.Connection, device_id: str) -> dict[str, Any] | None:
    """What condition routing may know of a device: hardware, tags, group and runtimes (the
    JSON columns decoded; NULL ones as empty lists)."""
    row = conn.execute(
        "SELECT id, hardware, tags, group_name, runtimes FROM devices WHERE id = ?",
        [device_id],
    ).fetchone()
    if row is None:
        return None
    data = row_dict(row)
    data["tags"] = json.loads(data["tags"] or "[]")
    data["runtimes"] = json.loads(data["runtimes"] or "[]")
    return data
