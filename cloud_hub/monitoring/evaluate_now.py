"""One evaluation of the alert rules, now, with what opened or resolved published on MQTT as the
hub's monitor publishes it (`edgepilot alerts evaluate --mqtt HOST:PORT`)."""

from __future__ import annotations

from cloud_hub.core.db import Database
from cloud_hub.core.settings import HubSettings
from cloud_hub.monitoring.alerts import AlertEvent
from cloud_hub.monitoring.service import MonitorService
from cloud_hub.serving.jobs.notify import MqttPublisher

CONNECT_WAIT_S = 5.0  # how long the broker has to answer
FLUSH_WAIT_S = 10.0  # how long it has to acknowledge what was published


class BrokerUnavailable(RuntimeError):
    """The broker did not answer, or did not acknowledge the alerts."""


def evaluate_and_publish(db: Database, settings: HubSettings) -> list[AlertEvent]:
    """Evaluate the rules on the hub database `db` and publish the events on the broker of
    `settings`, topic `{topic_root}/alerts`; raises BrokerUnavailable when the broker fails."""
    where = f"{settings.mqtt_host}:{settings.mqtt_port}"
    publisher = MqttPublisher(settings).start(wait_s=CONNECT_WAIT_S)
    try:
        if not publisher.connected:
            raise BrokerUnavailable(f"no MQTT broker answered at {where}")
        service = MonitorService(
            db,
            interval_s=settings.monitor_interval_s,
            max_records=settings.monitor_max_records,
            topic_root=settings.topic_root,
            publisher=publisher,
        )
        events = service.evaluate()
        if not publisher.flush(FLUSH_WAIT_S):
            raise BrokerUnavailable(f"the broker at {where} did not acknowledge the alerts")
        return events
    finally:
        publisher.stop()
