"""Alert rules: a metric of a window over a threshold, for a scope, with enough records.

Two metrics are about devices rather than their predictions (scope `device` only), read from
the devices table and the telemetry history: `offline_s`, the seconds a device has been offline
(since its last will or its goodbye; 0 while online; `min_count` does not apply), and
`outbox_backlog_growth`, how much the device's outbox backlog rose over the window (its newest
value less its lowest in the window, to the minute; `min_count`: telemetry records in it).

A rule applies to every version, endpoint and device (`scope: all`), to every one of a kind
(`scope: version|endpoint|device`, no target) or to one (`target`: a version id or ref, an
endpoint name, a device id). Rules are stored; while none is, `DEFAULT_RULES` apply. Bad rules
are refused with a message naming the field (`InvalidInput`; 422 over REST).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.core.db import Database
from cloud_hub.core.errors import InvalidInput, NotFound
from cloud_hub.fleet.devices import device_exists
from cloud_hub.registry.registry import version_exists, version_id_by_name
from cloud_hub.serving.engine.store import EndpointStore

Metric = Literal[
    "latency_p99_ms", "error_rate", "psi_max", "output_shift", "offline_s", "outbox_backlog_growth"
]
Scope = Literal["all", "version", "endpoint", "device"]
METRICS: tuple[Metric, ...] = (
    "latency_p99_ms",
    "error_rate",
    "psi_max",
    "output_shift",
    "offline_s",
    "outbox_backlog_growth",
)
DEVICE_METRICS = ("offline_s", "outbox_backlog_growth")  # of devices, not of their predictions

# (low, high, low inclusive): the thresholds that can be met at all
_RANGES: dict[str, tuple[float, float, bool]] = {
    "latency_p99_ms": (0.0, 3_600_000.0, False),  # ms, above 0, at most an hour
    "error_rate": (0.0, 1.0, True),  # a share: 0 ≤ t < 1
    "psi_max": (0.0, 100.0, False),
    "output_shift": (0.0, 1.0, True),  # total variation distance: 0 ≤ t < 1
    "offline_s": (0.0, 365 * 86400.0, True),  # seconds
    "outbox_backlog_growth": (0.0, 1e12, True),  # records
}


class AlertRuleIn(BaseModel):
    """A rule as created: `metric` over `threshold` in a window of `window_s` seconds (at most
    its latest `last_n` records), once the window has `min_count` records to judge by."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    metric: Metric
    threshold: float
    scope: Scope = "all"
    target: str | None = Field(
        default=None,
        description="a version id or ref (project/model:N), an endpoint name or a device id; "
        "none: every one of the scope's kind",
    )
    window_s: float = Field(default=300.0, ge=1, le=7 * 86400)
    last_n: int | None = Field(default=None, ge=1, le=1_000_000)
    min_count: int = Field(default=20, ge=1)


class AlertRule(AlertRuleIn):
    id: int | None = Field(default=None, description="None for a default rule")
    key: str = Field(description="the rule's id, or default:NAME")
    default: bool = False
    created_at: str | None = None

    def kinds(self) -> tuple[Literal["version", "endpoint", "device"], ...]:
        if self.scope == "all":
            return ("version", "endpoint", "device")
        return (self.scope,)


def _default(
    name: str, metric: Metric, threshold: float, scope: Scope, min_count: int
) -> AlertRule:
    return AlertRule(
        key=f"default:{name}",
        name=name,
        metric=metric,
        threshold=threshold,
        scope=scope,
        min_count=min_count,
        default=True,
    )


DEFAULT_RULES: tuple[AlertRule, ...] = (
    # PSI over 64 features has a noise floor: 200 in-distribution records stay well under 0.25
    _default("input-drift", "psi_max", 0.25, "version", 200),
    _default("device-input-drift", "psi_max", 0.25, "device", 200),
    _default("output-shift", "output_shift", 0.3, "version", 100),
    _default("errors", "error_rate", 0.1, "endpoint", 20),
)


def check_threshold(metric: str, threshold: float) -> None:
    low, high, low_ok = _RANGES[metric]
    ok = math.isfinite(threshold) and threshold < high
    ok = ok and (threshold >= low if low_ok else threshold > low)
    if not ok:
        bound = "≥" if low_ok else ">"
        raise InvalidInput(
            f"threshold: {metric} thresholds must be {bound} {low:g} and < {high:g}, "
            f"got {threshold:g}"
        )


class RuleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _row(self, row: dict[str, object]) -> AlertRule:
        data = dict(row)
        return AlertRule(**data, key=str(data["id"]))  # type: ignore[arg-type]

    def stored(self) -> list[AlertRule]:
        """The stored rules (none stored: an empty list; see `active`)."""
        rows = self.db.conn.execute(
            "SELECT id, name, metric, threshold, scope, target, window_s, last_n, min_count, "
            "created_at FROM alert_rules ORDER BY id"
        )
        return [self._row(dict(r)) for r in rows]

    def active(self) -> list[AlertRule]:
        """The rules in force: the stored ones, or the defaults while none is stored."""
        return self.stored() or list(DEFAULT_RULES)

    def get(self, rule_id: int) -> AlertRule:
        for rule in self.stored():
            if rule.id == rule_id:
                return rule
        raise NotFound("alert rule", rule_id)

    def create(self, rule: AlertRuleIn) -> AlertRule:
        check_threshold(rule.metric, rule.threshold)
        if rule.metric in DEVICE_METRICS and rule.scope != "device":
            raise InvalidInput(
                f"scope: {rule.metric} is measured on devices: use scope 'device', "
                f"not {rule.scope!r}"
            )
        target = self._resolve_target(rule.scope, rule.target)
        if rule.last_n is not None and rule.min_count > rule.last_n:
            raise InvalidInput(
                f"min_count: {rule.min_count} can never be reached in a window of "
                f"last_n={rule.last_n} records"
            )
        with self.db.transaction():
            cur = self.db.conn.execute(
                "INSERT INTO alert_rules (name, metric, threshold, scope, target, window_s, "
                "last_n, min_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    rule.name,
                    rule.metric,
                    rule.threshold,
                    rule.scope,
                    target,
                    rule.window_s,
                    rule.last_n,
                    rule.min_count,
                ],
            )
            rule_id = int(cur.lastrowid or 0)
        return self.get(rule_id)

    def delete(self, rule_id: int) -> None:
        with self.db.transaction():
            cur = self.db.conn.execute("DELETE FROM alert_rules WHERE id = ?", [rule_id])
        if cur.rowcount == 0:
            raise NotFound("alert rule", rule_id)

    def _resolve_target(self, scope: Scope, target: str | None) -> str | None:
        """The stored form of a target (a version as its id), or InvalidInput naming it."""
        if target is None:
            return None
        conn = self.db.conn
        if scope == "all":
            raise InvalidInput("target: a rule with scope 'all' takes no target")
        if scope == "version":
            return str(_version_id(self.db, target))
        if scope == "endpoint":
            if not EndpointStore(self.db).exists(target):
                raise InvalidInput(f"target: no endpoint {target!r}")
            return target
        if not device_exists(conn, target):
            raise InvalidInput(f"target: no device {target!r}")
        return target


def _version_id(db: Database, ref: str) -> int:
    """A version id, or a ref `project/model:N`, → the version's id."""
    conn = db.conn
    found: int | None = None
    if ref.isdigit():
        found = int(ref) if version_exists(conn, int(ref)) else None
    else:
        project, _, rest = ref.partition("/")
        model, _, number = rest.rpartition(":")
        if project and model and number.isdigit():
            found = version_id_by_name(conn, project, model, int(number))
    if found is None:
        raise InvalidInput(f"target: no version {ref!r} (give an id or project/model:N)")
    return found
