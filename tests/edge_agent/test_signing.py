"""Model signing: the hub's key on disk, and the agent's size / sha256 / signature checks."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from cloud_hub.registry.signing import HubSigner, SigningKeyError
from edge_agent.core.wire import ModelRef
from edge_agent.signing import (
    InvalidPublicKey,
    VerificationError,
    load_public_key,
    verify_model,
)

DATA = b"\x08\x07model-bytes" * 100


def make_ref(signer: HubSigner, data: bytes = DATA, *, version_id: int = 7) -> ModelRef:
    digest = hashlib.sha256(data).hexdigest()
    return ModelRef(
        version_id=version_id,
        ref="proj/digits:7",
        format="onnx",
        precision="fp32",
        sha256=digest,
        size=len(data),
        signature=signer.sign_model(version_id, digest, len(data), "onnx"),
    )


@pytest.fixture(scope="module")
def signer() -> HubSigner:
    return HubSigner.generate()


def test_a_signed_model_verifies(signer: HubSigner) -> None:
    verify_model(make_ref(signer), DATA, signer.public_key_b64)


def test_wrong_size_is_refused_first(signer: HubSigner) -> None:
    with pytest.raises(VerificationError) as info:
        verify_model(make_ref(signer), DATA[:-34], signer.public_key_b64)
    assert str(info.value) == f"size mismatch: expected {len(DATA)} bytes, got {len(DATA) - 34}"


def test_same_size_other_bytes_is_a_sha256_mismatch(signer: HubSigner) -> None:
    ref = make_ref(signer)
    tampered = b"X" + DATA[1:]
    actual = hashlib.sha256(tampered).hexdigest()
    with pytest.raises(VerificationError) as info:
        verify_model(ref, tampered, signer.public_key_b64)
    assert str(info.value) == f"sha256 mismatch: expected {ref.sha256[:12]}…, got {actual[:12]}…"


def test_missing_signature(signer: HubSigner) -> None:
    ref = make_ref(signer).model_copy(update={"signature": ""})
    with pytest.raises(VerificationError, match="^missing signature$"):
        verify_model(ref, DATA, signer.public_key_b64)


def test_signature_from_another_key_is_refused(signer: HubSigner) -> None:
    foreign = make_ref(HubSigner.generate())
    with pytest.raises(VerificationError) as info:
        verify_model(foreign, DATA, signer.public_key_b64)
    assert str(info.value) == "bad signature: not signed by the hub's key"


def test_signature_binds_the_version_and_format(signer: HubSigner) -> None:
    ref = make_ref(signer)
    for changed in (
        ref.model_copy(update={"version_id": 8}),
        ref.model_copy(update={"format": "tflite"}),
    ):
        with pytest.raises(VerificationError, match="^bad signature: not signed by the hub's key$"):
            verify_model(changed, DATA, signer.public_key_b64)


def test_garbled_signatures_are_refused(signer: HubSigner) -> None:
    ref = make_ref(signer)
    with pytest.raises(VerificationError, match="^bad signature: not base64$"):
        verify_model(ref.model_copy(update={"signature": "%%%"}), DATA, signer.public_key_b64)
    flipped = bytearray(base64.b64decode(ref.signature))
    flipped[0] ^= 1
    bad = ref.model_copy(update={"signature": base64.b64encode(bytes(flipped)).decode()})
    with pytest.raises(VerificationError, match="^bad signature: not signed by the hub's key$"):
        verify_model(bad, DATA, signer.public_key_b64)
    short = ref.model_copy(update={"signature": base64.b64encode(b"short").decode()})
    with pytest.raises(VerificationError, match="^bad signature: not signed by the hub's key$"):
        verify_model(short, DATA, signer.public_key_b64)


def test_a_bad_public_key_is_reported(signer: HubSigner) -> None:
    with pytest.raises(InvalidPublicKey, match="32 bytes"):
        load_public_key(base64.b64encode(b"too short").decode())
    with pytest.raises(InvalidPublicKey, match="base64"):
        load_public_key("not base64!")
    with pytest.raises(VerificationError, match="bad hub public key"):
        verify_model(make_ref(signer), DATA, "AAAA")


def test_public_key_loads_from_base64_and_pem(signer: HubSigner) -> None:
    from cryptography.hazmat.primitives import serialization

    key = load_public_key(signer.public_key_b64)
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    raw = load_public_key(pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert base64.b64encode(raw).decode() == signer.public_key_b64


def test_signer_key_is_created_once_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "hub-signing.pem"
    first = HubSigner.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    again = HubSigner.load_or_create(path)
    assert again.public_key_b64 == first.public_key_b64
    assert len(base64.b64decode(first.public_key_b64)) == 32
    # what the reloaded hub signs, the agent accepts with the key registration handed out
    verify_model(make_ref(again), DATA, first.public_key_b64)


def test_an_unreadable_key_file_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    path = tmp_path / "hub-signing.pem"
    path.write_text("not a key")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        HubSigner.load_or_create(path)
    assert path.read_text() == "not a key"
