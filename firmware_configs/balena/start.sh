#!/bin/sh
# Starts the agent in a balena container. Its config is the package's agent-container.toml;
# the hub and the fleet token come from balena's fleet variables (EDGEPILOT_AGENT_ENROLL_HUB,
# EDGEPILOT_AGENT_ENROLL_TOKEN, set by `edgepilot balena setup`). The device's hardware id, which
# brings a re-installed device back as the same hub device, is balena's device UUID unless
# EDGEPILOT_AGENT_ENROLL_HARDWARE_ID is set.
set -eu

if [ -z "${EDGEPILOT_AGENT_ENROLL_HARDWARE_ID:-}" ] && [ -n "${BALENA_DEVICE_UUID:-}" ]; then
  EDGEPILOT_AGENT_ENROLL_HARDWARE_ID=$BALENA_DEVICE_UUID
  export EDGEPILOT_AGENT_ENROLL_HARDWARE_ID
fi
data_dir=${EDGEPILOT_AGENT_DATA_DIR:-/var/lib/edgepilot}
config=${EDGEPILOT_AGENT_CONFIG:-}
if [ -z "$config" ]; then
  config=$(python3 -c \
    'import firmware_configs; print(firmware_configs.root() / "agent" / "agent-container.toml")')
fi

if [ -z "${EDGEPILOT_AGENT_ENROLL_HUB:-}" ] && [ ! -f "$data_dir/identity.json" ]; then
  # Waiting beats a restart loop: balena restarts the container when a variable is set.
  echo "edgepilot: EDGEPILOT_AGENT_ENROLL_HUB and EDGEPILOT_AGENT_ENROLL_TOKEN are not set:" \
    "set them as fleet variables (\`edgepilot balena setup --fleet NAME\` does); waiting" >&2
  exec sleep infinity
fi
exec edgepilot-agent run --config "$config"
