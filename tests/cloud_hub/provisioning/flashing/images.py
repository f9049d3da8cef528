"""Real disk images made with Debian's tools (truncate, sfdisk, mkfs.vfat, mkfs.ext4, mtools),
laid out as Raspberry Pi OS (MBR: FAT32 boot + ext4 root) and Jetson (GPT: EFI system
partition + Linux) images are, and an independent read-back through mtools and fsck.vfat."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SECTOR = 512
BOOT_START = 2048  # sectors, as Raspberry Pi OS and sfdisk align
BOOT_SECTORS = 131072  # 64 MiB
ROOT_START = BOOT_START + BOOT_SECTORS
ROOT_SECTORS = 32768  # 16 MiB
BOOT_OFFSET = BOOT_START * SECTOR
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n"
)
# What a Raspberry Pi OS Trixie image ships on its boot partition for cloud-init.
TRIXIE_USER_DATA = "#cloud-config\n# This is the user-data configuration file for cloud-init.\n"
TRIXIE_META_DATA = "instance-id: rpios-image\n"

_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def tool(name: str) -> str:
    """A Debian tool by name; sfdisk, mkfs.* and fsck.* live in /usr/sbin, off a user's PATH."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise AssertionError(f"{name} is not installed: scripts/test installs it (apt-get)")
    return found


def sh(*args: str | Path, input: bytes | None = None) -> bytes:
    cmd = [tool(str(args[0])), *(str(a) for a in args[1:])]
    proc = subprocess.run(cmd, input=input, capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _mtools(*args: str | Path) -> bytes:
    proc = subprocess.run([str(a) for a in args], env=_ENV, capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def put(image: Path, files: dict[str, bytes], offset: int = BOOT_OFFSET) -> None:
    """Files into the FAT partition at `offset` (mcopy, independently of the code tested)."""
    staging = image.parent / f"{image.name}.staging"
    staging.mkdir(exist_ok=True)
    for name, data in files.items():
        src = staging / name.replace("/", "_")
        src.write_bytes(data)
        _mtools("mcopy", "-o", "-i", f"{image}@@{offset}", src, f"::/{name}")


def make_image(
    path: Path,
    *,
    scheme: str = "mbr",
    fat: bool = True,
    boot_files: dict[str, bytes] | None = None,
    boot_type: str | None = None,
    fat_bits: int = 32,
) -> Path:
    """A card image: a 64 MiB FAT32 boot partition (with `boot_files`) and a 16 MiB ext4 root;
    fat=False leaves the first partition a Linux one (no FAT anywhere) or, with `boot_type`,
    of that type holding no file system."""
    total = ROOT_START + ROOT_SECTORS + 2048  # room for GPT's backup table
    sh("truncate", "-s", str(total * SECTOR), path)
    if scheme == "mbr":
        boot_type, root_type = boot_type or ("c" if fat else "83"), "83"
        table = f"label: dos\nstart={BOOT_START}, size={BOOT_SECTORS}, type={boot_type}\n"
    else:
        boot_type, root_type = boot_type or (ESP if fat else LINUX), LINUX
        table = f"label: gpt\nstart={BOOT_START}, size={BOOT_SECTORS}, type={boot_type}\n"
    table += f"start={ROOT_START}, size={ROOT_SECTORS}, type={root_type}\n"
    sh("sfdisk", "-q", path, input=table.encode())
    if fat:
        sh(
            "mkfs.vfat", "-F", str(fat_bits), "-s", "1" if fat_bits == 32 else "4",
            "-n", "BOOTFS", "-i", "4e639091", "--offset", str(BOOT_START), path,
            str(BOOT_SECTORS // 2),
        )  # fmt: skip
        files = {"cmdline.txt": CMDLINE.encode(), "config.txt": b"arm_64bit=1\n"}
        files.update(boot_files or {})
        put(path, files)
    sh(
        "mkfs.ext4", "-q", "-F", "-L", "rootfs", "-E", f"offset={ROOT_START * SECTOR}",
        path, f"{ROOT_SECTORS // 2}k",
    )  # fmt: skip
    return path


def read(image: Path, name: str, offset: int = BOOT_OFFSET) -> bytes:
    return _mtools("mtype", "-i", f"{image}@@{offset}", f"::/{name}")


def names(image: Path, folder: str = "/", offset: int = BOOT_OFFSET) -> set[str]:
    out = _mtools("mdir", "-b", "-i", f"{image}@@{offset}", f"::{folder}").decode()
    return {line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()}


def copy_out(image: Path, dest: Path, offset: int = BOOT_OFFSET) -> Path:
    """Every file of the boot partition into `dest` (a device's /boot/firmware)."""
    dest.mkdir(parents=True, exist_ok=True)
    _mtools("mcopy", "-s", "-n", "-i", f"{image}@@{offset}", "::/*", dest)
    return dest


def fsck_boot(image: Path, workdir: Path) -> str:
    """fsck.vfat -n on the boot partition (extracted with dd: fsck takes no offset)."""
    part = workdir / f"{image.name}.boot"
    sh(
        "dd", f"if={image}", f"of={part}", f"bs={SECTOR}", f"skip={BOOT_START}",
        f"count={BOOT_SECTORS}", "status=none",
    )  # fmt: skip
    proc = subprocess.run([tool("fsck.vfat"), "-n", str(part)], capture_output=True, text=True)
    part.unlink()
    assert proc.returncode == 0, f"fsck.vfat: {proc.stdout}{proc.stderr}"
    return proc.stdout


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
