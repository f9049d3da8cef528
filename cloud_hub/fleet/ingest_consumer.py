"""`edgepilot hub ingest`: one more consumer of the fleet's logs, beside the hub.

With the hub's `fleet_shared_logs`, the hub reads devices' logs on an MQTT shared subscription
(`$share/GROUP/{root}/dev/+/logs`); every consumer process joins the same group, and the broker
hands each message to one of them. A consumer stores what it gets through the same ingest (group
commit, exactly once on (device, epoch, seq), each epoch's mark advanced inside the storing
transaction, so consumers racing on one device's batches still ack only what is stored
contiguously) and acknowledges it to the device. It reads nothing else: status, reports,
telemetry (the live stream's) and model transfer stay with the hub.

Each consumer logs in as an `edgepilot-hub-ingest-N` account it holds alone (a lock in the
broker files' folder; the broker takes the username as client id) with a clean session: when
it stops, the broker hands its share to the others at once; a batch it took and did not ack is
sent again by its agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloud_hub.core.errors import Refused
from cloud_hub.fleet.broker_auth import INGEST_ACCOUNTS, BrokerFiles, claim_ingest_account
from cloud_hub.fleet.mqtt_service import FleetService, build_client

if TYPE_CHECKING:
    from cloud_hub.hub import Hub

__all__ = ["IngestConsumer"]


class IngestConsumer:
    def __init__(self, hub: Hub) -> None:
        account = claim_ingest_account(BrokerFiles.in_data_dir(hub.settings.data_dir))
        if account is None:
            raise Refused(
                409, f"all {INGEST_ACCOUNTS} ingest accounts are held by running consumers"
            )
        self.account = account
        client = build_client(
            hub.settings, account=(account.username, account.password), persistent=False
        )
        self.service = FleetService.from_hub(hub, client=client, role="ingest")

    @property
    def username(self) -> str:
        return self.account.username

    def start(self) -> IngestConsumer:
        self.service.start()
        return self

    def stop(self) -> None:
        self.service.stop()
        self.account.release()
