"""A sampling profiler for the hub under the fleet simulator (py-spy is not installed here).

Run as `python bench/_fleet_sim_profile.py OUT.json edgepilot-args...`: it starts a thread that
every `EP_PROFILE_INTERVAL_S` (default 0.005 s) takes every thread's Python stack
(`sys._current_frames()`) and counts those not waiting (a lock, a selector), and every second
reads each thread's CPU from /proc/self/task/<tid>/stat, which the thread's counted stacks share;
then it runs the `edgepilot` CLI. When the CLI returns (SIGTERM ends `hub serve` cleanly), or
on SIGUSR1, it writes OUT.json: CPU per thread, per function (self and inclusive) and the
heaviest stacks; SIGUSR2 starts counting again (the simulator sends it at the window's start).
All threads are seen (cProfile sees only the one that enables it), and a thread that waits
costs nothing in the profile. A stack ending in C code (SQLite, a socket) is charged to the
Python function that called it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import FrameType

TICK = os.sysconf("SC_CLK_TCK")


def _thread_cpu(native_id: int) -> float:
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _stack(frame: FrameType | None, depth: int = 48) -> list[str]:
    out: list[str] = []
    while frame is not None and len(out) < depth:
        code = frame.f_code
        path = code.co_filename
        if "/site-packages/" in path:
            name = path.rsplit("/site-packages/", 1)[-1]
        elif "/lib/python3" in path:  # the standard library
            name = path.rsplit("/", 1)[-1]
        else:
            name = path.removeprefix(str(Path.cwd()) + "/")
        out.append(f"{name}:{code.co_name}")
        frame = frame.f_back
    return out[::-1]  # outermost first


# Python leaf frames of a thread that waits (a lock, a selector): not where CPU goes
IDLE = frozenset(
    {
        "threading.py:wait",
        "threading.py:_wait_for_tstate_lock",
        "selectors.py:select",
        "paho/mqtt/client.py:_loop",  # its select() call
        "socket.py:readinto",
        "socket.py:accept",
    }
)


def _kind(name: str) -> str:
    return name.split("-")[0].rstrip("0123456789_ ") or name


class Sampler(threading.Thread):
    """Every `interval` s: each thread's stack, counted when it is not waiting; every second:
    each thread's CPU (/proc), which its counted stacks share in proportion."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True, name="ep-sampler")
        self.interval = interval
        self.last: dict[int, float] = {}
        self.cpu: defaultdict[str, float] = defaultdict(float)  # CPU seconds per thread kind
        self.busy: defaultdict[str, defaultdict[tuple[str, ...], int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self.idle: defaultdict[str, int] = defaultdict(int)
        self.stop = threading.Event()
        self.samples = 0
        self._lock = threading.Lock()

    def _read_cpu(self) -> None:
        for t in threading.enumerate():
            if t.native_id is None or t is self:
                continue
            cpu = _thread_cpu(t.native_id)
            used = cpu - self.last.get(t.native_id, cpu)
            self.last[t.native_id] = cpu
            if used > 0:
                self.cpu[_kind(t.name)] += used

    def run(self) -> None:
        me = threading.get_ident()
        self._read_cpu()
        next_cpu = time.monotonic() + 1.0
        while not self.stop.wait(self.interval):
            frames = sys._current_frames()
            names = {t.ident: t.name for t in threading.enumerate()}
            with self._lock:
                self.samples += 1
                for ident, frame in frames.items():
                    if ident == me:
                        continue
                    stack = tuple(_stack(frame))
                    kind = _kind(names.get(ident, "?"))
                    if not stack or stack[-1] in IDLE:
                        self.idle[kind] += 1
                    else:
                        self.busy[kind][stack] += 1
                if time.monotonic() >= next_cpu:
                    next_cpu += 1.0
                    self._read_cpu()

    def reset(self) -> None:
        with self._lock:
            self._read_cpu()
            self.cpu.clear()
            self.busy.clear()
            self.idle.clear()
            self.samples = 0

    def report(self) -> dict[str, object]:
        with self._lock:
            self._read_cpu()
            self_cpu: defaultdict[str, float] = defaultdict(float)
            incl_cpu: defaultdict[str, float] = defaultdict(float)
            stacks: defaultdict[str, float] = defaultdict(float)
            for kind, counted in self.busy.items():
                n = sum(counted.values())
                if not n:
                    continue
                per = self.cpu.get(kind, 0.0) / n  # CPU seconds a busy sample stands for
                for stack, k in counted.items():
                    self_cpu[stack[-1]] += k * per
                    for fn in set(stack):
                        incl_cpu[fn] += k * per
                    stacks[f"[{kind}] " + " ; ".join(stack[-10:])] += k * per
            total = sum(self.cpu.values()) or 1.0

            def top(d: dict[str, float], n: int) -> list[tuple[str, float, float]]:
                ranked = sorted(d.items(), key=lambda kv: -kv[1])[:n]
                return [(k, round(v, 2), round(v / total, 3)) for k, v in ranked]

            busy = {k: sum(v.values()) for k, v in self.busy.items()}
            return {
                "samples": self.samples,
                "interval_s": self.interval,
                "cpu_s": round(total, 2),
                "threads_cpu_s": {k: v for k, v, _ in top(self.cpu, 50)},
                "threads_busy_share": {
                    k: round(busy.get(k, 0) / max(1, busy.get(k, 0) + self.idle.get(k, 0)), 3)
                    for k in set(busy) | set(self.idle)
                },
                "self": top(self_cpu, 40),
                "inclusive": top(incl_cpu, 80),
                "stacks": top(stacks, 30),
            }


def main() -> int:
    out = Path(sys.argv[1])
    sys.argv = ["edgepilot", *sys.argv[2:]]
    sampler = Sampler(float(os.environ.get("EP_PROFILE_INTERVAL_S", "0.005")))
    sampler.start()
    from cloud_hub.cli.main import main as cli

    def write() -> None:
        sampler.stop.set()
        out.write_text(json.dumps(sampler.report(), indent=1) + "\n")

    def on_usr1(signum: int, frame: object) -> None:  # a snapshot while it runs
        out.write_text(json.dumps(sampler.report(), indent=1) + "\n")

    def on_usr2(signum: int, frame: object) -> None:  # start counting again (the window)
        sampler.reset()

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, on_usr2)
    try:
        code = cli()
    finally:
        write()
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
