"""What the agent's Python layer weighs on a device image: the `agent` extra and the core
dependencies for a given platform, downloaded (not installed) with pip, their wheels' sizes and
unpacked sizes, largest first. Needs the package index (a development-time measurement; no
Docker daemon is needed, and none was available where the images' Dockerfiles were written).

    .venv/bin/python bench/agent_image_size.py                      # Raspberry Pi / Jetson: arm64
    .venv/bin/python bench/agent_image_size.py --platform x86_64
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["agent"]]


def platforms(arch: str) -> list[str]:
    # manylinux tags pip accepts for a glibc 2.36 system (Debian bookworm, Raspberry Pi OS)
    return [f"manylinux_2_{minor}_{arch}" for minor in range(17, 37)] + [f"manylinux2014_{arch}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", default="aarch64", help="aarch64 or x86_64")
    parser.add_argument("--python-version", default="3.11")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
        cmd += ["--python-version", args.python_version, "-d", tmp]
        for tag in platforms(args.platform):
            cmd += ["--platform", tag]
        subprocess.run([*cmd, *requirements()], check=True)
        rows = []
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                unpacked = sum(info.file_size for info in zf.infolist())
            rows.append((wheel.name.split("-")[0], wheel.stat().st_size, unpacked))
    rows.sort(key=lambda r: -r[2])
    mb = 1e6
    print(f"agent's Python layer, {args.platform}, Python {args.python_version}")
    print(f"{'package':32} {'wheel MB':>9} {'unpacked MB':>12}")
    for name, size, unpacked in rows:
        print(f"{name:32} {size / mb:9.1f} {unpacked / mb:12.1f}")
    total_wheel = sum(r[1] for r in rows)
    total_unpacked = sum(r[2] for r in rows)
    label = f"total ({len(rows)} wheels)"
    print(f"{label:32} {total_wheel / mb:9.1f} {total_unpacked / mb:12.1f}")


if __name__ == "__main__":
    main()
