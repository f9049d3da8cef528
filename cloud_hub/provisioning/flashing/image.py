"""`edgepilot flash`'s work: copy (or decompress) the image beside its output, find the FAT boot
partition, write the agent's and the first-boot files into it, and only then put the result in
place (`os.replace`). The input is only ever read, so a failure at any step leaves it as it was;
the half-written copy is removed.
"""

from __future__ import annotations

import gzip
import lzma
import os
import tempfile
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from cloud_hub.core.errors import InvalidInput
from cloud_hub.provisioning.flashing.fat import FatVolume, require_mtools
from cloud_hub.provisioning.flashing.firstboot import (
    CLOUD_INIT_FILES,
    FlashConfig,
    Mechanism,
    boot_files,
    edit_cmdline,
)
from cloud_hub.provisioning.flashing.partitions import ImageError, Partition, find_boot_partition

__all__ = [
    "Compression",
    "FlashResult",
    "compression_of",
    "default_output",
    "flash_image",
]

Compression = Literal["xz", "gzip"]
_READABLE: dict[bytes, Compression] = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip"}
_UNREADABLE = {
    b"\x28\xb5\x2f\xfd": ("zstd", "unzstd"),
    b"BZh": ("bzip2", "bunzip2"),
    b"PK\x03\x04": ("zip", "unzip"),
    b"7z\xbc\xaf\x27\x1c": ("7z", "7z x"),
}
_SUFFIXES = {"xz": (".xz",), "gzip": (".gz", ".gzip")}
CHUNK = 1 << 20
Progress = Callable[[int, int], None]  # (bytes done, bytes in all) of the input


@dataclass
class FlashResult:
    output: Path
    partition: Partition
    first_boot: Mechanism
    written: list[str] = field(default_factory=list)  # paths whose bytes changed
    unchanged: list[str] = field(default_factory=list)  # already held these bytes
    decompressed: Compression | None = None
    hostnames: str = ""  # "cam-<serial>"
    wifi_ssid: str | None = None


def compression_of(path: Path) -> Compression | None:
    """The compression of an image file, from its first bytes; ImageError for one flash
    cannot read."""
    with path.open("rb") as f:
        head = f.read(8)
    for magic, kind in _READABLE.items():
        if head.startswith(magic):
            return kind
    for magic, (name, tool) in _UNREADABLE.items():
        if head.startswith(magic):
            raise ImageError(
                f"{path.name} is compressed with {name}, which flash cannot read: decompress it "
                f"first (`{tool} {path.name}`), or give the .img, .img.xz or .img.gz"
            )
    return None


def default_output(source: Path, compression: Compression | None) -> Path:
    """Where the flashed image goes without --out: the image itself, or a compressed image's
    name without its suffix."""
    if compression is None:
        return source
    for suffix in _SUFFIXES[compression]:
        if source.name.lower().endswith(suffix) and len(source.name) > len(suffix):
            return source.with_name(source.name[: -len(suffix)])
    return source.with_name(source.name + ".img")


def _reader(raw: BinaryIO, compression: Compression | None) -> AbstractContextManager[Any]:
    if compression == "xz":
        return lzma.LZMAFile(raw)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw)
    return nullcontext(raw)


def _copy(
    source: Path, compression: Compression | None, dest: BinaryIO, progress: Progress
) -> None:
    """Copy or decompress, streamed; all-zero blocks become holes (a 4 GB card image is mostly
    zeros). Progress counts the input's bytes read."""
    total = source.stat().st_size
    zero = bytes(CHUNK)
    with source.open("rb") as raw, _reader(raw, compression) as f:
        try:
            while chunk := f.read(CHUNK):
                if chunk == zero[: len(chunk)]:
                    dest.seek(len(chunk), os.SEEK_CUR)
                else:
                    dest.write(chunk)
                progress(raw.tell(), total)
        except (lzma.LZMAError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ImageError(
                f"{source.name}: cannot decompress it ({compression}): {exc or 'truncated'}"
            ) from None
        dest.truncate()
        progress(total, total)


def _mechanism(vol: FatVolume, wanted: Literal["auto", "firstrun", "cloud-init"]) -> Mechanism:
    present = {n.lower() for n in vol.names("/")}
    if wanted == "auto":
        return "cloud-init" if present & set(CLOUD_INIT_FILES) else "firstrun"
    if wanted == "firstrun" and "cmdline.txt" not in present:
        raise ImageError(
            "--first-boot firstrun needs cmdline.txt on the boot partition, and it has none "
            "(is this a Raspberry Pi OS image?)"
        )
    return wanted


def _write(vol: FatVolume, cfg: FlashConfig, mechanism: Mechanism, result: FlashResult) -> None:
    files = boot_files(cfg, mechanism)
    vol.mkdir("/edgepilot")
    for path in sorted(files):
        (result.written if vol.write(path, files[path]) else result.unchanged).append(path)
    if mechanism == "firstrun":
        old = vol.read("/cmdline.txt")
        if old is None:
            raise ImageError("the boot partition has no cmdline.txt: not a Raspberry Pi OS image?")
        new = edit_cmdline(old.decode(errors="replace"), cfg.wifi.country if cfg.wifi else None)
        changed = vol.write("/cmdline.txt", new.encode())
        (result.written if changed else result.unchanged).append("/cmdline.txt")


def flash_image(
    source: Path,
    output: Path,
    make_config: Callable[[], FlashConfig],
    *,
    first_boot: Literal["auto", "firstrun", "cloud-init"] = "auto",
    progress: Progress = lambda done, total: None,
) -> FlashResult:
    """Flash `source` into `output` (which may be `source`). `make_config` is called once the
    boot partition has been found, so nothing (an enrollment token) is made for an image that
    cannot be flashed."""
    require_mtools()
    compression = compression_of(source)
    if not output.parent.is_dir():
        raise InvalidInput(f"the output's folder {output.parent} does not exist")
    if output.is_dir():
        raise InvalidInput(f"the output {output} is a folder: name the image file to write")
    if compression is None:
        find_boot_partition(source)  # refuse before copying gigabytes
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".flash", dir=output.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "r+b") as dest:
            _copy(source, compression, dest, progress)
        partition, _ = find_boot_partition(tmp)
        vol = FatVolume(tmp, partition.offset)
        mechanism = _mechanism(vol, first_boot)
        cfg = make_config()
        result = FlashResult(
            output,
            partition,
            mechanism,
            decompressed=compression,
            hostnames=f"{cfg.hostname_prefix}-<last 6 of the serial number>",
            wifi_ssid=cfg.wifi.ssid if cfg.wifi else None,
        )
        _write(vol, cfg, mechanism, result)
        mode = output.stat().st_mode & 0o7777 if output.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
