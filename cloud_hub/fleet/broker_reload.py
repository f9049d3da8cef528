"""Making the broker re-read the fleet's password and ACL files, without a restart.

Mosquitto re-reads `password_file` and `acl_file` on SIGHUP, keeps every connected client, and
disconnects those whose credentials no longer verify (a revoked device is cut off at once). The
hub triggers that after each change of the fleet's accounts, one of two ways (settings):

- `broker_pid_file`: the hub sends SIGHUP to the pid in it (a broker on this machine, started
  with `-d` and `pid_file`, or whose pid a supervisor writes);
- `broker_reload_command`: a command, e.g. `systemctl reload mosquitto` (Debian's unit reloads
  with SIGHUP) or `ssh broker-host sudo systemctl reload mosquitto`.

With neither, the hub looks for the pid file the generated mosquitto.conf names
(`{data_dir}/mosquitto/mosquitto.pid`, written by a broker started with `-d`). Where there is
none, the change waits for the operator (`kill -HUP`); the outcome says so, and the CLI and the
log repeat it. Only a process that is Mosquitto is signalled: a stale pid file may name another
program by now, and SIGHUP ends most programs.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BrokerReloader", "ReloadOutcome"]

log = logging.getLogger(__name__)

RELOAD_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ReloadOutcome:
    done: bool
    how: str  # "sighup", "command", "not configured", or why it failed

    def __str__(self) -> str:
        return self.how


@dataclass(frozen=True)
class BrokerReloader:
    pid_file: Path | None = None
    command: str | None = None

    @property
    def configured(self) -> bool:
        return self.pid_file is not None or self.command is not None

    def reload(self) -> ReloadOutcome:
        """Ask the broker to re-read its files; never raises (the files are written already:
        a failed reload is retried by the next change or by hand)."""
        if self.command is not None:
            outcome = self._run_command(self.command)
        elif self.pid_file is not None:
            outcome = self._sighup(self.pid_file)
        else:
            outcome = ReloadOutcome(
                False,
                "not configured: set broker_pid_file or broker_reload_command, or send the "
                "broker SIGHUP yourself",
            )
        (log.info if outcome.done else log.warning)("broker reload: %s", outcome.how)
        return outcome

    @staticmethod
    def _sighup(pid_file: Path) -> ReloadOutcome:
        try:
            pid = int(pid_file.read_text().strip())
        except FileNotFoundError:
            return ReloadOutcome(
                False,
                f"no pid file {pid_file} (Mosquitto writes it when started with -d): set "
                "broker_pid_file or broker_reload_command, or send the broker SIGHUP yourself",
            )
        except (OSError, ValueError):
            return ReloadOutcome(False, f"{pid_file} does not hold a process id")
        if pid <= 1:
            return ReloadOutcome(False, f"{pid_file} does not hold a process id")
        name = _process_name(pid)
        if name is None:
            return ReloadOutcome(False, f"no process {pid} (from {pid_file}): a stale pid file")
        if "mosquitto" not in name:  # a stale file whose pid now belongs to someone else
            return ReloadOutcome(
                False, f"process {pid} (from {pid_file}) is {name!r}, not Mosquitto"
            )
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return ReloadOutcome(False, f"no process {pid} (from {pid_file}): a stale pid file")
        except PermissionError:
            return ReloadOutcome(False, f"not allowed to signal process {pid} (from {pid_file})")
        return ReloadOutcome(True, f"sighup to {pid}")

    @staticmethod
    def _run_command(command: str) -> ReloadOutcome:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            return ReloadOutcome(False, f"broker_reload_command cannot be split: {exc}")
        if not argv:
            return ReloadOutcome(False, "broker_reload_command is empty")
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=RELOAD_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            return ReloadOutcome(False, f"{argv[0]}: no such program")
        except subprocess.TimeoutExpired:
            return ReloadOutcome(False, f"{argv[0]} took over {RELOAD_TIMEOUT_S:.0f} s")
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return ReloadOutcome(False, f"{argv[0]} exited {done.returncode}: {last[0][:200]}")
        return ReloadOutcome(True, f"ran {argv[0]}")


def _process_name(pid: int) -> str | None:
    """The program a process runs (Linux /proc), '' where that cannot be read, None when there
    is no such process. SIGHUP ends most programs: only Mosquitto is sent one."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
