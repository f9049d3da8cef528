#!/bin/bash
# Install the EdgePilot agent on a bare OS (Raspberry Pi OS, Debian, Ubuntu for Jetson) as a
# systemd service. Run as root; running it again gives the same result.
#
#   install.sh [--root DIR] [--config FILE] [--token-file FILE] [--package SPEC]
#              [--pip-args "ARGS"] [--python PY] [--no-start]
#
#   --root DIR         write every path under DIR (a fake root, an image's mounted root);
#                      default /. Under another root no user is created, nothing is chowned and
#                      nothing is started.
#   --config FILE      the agent's config: copied to /etc/edgepilot/agent.toml (root:edgepilot 0640)
#   --token-file FILE  the fleet enrollment token: moved to /etc/edgepilot/enroll-token
#                      (edgepilot 0600); the agent deletes it once it has enrolled
#   --package SPEC     what pip installs into /opt/edgepilot/venv (default "edgepilot[agent]"; a
#                      wheel's path works, e.g. "/tmp/edgepilot-0.1.0-py3-none-any.whl[agent]")
#   --pip-args "ARGS"  more arguments for pip (e.g. "--extra-index-url URL", "--no-index")
#   --python PY        the Python that makes the venv (default python3; 3.11 or newer)
#   --no-start         enable the service but do not start it now
#
# The unit comes from the installed package (firmware_configs/systemd/edgepilot-agent.service),
# so it always matches the agent it runs.
set -eu

UNIT=edgepilot-agent.service
VENV=/opt/edgepilot/venv
ETC=/etc/edgepilot
DATA=/var/lib/edgepilot
SYSTEMD=/etc/systemd/system
USER_NAME=edgepilot

say() { printf 'edgepilot install: %s\n' "$*" >&2; }
die() {
  printf 'edgepilot install: error: %s\n' "$*" >&2
  exit 2
}

usage() { sed -n '2,/^set -eu/{/^#/s/^# \{0,1\}//p}' "$0"; }

ROOT=/
CONFIG=
TOKEN_FILE=
PACKAGE='edgepilot[agent]'
PIP_ARGS=
PYTHON=python3
START=1

need_value() { [ "$#" -ge 2 ] || die "$1 needs a value (see --help)"; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    --root) need_value "$@"; ROOT=$2; shift 2 ;;
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --token-file) need_value "$@"; TOKEN_FILE=$2; shift 2 ;;
    --package) need_value "$@"; PACKAGE=$2; shift 2 ;;
    --pip-args) need_value "$@"; PIP_ARGS=$2; shift 2 ;;
    --python) need_value "$@"; PYTHON=$2; shift 2 ;;
    --no-start) START=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[ -n "$ROOT" ] || die "--root is empty"
[ -d "$ROOT" ] || die "--root $ROOT is not a directory"
ROOT=$(cd "$ROOT" && pwd -P)
if [ "$ROOT" = / ]; then
  R=
  REAL=1
else
  R=$ROOT
  REAL=0
fi
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "--config $CONFIG: no such file"
if [ -n "$TOKEN_FILE" ] && [ ! -f "$TOKEN_FILE" ] && [ ! -f "$R$ETC/enroll-token" ] &&
  [ ! -f "$R$DATA/identity.json" ]; then
  die "--token-file $TOKEN_FILE: no such file"
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "--python $PYTHON: not found (install python3)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$PYTHON is older than Python 3.11, which the agent needs"
if [ "$REAL" = 1 ] && [ "$(id -u)" != 0 ]; then
  die "run it as root (sudo), or give --root DIR to install under DIR"
fi

# 1. The user the service runs as (in the video group, for cameras).
if [ "$REAL" = 1 ]; then
  if id -u "$USER_NAME" >/dev/null 2>&1; then
    say "user $USER_NAME exists"
  else
    useradd --system --user-group --home-dir "$DATA" --no-create-home \
      --shell /usr/sbin/nologin "$USER_NAME"
    say "created system user $USER_NAME"
  fi
  if getent group video >/dev/null 2>&1; then
    usermod -a -G video "$USER_NAME"
  fi
else
  say "skipping user creation under --root $ROOT (the unit's User=$USER_NAME needs it on the device)"
fi

# chown only where the user exists (a real root); a fake root keeps the caller's ownership.
own() {
  if [ "$REAL" = 1 ]; then chown "$1" "$2"; fi
}

# 2. The venv and the agent.
if [ -x "$R$VENV/bin/python" ]; then
  say "venv $VENV exists"
else
  mkdir -p "$R/opt/edgepilot"
  "$PYTHON" -m venv "$R$VENV"
  say "created venv $VENV"
fi
# shellcheck disable=SC2086 # PIP_ARGS is a list of arguments
"$R$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS "$PACKAGE" ||
  die "pip could not install $PACKAGE (see pip's message above)"
[ -x "$R$VENV/bin/edgepilot-agent" ] ||
  die "$PACKAGE installed no edgepilot-agent command: is it the EdgePilot package?"
say "installed $PACKAGE into $VENV"

# 3. Config, token, data dir.
mkdir -p "$R$ETC" "$R$DATA"
chmod 1770 "$R$ETC" # see the unit: the agent may delete its own token here, nothing else
own root:"$USER_NAME" "$R$ETC"
chmod 0700 "$R$DATA"
own "$USER_NAME:$USER_NAME" "$R$DATA"
if [ -n "$CONFIG" ]; then
  install -m 0640 "$CONFIG" "$R$ETC/agent.toml.new"
  own root:"$USER_NAME" "$R$ETC/agent.toml.new"
  mv -f "$R$ETC/agent.toml.new" "$R$ETC/agent.toml"
  say "config $ETC/agent.toml (0640)"
elif [ ! -f "$R$ETC/agent.toml" ]; then
  say "no --config and no $ETC/agent.toml yet: write one before the agent can start"
fi
if [ -n "$TOKEN_FILE" ] && [ ! -f "$TOKEN_FILE" ]; then
  # Run again with the same arguments: the token moved on the first run, or was used already.
  if [ -f "$R$ETC/enroll-token" ]; then
    say "enrollment token already in $ETC/enroll-token"
  elif [ -f "$R$DATA/identity.json" ]; then
    say "the agent has enrolled already: no enrollment token needed"
  else
    die "--token-file $TOKEN_FILE: no such file"
  fi
elif [ -n "$TOKEN_FILE" ]; then
  if [ "$(cd "$(dirname "$TOKEN_FILE")" && pwd -P)/$(basename "$TOKEN_FILE")" != "$R$ETC/enroll-token" ]; then
    (umask 077 && cat "$TOKEN_FILE" >"$R$ETC/enroll-token.new")
    own "$USER_NAME:$USER_NAME" "$R$ETC/enroll-token.new"
    mv -f "$R$ETC/enroll-token.new" "$R$ETC/enroll-token"
    rm -f "$TOKEN_FILE"
  fi
  chmod 0600 "$R$ETC/enroll-token"
  say "enrollment token $ETC/enroll-token (0600)"
fi

# 4. The unit, from the installed package.
UNIT_SRC=$("$R$VENV/bin/python" -c \
  'import firmware_configs; print(firmware_configs.root() / "systemd" / "edgepilot-agent.service")') ||
  die "the installed package has no firmware_configs: is $PACKAGE the EdgePilot package?"
[ -f "$UNIT_SRC" ] || die "the installed package lacks $UNIT_SRC"
mkdir -p "$R$SYSTEMD"
install -m 0644 "$UNIT_SRC" "$R$SYSTEMD/$UNIT"
say "unit $SYSTEMD/$UNIT"

# 5. Enable (offline too: systemctl --root writes the wants/ link), start on a real root.
if command -v systemctl >/dev/null 2>&1; then
  if [ "$REAL" = 1 ]; then
    systemctl daemon-reload || say "systemctl daemon-reload failed (is systemd running?)"
    systemctl enable --quiet "$UNIT"
  else
    systemctl --root="$ROOT" enable --quiet "$UNIT"
  fi
else
  mkdir -p "$R$SYSTEMD/multi-user.target.wants"
  ln -sfn "$SYSTEMD/$UNIT" "$R$SYSTEMD/multi-user.target.wants/$UNIT"
fi
say "enabled $UNIT"
if [ "$REAL" = 1 ] && [ "$START" = 1 ]; then
  systemctl restart "$UNIT"
  say "started $UNIT (journalctl -u $UNIT -f to follow it)"
elif [ "$START" = 1 ]; then
  say "not starting $UNIT under --root $ROOT"
else
  say "not starting $UNIT (--no-start)"
fi
