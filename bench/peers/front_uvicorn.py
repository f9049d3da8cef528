"""The hub's app (front_app.factory) behind several uvicorn processes on one port, as
bench/front.py measures a multi-process front:

    front_uvicorn.py --port N --workers K    uvicorn's own supervisor: one listening socket,
                                             K spawned worker processes accepting from it
    front_uvicorn.py --port N --reuseport K  K independent processes, each its own socket
                                             bound with SO_REUSEPORT (the kernel spreads the
                                             connections over them); this one is the first

uvicorn as `hub serve` runs it (uvloop, httptools, log level info: access log on). Each
process says "Application startup complete." once its lifespan has loaded the endpoints."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP = "front_app:factory"
OPTIONS = {
    "factory": True,
    "host": "127.0.0.1",
    "loop": "uvloop",
    "http": "httptools",
    "log_level": "info",
    "timeout_graceful_shutdown": 5,
}


def reuseport_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def serve_reuseport(port: int) -> None:
    """One uvicorn process on its own SO_REUSEPORT socket (listening once its app has started:
    a socket only bound gets no connections)."""
    import uvicorn

    config = uvicorn.Config(APP, port=port, **OPTIONS)  # type: ignore[arg-type]
    uvicorn.Server(config).run(sockets=[reuseport_socket(port)])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--workers", type=int, help="uvicorn --workers K (one shared socket)")
    mode.add_argument("--reuseport", type=int, help="K processes, SO_REUSEPORT sockets")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if args.workers is not None:
        import uvicorn

        uvicorn.run(APP, port=args.port, workers=args.workers, app_dir=str(HERE), **OPTIONS)  # type: ignore[arg-type]
        return
    others = [
        subprocess.Popen([sys.executable, __file__, "--port", str(args.port), "--reuseport", "1"])
        for _ in range(args.reuseport - 1)
    ]
    try:
        serve_reuseport(args.port)
    finally:
        for other in others:
            other.terminate()
        for other in others:
            other.wait(timeout=15)


if __name__ == "__main__":
    main()
