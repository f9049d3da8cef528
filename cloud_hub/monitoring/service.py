"""The hub's monitor thread: evaluates the alert rules every `monitor_interval_s` and publishes
each alert opened or resolved on MQTT `{root}/alerts` (QoS 1) when the settings name a broker.

`evaluate()` is one pass, callable directly (tests, `POST /api/v1/alerts/evaluate`); the thread
only calls it on a timer. A failed pass is logged and the next one runs as usual; a publish
that fails is logged too (the alert is in the database either way).
"""

from __future__ import annotations

import logging
import threading

from cloud_hub.core.db import Database
from cloud_hub.core.settings import HubSettings
from cloud_hub.monitoring.alerts import AlertEvent, Monitor, alerts_topic
from cloud_hub.serving.jobs.notify import MqttPublisher, Publisher

log = logging.getLogger(__name__)


class MonitorService:
    def __init__(
        self,
        db: Database,
        *,
        interval_s: float,
        max_records: int,
        topic_root: str,
        publisher: Publisher | None = None,
    ) -> None:
        self.monitor = Monitor(db, max_records=max_records)
        self.interval_s = interval_s
        self.topic = alerts_topic(topic_root)
        self.publisher = publisher
        self._lock = threading.Lock()  # one pass at a time (the timer and direct calls)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, db: Database, settings: HubSettings) -> MonitorService:
        """With an MQTT publisher when the settings name a broker (`mqtt_host`)."""
        publisher = MqttPublisher(settings) if settings.mqtt_host is not None else None
        return cls(
            db,
            interval_s=settings.monitor_interval_s,
            max_records=settings.monitor_max_records,
            topic_root=settings.topic_root,
            publisher=publisher,
        )

    def start(self) -> MonitorService:
        """Start the thread (it connects the publisher first: the hub's start never waits for
        the broker; an alert published before the connection is queued by the client)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if isinstance(self.publisher, MqttPublisher):
            self.publisher.stop()

    def evaluate(self) -> list[AlertEvent]:
        """One pass: evaluate the rules, publish what opened or resolved, return it."""
        with self._lock:
            events = self.monitor.evaluate()
        for event in events:
            self._publish(event)
        return events

    def _publish(self, event: AlertEvent) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish(self.topic, event.model_dump_json().encode())
        except Exception:
            log.exception("could not publish alert %s (%s)", event.alert.id, event.event)

    def _loop(self) -> None:
        if isinstance(self.publisher, MqttPublisher):
            try:
                self.publisher.start(wait_s=2.0)
            except Exception:  # alerts are still raised and kept: REST and the CLI show them
                log.exception("alert monitor: no MQTT publisher, alerts are not published")
                self.publisher = None
        while not self._stop.wait(self.interval_s):
            try:
                self.evaluate()
            except Exception:
                log.exception("the alert monitor's pass failed")
