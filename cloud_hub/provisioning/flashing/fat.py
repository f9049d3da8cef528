"""Files in a FAT partition of a disk image, at a byte offset, through GNU mtools.

No root, no mount, no loop device: mtools addresses a partition inside an image file as
`IMAGE@@OFFSET`. mtools is GPL-3.0, and a separate program we run (never link or import), so this
Apache-2.0 code carries no GPL obligation (see docs/DEPENDENCIES.md, "Putting agents on devices").

Writes are reproducible: every timestamp mtools sets comes from SOURCE_DATE_EPOCH (a fixed
moment, in UTC) and `mcopy -m` keeps the staged file's mtime (set to the same moment), so the
same writes give the same bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cloud_hub.core.errors import InvalidInput

__all__ = ["FIXED_TIME", "FatError", "FatVolume", "MtoolsMissing", "require_mtools"]

FIXED_TIME = 1704067200  # 2024-01-01T00:00:00Z: every file and folder flash writes
_TOOLS = ("mcopy", "mmd", "mdir", "mtype", "mdel")


class MtoolsMissing(InvalidInput):
    pass


class FatError(InvalidInput):
    """An mtools command failed (a full partition, a damaged file system)."""


def require_mtools() -> None:
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        raise MtoolsMissing(
            f"mtools is not installed ({', '.join(missing)} not found): edgepilot flash writes "
            "the image's boot partition with it. Install it: `sudo apt-get install mtools` "
            "(Debian, Ubuntu, Raspberry Pi OS), `sudo dnf install mtools` (Fedora) or "
            "`brew install mtools` (macOS)"
        )


class FatVolume:
    """The FAT file system at `offset` bytes into `image`. Paths are absolute in the volume
    ("/edgepilot/agent.toml")."""

    def __init__(self, image: Path, offset: int) -> None:
        require_mtools()
        self.image = image
        self.offset = offset
        self._env = dict(os.environ)
        self._env.update(
            MTOOLS_SKIP_CHECK="1",  # images made by other tools may fail mtools' pedantry
            SOURCE_DATE_EPOCH=str(FIXED_TIME),
            TZ="UTC",
        )
        self._env.pop("MTOOLSRC", None)

    @property
    def _drive(self) -> str:
        return f"{self.image}@@{self.offset}"

    def _run(self, tool: str, *args: str, what: str) -> bytes:
        proc = subprocess.run(
            [tool, "-i", self._drive, *args], env=self._env, capture_output=True, timeout=120
        )
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip().splitlines()
            raise FatError(f"{what} failed: {detail[-1] if detail else f'{tool} exit code'}")
        return proc.stdout

    def names(self, folder: str = "/") -> list[str]:
        """The names (long names) in a folder; [] when it does not exist."""
        proc = subprocess.run(
            ["mdir", "-b", "-i", self._drive, f"::{folder}"],
            env=self._env,
            capture_output=True,
            timeout=60,
        )
        if proc.returncode != 0:
            return []
        prefix = f"::{folder.rstrip('/')}/"
        out = []
        for line in proc.stdout.decode(errors="replace").splitlines():
            name = line.removeprefix(prefix).rstrip("/")
            if name and name not in (".", ".."):
                out.append(name)
        return out

    def exists(self, path: str) -> bool:
        folder, _, name = path.rstrip("/").rpartition("/")
        return name.lower() in (n.lower() for n in self.names(folder or "/"))

    def read(self, path: str) -> bytes | None:
        """A file's bytes; None when it does not exist."""
        if not self.exists(path):
            return None
        return self._run("mtype", f"::{path}", what=f"reading {path} from the boot partition")

    def mkdir(self, path: str) -> None:
        if not self.exists(path):
            self._run("mmd", f"::{path}", what=f"making the folder {path}")

    def write(self, path: str, data: bytes) -> bool:
        """Write a file (replacing one there); False when it already held these bytes (nothing
        is written, so a rerun leaves the image as it was)."""
        if self.read(path) == data:
            return False
        with tempfile.TemporaryDirectory(prefix="edgepilot-flash-") as tmp:
            staged = Path(tmp) / "file"
            staged.write_bytes(data)
            os.utime(staged, (FIXED_TIME, FIXED_TIME))
            self._run("mcopy", "-o", "-m", str(staged), f"::{path}", what=f"writing {path}")
        return True

    def copy_out(self, dest: Path) -> None:
        """Every file of the volume into `dest` (for tests and inspection)."""
        dest.mkdir(parents=True, exist_ok=True)
        self._run("mcopy", "-s", "-n", "-m", "::/*", str(dest), what="copying the volume out")
