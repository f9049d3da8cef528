"""The fleet: devices, deployments, and the hub's MQTT side."""
