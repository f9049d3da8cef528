"""Model verification on the device: size, then sha256, then the hub's ed25519 signature.

The agent holds only the hub's public key (raw 32 bytes, base64, as registration returns it). A
model is installed only after `verify_model` returns; each failure says exactly what was wrong.
`cryptography` (about 8 MB of resident memory) is imported only when a key is loaded: checking
the configured key's format at start-up (`check_public_key`) does not need it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import TYPE_CHECKING

from edge_agent.core.wire import ModelRef, signing_message

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "InvalidPublicKey",
    "VerificationError",
    "check_public_key",
    "load_public_key",
    "verify_model",
]

_SHOWN_DIGEST = 12  # hex characters of a digest shown in messages


class VerificationError(Exception):
    """A model's bytes or signature do not match what the hub published; the message says which."""


class InvalidPublicKey(ValueError):
    """The configured hub public key is not an ed25519 public key."""


def _raw_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPublicKey("the hub public key is not valid base64") from None
    if len(raw) != 32:
        raise InvalidPublicKey(f"an ed25519 public key is 32 bytes, this one is {len(raw)}")
    return raw


def check_public_key(text: str) -> None:
    """Raise InvalidPublicKey unless `text` is a usable hub key. A base64 key is checked without
    importing `cryptography` (any 32 bytes load as an ed25519 public key); a PEM key is loaded."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        load_public_key(text)
    else:
        _raw_key(text)


def load_public_key(text: str) -> Ed25519PublicKey:
    """The hub's public key from base64 of its raw 32 bytes (a PEM public key is also accepted)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = load_pem_public_key(text.encode())
        except ValueError as exc:
            raise InvalidPublicKey(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidPublicKey(f"not an ed25519 public key: {type(key).__name__}")
        return key
    return Ed25519PublicKey.from_public_bytes(_raw_key(text))


def _short(digest: str) -> str:
    return digest if len(digest) <= _SHOWN_DIGEST else digest[:_SHOWN_DIGEST] + "…"


def verify_model(ref: ModelRef, data: bytes, public_key_b64: str) -> None:
    """Check `data` against `ref` (size, sha256) and `ref.signature` against the hub's key.

    Raises VerificationError naming the first check that failed.
    """
    if len(data) != ref.size:
        raise VerificationError(f"size mismatch: expected {ref.size} bytes, got {len(data)}")
    actual = hashlib.sha256(data).hexdigest()
    expected = ref.sha256.strip().lower()
    if not hmac.compare_digest(actual, expected):
        raise VerificationError(
            f"sha256 mismatch: expected {_short(expected)}, got {_short(actual)}"
        )
    if not ref.signature.strip():
        raise VerificationError("missing signature")
    try:
        signature = base64.b64decode(ref.signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError("bad signature: not base64") from None
    try:
        key = load_public_key(public_key_b64)
    except InvalidPublicKey as exc:
        raise VerificationError(
            f"cannot verify the signature: bad hub public key ({exc})"
        ) from None
    from cryptography.exceptions import InvalidSignature

    message = signing_message(ref.version_id, ref.sha256, ref.size, ref.format)
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise VerificationError("bad signature: not signed by the hub's key") from None
