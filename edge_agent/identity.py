"""The device's identity after enrollment, and its own key pair, kept in the data directory.

- `{data_dir}/identity.json`: what the hub answered (device id, fleet, broker address and
  credentials, the hub's signing key) and the hardware id it was given for. It holds the broker
  password, so it is written 0600, atomically (a temporary file, fsync, rename, fsync of the
  directory): a power cut leaves the old file or the new one, never half of one.
- `{data_dir}/device-key.pem`: the device's ed25519 private key (PKCS8 PEM, 0600), made once and
  reused, so that a re-enrollment of the same card signs with the same key.

Errors name the file, never its contents.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from edge_agent.core.fs import write_atomic
from edge_agent.core.wire import EnrollBroker

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "IDENTITY_FILE",
    "KEY_FILE",
    "Identity",
    "IdentityError",
    "device_key",
    "load_identity",
    "public_key_b64",
    "save_identity",
]

IDENTITY_FILE = "identity.json"
KEY_FILE = "device-key.pem"


class IdentityError(RuntimeError):
    """The identity or key file cannot be read or written; the message names the file."""


class Identity(BaseModel):
    device_id: str = Field(min_length=1)
    fleet: str
    hub: str = Field(default="", description="the hub URL the device enrolled at")
    broker: EnrollBroker
    username: str
    password: str = Field(repr=False)
    hub_public_key: str
    hardware_id: str
    enrolled_at: float = Field(default_factory=time.time)


def load_identity(data_dir: Path) -> Identity | None:
    """The stored identity, or None when the device has not enrolled."""
    path = data_dir / IDENTITY_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return Identity.model_validate_json(text)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "(file)" for e in exc.errors()})
        raise IdentityError(
            f"{path}: not a valid identity file (check {', '.join(fields)}); delete it to enroll "
            "again"
        ) from None


def save_identity(data_dir: Path, identity: Identity) -> Path:
    path = data_dir / IDENTITY_FILE
    doc = identity.model_dump(mode="json")
    try:
        write_atomic(path, json.dumps(doc, indent=2) + "\n", mode=0o600)
    except OSError as exc:
        raise IdentityError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path


def device_key(data_dir: Path) -> Ed25519PrivateKey:
    """The device's private key: loaded from `device-key.pem`, or made and stored the first time."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = data_dir / KEY_FILE
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            write_atomic(path, pem, mode=0o600)
        except OSError as exc:
            raise IdentityError(f"{path}: cannot write: {exc.strerror or exc}") from None
        return key
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        loaded = None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise IdentityError(
            f"{path}: not an unencrypted ed25519 private key (PKCS8 PEM); delete it to make a "
            "new one"
        )
    return loaded


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The public half as the wire contract writes keys: the raw 32 bytes, base64."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()
