"""Job completion on MQTT: `{root}/jobs/{id}`, QoS 1, the job as JSON (state, result or error).

The hub's workers publish with a small client of their own (not the fleet service's: a worker
process has no fleet service), built only when the settings name a broker (`mqtt_host`). A
subscriber takes `{root}/jobs/{id}` for one job, or `{root}/jobs/+` for all of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.core.settings import HubSettings
from cloud_hub.serving.jobs.queue import Job
from edge_agent.core.wire import Topics

log = logging.getLogger(__name__)


def job_topic(root: str, job_id: str) -> str:
    return Topics(root).job(job_id)


def job_message(job: Job) -> bytes:
    """What subscribers get: the job without its request (which may be large)."""
    return job.model_dump_json(exclude={"request"}).encode()


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes) -> None: ...


class JobNotifier:
    """Publishes a job that reached a final state (or, time-differential, its slow answer)."""

    def __init__(self, publisher: Publisher, topic_root: str) -> None:
        self.publisher = publisher
        self.root = topic_root

    def __call__(self, job: Job) -> None:
        try:
            self.publisher.publish(job_topic(self.root, job.id), job_message(job))
        except Exception:  # a broker outage must not fail the job: the result is in the DB
            log.exception("could not publish the completion of job %s", job.id)


class MqttPublisher:
    """A paho client that only publishes (QoS 1), with the hub's credentials and protocol."""

    def __init__(self, settings: HubSettings) -> None:
        assert settings.mqtt_host is not None
        self.host = settings.mqtt_host
        self.port = settings.mqtt_port
        client_id = f"{settings.mqtt_client_id}-jobs-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        if settings.mqtt_protocol == "5":
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
        else:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=True,
            )
        from cloud_hub.fleet.broker_auth import (
            BrokerFiles,
            EventsAccount,
            claim_events_account,
            hub_ca_file,
        )
        from edge_agent.core.mqtt import tls_context

        username, password = settings.mqtt_username, settings.mqtt_password
        self._account: EventsAccount | None = None
        if username is None:
            # Not the fleet service's account: the broker takes the username as client id, and
            # a second client on it would take over the hub's session. One publisher account
            # per client (see broker_auth.claim_events_account).
            self._account = claim_events_account(BrokerFiles.in_data_dir(settings.data_dir))
            username = self._account.username
            password = password or self._account.password
        self.client.username_pw_set(username, password)
        if settings.mqtt_tls:
            self.client.tls_set_context(tls_context(hub_ca_file(settings)))
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.max_inflight_messages_set(1000)
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._sent: list[mqtt.MQTTMessageInfo] = []  # QoS 1 publishes not yet acknowledged
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.keepalive = settings.mqtt_keepalive_s

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self._connected.set()
        else:
            log.error("broker refused the job publisher: %s", reason)

    def _on_disconnect(self, *args: Any) -> None:
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, wait_s: float = 5.0) -> MqttPublisher:
        self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.loop_start()
        if not self._connected.wait(wait_s):
            log.warning("job publisher: no broker at %s:%s yet; retrying", self.host, self.port)
        return self

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        with self._lock:
            self._sent = [i for i in self._sent if not i.is_published()] + [info]

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until the broker has acknowledged what was published (a short-lived process,
        the CLI, before it disconnects); False when it did not within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            sent, self._sent = self._sent, []
        for info in sent:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    return False
                info.wait_for_publish(left)
            except (RuntimeError, ValueError):  # never queued: no connection
                return False
            if not info.is_published():
                return False
        return True

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        if self._account is not None:
            self._account.release()
