"""The partition table of a disk image (MBR or GPT), read with `struct`, and its FAT boot
partition.

MBR: four 16-byte entries at byte 446 (type at +4, first LBA at +8, sectors at +12,
little-endian) and the signature 0x55AA at 510. A protective MBR (one entry of type 0xEE) means
GPT: the header at LBA 1 ("EFI PART"), its entries where the header says. Raspberry Pi OS images
are MBR (a FAT32 boot partition, type 0x0C); Jetson images are GPT (an EFI system partition).
A candidate counts only if its first sector is a FAT boot sector: a "basic data" partition may as
well hold NTFS or exFAT. Sectors are 512 bytes (every SD-card image is).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from cloud_hub.core.errors import InvalidInput

__all__ = ["SECTOR", "ImageError", "Partition", "find_boot_partition", "read_partitions"]

SECTOR = 512
FAT_MBR_TYPES = {0x06: "FAT16", 0x0B: "FAT32 (CHS)", 0x0C: "FAT32 (LBA)", 0x0E: "FAT16 (LBA)"}
_MBR_NAMES = {0x05: "extended", 0x0F: "extended (LBA)", 0x82: "Linux swap", 0x83: "Linux"}
ESP_GUID = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
BASIC_DATA_GUID = uuid.UUID("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7")
_GPT_NAMES = {
    ESP_GUID: "EFI system",
    BASIC_DATA_GUID: "Microsoft basic data",
    uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4"): "Linux filesystem",
}


class ImageError(InvalidInput):
    """The image cannot be flashed: no partition table, no FAT boot partition, bad table."""


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based, as fdisk numbers them
    scheme: Literal["mbr", "gpt"]
    kind: str  # "0x0c FAT32 (LBA)" or "EFI system" / the type GUID
    offset: int  # bytes from the start of the image
    size: int  # bytes
    name: str = ""  # a GPT partition's name

    @property
    def fat_type(self) -> bool:
        if self.scheme == "mbr":
            return int(self.kind.split()[0], 16) in FAT_MBR_TYPES
        return self.kind in ("EFI system", "Microsoft basic data")

    def describe(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"#{self.number} {self.kind}{label} at {self.offset} ({self.size // 2**20} MiB)"


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _mbr(sector: bytes) -> list[tuple[int, int, int]]:
    """(type, first LBA, sectors) of the used primary entries."""
    entries = []
    for i in range(4):
        raw = sector[446 + 16 * i : 462 + 16 * i]
        ptype = raw[4]
        start, count = struct.unpack_from("<II", raw, 8)
        if ptype != 0 and count != 0:
            entries.append((ptype, start, count))
    return entries


def _gpt(f: BinaryIO, image_size: int) -> list[Partition]:
    header = _read_at(f, SECTOR, 92)
    if len(header) < 92 or header[:8] != b"EFI PART":
        raise ImageError(
            "the image has a protective MBR (GPT) but no GPT header at LBA 1 "
            "(no 'EFI PART' signature)"
        )
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if not (128 <= entry_size <= 4096) or count > 1024:
        raise ImageError(f"the GPT header is damaged ({count} entries of {entry_size} bytes)")
    table = _read_at(f, entries_lba * SECTOR, count * entry_size)
    found = []
    for i in range(len(table) // entry_size):
        raw = table[i * entry_size : (i + 1) * entry_size]
        type_guid = uuid.UUID(bytes_le=raw[:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        name = raw[56:128].decode("utf-16-le", "replace").rstrip("\0")
        if last < first or last * SECTOR >= image_size:
            raise ImageError(f"GPT partition #{i + 1} lies outside the image")
        found.append(
            Partition(
                number=i + 1,
                scheme="gpt",
                kind=_GPT_NAMES.get(type_guid, str(type_guid)),
                offset=first * SECTOR,
                size=(last - first + 1) * SECTOR,
                name=name,
            )
        )
    return found


def read_partitions(image: Path) -> list[Partition]:
    """The image's partitions; ImageError when it has no readable partition table."""
    image_size = image.stat().st_size
    with image.open("rb") as f:
        mbr = _read_at(f, 0, SECTOR)
        if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
            raise ImageError(
                f"{image.name} has no partition table (no MBR signature): is it a disk image?"
            )
        entries = _mbr(mbr)
        if any(ptype == 0xEE for ptype, _, _ in entries):
            return _gpt(f, image_size)
    parts = []
    for number, (ptype, start, count) in enumerate(entries, 1):
        name = FAT_MBR_TYPES.get(ptype) or _MBR_NAMES.get(ptype, "")
        kind = f"0x{ptype:02x} {name}".strip()
        if (start + count) * SECTOR > image_size:
            raise ImageError(f"MBR partition #{number} ({kind}) lies outside the image")
        parts.append(Partition(number, "mbr", kind, start * SECTOR, count * SECTOR))
    return parts


def _is_fat(image: Path, part: Partition) -> bool:
    with image.open("rb") as f:
        boot = _read_at(f, part.offset, SECTOR)
    if len(boot) < SECTOR or boot[510:512] != b"\x55\xaa":
        return False
    bytes_per_sector = struct.unpack_from("<H", boot, 11)[0]
    return bytes_per_sector in (512, 1024, 2048, 4096) and (
        boot[54:59] in (b"FAT12", b"FAT16", b"FAT  ") or boot[82:87] == b"FAT32"
    )


def find_boot_partition(image: Path) -> tuple[Partition, list[Partition]]:
    """The first FAT partition of a FAT type (and all partitions, for messages); ImageError,
    listing what the image holds, when there is none."""
    parts = read_partitions(image)
    for part in parts:
        if part.fat_type and _is_fat(image, part):
            return part, parts
    seen = "; ".join(p.describe() for p in parts) or "no partitions"
    raise ImageError(
        f"{image.name} has no FAT boot partition (an MBR partition of type 0x0b/0x0c/0x0e/0x06 "
        f"or a GPT EFI system / basic data partition holding FAT); it has: {seen}"
    )
