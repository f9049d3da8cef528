"""Prediction monitoring: training baselines, rolling windows over the prediction log (per
version, endpoint and device), drift and output shift against the baseline, alert rules and
alerts. The monitor thread (`cloud_hub.monitoring.service`) is imported where it is started."""

from cloud_hub.monitoring.alerts import Alert, AlertEvent, AlertStore, Monitor, alerts_topic
from cloud_hub.monitoring.baseline import Baseline, BaselineStore, compute_baseline
from cloud_hub.monitoring.rules import DEFAULT_RULES, AlertRule, AlertRuleIn, RuleStore
from cloud_hub.monitoring.windows import BY, By, WindowReader, WindowStats

__all__ = [
    "BY",
    "DEFAULT_RULES",
    "Alert",
    "AlertEvent",
    "AlertRule",
    "AlertRuleIn",
    "AlertStore",
    "Baseline",
    "BaselineStore",
    "By",
    "Monitor",
    "RuleStore",
    "WindowReader",
    "WindowStats",
    "alerts_topic",
    "compute_baseline",
]
