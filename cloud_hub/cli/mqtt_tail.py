"""`edgepilot mqtt tail [TOPIC_FILTER]`: the fleet's MQTT traffic, decoded (for debugging).

Options and rendering only; the decoding is `cloud_hub.fleet.traffic`. It logs in with a viewer
account (read-only): never with the hub's own, since the broker takes the username as client
id and a second client on the hub's account would disconnect the hub's fleet service.
"""

from __future__ import annotations

import json
import queue
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import paho.mqtt.client as mqtt
import typer
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.cli.base import State, fail
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_auth import (
    HUB_USER,
    VIEWER_READS,
    BrokerFiles,
    account_password,
    events_users,
    hub_ca_file,
    load_accounts,
)
from cloud_hub.fleet.traffic import Decoded, decode

mqtt_app = typer.Typer(help="Look at the fleet's MQTT traffic.", no_args_is_help=True)

CONNECT_WAIT_S = 10.0
VIEWER_HINT = "edgepilot hub broker-config --viewer NAME"


@dataclass(frozen=True)
class Login:
    username: str | None
    password: str | None
    viewer: bool  # a viewer account of this hub (it may read only some kinds)


def _parse_broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise fail(f"--broker {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _login(
    settings: HubSettings, username: str | None, password_file: Path | None, anonymous: bool
) -> Login:
    files = BrokerFiles.in_data_dir(settings.data_dir)
    if anonymous:
        if username is not None or password_file is not None:
            raise fail("--anonymous takes no --username or --password-file")
        return Login(None, None, False)
    reserved = {HUB_USER, *events_users()}
    if settings.mqtt_username:
        reserved.add(settings.mqtt_username)
    viewers = {a.name for a in load_accounts(files) if a.role == "viewer"}
    if username is None:
        if not viewers:
            raise fail(
                "no viewer account to read the fleet's topics with: make one with "
                f"`{VIEWER_HINT}` (then restart or `kill -HUP` the broker), or pass "
                "--username/--password-file (--anonymous for a broker without accounts)"
            )
        username = sorted(viewers)[0]
    if username in reserved:
        raise fail(
            f"{username!r} is one of the hub's own broker accounts: the broker uses the username "
            "as client id, so tailing with it would disconnect the hub. Use a viewer account "
            f"(`{VIEWER_HINT}`)"
        )
    if password_file is not None:
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            raise fail(f"cannot read --password-file {password_file}: {exc.strerror}") from None
    elif username in viewers:
        password = account_password(files, username)
    else:
        raise fail(f"{username!r} is not a viewer account of this hub: pass --password-file")
    return Login(username, password, username in viewers)


def _filters(topic_filter: str | None, root: str, login: Login) -> list[str]:
    if topic_filter:
        return [topic_filter]
    if login.viewer:  # what its ACL lets it read (Mosquitto drops the rest on delivery)
        return [f"{root}/dev/+/{kind}" for kind in VIEWER_READS] + [f"{root}/alerts"]
    return [f"{root}/dev/#", f"{root}/alerts"]


def _render(item: Decoded, ts: float, retained: bool) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
    mark = " (retained)" if retained else ""
    return f"{stamp} {item.topic}{mark}  {item.text}"


def _json_line(item: Decoded, ts: float, retained: bool) -> str:
    doc = {
        "ts": round(ts, 3),
        "topic": item.topic,
        "kind": item.kind,
        "device": item.device,
        "retained": retained,
        "ok": item.ok,
        "size": item.size,
        "decoded": item.document,
    }
    return json.dumps(doc, ensure_ascii=False)


class _Events:
    """What paho's network thread hands the main thread, in order."""

    def __init__(self) -> None:
        self.q: queue.Queue[tuple[str, Any]] = queue.Queue()

    def on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.q.put(("connect", reason))

    def on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.q.put(("subscribe", list(reasons)))

    def on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.q.put(("message", (msg.topic, bytes(msg.payload), bool(msg.retain), time.time())))

    def on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.q.put(("disconnect", reason))


@mqtt_app.command("tail")
def tail(
    ctx: typer.Context,
    topic_filter: Annotated[
        str | None,
        typer.Argument(
            help="MQTT topic filter (default: {root}/dev/# and {root}/alerts; for a viewer "
            "account, the kinds it may read)"
        ),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(help="HOST:PORT (default: the hub's mqtt_host:mqtt_port)"),
    ] = None,
    username: Annotated[
        str | None,
        typer.Option(
            help="Broker account (default: the hub's first viewer account (accounts.json, "
            f"made by `{VIEWER_HINT}`), with its password; never the hub's own accounts)"
        ),
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(help="File holding the password (default: the viewer's password file)"),
    ] = None,
    anonymous: Annotated[
        bool, typer.Option("--anonymous", help="Log in without an account (an open broker)")
    ] = False,
    tls: Annotated[
        bool | None, typer.Option("--tls/--no-tls", help="TLS (default: the hub's mqtt_tls)")
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(help="CA to check the broker with (default: the hub's, else system CAs)"),
    ] = None,
    topic_root: Annotated[
        str | None, typer.Option(help="Topic root (default: the hub's topic_root)")
    ] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after N messages")] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0.1, help="Stop after S seconds without a message")
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="One JSON object per line: ts, topic, kind, device, decoded, ..."
        ),
    ] = False,
    retained: Annotated[
        bool,
        typer.Option("--retained/--no-retained", help="Show retained messages (status, desired)"),
    ] = True,
) -> None:
    """Print the fleet's MQTT traffic, decoded with the wire contract: log and telemetry
    batches pretty-printed, model chunks summarised, other messages as JSON, a payload that
    does not follow the contract as "invalid <Kind>: reason". Logs in with a viewer account
    (`edgepilot hub broker-config --viewer NAME`), or --username/--password-file, or
    --anonymous; "subscribed ..." on stderr says when it is listening."""
    state: State = ctx.obj
    settings = state.settings()
    root = topic_root or settings.topic_root
    host, port = (
        _parse_broker(broker) if broker else (settings.mqtt_host or "localhost", settings.mqtt_port)
    )
    login = _login(settings, username, password_file, anonymous)
    use_tls = settings.mqtt_tls if tls is None else tls
    filters = _filters(topic_filter, root, login)

    events = _Events()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edgepilot-tail-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if login.username is not None:
        client.username_pw_set(login.username, login.password)
    if use_tls:
        from edge_agent.core.mqtt import tls_context

        try:
            client.tls_set_context(tls_context(ca_file or hub_ca_file(settings)))
        except (OSError, ssl.SSLError) as exc:
            raise fail(f"cannot use the CA file: {exc}") from None
    client.on_connect = events.on_connect
    client.on_subscribe = events.on_subscribe
    client.on_message = events.on_message
    client.on_disconnect = events.on_disconnect
    client.connect_timeout = 5.0
    where = f"{host}:{port}"
    try:
        client.connect(host, port, keepalive=30)
    except ssl.SSLError as exc:
        raise fail(f"TLS with the broker at {where} failed: {exc.reason or exc}") from None
    except (OSError, ValueError) as exc:
        raise fail(f"cannot reach the broker at {where}: {exc}") from None
    client.loop_start()
    try:
        _run(client, events, filters, login, where, count, timeout, json_out, retained, root)
    finally:
        client.disconnect()
        client.loop_stop()


def _run(
    client: mqtt.Client,
    events: _Events,
    filters: list[str],
    login: Login,
    where: str,
    count: int | None,
    timeout: float | None,
    json_out: bool,
    retained: bool,
    root: str,
) -> None:
    who = login.username or "anonymous"
    deadline = time.monotonic() + CONNECT_WAIT_S
    subscribed = False
    shown = 0
    idle_since = time.monotonic()
    while True:
        if not subscribed:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise fail(f"the broker at {where} did not answer within {CONNECT_WAIT_S:.0f} s")
        elif timeout is not None:
            wait = timeout - (time.monotonic() - idle_since)
            if wait <= 0:
                return
        else:
            wait = 1.0
        try:
            what, value = events.q.get(timeout=max(wait, 0.01))
        except queue.Empty:
            continue
        if what == "connect":
            if value.is_failure:
                raise fail(f"the broker at {where} refused {who}: {value}")
            client.subscribe([(f, 0) for f in filters])  # again after a reconnect: clean session
        elif what == "subscribe":
            refused = [f for f, r in zip(filters, value, strict=False) if r.is_failure]
            if len(refused) == len(filters):
                raise fail(f"the broker at {where} refused {who} the subscription to {filters}")
            if refused:
                typer.echo(f"the broker refused {who} the subscription to {refused}", err=True)
            if not subscribed:
                ok = [f for f in filters if f not in refused]
                typer.echo(f"subscribed to {', '.join(ok)} as {who} at {where}", err=True)
            subscribed = True
            idle_since = time.monotonic()
        elif what == "disconnect":
            if not subscribed:
                raise fail(
                    f"the broker at {where} closed the connection of {who} before accepting it "
                    f"({value}): a TLS port needs --tls, a plain one --no-tls"
                )
            typer.echo(f"disconnected from {where} ({value}); reconnecting", err=True)
        else:
            topic, payload, was_retained, ts = value
            idle_since = time.monotonic()
            if was_retained and not retained:
                continue
            item = decode(topic, payload, topic_root=root)
            line = (
                _json_line(item, ts, was_retained) if json_out else _render(item, ts, was_retained)
            )
            typer.echo(line)
            shown += 1
            if count is not None and shown >= count:
                return
