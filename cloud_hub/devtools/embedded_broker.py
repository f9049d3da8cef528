"""`python -m cloud_hub.devtools.embedded_broker --port N`: a pure-Python MQTT 3.1.1 broker (amqtt).

Only the demo's fallback where Mosquitto is not installed; production fleets run Mosquitto or an
MQTT cluster. amqtt is slower (about 5,000 msg/s) and speaks MQTT 3.1.1 only, which is what the
hub and the agents speak.
"""

from __future__ import annotations

import argparse
import asyncio
import signal


async def serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            # Only the anonymous plugin: any client, with or without a username, may connect (the
            # demo's broker listens on loopback only).
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
