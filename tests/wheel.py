"""This project built as a wheel, once per test process, for the tests that pip-install the
agent offline (install.sh, the first-boot scripts): `project_wheel(tmp_dir)`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["project_wheel"]

REPO = Path(__file__).resolve().parents[1]
_built: dict[str, Path] = {}


def project_wheel(tmp_dir: Path) -> Path:
    """The wheel (no dependencies inside: install it with `--no-deps`), built into `tmp_dir` on
    the first call of this process; later calls return that same file."""
    if "wheel" in _built and _built["wheel"].is_file():
        return _built["wheel"]
    out = Path(tmp_dir)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    (wheel,) = out.glob("edgepilot-*.whl")
    _built["wheel"] = wheel
    return wheel
