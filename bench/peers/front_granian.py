"""The hub's app (front_app.factory) served by granian, for bench/front.py:

    front_granian.py --port N [--workers K]

granian lives in its own venv (build/peers/granian-venv, from bench/peers/requirements-granian.txt),
never the project's: this script runs on the project's interpreter (the hub and its
dependencies) with that venv's site-packages appended to sys.path, so the project's packages
come first. ASGI interface with its lifespan, HTTP/1, uvloop, one runtime thread, access log on
(as `hub serve`'s uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE.parents[1] / "build" / "peers" / "granian-venv"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = VENV / "lib" / version / "site-packages"
    if not site.is_dir():
        raise SystemExit(f"no {site}: build the venv with a {version} (bench/front.py does)")
    sys.path.append(str(site))
    sys.path.insert(0, str(HERE))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *sys.path[1:]])  # for the workers
    from granian import Granian

    Granian(
        "front_app:factory",
        address="127.0.0.1",
        port=args.port,
        interface="asgi",
        workers=args.workers,
        loop="uvloop",
        http="1",
        log_access=True,
        factory=True,
        working_dir=HERE,
    ).serve()


if __name__ == "__main__":
    main()
