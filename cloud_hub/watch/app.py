"""`edgepilot watch`'s screens (Textual): the fleet, deployments and alerts; a device's page.

The widgets only show a `FleetState` kept by a `Feed` thread (cloud_hub/watch/feed.py): a
timer takes what changed under the feed's lock and updates the cells that differ, so a busy
stream never floods the screen. The device page and a deployment's per-device progress are
read by REST when opened (and refreshed while open).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import httpx
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    DataTable,
    Footer,
    Input,
    Label,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)

from cloud_hub.watch import rest
from cloud_hub.watch.feed import Feed, describe_error
from cloud_hub.watch.state import (
    COLUMNS,
    SORT_KEYS,
    DeviceFilter,
    FilterError,
    bar,
    clock,
    device_progress,
    parse_filter,
    status_text,
)

__all__ = ["DeviceScreen", "WatchApp"]

# live telemetry field -> the history's metric name (inferences: a count, not a rate)
LIVE_METRICS = {
    "cpu": "cpu",
    "memory": "memory",
    "memory_rss": "memory_rss",
    "temperature": "temperature",
    "latency_p50": "latency_p50",
    "latency_p99": "latency_p99",
    "outbox_backlog": "outbox_backlog",
    "outbox_drops": "outbox_drops",
}
MAX_POINTS = 1000
REORDER_S = 5.0  # the fleet table reorders itself by new values at most this often

CSS = """
#headline { height: 1; background: $primary-background; padding: 0 1; }
#headline.stale { background: $error; color: $text; text-style: bold; }
#filter-row { height: 3; }
#filter { width: 1fr; }
#filter-error { color: $error; width: auto; max-width: 60; padding: 1 1; }
#fleet, #deployments, #alerts, #endpoints { height: 1fr; }
#rollout { height: 1fr; }
.spark-row { height: 3; }
.spark-label { width: 34; padding: 1 1; }
Sparkline { width: 1fr; height: 3; }
.section { text-style: bold; padding: 1 0 0 1; }
DeviceScreen DataTable { height: auto; max-height: 14; }
"""


def _status_cell(value: str) -> Text:
    if value.startswith("offline"):
        return Text(value, style="bold red")
    if value == "online":
        return Text(value, style="green")
    return Text(value, style="yellow")


def _cell(key: str, value: str) -> str | Text:
    return _status_cell(value) if key == "status" else value


def _device_counts(counts: dict[str, Any]) -> str:
    total = counts.get("total", 0)
    parts = [f"{k} {v}" for k, v in counts.items() if k != "total" and v]
    return f"{', '.join(parts) or '-'} / {total}"


class WatchApp(App[None]):
    """The live fleet view (module docs). `feed` is started on mount and stopped on exit."""

    TITLE = "EdgePilot watch"
    CSS = CSS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("r", "reverse_sort", "Reverse"),
        Binding("f", "show_tab('fleet-tab')", "Fleet"),
        Binding("d", "show_tab('deployments-tab')", "Deployments"),
        Binding("a", "show_tab('alerts-tab')", "Alerts"),
        Binding("e", "show_tab('endpoints-tab')", "Endpoints"),
    ]

    def __init__(
        self, feed: Feed, *, filter_text: str = "", sort: str = "id", refresh_s: float = 0.5
    ) -> None:
        super().__init__()
        self.feed = feed
        self.filter_text = filter_text
        self.device_filter: DeviceFilter = parse_filter(filter_text)
        self.sort_key = sort
        self.sort_reverse = False
        self.refresh_s = refresh_s
        self.shown_ids: list[str] = []
        self.shown_cells: dict[str, tuple[str, ...]] = {}
        self.headline = ""
        self._revision = -1
        self.shown_deployments: dict[Any, dict[str, Any]] = {}
        self._rollout_for: Any = None
        self.rollout: dict[str, Any] | None = None
        self._drawn: dict[str, list[dict[str, Any]]] = {}
        self._force_order = False
        self._ordered_at = 0.0
        self.http: httpx.AsyncClient | None = None

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("connecting to the hub...", id="headline")
        with TabbedContent(initial="fleet-tab"):
            with TabPane("Fleet", id="fleet-tab"):
                with Horizontal(id="filter-row"):
                    yield Input(
                        value=self.filter_text,
                        placeholder="filter: status:offline tag:cam group:lab or text in the id",
                        id="filter",
                    )
                    yield Label("", id="filter-error")
                yield DataTable(id="fleet", cursor_type="row", zebra_stripes=True)
            with TabPane("Deployments", id="deployments-tab"):
                yield DataTable(id="deployments", cursor_type="row")
                yield Label("Per-device progress (select a deployment)", classes="section")
                yield DataTable(id="rollout", cursor_type="row")
            with TabPane("Alerts", id="alerts-tab"):
                yield DataTable(id="alerts", cursor_type="row")
            with TabPane("Endpoints", id="endpoints-tab"):
                yield DataTable(id="endpoints", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        # the main screen's widgets, kept: the timer updates them under a device screen too
        self.fleet_table = fleet = self.query_one("#fleet", DataTable)
        self.deployments_table = self.query_one("#deployments", DataTable)
        self.rollout_table = self.query_one("#rollout", DataTable)
        self.alerts_table = self.query_one("#alerts", DataTable)
        self.endpoints_table = self.query_one("#endpoints", DataTable)
        self.headline_widget = self.query_one("#headline", Static)
        for column in COLUMNS:
            fleet.add_column(self._label(column.key), key=column.key)
        deployments = self.deployments_table
        for key in ("id", "version", "artifact", "strategy", "state", "target", "devices"):
            deployments.add_column(key, key=key)
        deployments.add_column("progress", key="progress")
        rollout = self.rollout_table
        for key in ("device", "phase", "state", "progress", "received", "reason"):
            rollout.add_column(key, key=key)
        alerts = self.alerts_table
        for key in ("id", "severity", "rule", "metric", "subject", "message", "since"):
            alerts.add_column(key, key=key)
        for key in ("endpoint", "requests", "errors", "rows", "p50 ms", "p99 ms"):
            self.endpoints_table.add_column(key, key=key)
        self.http = rest.client(self.feed.base_url, self.feed.token)
        self.feed.start()
        fleet.focus()
        self.refresh_view()
        self.set_interval(self.refresh_s, self.refresh_view)

    async def on_unmount(self) -> None:
        self.feed.stop()
        if self.http is not None:
            await self.http.aclose()

    def _label(self, key: str) -> str:
        label = next(c.label for c in COLUMNS if c.key == key)
        if key == self.sort_key:
            return f"{label} {'▼' if self.sort_reverse else '▲'}"
        return label

    # -- the timer: state -> widgets ----------------------------------------------------------
    def refresh_view(self) -> None:
        now = time.time()
        state = self.feed.state
        with self.feed.lock:
            headline = state.headline(now)
            stale = state.stale
            changed = state.revision != self._revision
            if changed:
                self._revision = state.revision
                rows = state.rows(self.device_filter, self.sort_key, self.sort_reverse)
                deployments = [dict(d) for d in state.deployment_list()]
                alerts = [dict(a) for a in state.alerts.values()]
                endpoints = [dict(state.endpoints[k]) for k in sorted(state.endpoints)]
        self.headline = headline
        head = self.headline_widget
        head.update(headline)
        head.set_class(stale, "stale")
        if changed:
            self._sync_fleet(rows)
            # the small tables are drawn again only when they changed
            for name, doc, sync in (
                ("deployments", deployments, self._sync_deployments),
                ("alerts", alerts, self._sync_alerts),
                ("endpoints", endpoints, self._sync_endpoints),
            ):
                if self._drawn.get(name) != doc:
                    self._drawn[name] = doc
                    sync(doc)

    def _selected_id(self, table: DataTable[Any]) -> str | None:
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return None if key is None else str(key)

    def _sync_fleet(self, rows: list[tuple[str, tuple[str, ...]]]) -> None:
        """Update the cells that changed; rebuild the table when rows come or go, or the user
        changed the sort or filter. New values reorder the rows at most every REORDER_S
        (sorted by a live number, a big fleet would otherwise be rebuilt on every tick)."""
        table = self.fleet_table
        ids = [device_id for device_id, _ in rows]
        now = time.monotonic()
        reorder = ids != self.shown_ids and (
            self._force_order
            or set(ids) != set(self.shown_ids)
            or now - self._ordered_at >= REORDER_S
        )
        if reorder:
            selected = self._selected_id(table)
            table.clear()
            for device_id, cells in rows:
                table.add_row(
                    *(_cell(c.key, v) for c, v in zip(COLUMNS, cells, strict=True)),
                    key=device_id,
                )
            if selected in ids:
                table.move_cursor(row=ids.index(selected))
            self.shown_ids = ids
            self._ordered_at = now
        else:
            for device_id, cells in rows:
                old = self.shown_cells.get(device_id, ())
                for column, before, after in zip(COLUMNS, old, cells, strict=True):
                    if before != after:
                        table.update_cell(device_id, column.key, _cell(column.key, after))
        self._force_order = False
        self.shown_cells = dict(rows)

    def _sync_deployments(self, deployments: list[dict[str, Any]]) -> None:
        table = self.deployments_table
        selected = self._selected_id(table)
        table.clear()
        for dep in deployments:
            table.add_row(
                str(dep.get("id")),
                str(dep.get("version", "-")),
                str(dep.get("artifact", "-")),
                str(dep.get("strategy", "-")),
                str(dep.get("state", "-")),
                str(dep.get("target", "-")),
                _device_counts(dep.get("devices") or {}),
                bar(dep.get("progress")),
                key=str(dep.get("id")),
            )
        ids = [str(d.get("id")) for d in deployments]
        if selected in ids:
            table.move_cursor(row=ids.index(selected))
        before = self.shown_deployments
        self.shown_deployments = {str(d.get("id")): d for d in deployments}
        if self._rollout_for is not None and before.get(self._rollout_for) != (
            self.shown_deployments.get(self._rollout_for)
        ):
            self.load_rollout(self._rollout_for)

    def _sync_alerts(self, alerts: list[dict[str, Any]]) -> None:
        table = self.alerts_table
        table.clear()
        for alert in alerts:
            table.add_row(
                str(alert.get("id")),
                str(alert.get("severity", "-")),
                str(alert.get("rule", "-")),
                str(alert.get("metric", "-")),
                str(alert.get("subject", "-")),
                str(alert.get("message", ""))[:120],
                str(alert.get("since", ""))[:19],
            )

    def _sync_endpoints(self, endpoints: list[dict[str, Any]]) -> None:
        table = self.endpoints_table
        table.clear()
        for ep in endpoints:
            p50, p99 = ep.get("p50_ms"), ep.get("p99_ms")
            table.add_row(
                str(ep.get("name")),
                str(ep.get("requests", 0)),
                str(ep.get("errors", 0)),
                str(ep.get("rows", 0)),
                "-" if p50 is None else f"{float(p50):.1f}",
                "-" if p99 is None else f"{float(p99):.1f}",
            )

    # -- deployments: per-device progress ----------------------------------------------------
    @on(DataTable.RowHighlighted, "#deployments")
    def _deployment_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value
        if key is not None and key != self._rollout_for:
            self._rollout_for = key
            self.load_rollout(key)

    def load_rollout(self, deployment_id: Any) -> None:
        self.run_worker(self._load_rollout(deployment_id), group="rollout", exclusive=True)

    async def _load_rollout(self, deployment_id: Any) -> None:
        assert self.http is not None
        table = self.rollout_table
        try:
            doc = await rest.deployment(self.http, deployment_id)
        except httpx.HTTPError as exc:
            table.clear()
            table.add_row("-", "-", "-", "-", "-", f"cannot load it: {describe_error(exc)}")
            return
        self.rollout = doc
        table.clear()
        for dev in doc.get("devices") or ():
            state = str(dev.get("state"))
            style = "red" if state in ("failed", "rolled_back") else ""
            table.add_row(
                str(dev.get("device_id")),
                str(dev.get("phase", "-")),
                Text(state, style=style),
                bar(device_progress(state), 12),
                f"{int(dev.get('received_bytes') or 0):,} B",
                str(dev.get("reason") or ""),
                key=str(dev.get("device_id")),
            )

    # -- actions ------------------------------------------------------------------------------
    FLEET_ACTIONS: ClassVar[frozenset[str]] = frozenset(
        {"focus_filter", "cycle_sort", "reverse_sort", "show_tab"}
    )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The fleet's keys do nothing on a device's page (and its footer does not list them)."""
        return not (action in self.FLEET_ACTIONS and isinstance(self.screen, DeviceScreen))

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        error = self.query_one("#filter-error", Label)
        try:
            self.device_filter = parse_filter(event.value)
        except FilterError as exc:
            error.update(str(exc))
            return
        error.update("")
        self.filter_text = event.value
        self._revision = -1
        self._force_order = True
        self.refresh_view()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.fleet_table.focus()

    def action_focus_filter(self) -> None:
        self.query_one(TabbedContent).active = "fleet-tab"
        self.query_one("#filter", Input).focus()

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        tables = {
            "fleet-tab": self.fleet_table,
            "deployments-tab": self.deployments_table,
            "alerts-tab": self.alerts_table,
            "endpoints-tab": self.endpoints_table,
        }
        tables[tab].focus()

    def _set_sort(self, key: str, reverse: bool) -> None:
        self.sort_key, self.sort_reverse = key, reverse
        table = self.fleet_table
        for column in COLUMNS:
            table.columns[column.key].label = Text(self._label(column.key))  # type: ignore[index]
        table.refresh()
        self._revision = -1
        self._force_order = True
        self.refresh_view()

    def action_cycle_sort(self) -> None:
        index = (SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)
        self._set_sort(SORT_KEYS[index], False)

    def action_reverse_sort(self) -> None:
        self._set_sort(self.sort_key, not self.sort_reverse)

    @on(DataTable.HeaderSelected, "#fleet")
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        self._set_sort(key, not self.sort_reverse if key == self.sort_key else False)

    @on(DataTable.RowSelected, "#fleet")
    def _device_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.push_screen(DeviceScreen(str(event.row_key.value)))


class DeviceScreen(Screen[None]):
    """One device: sparklines of its metrics (the last hour, then live), its deployments, its
    open alerts and newest logs. Escape goes back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, device_id: str) -> None:
        super().__init__()
        self.device_id = device_id
        self.series: dict[str, list[float]] = {}
        self.sparks: dict[str, Sparkline] = {}
        self.labels: dict[str, Label] = {}
        self._live_ts: float | None = None
        self._loaded = False

    @property
    def watch_app(self) -> WatchApp:
        app = self.app
        assert isinstance(app, WatchApp)
        return app

    def compose(self) -> ComposeResult:
        yield Static("", id="dev-headline")
        with VerticalScroll():
            yield Static("", id="dev-head")
            yield Label("", id="dev-error")
            yield Label("Metrics (last hour, then live)", classes="section")
            yield Vertical(id="sparks")
            yield Label("Deployments", classes="section")
            yield DataTable(id="dev-deployments", cursor_type="row")
            yield Label("Open alerts", classes="section")
            yield DataTable(id="dev-alerts", cursor_type="row")
            yield Label("Newest logs", classes="section")
            yield DataTable(id="dev-logs", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#dev-deployments", DataTable).add_columns(
            "id", "version", "artifact", "strategy", "status", "this device", "reason", "created"
        )
        self.query_one("#dev-alerts", DataTable).add_columns(
            "id", "severity", "rule", "message", "since"
        )
        self.query_one("#dev-logs", DataTable).add_columns(
            "time", "model", "role", "latency ms", "output", "request"
        )
        self._live()
        self.run_worker(self._load(), group="device", exclusive=True)
        self.set_interval(1.0, self._live)
        self.set_interval(10.0, lambda: self.run_worker(self._load(), group="device"))

    async def _load(self) -> None:
        http = self.watch_app.http
        assert http is not None
        error = self.query_one("#dev-error", Label)
        try:
            history = await rest.device_history(http, self.device_id)
            deployments = await rest.device_deployments(http, self.device_id)
            logs = await rest.device_logs(http, self.device_id)
        except httpx.HTTPError as exc:
            error.update(f"cannot read the device's history from the hub: {describe_error(exc)}")
            return
        error.update("")
        if not self._loaded:
            for metric, values in history.items():
                self.series[metric] = values[-MAX_POINTS:]
            self._loaded = True
        for metric in self.series:
            await self._show_metric(metric)
        table = self.query_one("#dev-deployments", DataTable)
        table.clear()
        for dep in deployments:
            table.add_row(
                str(dep.get("id")),
                str(dep.get("version")),
                str(dep.get("device_artifact")),
                str(dep.get("strategy")),
                str(dep.get("status")),
                str(dep.get("device_state")),
                str(dep.get("device_reason") or ""),
                str(dep.get("created_at", ""))[:19],
            )
        logs_table = self.query_one("#dev-logs", DataTable)
        logs_table.clear()
        for log in logs:
            logs_table.add_row(
                clock(log.get("ts")),
                str(log.get("model_version")),
                str(log.get("role", "")),
                f"{float(log.get('latency_ms') or 0):.1f}",
                str(log.get("output"))[:60],
                str(log.get("request_id", ""))[:12],
            )

    async def _show_metric(self, metric: str) -> None:
        values = self.series[metric]
        summary = f"{metric} {values[-1]:.4g}" if values else metric
        if values:
            summary += f" ({min(values):.3g}..{max(values):.3g})"
        if metric not in self.sparks:
            label = Label(summary, classes="spark-label")
            spark = Sparkline(values, id=f"spark-{metric}")
            self.labels[metric], self.sparks[metric] = label, spark
            await self.query_one("#sparks", Vertical).mount(
                Horizontal(label, spark, classes="spark-row")
            )
        else:
            self.labels[metric].update(summary)
            self.sparks[metric].data = list(values)

    def _live(self) -> None:
        now = time.time()
        feed = self.watch_app.feed
        with feed.lock:
            device = dict(feed.state.devices.get(self.device_id) or {})
            alerts = [dict(a) for a in feed.state.device_alerts(self.device_id)]
            headline = feed.state.headline(now)
            stale = feed.state.stale
        head = self.query_one("#dev-headline", Static)
        head.update(headline)
        head.set_class(stale, "stale")
        self.query_one("#dev-head", Static).update(self._describe(device))
        table = self.query_one("#dev-alerts", DataTable)
        table.clear()
        for alert in alerts:
            table.add_row(
                str(alert.get("id")),
                str(alert.get("severity")),
                str(alert.get("rule")),
                str(alert.get("message", ""))[:100],
                str(alert.get("since", ""))[:19],
            )
        ts = device.get("telemetry_ts")
        if ts is not None and ts != self._live_ts and self._loaded:
            self._live_ts = ts
            for field, metric in LIVE_METRICS.items():
                value = device.get(field)
                if value is None:
                    continue
                values = self.series.setdefault(metric, [])
                values.append(float(value))
                del values[:-MAX_POINTS]
                self.run_worker(self._show_metric(metric), group="spark")

    def _describe(self, device: dict[str, Any]) -> Text:
        if not device:
            return Text(f"{self.device_id}: not in the fleet (any more)", style="bold red")
        text = Text()
        text.append(f"{self.device_id}", style="bold")
        if device.get("name") and device["name"] != self.device_id:
            text.append(f" ({device['name']})")
        text.append("  ")
        text.append_text(_status_cell(status_text(device)))
        text.append(f"   last seen {clock(device.get('last_seen'))}\n")
        text.append(
            f"model {device.get('active_model') or '-'} {device.get('artifact') or ''}   "
            f"shadow {device.get('shadow') or '-'}   agent {device.get('agent_version') or '-'}"
            f"   hardware {device.get('hardware') or '-'}\n"
        )
        tags = ", ".join(device.get("tags") or ()) or "-"
        text.append(f"tags {tags}   group {device.get('group') or '-'}")
        return text
