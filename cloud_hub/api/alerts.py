"""Alerts over REST: the rules (created, listed, deleted) and the alerts they raised."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status

from cloud_hub.api.auth import OPERATOR, VIEWER
from cloud_hub.api.deps import HubDep
from cloud_hub.monitoring import Alert, AlertEvent, AlertRule, AlertRuleIn, Monitor, RuleStore
from cloud_hub.monitoring.alerts import AlertStore

router = APIRouter(tags=["alerts"])


@router.get("/alerts/rules", dependencies=[VIEWER])
def list_rules(hub: HubDep) -> list[AlertRule]:
    """The rules in force: those created, or the default rules while none is."""
    return RuleStore(hub.db).active()


@router.post("/alerts/rules", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR])
def create_rule(rule: AlertRuleIn, hub: HubDep) -> AlertRule:
    """A rule: `metric` (latency_p99_ms, error_rate, psi_max, output_shift; of devices:
    offline_s, outbox_backlog_growth) over `threshold` for `scope` (all, version, endpoint,
    device; `target`: one of them). A bad rule is refused with 422 naming the field. Once a
    rule is created the default rules no longer apply. examples/monitoring has one rule file
    per monitoring pattern."""
    return RuleStore(hub.db).create(rule)


@router.delete(
    "/alerts/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[OPERATOR]
)
def delete_rule(rule_id: int, hub: HubDep) -> Response:
    """Delete a rule; its open alerts resolve at the next evaluation."""
    RuleStore(hub.db).delete(rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/alerts/evaluate", dependencies=[OPERATOR])
def evaluate(request: Request, hub: HubDep) -> list[AlertEvent]:
    """Evaluate the rules now (the hub also does every `monitor_interval_s`): the alerts that
    opened or resolved, also published on MQTT `{root}/alerts` by a running monitor."""
    service = getattr(request.app.state, "monitor", None)
    if service is not None:
        events: list[AlertEvent] = service.evaluate()
        return events
    return Monitor(hub.db, max_records=hub.settings.monitor_max_records).evaluate()


@router.get("/alerts", dependencies=[VIEWER])
def list_alerts(
    hub: HubDep,
    state: Annotated[Literal["open", "resolved", "all"], Query()] = "all",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[Alert]:
    """Alerts, newest first: each with its rule, scope, value, message, opened_at and, once
    the condition cleared, resolved_at."""
    return AlertStore(hub.db).list(state, limit=limit)


@router.get("/alerts/{alert_id}", dependencies=[VIEWER])
def get_alert(alert_id: int, hub: HubDep) -> Alert:
    return AlertStore(hub.db).get(alert_id)
