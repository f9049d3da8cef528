"""The hub's ed25519 signing key: created once, kept in a 0600 PEM file, used to sign models.

Devices hold only the public key (`public_key_b64`, raw 32 bytes in base64) and check every model
with `edge_agent.signing.verify_model` before installing it.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.core.fs import fsync_dir
from edge_agent.core.wire import signing_message

__all__ = ["HubSigner", "SigningKeyError"]


class SigningKeyError(Exception):
    """The signing key file exists but cannot be read as an ed25519 private key."""


class HubSigner:
    """Signs model artifacts with the hub's private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key_b64: str = base64.b64encode(raw).decode()

    @classmethod
    def generate(cls) -> HubSigner:
        """A signer with a fresh key that lives only in memory."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> HubSigner:
        """The signer whose key is in `path`, creating the key file (mode 0600) on first use.

        Creation is atomic and first-writer-wins: two processes starting together end up with the
        same key, and a crash never leaves a partial key file.
        """
        path = Path(path)
        if not path.exists():
            cls._create(path)
        return cls(cls._load(path))

    @staticmethod
    def _load(path: Path) -> Ed25519PrivateKey:
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise SigningKeyError(f"cannot read signing key {path}: {exc.strerror or exc}") from exc
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an ed25519 key")
        return key

    @staticmethod
    def _create(path: Path) -> None:
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)  # mkstemp already uses 0600; be explicit about it
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # fails if another process created the key meanwhile
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links: replace is still atomic
                os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        fsync_dir(path.parent)

    def sign(self, message: bytes) -> str:
        """Base64 ed25519 signature of `message`."""
        return base64.b64encode(self._key.sign(message)).decode()

    def sign_model(self, version_id: int, sha256: str, size: int, fmt: str) -> str:
        """A ModelRef's signature: over `signing_message(version_id, sha256, size, fmt)`."""
        return self.sign(signing_message(version_id, sha256, size, fmt))
