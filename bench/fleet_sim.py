"""Fleet simulator: thousands of light MQTT devices against a real hub, measured over a window.

    .venv/bin/python bench/fleet_sim.py --devices 1000 --window 300 --warmup 60 \
        --json bench/results/fleet_sim_1000.json

What runs (all on loopback, all real processes):
- Mosquitto with the config `edgepilot hub broker-config` writes (password file, per-device ACL,
  `set_tcp_nodelay`), and `edgepilot hub serve --mqtt ...` with the hub's defaults (scheduler,
  job workers, prediction log and monitoring with the default alert rules on). A small model
  (digits, logistic regression) is trained first, so the logs name a version with a training
  baseline and the drift rules have work, as on a real fleet.
- The devices are registered through the REST API (`POST /api/v1/devices`, a few requests in
  flight), the rate measured per 500.
- Worker processes (bench/_fleet_sim_device.py) each drive a share of the devices with one
  selector loop over paho clients: the agent's wire protocol through edge_agent.core.wire (retained
  status with a last will, a LogBatch of 1-5 records every second, a TelemetryBatch every 5 s,
  the forwarder's epoch/floor/sequence rules, acks honoured, records resent until acked). They
  connect in paced waves: Mosquitto 2.0's listen backlog is a fixed 100.

What is measured over the window (after the warm-up):
- the hub's CPU (its process tree, /proc) in cores and per message received, Mosquitto's, and the
  simulator's own (each worker and this process), with how late device ticks ran (if the
  simulator were the bottleneck, its ticks would be late);
- ack lag: from a record's making at the device to the ack that covers it, p50/p99 per slice
  (default 30 s), to show whether it grows;
- rows stored a second (the hub's SQLite, logs and telemetry), beside records made;
- `GET /api/v1/devices` page by page (limit 500): per-page p50/max and the whole walk;
- the live stream (`GET /api/v1/stream`), one client: lag from a telemetry record's `ts` to its
  `telemetry` event.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _fleet_sim_device import WorkerConfig, WorkerResult, run_worker  # noqa: E402 (bench/)
from _fleet_sim_hub import (  # noqa: E402
    DevicesPoller,
    HubUnderTest,
    StreamWatcher,
    cpu_s,
    hub_metrics,
    hub_under_test,
    listen_overflows,
    register_devices,
    rss_mb,
)


def pct(values: list[float] | array[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[k])


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Sampler:
    """CPU of the hub, the broker and this process, and the hub's rows, at a moment."""

    def __init__(self, hub: HubUnderTest) -> None:
        self.hub = hub

    def take(self, *, count: bool = False) -> dict[str, Any]:
        """`count`: also count the stored rows exactly (a scan: at the window's ends only)."""
        out: dict[str, Any] = {
            "t": time.monotonic(),
            "hub_cpu": cpu_s(self.hub.hub.pid),
            "broker_cpu": cpu_s(self.hub.broker.pid, tree=False),
            "self_cpu": _self_cpu(),
            "marks": self.hub.marks(),
        }
        if count:
            out["rows"] = self.hub.rows()
        return out


def _spread(devices: list[tuple[str, str]], workers: int) -> list[list[tuple[str, str]]]:
    return [devices[i::workers] for i in range(workers)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fleet-sim-"))
    workdir.mkdir(parents=True, exist_ok=True)
    n = args.devices
    workers = args.workers or max(1, min(6, math.ceil(n / 1000)))
    say = print if not args.quiet else (lambda *a, **k: None)
    say(f"workdir {workdir}; {n} devices on {workers} worker process(es)")
    result: dict[str, Any] = {
        "devices": n,
        "window_s": args.window,
        "warmup_s": args.warmup,
        "slice_s": args.slice,
        "workers": workers,
        "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    with hub_under_test(workdir, model=not args.no_model, profile=args.hub_profile) as hub:
        say(f"hub {hub.api} (pid {hub.hub.pid}), Mosquitto :{hub.mqtt_port} (pid {hub.broker.pid})")
        reg = register_devices(hub, n, concurrency=args.register_concurrency)
        result["registration"] = {
            "per_s": round(reg.rate, 1),
            "seconds": round(reg.seconds, 2),
            "concurrency": reg.concurrency,
            "per_block": [(k, round(r, 1)) for k, r in reg.per_block],
        }
        say(f"registered {n} devices in {reg.seconds:.1f} s: {reg.rate:.0f}/s "
            f"(by 500: {', '.join(f'{r:.0f}' for _, r in reg.per_block)})")  # fmt: skip

        # the hub's own CPU with no device connected: its loops, scheduler, monitor
        idle0, t_idle = cpu_s(hub.hub.pid), time.monotonic()
        time.sleep(args.idle)
        result["hub_idle_cores"] = round(
            (cpu_s(hub.hub.pid) - idle0) / (time.monotonic() - t_idle), 3
        )
        stream = StreamWatcher(hub)
        stream.start()
        ctx = mp.get_context("spawn")
        shared: dict[str, Any] = {
            "stop": ctx.Event(),
            "window_start": ctx.Value("d", 0.0),
            "connected": ctx.Array("i", workers),
        }
        results_q = ctx.Queue()
        procs = []
        overflows0 = listen_overflows()
        t_connect = time.monotonic()
        for i, share in enumerate(_spread(reg.devices, workers)):
            cfg = WorkerConfig(
                index=i,
                devices=share,
                host="127.0.0.1",
                port=hub.mqtt_port,
                topic_root="ep",
                version_id=hub.version_id,
                features=hub.features,
                labels=hub.labels,
                connect_rate=args.connect_rate / workers,
                slice_s=args.slice,
                seed=1000 + i,
                nice=args.sim_nice,
            )
            p = ctx.Process(target=run_worker, args=(cfg, shared, results_q), daemon=True)
            p.start()
            procs.append(p)
        try:
            deadline = time.monotonic() + n / args.connect_rate + 120
            while sum(shared["connected"][:]) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {sum(shared['connected'][:])} of {n} connected")
                if any(not p.is_alive() for p in procs):
                    raise RuntimeError("a worker process died")
                time.sleep(0.5)
            connect_s = time.monotonic() - t_connect
            result["connect"] = {
                "seconds": round(connect_s, 1),
                "rate_per_s": args.connect_rate,
                "listen_overflows": listen_overflows() - overflows0,
            }
            say(f"all {n} connected in {connect_s:.1f} s "
                f"(listen overflows {result['connect']['listen_overflows']}); "
                f"warm-up {args.warmup:.0f} s")  # fmt: skip
            time.sleep(args.warmup)

            sampler = Sampler(hub)
            samples = [sampler.take(count=True)]
            shared["window_start"].value = time.time()
            if args.hub_profile is not None:
                os.kill(hub.hub.pid, signal.SIGUSR2)  # the profile counts from here
            window_wall0 = time.time()
            poller = DevicesPoller(hub, every=args.devices_every)
            poller.start()
            slices = max(1, int(round(args.window / args.slice)))
            for k in range(slices):
                end = samples[0]["t"] + (k + 1) * args.slice
                while time.monotonic() < end:
                    if any(not p.is_alive() for p in procs):
                        raise RuntimeError("a worker process died")
                    time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                samples.append(sampler.take(count=k == slices - 1))
                s0, s1 = samples[-2], samples[-1]
                dt = s1["t"] - s0["t"]
                rows = s1["marks"] - s0["marks"]
                say(f"  slice {k + 1}/{slices}: hub {(s1['hub_cpu'] - s0['hub_cpu']) / dt:.2f} "
                    f"cores, {rows / dt:.0f} records acked/s")  # fmt: skip
            window_wall1 = time.time()
            if args.hub_profile is not None:
                os.kill(hub.hub.pid, signal.SIGUSR1)  # ... to here
            metrics = hub_metrics(hub)
            poller.stop.set()
            hub_rss = rss_mb(hub.hub.pid)
        finally:
            shared["stop"].set()
            got: list[WorkerResult] = []
            for _ in procs:
                try:
                    got.append(results_q.get(timeout=120))
                except Exception:  # noqa: BLE001 - a worker that died reports nothing
                    break
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.terminate()
            stream.close()
        result.update(
            summarize(args, samples, got, poller, stream, (window_wall0, window_wall1), n)
        )
        result["hub_rss_mb"] = round(hub_rss, 1)
        result["hub_metrics"] = metrics
        result["loadavg_end"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def summarize(
    args: argparse.Namespace,
    samples: list[dict[str, Any]],
    got: list[WorkerResult],
    poller: DevicesPoller,
    stream: StreamWatcher,
    window: tuple[float, float],
    n: int,
) -> dict[str, Any]:
    first, last = samples[0], samples[-1]
    dt = last["t"] - first["t"]
    hub_cores = (last["hub_cpu"] - first["hub_cpu"]) / dt
    broker_cores = (last["broker_cpu"] - first["broker_cpu"]) / dt
    self_cores = (last["self_cpu"] - first["self_cpu"]) / dt
    rows = {t: last["rows"][t] - first["rows"][t] for t in last["rows"]}
    win = {k: sum(r.counters_window.get(k, 0) for r in got) for k in got[0].counters_window}
    lag_slices: dict[int, array[float]] = {}
    late_slices: dict[int, array[float]] = {}
    for r in got:
        for s, raw in r.lags.items():
            a = array("f")
            a.frombytes(raw)
            lag_slices.setdefault(s, array("f")).extend(a)
        for s, raw in r.tick_late_ms.items():
            a = array("f")
            a.frombytes(raw)
            late_slices.setdefault(s, array("f")).extend(a)
    nslices = len(samples) - 1
    per_slice = []
    for k in range(nslices):
        s0, s1 = samples[k], samples[k + 1]
        d = s1["t"] - s0["t"]
        lags = lag_slices.get(k, array("f"))
        per_slice.append(
            {
                "slice": k + 1,
                "hub_cores": round((s1["hub_cpu"] - s0["hub_cpu"]) / d, 3),
                "acked_per_s": round((s1["marks"] - s0["marks"]) / d, 1),
                "acks": len(lags),
                "ack_lag_p50_ms": _r(pct(lags, 50)),
                "ack_lag_p99_ms": _r(pct(lags, 99)),
                "ack_lag_max_ms": _r(pct(lags, 100)),
                "tick_late_p99_ms": _r(pct(late_slices.get(k, array("f")), 99)),
            }
        )
    all_lags = array("f")
    for k in range(nslices):
        all_lags.extend(lag_slices.get(k, array("f")))
    p99s = [s["ack_lag_p99_ms"] for s in per_slice if s["ack_lag_p99_ms"] is not None]
    third = max(1, len(p99s) // 3)
    head, tail = p99s[:third], p99s[-third:]
    unacked = sum(r.unacked_end for r in got)
    # growing: the late slices' p99 well above the early ones', a slice without a single ack,
    # or more than 10 s of the fleet's records still waiting for their ack at the end
    grows = (
        (bool(p99s) and sorted(tail)[len(tail) // 2] > 2 * sorted(head)[len(head) // 2] + 250)
        or any(sl["acks"] == 0 for sl in per_slice)
        or unacked > 10 * 3.2 * n
    )
    made = win.get("issued", 0)
    sim_cores = [round(r.cpu_window_s / r.wall_window_s, 3) for r in got if r.wall_window_s]
    w0, w1 = window
    sse = [lag for at, lag in stream.samples if w0 <= at <= w1]
    hub_msgs = win.get("publishes", 0)
    return {
        "hub_cores": round(hub_cores, 3),
        "broker_cores": round(broker_cores, 3),
        "sim_cores": round(sum(sim_cores) + self_cores, 3),
        "sim_worker_cores": sim_cores,
        "sim_worker_kernel_share": round(
            sum(r.sys_window_s for r in got) / max(1e-9, sum(r.cpu_window_s for r in got)), 3
        ),
        "sim_cpu_us_per_device_s": round(
            1e6 * sum(r.cpu_window_s for r in got) / max(1e-9, n * dt), 1
        ),
        "sim_orchestrator_cores": round(self_cores, 3),
        "sim_tick_late_p99_ms": _r(pct([s["tick_late_p99_ms"] or 0.0 for s in per_slice], 100)),
        "records_made_per_s": round(made / dt, 1),
        # 1-5 logs a second (3 on average) and a telemetry record every 5 s, per device
        "records_nominal_per_s": round(3.2 * n, 1),
        "offered_load": round(made / dt / (3.2 * n), 3),
        "sim_worker_rss_mb": [round(r.rss_mb, 1) for r in got],
        "rows_per_s": round(sum(rows.values()) / dt, 1),
        "rows": rows,
        "hub_cpu_us_per_message": _r(1e6 * hub_cores * dt / hub_msgs) if hub_msgs else None,
        "messages_per_s": round(hub_msgs / dt, 1),
        "acks_per_s": round(win.get("acks", 0) / dt, 1),
        "hub_cpu_us_per_row": (
            _r(1e6 * hub_cores * dt / sum(rows.values())) if sum(rows.values()) else None
        ),
        "ack_lag_p50_ms": _r(pct(all_lags, 50)),
        "ack_lag_p99_ms": _r(pct(all_lags, 99)),
        "ack_lag_max_ms": _r(pct(all_lags, 100)),
        "ack_lag_grows": grows,
        "slices": per_slice,
        "devices_get": {
            "walks": len(poller.walks),
            "page_p50_ms": _r(1000 * (pct(poller.pages, 50) or 0)),
            "page_max_ms": _r(1000 * (pct(poller.pages, 100) or 0)),
            "walk_p50_ms": _r(1000 * (pct(poller.walks, 50) or 0)),
            "walk_max_ms": _r(1000 * (pct(poller.walks, 100) or 0)),
            "bytes_per_walk": max(poller.bytes) if poller.bytes else None,
            "devices_listed": max(poller.counts) if poller.counts else None,
            "errors": poller.errors,
        },
        "sse": {
            "available": stream.available,
            "telemetry_events": len(sse),
            "lag_p50_ms": _r(1000 * (pct(sse, 50) or 0)) if sse else None,
            "lag_p99_ms": _r(1000 * (pct(sse, 99) or 0)) if sse else None,
            "lag_max_ms": _r(1000 * (pct(sse, 100) or 0)) if sse else None,
            "kinds": stream.kinds,
            "missed": stream.missed,
            "errors": stream.errors[-5:],
        },
        "counters_window": win,
        "counters_total": {k: sum(r.counters.get(k, 0) for r in got) for k in got[0].counters},
        "unacked_at_end": unacked,
        "backlog_max_per_device": max(r.backlog_max for r in got),
        "connected_at_end": sum(r.connected for r in got),
    }


def print_table(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"fleet_sim: {res['devices']} devices, {res['window_s']:.0f} s window "
              f"after {res['warmup_s']:.0f} s warm-up ({res['nproc']} cores)")  # fmt: skip
    t.add_column("measure")
    t.add_column("value", justify="right")
    d, s = res["devices_get"], res["sse"]

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:,.1f}"

    rows = [
        ("registration (REST)", f"{res['registration']['per_s']:,.0f}/s "
         f"({res['registration']['concurrency']} in flight)"),
        ("connect (paced)", f"{res['connect']['seconds']} s, {res['connect']['listen_overflows']} "
         "listen overflows"),
        ("hub CPU", f"{res['hub_cores']:.2f} cores"),
        ("hub CPU idle (no device connected)", f"{res['hub_idle_cores']:.2f} cores"),
        ("messages to the hub / acks from it", f"{res['messages_per_s']:,.0f} / "
         f"{res['acks_per_s']:,.0f} per s"),
        ("hub CPU per message / per row", f"{ms(res['hub_cpu_us_per_message'])} / "
         f"{ms(res['hub_cpu_us_per_row'])} µs"),
        ("Mosquitto CPU", f"{res['broker_cores']:.2f} cores"),
        ("simulator CPU (workers + orchestrator)", f"{res['sim_cores']:.2f} cores "
         f"{res['sim_worker_cores']}"),
        ("simulator CPU per device-second (kernel share)", f"{res['sim_cpu_us_per_device_s']:,.0f}"
         f" µs ({100 * res['sim_worker_kernel_share']:.0f}% kernel)"),
        ("simulator tick lateness p99 (worst slice)", f"{ms(res['sim_tick_late_p99_ms'])} ms"),
        ("records made (nominal) / rows stored", f"{res['records_made_per_s']:,.0f} "
         f"({res['records_nominal_per_s']:,.0f}) / {res['rows_per_s']:,.0f} per s"),
        ("offered load (records made / nominal)", f"{100 * res['offered_load']:.0f}%"),
        ("ack lag p50 / p99 / max", f"{ms(res['ack_lag_p50_ms'])} / {ms(res['ack_lag_p99_ms'])}"
         f" / {ms(res['ack_lag_max_ms'])} ms"),
        ("ack lag grows over the window", "YES" if res["ack_lag_grows"] else "no"),
        ("largest device outbox in window", f"{res['backlog_max_per_device']:,} records"),
        ("GET /devices page (500) p50 / max", f"{ms(d['page_p50_ms'])} / "
         f"{ms(d['page_max_ms'])} ms"),
        ("GET /devices all pages p50 / max", f"{ms(d['walk_p50_ms'])} / {ms(d['walk_max_ms'])} ms"
         f" ({d['bytes_per_walk'] or 0:,} B)"),
        ("SSE telemetry lag p50 / p99 / max", "not served" if not s["available"] else
         f"{ms(s['lag_p50_ms'])} / {ms(s['lag_p99_ms'])} / {ms(s['lag_max_ms'])} ms "
         f"({s['telemetry_events']:,} events, missed {s['missed']})"),
        ("unacked records at the end", f"{res['unacked_at_end']:,}"),
    ]  # fmt: skip
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    st = Table(title="per slice")
    for col in ("slice", "hub cores", "acked/s", "acks", "ack p50 ms", "ack p99 ms", "ack max ms",
                "sim tick late p99 ms"):  # fmt: skip
        st.add_column(col, justify="right")
    for sl in res["slices"]:
        st.add_row(
            str(sl["slice"]),
            f"{sl['hub_cores']:.2f}",
            f"{sl['acked_per_s']:,.0f}",
            f"{sl['acks']:,}",
            ms(sl["ack_lag_p50_ms"]),
            ms(sl["ack_lag_p99_ms"]),
            ms(sl["ack_lag_max_ms"]),
            ms(sl["tick_late_p99_ms"]),
        )
    console.print(st)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=300)
    ap.add_argument("--window", type=float, default=300.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds after all connected")
    ap.add_argument("--slice", type=float, default=30.0, help="seconds per reported slice")
    ap.add_argument("--workers", type=int, default=0, help="device processes (0: 1 per 1000)")
    ap.add_argument("--connect-rate", type=float, default=250.0, help="connections a second")
    ap.add_argument("--register-concurrency", type=int, default=16)
    ap.add_argument("--devices-every", type=float, default=10.0, help="s between device lists")
    ap.add_argument("--idle", type=float, default=10.0, help="s of hub CPU with no device on")
    ap.add_argument("--no-model", action="store_true", help="skip training the model")
    ap.add_argument(
        "--hub-profile",
        type=Path,
        default=None,
        help="run the hub under bench/_fleet_sim_profile.py and write its window's profile here",
    )
    ap.add_argument(
        "--sim-nice",
        type=int,
        default=10,
        help="niceness of the device processes: the hub and "
        "the broker come first when the machine is short of CPU (the offered load then drops, "
        "and the figures say so)",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the workdir (hub data, logs)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.devices < 1 or args.window <= 0 or args.slice <= 0 or args.connect_rate <= 0:
        ap.error("--devices, --window, --slice and --connect-rate must be positive")
    res = run(args)
    print_table(res)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
