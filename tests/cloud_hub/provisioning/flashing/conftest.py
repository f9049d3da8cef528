"""Fixtures for `edgepilot flash`: real card images, a token file, a Wi-Fi key, an ssh key, and
the first-boot script installs the session's wheel of this project (`agent_wheel`, in
tests/conftest.py)."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cloud_hub.provisioning.flashing.images import make_image

TOKEN = "ept_FlashTestTokenDoNotPrint0123456789abcdef"
PSK = "correct horse battery staple"


def wpa_psk(ssid: str, passphrase: str = PSK) -> str:
    """What wpa_passphrase(8) prints as psk= for this network."""
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


ImageFactory = Callable[..., Path]  # image("bookworm") -> a fresh copy
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVzZWQtaW4tZmxhc2gtdGVzdHMtb25seS0xMjM0NTY3OA test@host"
)


@pytest.fixture(scope="session")
def pristine_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Made once per session; tests copy them (`image` fixture)."""
    folder = tmp_path_factory.mktemp("images")
    return {
        "bookworm": make_image(folder / "bookworm.img"),
        "trixie": make_image(
            folder / "trixie.img",
            boot_files={
                "user-data": b"#cloud-config\n# the image's own\n",
                "meta-data": b"instance-id: rpios-image\n",
            },
        ),
        "gpt": make_image(folder / "jetson.img", scheme="gpt"),
        "nofat": make_image(folder / "nofat.img", fat=False),
    }


@pytest.fixture
def image(tmp_path: Path, pristine_images: dict[str, Path]) -> ImageFactory:
    """image("bookworm") -> a fresh copy in tmp_path (sparse, as the original)."""

    def copy(kind: str, name: str | None = None) -> Path:
        dest = tmp_path / (name or f"{kind}.img")
        subprocess.run(["cp", "--sparse=always", str(pristine_images[kind]), str(dest)], check=True)
        return dest

    return copy


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "token").write_text(TOKEN + "\n")
    (folder / "psk").write_text(PSK + "\n")
    (folder / "id_ed25519.pub").write_text(SSH_KEY + "\n")
    return {"token": folder / "token", "psk": folder / "psk", "ssh": folder / "id_ed25519.pub"}
