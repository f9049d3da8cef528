"""Mosquitto authentication for the fleet: password hashes, the password and ACL files, a config.

Every client logs in as its own user, and the generated mosquitto.conf makes the broker use that
username as the client id (`use_username_as_clientid`): a credential can only ever displace a
connection of its own account, never the hub's or another device's. Rights are per direction
(`acl_rules`, the wire contract's topic kinds):

    account                      may publish                          may read (subscribe)
    device {id}                  {root}/dev/{id}/status report        {root}/dev/{id}/desired
                                 variants logs telemetry fetch result chunk ack infer
    edgepilot-hub (fleet)        {root}/dev/+/desired chunk ack       {root}/dev/+/status report
                                                                      variants logs telemetry
                                                                      fetch
    edgepilot-hub-events-N       {root}/jobs/+, {root}/alerts         nothing
    edgepilot-hub-ingest-N       {root}/dev/+/ack                     {root}/dev/+/logs
    inference client (`infer`)   {root}/dev/{d}/infer                 {root}/dev/{d}/result
                                 (d: its devices, or + for all)
    viewer                       nothing                              {root}/dev/+/status report
                                                                      logs telemetry, alerts

Mosquitto applies `read` to subscriptions and to each delivery (retained messages included) and
`write` to publishes and to a client's last will (checked when it connects): a device cannot
forge its own desired state, acks or chunks, and its will can only say `status`. A publish the
ACL refuses is acknowledged and dropped (MQTT 3.1.1 has no way to say no).

Accounts and their secrets, all in `{data_dir}/mosquitto/` (files 0600):
- `hub-password`: the hub's; the same password opens the `edgepilot-hub-events-N` accounts,
  which the hub's publishers (job completions, alerts) claim one per client
  (`claim_events_account`), so that they never share the fleet service's persistent session;
  and the `edgepilot-hub-ingest-N` accounts, one per `edgepilot hub ingest` process
  (`claim_ingest_account`): extra consumers of the fleet's logs, beside the hub, on a shared
  subscription (the hub's `fleet_shared_logs`).
- devices: a fresh password each at registration (only the hash is kept, in the database).
- inference clients and viewers: `accounts.json` lists them (name, role, devices) and
  `account-{name}.password` holds each one's password, made when the account is added
  (`edgepilot hub broker-config --viewer NAME --infer-client NAME[:DEVICE,...]`) and kept.

The password and ACL files are written atomically and regenerated from the devices table and
the accounts on every registration and every `broker-config` (Mosquitto re-reads them on SIGHUP
without dropping anyone; a changed mosquitto.conf or certificate needs a restart). Regenerating
is cheap at fleet scale: a device's lines are its stored hash and a text template, and the
hashes of the hub's and the accounts' passwords are made once and kept beside each secret
(`{secret}.hash`, 0600), reused while they verify (PBKDF2 on every registration was most of
its cost). 5,000 devices: a 0.4 MB password file and a 2.6 MB ACL, a few ms.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import getpass
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from cloud_hub.core.errors import InvalidInput
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.tls import TlsFiles
from edge_agent.core.fs import write_atomic
from edge_agent.core.wire import TopicKind, Topics

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "EVENTS_ACCOUNTS",
    "INGEST_ACCOUNTS",
    "HUB_USER",
    "Account",
    "BrokerFiles",
    "EventsAccount",
    "Grant",
    "acl_rules",
    "add_account",
    "account_password",
    "cached_hash",
    "claim_events_account",
    "claim_ingest_account",
    "device_acl_template",
    "events_users",
    "hash_password",
    "hub_ca_file",
    "hub_password",
    "ingest_users",
    "load_accounts",
    "min_packet_size",
    "mosquitto_conf",
    "new_password",
    "remove_account",
    "verify_password",
    "write_auth_files",
]

HUB_USER = "edgepilot-hub"
EVENTS_PREFIX = "edgepilot-hub-events-"
EVENTS_ACCOUNTS = 16  # publisher clients (hub processes, workers, CLI) that may run at once
INGEST_PREFIX = "edgepilot-hub-ingest-"
INGEST_ACCOUNTS = 8  # `edgepilot hub ingest` processes that may run at once
RESERVED_PREFIX = "edgepilot-hub-"  # no account of an operator's may start so
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes by default
_SALT_BYTES = 12

# The largest MQTT packet the broker takes from any client. What has to fit:
# - a model chunk: min(hub chunk_size, agent transfer.chunk_size) bytes plus a ~200-byte header
#   (defaults 256 KiB and 64 KiB; `min_packet_size` checks the hub's against the flag);
# - a LogBatch: forwarder.batch_size records (250) of about 1.7 KB plus 10 bytes per output
#   score: 250 records of 3,000 scores is about 7.9 MB;
# - an inference request on `infer`: the agent's HTTP API takes bodies up to 8 MiB, MQTT the same.
# A client that sends more is disconnected at the packet's header, before its payload is read.
DEFAULT_MAX_PACKET_SIZE = 8 * 2**20
PACKET_OVERHEAD = 64 * 1024  # topic, chunk header and MQTT framing, generously
MOSQUITTO_MAX_PACKET = 268_435_455  # what MQTT's remaining-length field can say

# Directions, per topic kind of the wire contract (tests check they cover every kind).
DEVICE_PUBLISHES: tuple[TopicKind, ...] = (
    "status",
    "report",
    "variants",
    "logs",
    "telemetry",
    "fetch",
    "result",
)
DEVICE_READS: tuple[TopicKind, ...] = ("desired", "chunk", "ack", "infer")
HUB_PUBLISHES: tuple[TopicKind, ...] = ("desired", "chunk", "ack")
HUB_READS: tuple[TopicKind, ...] = (
    "status",
    "report",
    "variants",
    "logs",
    "telemetry",
    "fetch",
)
INFER_PUBLISHES: tuple[TopicKind, ...] = ("infer",)
INFER_READS: tuple[TopicKind, ...] = ("result",)
VIEWER_READS: tuple[TopicKind, ...] = ("status", "report", "logs", "telemetry")

Role = Literal["viewer", "infer"]
ROLES: tuple[Role, ...] = ("viewer", "infer")
_ACCOUNT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")


def new_password() -> str:
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Mosquitto's PBKDF2-SHA512 format (`mosquitto_passwd`): `$7$101$<b64 salt>$<b64 hash>`."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64salt, b64digest = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${PBKDF2_ITERATIONS}${b64salt}${b64digest}"


def verify_password(password: str, hashed: str) -> bool:
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return hmac.compare_digest(digest, expected)


@dataclass(frozen=True)
class BrokerFiles:
    directory: Path

    @property
    def password_file(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.directory / "acl"

    @property
    def hub_secret(self) -> Path:
        return self.directory / "hub-password"

    @property
    def pid_file(self) -> Path:
        """Where the generated mosquitto.conf has the broker write its pid (when started with
        -d): the hub's default `broker_pid_file`."""
        return self.directory / "mosquitto.pid"

    @property
    def accounts_file(self) -> Path:
        return self.directory / "accounts.json"

    def account_secret(self, name: str) -> Path:
        return self.directory / f"account-{name}.password"

    @property
    def tls(self) -> TlsFiles:
        """The CA and the broker's certificate (`cloud_hub.fleet.tls`), beside these files."""
        return TlsFiles(self.directory)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> BrokerFiles:
        return cls(data_dir / "mosquitto")


def hub_password(files: BrokerFiles) -> str:
    """The hub's broker password, created on first use and kept in a 0600 file."""
    if not files.hub_secret.exists():
        write_atomic(files.hub_secret, new_password() + "\n")
    return files.hub_secret.read_text().strip()


def cached_hash(secret_file: Path, password: str) -> str:
    """The password file's hash of `password`, kept in `{secret_file}.hash` (0600) and reused
    while it verifies: a secret replaced by hand gets a new hash the next time."""
    hash_file = secret_file.with_name(secret_file.name + ".hash")
    with contextlib.suppress(FileNotFoundError):
        hashed = hash_file.read_text().strip()
        if verify_password(password, hashed):
            return hashed
    hashed = hash_password(password)
    write_atomic(hash_file, hashed + "\n")
    return hashed


def hub_ca_file(settings: HubSettings) -> Path | None:
    """The CA the hub's clients check the broker against (`mqtt_tls`): `mqtt_ca_file`, else the
    fleet CA that `edgepilot hub broker-config --tls` made, else None (the system's CAs)."""
    if settings.mqtt_ca_file is not None:
        return settings.mqtt_ca_file
    fleet_ca = BrokerFiles.in_data_dir(settings.data_dir).tls.ca_cert
    return fleet_ca if fleet_ca.is_file() else None


def events_users() -> list[str]:
    """The accounts the hub's publishers (job completions, alerts) log in with."""
    return [f"{EVENTS_PREFIX}{i}" for i in range(EVENTS_ACCOUNTS)]


def ingest_users() -> list[str]:
    """The accounts extra log consumers (`edgepilot hub ingest`) log in with."""
    return [f"{INGEST_PREFIX}{i}" for i in range(INGEST_ACCOUNTS)]


def _reserved(name: str) -> bool:
    return name == HUB_USER or name.startswith(RESERVED_PREFIX)


# -- inference-client and viewer accounts -----------------------------------------------------
@dataclass(frozen=True)
class Account:
    """An account that is neither the hub nor a device. `devices` (role `infer` only): the
    devices it may send inference requests to; None: all of them."""

    name: str
    role: Role
    devices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not _ACCOUNT_RE.match(self.name) or _reserved(self.name):
            raise InvalidInput(
                f"account name {self.name!r} is invalid: use 1-64 letters, digits, '.', '_' or "
                f"'-', starting with a letter, and not {HUB_USER!r} or {RESERVED_PREFIX}*"
            )
        if self.role not in ROLES:
            raise InvalidInput(f"account role {self.role!r}: choose from {list(ROLES)}")
        if self.devices is not None:
            if self.role != "infer":
                raise InvalidInput("only an inference client is limited to devices")
            for dev in self.devices:
                if not _ACCOUNT_RE.match(dev):
                    raise InvalidInput(f"device id {dev!r} is not a valid topic level")


def load_accounts(files: BrokerFiles) -> list[Account]:
    if not files.accounts_file.exists():
        return []
    raw = json.loads(files.accounts_file.read_text())
    accounts = []
    for entry in raw.get("accounts", []):
        devices = entry.get("devices")
        accounts.append(
            Account(
                name=str(entry["name"]),
                role=entry["role"],
                devices=None if devices is None else tuple(str(d) for d in devices),
            )
        )
    return accounts


def _save_accounts(files: BrokerFiles, accounts: Iterable[Account]) -> None:
    doc = {
        "accounts": [
            {
                "name": a.name,
                "role": a.role,
                "devices": None if a.devices is None else list(a.devices),
            }
            for a in sorted(accounts, key=lambda a: a.name)
        ]
    }
    write_atomic(files.accounts_file, json.dumps(doc, indent=2) + "\n")


def add_account(files: BrokerFiles, account: Account) -> Path:
    """Add (or change the role/devices of) an account; its password is made once and kept in
    the returned 0600 file. Rewrite the auth files afterwards (`write_auth_files`)."""
    others = [a for a in load_accounts(files) if a.name != account.name]
    secret = files.account_secret(account.name)
    if not secret.exists():
        write_atomic(secret, new_password() + "\n")
    _save_accounts(files, [*others, account])
    return secret


def remove_account(files: BrokerFiles, name: str) -> bool:
    """Drop an account and its password file; False when there was none."""
    accounts = load_accounts(files)
    kept = [a for a in accounts if a.name != name]
    files.account_secret(name).unlink(missing_ok=True)
    if len(kept) == len(accounts):
        return False
    _save_accounts(files, kept)
    return True


def account_password(files: BrokerFiles, name: str) -> str:
    return files.account_secret(name).read_text().strip()


# -- the ACL ----------------------------------------------------------------------------------
def event_topics(topic_root: str) -> tuple[str, str]:
    """(job completions filter, alerts topic) the hub's publishers write: the serving and
    monitoring packages' `job_topic(root, "+")` and `alerts_topic(root)`, which the fleet may not
    import (they are its peers); a test holds the two spellings together."""
    return f"{topic_root}/jobs/+", f"{topic_root}/alerts"


@dataclass(frozen=True)
class Grant:
    """One ACL line: `topic read|write TOPIC`."""

    access: Literal["read", "write"]
    topic: str


def acl_rules(
    device_ids: Iterable[str], accounts: Iterable[Account], *, topic_root: str
) -> dict[str, list[Grant]]:
    """Username → what it may read and write (see the module's table)."""
    t = Topics(topic_root)
    jobs, alerts = event_topics(topic_root)

    def grants(dev: str, write: Sequence[TopicKind], read: Sequence[TopicKind]) -> list[Grant]:
        return [Grant("write", t.device(dev, k)) for k in write] + [
            Grant("read", t.device(dev, k)) for k in read
        ]

    rules: dict[str, list[Grant]] = {HUB_USER: grants("+", HUB_PUBLISHES, HUB_READS)}
    for user in events_users():
        rules[user] = [Grant("write", jobs), Grant("write", alerts)]
    for user in ingest_users():
        rules[user] = grants("+", ("ack",), ("logs",))
    for dev in sorted(device_ids):
        rules[dev] = grants(dev, DEVICE_PUBLISHES, DEVICE_READS)
    for acc in sorted(accounts, key=lambda a: a.name):
        if acc.role == "viewer":
            rules[acc.name] = grants("+", (), VIEWER_READS) + [Grant("read", alerts)]
        else:
            rules[acc.name] = [
                g
                for dev in (acc.devices or ("+",))
                for g in grants(dev, INFER_PUBLISHES, INFER_READS)
            ]
    return rules


def write_auth_files(
    files: BrokerFiles, devices: Iterable[tuple[str, str]], *, topic_root: str
) -> None:
    """Password and ACL files for the hub's accounts, each (device id, password hash) and the
    accounts of `accounts.json`. A device id that is also an account's name is refused.

    The text is what `acl_rules` says, written from a per-device template (a test holds the two
    together): at 5,000 devices the ACL has 55,000 lines, and building them rule by rule took
    most of a registration."""
    devices = sorted(devices)
    accounts = load_accounts(files)
    taken = {HUB_USER, *events_users(), *ingest_users(), *(a.name for a in accounts)}
    clash = sorted(dev for dev, _ in devices if dev in taken)
    if clash:
        raise InvalidInput(f"device id(s) {clash} are the names of broker accounts")
    hub_hash = cached_hash(files.hub_secret, hub_password(files))
    passwd = [f"{HUB_USER}:{hub_hash}"]
    passwd += [f"{user}:{hub_hash}" for user in events_users() + ingest_users()]
    passwd += [f"{dev}:{hashed}" for dev, hashed in devices]
    passwd += [
        f"{a.name}:{cached_hash(files.account_secret(a.name), account_password(files, a.name))}"
        for a in accounts
    ]
    others = acl_rules([], accounts, topic_root=topic_root)
    head = {user: g for user, g in others.items() if _reserved(user)}
    tail = {user: g for user, g in others.items() if not _reserved(user)}
    parts = device_acl_template(topic_root)
    acl = "".join(
        [
            "# written by EdgePilot (cloud_hub.fleet.broker_auth): regenerated, do not edit\n\n",
            _acl_blocks(head),
            "".join([dev.join(parts) for dev, _ in devices]),
            _acl_blocks(tail),
        ]
    )
    write_atomic(files.password_file, "\n".join(passwd) + "\n")
    write_atomic(files.acl_file, acl[:-1])  # one newline at the end, as before


_DEVICE_MARK = "\x00"  # never in a device id (a checked name): where the template takes it


@functools.lru_cache(maxsize=8)
def device_acl_template(topic_root: str) -> tuple[str, ...]:
    """A device's ACL block split where its id goes: `dev.join(parts)` is the block."""
    rules = acl_rules([_DEVICE_MARK], [], topic_root=topic_root)
    return tuple(_acl_blocks(rules, only=True).split(_DEVICE_MARK))


def _acl_blocks(rules: dict[str, list[Grant]], *, only: bool = False) -> str:
    """`user NAME`, its `topic` lines and a blank line, per user (`only`: the device users)."""
    out = []
    for user, user_grants in rules.items():
        if only and _reserved(user):
            continue
        out.append(f"user {user}\n")
        out += [f"topic {g.access} {g.topic}\n" for g in user_grants]
        out.append("\n")
    return "".join(out)


# -- the hub's publisher accounts ---------------------------------------------------------------
@dataclass
class EventsAccount:
    """An `edgepilot-hub-events-N` account held by this client until `release()`."""

    username: str
    password: str
    _lock: IO[bytes] | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()  # closing drops the flock
            self._lock = None


def claim_events_account(files: BrokerFiles) -> EventsAccount:
    """One of the publisher accounts no other client on this data directory holds (an exclusive
    flock on `locks/edgepilot-hub-events-N`, dropped when released or when the process ends).

    The broker takes the username as client id, so two publishers on one account would
    disconnect each other in turn; the hub's fleet service has an account of its own for the
    same reason. When all are held, the last one is shared (and a warning is the caller's)."""
    return _claim(files, events_users())


def claim_ingest_account(files: BrokerFiles) -> EventsAccount | None:
    """An `edgepilot-hub-ingest-N` account no other process holds; None when all are held (a
    shared one would make two consumers disconnect each other)."""
    account = _claim(files, ingest_users())
    return account if account._lock is not None else None


def _claim(files: BrokerFiles, users: list[str]) -> EventsAccount:
    password = hub_password(files)
    locks = files.directory / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    for user in users:
        fh = (locks / user).open("ab")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        return EventsAccount(user, password, fh)
    return EventsAccount(users[-1], password, None)


# -- mosquitto.conf ---------------------------------------------------------------------------
def min_packet_size(chunk_size: int) -> int:
    """The smallest `max_packet_size` through which the hub's chunks of `chunk_size` pass."""
    return chunk_size + PACKET_OVERHEAD


def mosquitto_conf(
    files: BrokerFiles,
    *,
    host: str | None = None,
    port: int | None = None,
    tls_host: str | None = None,
    tls_port: int | None = None,
    persistence: bool = True,
    user: str | None = None,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
) -> str:
    """A mosquitto.conf that authenticates with the fleet's files: a plain listener on
    host:port and/or a TLS one on tls_host:tls_port (the CA's server certificate, TLS 1.2 or
    newer; `cloud_hub.fleet.tls.ensure_server_certificate` must have written it).

    Every listener takes the username as client id. `max_packet_size` bounds what one client
    may send (see DEFAULT_MAX_PACKET_SIZE). The queue limits are raised: Mosquitto's default
    `max_queued_messages 1000` silently drops QoS 1 messages to a slow subscriber, e.g. a hub
    ingesting an offline device's backlog. `set_tcp_nodelay`: without it every ack waits on
    Nagle's algorithm (a 43 ms floor under every ack, measured at 500 devices; 2 ms with it).

    The listen backlog: Mosquitto 2.0 (Debian bookworm's 2.0.11) has no option for it. It
    calls listen() with a fixed backlog of 100 (`ss -ltn` shows it as Send-Q) and the kernel's
    `net.core.somaxconn` only caps that, so a fleet reconnecting at once after a broker restart
    overflows the queue (34 overflows connecting 5,000 clients at once). An overflowed
    connection is not lost: its handshake is retried by the client's kernel 1 s, 3 s, ... later
    (with `net.ipv4.tcp_abort_on_overflow` 0, the default), and agents reconnect with a backoff
    anyway. On a large fleet's broker host raise `net.ipv4.tcp_max_syn_backlog` (the half-open
    queue; 4096 is cheap) and keep `net.core.somaxconn` at 4096 or more for a broker that sets
    a larger backlog (Mosquitto 2.1 and other brokers); `nstat -az TcpExtListenOverflows`
    counts overflows. `bench/fleet_sim.py` connects its clients in paced waves for this reason.

    `user` (default: whoever runs this, who owns the 0600 files) is the
    account Mosquitto switches to when started as root; otherwise it would become `mosquitto`
    and not read them.
    """
    if (host is None) != (port is None) or (tls_host is None) != (tls_port is None):
        raise ValueError("a listener needs both a host and a port")
    if port is None and tls_port is None:
        raise ValueError("no listener: give host/port, tls_host/tls_port or both")
    if not 1024 <= max_packet_size <= MOSQUITTO_MAX_PACKET:
        raise ValueError(f"max_packet_size must be 1024..{MOSQUITTO_MAX_PACKET} bytes")
    lines = ["# written by `edgepilot hub broker-config`"]
    if port is not None:
        lines += [f"listener {port} {host}", "use_username_as_clientid true"]
    if tls_port is not None:
        tls = files.tls
        lines += [
            f"listener {tls_port} {tls_host}",
            "use_username_as_clientid true",
            f"cafile {tls.ca_cert}",
            f"certfile {tls.server_cert}",
            f"keyfile {tls.server_key}",
            "tls_version tlsv1.2",
        ]
    lines += [
        "",
        f"user {user or getpass.getuser()}",
        "allow_anonymous false",
        f"password_file {files.password_file}",
        f"acl_file {files.acl_file}",
        f"max_packet_size {max_packet_size}",
        "max_queued_messages 100000",
        "max_inflight_messages 1000",
        "set_tcp_nodelay true",  # no listen-backlog option in 2.0 (a fixed 100): see above
        f"pid_file {files.pid_file}",
    ]
    if persistence:
        lines += ["persistence true", f"persistence_location {files.directory}/"]
    else:
        lines.append("persistence false")
    return "\n".join(lines) + "\n"
