"""The fleet: devices, deployments, and the hub's MQTT side.

- `devices.DeviceStore`: registration (broker credentials, Mosquitto password/ACL files via
  `broker_auth`), listing, stored inference logs.
- `deployments.DeploymentStore`: validated deployments (artifact choice in `artifacts`), canary
  split, superseding; it only writes rows.
- `rollout.Rollout`: per-device progress from reports; canary promotion, halting, completion.
- `ingest.Ingest`: idempotent logs/telemetry storage and the contiguous ack mark.
- `desired.DesiredStates`: the signed DesiredState document of one device.
- `mqtt_service.FleetService`: the one MQTT client that ties these to the broker.
- `fleet.Fleet`: the stores built from the hub's settings (`Hub.fleet`).
"""
