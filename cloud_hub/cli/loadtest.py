"""`edgepilot loadtest`: requests at a fixed rate, open loop, against a hub endpoint or a
device's local API; latency percentiles, achieved rate, success ratio, status codes.

The load generator is `cloud_hub.devtools.loadtest`; this module builds the target and the bodies,
checks
them with one request first (so an unknown endpoint or an unreachable URL is a message, exit code
2, not a run of errors), shows progress while the test runs, and prints a table or JSON.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from cloud_hub.cli import render
from cloud_hub.cli.base import TokenOpt, fail, state

DEFAULT_HUB = "http://127.0.0.1:8000"  # `edgepilot hub serve`'s default address
AGENT_PATH = "/v1/predict"


def _auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _hub_endpoint(hub: str, name: str, timeout_s: float, token: str | None) -> dict[str, Any]:
    """GET the endpoint's description from the hub: exit 2 if the hub cannot be reached or
    does not have it."""
    import httpx

    from cloud_hub.devtools.loadtest import LoadTestError, Target

    try:
        base = Target.parse(hub).origin
    except LoadTestError as exc:
        raise fail(f"--hub {exc}") from None
    url = f"{base}/api/v1/endpoints/{name}"
    try:
        resp = httpx.get(url, timeout=timeout_s, headers=_auth(token))
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the hub at {base}: {exc or type(exc).__name__}") from None
    if resp.status_code in (401, 403):
        raise fail(
            f"the hub at {base} refused the token ({resp.status_code}): give one with a viewer "
            "role or higher (--token or EDGEPILOT_TOKEN)"
        )
    if resp.status_code == 404:
        raise fail(f"endpoint {name!r} not found on the hub at {base}")
    if resp.status_code != 200:
        raise fail(f"GET {url}: {resp.status_code} {resp.text[:200]}")
    info: dict[str, Any] = resp.json()
    if info.get("status") == "broken":
        raise fail(f"endpoint {name!r} is broken: {info.get('error')}")
    return info


def _probe(url: str, payload: Any, timeout_s: float, derived: bool, token: str | None) -> None:
    """One request before the clock starts: the URL answers, and the body is taken."""
    import httpx

    try:
        resp = httpx.post(
            url,
            content=payload.body,
            headers={"Content-Type": payload.content_type, **_auth(token)},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    if resp.status_code == 404:
        raise fail(f"{url}: 404 not found ({resp.text[:200]})")
    if resp.status_code in (401, 403):
        raise fail(
            f"{url} refused the request ({resp.status_code}): give a token it takes (for a hub "
            "endpoint --token or EDGEPILOT_TOKEN, for a --url --agent-token)"
        )
    if resp.status_code >= 400:
        message = f"the first request to {url} got {resp.status_code}: {resp.text[:300]}"
        if derived:
            raise fail(f"{message}; give a body that fits (--body FILE or --inputs FILE)")
        render.err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def loadtest(
    ctx: typer.Context,
    endpoint: Annotated[
        str | None, typer.Argument(help="A hub endpoint's name (or give --url instead).")
    ] = None,
    rate: Annotated[float, typer.Option(help="Requests per second, sent on schedule.")] = 10.0,
    duration: Annotated[float, typer.Option(help="Seconds to send for.")] = 10.0,
    hub: Annotated[
        str, typer.Option(envvar="EDGEPILOT_HUB_URL", help="The hub's base URL.")
    ] = DEFAULT_HUB,
    url: Annotated[
        str | None,
        typer.Option(
            help="POST here instead of a hub endpoint, e.g. a device's local API "
            f"http://HOST:PORT{AGENT_PATH} (the path defaults to {AGENT_PATH})."
        ),
    ] = None,
    body: Annotated[
        Path | None,
        typer.Option(
            help="The request: a JSON file (a list is taken as inputs rows), or an image."
        ),
    ] = None,
    inputs: Annotated[
        Path | None, typer.Option(help="Rows to send, in turn: a .npy, .csv or .json file.")
    ] = None,
    rows: Annotated[
        int, typer.Option(min=1, help="Rows per request (--inputs or the default body).")
    ] = 1,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Cap on connections; requests due past it are dropped.")
    ] = 1024,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take.")] = 10.0,
    late_ms: Annotated[
        float, typer.Option(help="A request sent later than this after its time is late.")
    ] = 10.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    token: TokenOpt = None,
    agent_token: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEPILOT_AGENT_TOKEN",
            show_envvar=True,
            help="With --url: the token sent there, e.g. a device's local API token ([http] "
            "token in its agent.toml); --token (the hub's) is never sent to a --url.",
        ),
    ] = None,
) -> None:
    """Send requests at a fixed rate (open loop: on schedule, however slowly the server
    answers) and report latency p50/p90/p99, achieved rate, success ratio and status codes.

    The body: --body FILE, --inputs FILE (rows, in turn), or for a hub endpoint random rows of
    the shape its model takes. Against a device's local API (--url) give --body or --inputs."""
    from cloud_hub.devtools.loadtest import (
        LoadTestError,
        Target,
        payloads_for_endpoint,
        payloads_from_body_file,
        payloads_from_rows,
        read_rows,
        run_load,
    )

    if not (rate > 0 and math.isfinite(rate)):
        raise fail(f"--rate must be a positive number of requests per second (got {rate})")
    if not (duration > 0 and math.isfinite(duration)):
        raise fail(f"--duration must be a positive number of seconds (got {duration})")
    if round(rate * duration) < 1:
        raise fail(f"--rate {rate} for --duration {duration} is less than one request")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise fail(f"--timeout must be a positive number of seconds (got {timeout})")
    if not (late_ms >= 0 and math.isfinite(late_ms)):
        raise fail(f"--late-ms must be a number of milliseconds ≥ 0 (got {late_ms})")
    if (endpoint is None) == (url is None):
        raise fail("give an ENDPOINT of the hub, or --url URL (e.g. a device's local API)")
    if body is not None and inputs is not None:
        raise fail("give --body FILE or --inputs FILE, not both")
    # a device's local API has its own token: the hub's is not sent there
    token = agent_token if url is not None else state(ctx).token(token)
    try:
        if url is not None:
            target = Target.parse(url, default_path=AGENT_PATH)
        else:
            assert endpoint is not None
            target = Target.parse(hub, default_path="/")
            target = Target(target.host, target.port, f"/api/v1/endpoints/{endpoint}/predict")
        target = Target(target.host, target.port, target.path, token)
    except LoadTestError as exc:
        raise fail(str(exc)) from None

    derived = False
    try:
        if body is not None:
            payloads = payloads_from_body_file(body)
        elif inputs is not None:
            payloads = payloads_from_rows(read_rows(inputs), rows)
        elif endpoint is not None:
            payloads = payloads_for_endpoint(_hub_endpoint(hub, endpoint, timeout, token), rows)
            derived = True
        else:
            raise LoadTestError(
                "give --body FILE or --inputs FILE: a device's API does not describe its input"
            )
        if endpoint is not None and not derived:
            _hub_endpoint(hub, endpoint, timeout, token)  # unknown endpoint: a message, not 404s
        _probe(target.url, payloads[0], timeout, derived, token)
        result = _run(
            run_load,
            target,
            payloads,
            rate=rate,
            duration_s=duration,
            max_connections=max_connections,
            timeout_s=timeout,
            late_ms=late_ms,
            quiet=json_out,
        )
    except LoadTestError as exc:
        raise fail(str(exc)) from None
    if json_out:
        render.print_json(result)
        return
    render.show_load_test(result)


def _run(run_load: Any, target: Any, payloads: Any, *, quiet: bool, **options: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(
        *columns, console=render.err_console, disable=quiet, refresh_per_second=4
    ) as progress:
        task = progress.add_task("load test", total=None, detail="")

        def update(snap: Any) -> None:
            progress.update(
                task,
                completed=snap.scheduled,
                total=snap.total,
                detail=(
                    f"ok {snap.ok}, errors {snap.errors}, dropped {snap.dropped}, "
                    f"in flight {snap.in_flight}"
                ),
            )

        return run_load(target, payloads, on_progress=None if quiet else update, **options)
