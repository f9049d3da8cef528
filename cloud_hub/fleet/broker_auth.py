"""Mosquitto authentication for the fleet: password hashes, the password and ACL files, a config.

Each device logs in to the broker as its own user and may touch only `{root}/dev/{its id}/#`;
the hub's user may touch everything under `{root}/`. The files are written atomically into
`{data_dir}/mosquitto/` and regenerated from the devices table on every registration (Mosquitto
re-reads them on SIGHUP or restart).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HUB_USER",
    "BrokerFiles",
    "hash_password",
    "hub_password",
    "mosquitto_conf",
    "new_password",
    "verify_password",
    "write_auth_files",
]

HUB_USER = "edgepilot-hub"
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes by default
_SALT_BYTES = 12


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
    salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
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

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> BrokerFiles:
        return cls(data_dir / "mosquitto")


def _write_private(path: Path, text: str) -> None:
    """Write `text` atomically with mode 0600 (readable by the broker run as the same user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def hub_password(files: BrokerFiles) -> str:
    """The hub's broker password, created on first use and kept in a 0600 file."""
    if not files.hub_secret.exists():
        _write_private(files.hub_secret, new_password() + "\n")
    return files.hub_secret.read_text().strip()


def write_auth_files(
    files: BrokerFiles, devices: Iterable[tuple[str, str]], *, topic_root: str
) -> None:
    """Password and ACL files for the hub user and each (device id, password hash)."""
    devices = sorted(devices)
    hub_hash = hash_password(hub_password(files))
    passwd = [f"{HUB_USER}:{hub_hash}"] + [f"{dev}:{hashed}" for dev, hashed in devices]
    acl = [f"user {HUB_USER}", f"topic readwrite {topic_root}/#", ""]
    for dev, _ in devices:
        acl += [f"user {dev}", f"topic readwrite {topic_root}/dev/{dev}/#", ""]
    _write_private(files.password_file, "\n".join(passwd) + "\n")
    _write_private(files.acl_file, "\n".join(acl))


def mosquitto_conf(
    files: BrokerFiles,
    *,
    host: str,
    port: int,
    persistence: bool = True,
    user: str | None = None,
) -> str:
    """A mosquitto.conf that authenticates with the fleet's files.

    The queue limits are raised: Mosquitto's default `max_queued_messages 1000` silently drops
    QoS 1 messages to a slow subscriber, e.g. a hub ingesting an offline device's backlog.
    `user` (default: whoever runs this, who owns the 0600 files) is the account Mosquitto
    switches to when started as root; otherwise it would become `mosquitto` and not read them.
    """
    lines = [
        "# written by `edgepilot hub broker-config`",
        f"listener {port} {host}",
        f"user {user or getpass.getuser()}",
        "allow_anonymous false",
        f"password_file {files.password_file}",
        f"acl_file {files.acl_file}",
        "max_queued_messages 100000",
        "max_inflight_messages 1000",
    ]
    if persistence:
        lines += ["persistence true", f"persistence_location {files.directory}/"]
    else:
        lines.append("persistence false")
    return "\n".join(lines) + "\n"
