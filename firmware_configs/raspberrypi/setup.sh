#!/bin/bash
# EdgePilot first boot, second stage: install the agent from what the first stage moved into
# /var/lib/edgepilot-setup (its config, the enrollment token, install.sh), then remove itself.
# It needs the network (pip): Bookworm runs it from edgepilot-firstboot.service once the network
# is online (retried until it succeeds), cloud-init right after the first stage.
# Every path is under ROOT (EDGEPILOT_ROOT, default /); EDGEPILOT_PYTHON picks the Python that
# makes the agent's venv.
set -euo pipefail

main() {
  local ROOT="${EDGEPILOT_ROOT:-/}"
  ROOT="${ROOT%/}"
  local STAGE="$ROOT/var/lib/edgepilot-setup"
  local AGENT_PACKAGE PIP_ARGS
  # shellcheck source=/dev/null
  . "$STAGE/setup.env"
  local args=(--config "$STAGE/agent.toml" --token-file "$STAGE/enroll-token"
    --package "$AGENT_PACKAGE")
  if [ -n "$ROOT" ]; then args+=(--root "$ROOT"); fi
  if [ -n "$PIP_ARGS" ]; then args+=(--pip-args "$PIP_ARGS"); fi
  if [ -n "${EDGEPILOT_PYTHON:-}" ]; then args+=(--python "$EDGEPILOT_PYTHON"); fi
  bash "$STAGE/install.sh" "${args[@]}"
  rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/edgepilot-firstboot.service" \
    "$ROOT/etc/systemd/system/edgepilot-firstboot.service"
  if [ -e "$STAGE/enroll-token" ]; then
    shred -u -z -n 1 "$STAGE/enroll-token" 2>/dev/null || rm -f "$STAGE/enroll-token"
  fi
  rm -rf "$STAGE"
  echo "edgepilot first boot: agent installed" >&2
}

# One line: bash has read it all before main deletes this file.
main "$@"; exit $?
