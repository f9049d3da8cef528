"""`--artifact auto`: which artifacts a device measures, and the choice made from what it measured.

A deployment with `artifact: auto` gives each device *candidates*: every artifact of the version
the device can run (its runtimes), not failed, whose accuracy in the version's conversion report
is within the deployment's `accuracy_budget` (points, default 1) of the best one's. Where no
artifact has an accuracy (an uploaded file), all runnable ones are candidates; where some have
one, those without are left out. The candidates are ordered by the hub's preference (the order
`best` uses), and the first is the *default*: what the device runs if nothing can be measured.

The device measures each candidate at each thread count (`edge_agent.core.variant_bench`) and
reports a `VariantReport` on `variants`. The hub checks the report against what it sent (the
deployment, the version, the candidates), stores the timings with the device's hardware type,
and settles the choice itself with `wire.fastest_variant`, the rule the device used: the
assignment's artifact and threads become the chosen ones (`choice` "measured"), and the desired
state is published again without `auto`. The next device of the same hardware type (its
registered `hardware`, an enrolled agent's device-tree model or CPU architecture) gets the
choice from those timings before its desired state is first published (`choice` "reused"),
and measures nothing; a device without a hardware type always measures.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

from cloud_hub.core.db import Database
from cloud_hub.fleet import deployment_store as store
from cloud_hub.fleet import devices, variant_store
from cloud_hub.fleet.artifacts import PRECISION_ORDER, RUNTIME_FORMAT
from cloud_hub.fleet.errors import Rejected
from cloud_hub.fleet.schemas import VariantRow
from cloud_hub.registry.accuracy_budget import DEFAULT_BUDGET_POINTS, within_budget
from cloud_hub.registry.registry import artifact_files, utcnow
from cloud_hub.registry.schemas import Artifact
from edge_agent.core.wire import MAX_CANDIDATES, VariantReport, VariantTiming, fastest_variant

__all__ = [
    "AUTO",
    "DEFAULT_BUDGET_POINTS",
    "Candidates",
    "VariantChoices",
    "candidates_for",
]

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class Candidates:
    """What a device measures: `ordered` (the default first) and what was left out, why."""

    ordered: list[Artifact]
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def default(self) -> Artifact:
        return self.ordered[0]


def _preference(runtimes: Sequence[str]) -> list[tuple[str, str]]:
    """(format, precision) in the order `best` would pick them for these runtimes."""
    order: list[tuple[str, str]] = []
    for runtime in runtimes:
        fmt = RUNTIME_FORMAT.get(runtime)
        for precision in PRECISION_ORDER.get(runtime, ()):
            if fmt is not None and (fmt, precision) not in order:
                order.append((fmt, precision))
    return order


def candidates_for(
    artifacts: Sequence[Artifact], runtimes: Sequence[str], budget_points: float
) -> Candidates | None:
    """The device's candidates, or None when it can run no artifact of the version."""
    order = _preference(runtimes)
    runnable = sorted(
        (a for a in artifacts if a.status != "failed" and (a.format, a.precision) in order),
        key=lambda a: order.index((a.format, a.precision)),
    )
    if not runnable:
        return None
    runnable, excluded = within_budget(runnable, budget_points)
    return Candidates(runnable[:MAX_CANDIDATES], excluded) if runnable else None


def _ids(row: sqlite3.Row) -> list[int]:
    raw = row["candidate_artifact_ids"]
    return [int(i) for i in json.loads(raw)] if raw else []


def _timing(row: sqlite3.Row, art: sqlite3.Row) -> VariantTiming:
    return VariantTiming(
        sha256=str(art["sha256"]),
        format=art["format"],
        precision=art["precision"],
        threads=int(row["threads"]),
        load_ms=row["load_ms"],
        p50_ms=row["p50_ms"],
        p99_ms=row["p99_ms"],
        rss_mb=row["rss_mb"],
        runs=int(row["runs"]),
        error=row["error"] if row["p50_ms"] is not None else (row["error"] or "not measured"),
    )


class VariantChoices:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- a device's report ----------------------------------------------------------------------
    def apply_report(self, device_id: str, report: VariantReport) -> bool:
        """Store what the device measured and settle its artifact; True when its desired state
        must be published again (the choice is new). Rejected for a report that does not match
        what the device was sent."""
        now = utcnow()
        with self.db.transaction() as db:
            conn = db.conn
            row = store.assignment(conn, report.deployment_id, device_id)
            if row is None or row["state"] == "superseded":
                raise Rejected(
                    f"variants for deployment {report.deployment_id}, which is not this "
                    "device's current deployment"
                )
            ids = _ids(row)
            if row["artifact"] != AUTO or not ids:
                raise Rejected(f"variants for deployment {report.deployment_id}, not an auto one")
            if report.version_id != row["version_id"]:
                raise Rejected(
                    f"variants name version {report.version_id}; deployment "
                    f"{report.deployment_id} is of version {row['version_id']}"
                )
            files = artifact_files(conn, ids)
            by_sha = {str(files[i]["sha256"]): i for i in ids if i in files}
            strangers = sorted({t.sha256 for t in report.timings} - set(by_sha))
            if strangers:
                raise Rejected(
                    f"variants for {len(strangers)} artifact(s) that are not candidates of "
                    f"deployment {report.deployment_id} ({', '.join(s[:12] for s in strangers)})"
                )
            hardware = devices.hardware_of(conn, device_id) or report.hardware
            variant_store.upsert(
                conn,
                [
                    {
                        "device_id": device_id,
                        "deployment_id": report.deployment_id,
                        "version_id": report.version_id,
                        "hardware": hardware,
                        "cpu_count": report.cpu_count,
                        "artifact_id": by_sha[t.sha256],
                        "threads": t.threads,
                        "load_ms": t.load_ms,
                        "p50_ms": t.p50_ms,
                        "p99_ms": t.p99_ms,
                        "rss_mb": t.rss_mb,
                        "runs": t.runs,
                        "error": t.error,
                        "measured_at": now,
                    }
                    for t in report.timings
                ],
            )
            order = [str(files[i]["sha256"]) for i in ids if i in files]
            chosen = fastest_variant(report.timings, order)
            if (chosen is None) != (report.chosen_sha256 is None) or (
                chosen is not None
                and (chosen.sha256, chosen.threads) != (report.chosen_sha256, report.chosen_threads)
            ):
                log.warning(
                    "device %s chose %s/%s from its timings; the rule gives %s: the hub's "
                    "choice stands",
                    device_id,
                    (report.chosen_sha256 or "none")[:12],
                    report.chosen_threads,
                    "none" if chosen is None else f"{chosen.sha256[:12]}/{chosen.threads}",
                )
            settled: tuple[int, int | None, str]
            if chosen is None:
                settled = (int(row["artifact_id"]), None, "default")
            else:
                settled = (by_sha[chosen.sha256], chosen.threads, "measured")
            return self._settle(conn, report.deployment_id, device_id, row, settled, now)

    # -- reuse for the next device of a hardware type --------------------------------------------
    def reuse(self, deployment_id: int, device_id: str) -> bool:
        """Settle an unsettled auto device from its hardware type's timings of this version, if
        every candidate was measured there; True when it was settled."""
        now = utcnow()
        with self.db.transaction() as db:
            conn = db.conn
            row = store.assignment(conn, deployment_id, device_id)
            if row is None or row["choice"] is not None or not (ids := _ids(row)):
                return False
            hardware = devices.hardware_of(conn, device_id)
            if not hardware:
                return False
            known = variant_store.for_hardware(conn, int(row["version_id"]), hardware)
            files = artifact_files(conn, ids)
            timings = [
                _timing(t, files[t["artifact_id"]]) for t in known if t["artifact_id"] in ids
            ]
            if {t["artifact_id"] for t in known} < set(ids) or not timings:
                return False
            chosen = fastest_variant(timings, [str(files[i]["sha256"]) for i in ids if i in files])
            if chosen is None:
                return False
            art = next(i for i in ids if str(files[i]["sha256"]) == chosen.sha256)
            self._settle(conn, deployment_id, device_id, row, (art, chosen.threads, "reused"), now)
            log.info(
                "device %s (%s) runs artifact %s with %d threads, as measured on that hardware",
                device_id,
                hardware,
                art,
                chosen.threads,
            )
            return True

    @staticmethod
    def _settle(
        conn: sqlite3.Connection,
        deployment_id: int,
        device_id: str,
        row: sqlite3.Row,
        settled: tuple[int, int | None, str],
        now: str,
    ) -> bool:
        artifact_id, threads, choice = settled
        before = (int(row["artifact_id"]), row["choice"])
        store.set_choice(
            conn,
            deployment_id,
            device_id,
            artifact_id=artifact_id,
            threads=threads,
            choice=choice,
            now=now,
        )
        devices.retarget_desired(conn, device_id, deployment_id, artifact_id)
        return before != (artifact_id, choice)

    # -- what the API shows -----------------------------------------------------------------------
    def table(self, deployment_id: int, device_id: str) -> list[VariantRow]:
        """The device's measurements for the deployment, fastest first (errors last), or for
        a device whose choice was reused, its hardware type's."""
        conn = self.db.conn
        row = store.assignment(conn, deployment_id, device_id)
        if row is None or not (ids := _ids(row)):
            return []
        rows = variant_store.for_device(conn, deployment_id, device_id)
        source = "measured"
        if not rows and row["choice"] == "reused":
            hardware = devices.hardware_of(conn, device_id)
            rows = [r for r in variant_store.for_hardware(conn, int(row["version_id"]), hardware)]
            rows = [r for r in rows if r["artifact_id"] in ids]
            source = "reused"
        files = artifact_files(conn, ids)
        chosen = (int(row["artifact_id"]), row["threads"])
        out = [
            VariantRow(
                artifact=f"{files[r['artifact_id']]['format']}/{files[r['artifact_id']]['precision']}",
                artifact_id=int(r["artifact_id"]),
                threads=int(r["threads"]),
                load_ms=r["load_ms"],
                p50_ms=r["p50_ms"],
                p99_ms=r["p99_ms"],
                rss_mb=r["rss_mb"],
                runs=int(r["runs"]),
                error=r["error"],
                hardware=str(r["hardware"]),
                source=source,  # type: ignore[arg-type]
                chosen=(int(r["artifact_id"]), int(r["threads"])) == chosen,
            )
            for r in rows
            if r["artifact_id"] in files
        ]
        return sorted(out, key=lambda v: (v.p50_ms is None, v.p50_ms or 0.0, v.threads))
