"""The agent's one MQTT connection: last will, online status, subscriptions, reconnects.

paho runs its network loop on its own thread (`loop_start`) and reconnects by itself with a
backoff. On every (re)connect the link publishes the retained online status and subscribes to the
device's inbound topics; handlers registered with `on(kind, fn)` get the raw payloads, and
`on_connect` listeners hear about each new session (to re-request what was in flight).
Handlers run on paho's thread: they must be quick (hand real work to another thread).

The broker knows the agent by its username: a broker configured by `edgepilot hub
broker-config` replaces the client id the agent asks for with it (`use_username_as_clientid`),
so nothing here relies on that id. With `tls = true` the link speaks TLS 1.2 or newer and checks
the broker's certificate and host name (`tls_context`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import MqttSettings
from edge_agent.core.mqtt import tcp_no_delay, tls_context
from edge_agent.core.wire import DeviceStatus, TopicKind, Topics

__all__ = ["MqttLink", "make_client"]

log = logging.getLogger(__name__)

INBOUND: tuple[TopicKind, ...] = ("desired", "chunk", "ack", "infer")


def make_client(device_id: str) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edgepilot-agent-{device_id}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )


class MqttLink:
    def __init__(
        self,
        device_id: str,
        settings: MqttSettings,
        status: Callable[[str], DeviceStatus],
        *,
        client: mqtt.Client | None = None,
    ) -> None:
        self.device_id = device_id
        self.settings = settings
        self.topics = Topics(settings.topic_root)
        self._status = status
        self.client = client or make_client(device_id)
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._connect_listeners: list[Callable[[], None]] = []
        self.connected = threading.Event()
        self.connections = 0
        self._started = False

    def topic(self, kind: TopicKind) -> str:
        return self.topics.device(self.device_id, kind)

    def on(self, kind: TopicKind, handler: Callable[[bytes], None]) -> None:
        self._handlers[self.topic(kind)] = handler

    def on_connect(self, listener: Callable[[], None]) -> None:
        self._connect_listeners.append(listener)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        c = self.client
        s = self.settings
        if s.username:
            c.username_pw_set(s.username, s.password)
        if s.tls:
            c.tls_set_context(tls_context(s.ca_file, s.ca_pem))
        c.max_inflight_messages_set(s.max_inflight)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(s.reconnect_min_s, max(s.reconnect_min_s, s.reconnect_max_s))
        c.will_set(self.topic("status"), self._status("offline").dumps(), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_open = tcp_no_delay
        c.connect_async(s.host, s.port, keepalive=s.keepalive)
        c.loop_start()
        self._started = True

    def stop(self, timeout: float = 3.0) -> None:
        """Publish the retained offline status (if connected), then disconnect."""
        if not self._started:
            return
        self._started = False
        if self.connected.is_set():
            try:
                info = self.client.publish(
                    self.topic("status"), self._status("offline").dumps(), qos=1, retain=True
                )
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish the offline status: %s", exc)
        self.connected.clear()  # before disconnecting: this disconnect is no surprise
        self.client.disconnect()
        self.client.loop_stop()

    # -- sending --------------------------------------------------------------------------------
    def publish(
        self, kind: TopicKind, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        return self.client.publish(self.topic(kind), payload, qos=qos, retain=retain)

    def publish_status(self) -> None:
        if self.connected.is_set():
            self.publish("status", self._status("online").dumps(), retain=True)

    # -- paho callbacks (network thread) --------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        self.connections += 1
        log.info(
            "connected to %s://%s:%d (session %d)",
            "mqtts" if self.settings.tls else "mqtt",
            self.settings.host,
            self.settings.port,
            self.connections,
        )
        client.subscribe([(self.topic(kind), 1) for kind in INBOUND])
        self.connected.set()
        self.publish_status()
        for listener in self._connect_listeners:
            try:
                listener()
            except Exception:
                log.exception("connect listener failed")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.connected.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        handler = self._handlers.get(msg.topic)
        if handler is None:
            return
        try:
            handler(bytes(msg.payload))
        except Exception:
            log.exception("handler for %s failed", msg.topic)
