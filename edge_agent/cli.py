"""`edgepilot-agent`: the device-side command line.

`run` starts the agent process (MQTT delivery, outbox, local HTTP API), enrolling the device at
the hub first when its config says so; `enroll` enrolls it by hand; `status` asks a running
agent for its state; `info` and `predict` inspect a model file and run it locally.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from edge_agent.core.runtimes import (
    ModelLoadError,
    RuntimeUnavailable,
    detect_format,
    load_runtime,
)

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig, AgentSettings, EnrollSettings

app = typer.Typer(
    help="EdgePilot agent: run models on the device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _load(model: Path, threads: int):  # type: ignore[no-untyped-def]
    data = model.read_bytes()
    fmt = detect_format(data)
    if fmt is None:
        typer.echo(f"error: {model} is not an ONNX or TFLite model", err=True)
        raise typer.Exit(2)
    try:
        return load_runtime(data, fmt, threads=threads)
    except (ModelLoadError, RuntimeUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def info(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
) -> None:
    """Print a model file's format and input/output tensors."""
    runtime = _load(model, 1)
    typer.echo(
        json.dumps(
            {
                "format": runtime.format,
                "inputs": [vars(t) for t in runtime.inputs],
                "outputs": [vars(t) for t in runtime.outputs],
            },
            indent=2,
        )
    )


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    inputs: Annotated[Path, typer.Option("--input", help="A .npy batch of model-ready inputs.")],
    threads: Annotated[int, typer.Option(min=1, help="Runtime threads.")] = 1,
    outputs: Annotated[
        bool, typer.Option("--outputs", help="Print every output tensor of each sample.")
    ] = False,
) -> None:
    """Run a batch through the model; print one JSON line per sample: the top class and score
    of a classifier (a model with exactly one rank-2 float output), else (or with --outputs)
    every output of the sample by name."""
    runtime = _load(model, threads)
    try:
        batch = np.load(inputs)
        if batch.dtype == np.float64:
            batch = batch.astype(np.float32)
        result = runtime.run(batch)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    scores = [  # a classifier has one output of class scores (and perhaps one of labels)
        spec.name
        for spec in runtime.outputs
        if len(spec.shape) == 2 and (spec.dtype.startswith("float") or spec.quantization)
    ]
    score_name = scores[0] if len(scores) == 1 and not outputs else None
    if score_name is not None:
        for row in runtime.dequantize(score_name, result[score_name]):
            top = int(row.argmax())
            typer.echo(json.dumps({"class": top, "score": float(row[top])}))
        return
    rows = len(batch) if runtime.batched else 1
    for i in range(rows):
        sample = {
            name: (value[i] if runtime.batched and value.ndim else value).tolist()
            for name, value in result.items()
        }
        typer.echo(json.dumps({"outputs": sample}))


DEFAULT_DATA_DIR = Path("/var/lib/edgepilot")
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The agent's TOML config file.")]


def _config(config: Path, env: dict[str, str] | None = None) -> AgentConfig:
    from edge_agent.config import ConfigError, load_config

    try:
        return load_config(config, env)
    except ConfigError as exc:
        typer.echo(f"error: invalid configuration:\n{exc}", err=True)
        raise typer.Exit(2) from None


def _settings(config: AgentConfig) -> AgentSettings:
    from edge_agent.config import ConfigError

    try:
        return config.settings()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _log_format(name: str) -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s")


@app.command()
def run(
    config: ConfigOpt,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the agent until SIGTERM or SIGINT. A device with an [enroll] section and no identity
    enrolls at the hub first, retrying with back-off until the hub accepts it."""
    from edge_agent.config import needs_enrollment

    agent_config = _config(config)
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr)
    root_log = logging.getLogger()
    for handler in root_log.handlers:
        handler.setFormatter(_log_format(agent_config.device_id or "enrolling"))
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        logging.getLogger("edge_agent").info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if needs_enrollment(agent_config) and agent_config.enroll is not None:
        from edge_agent.enroll import enroll_until_done

        enrolled = enroll_until_done(
            agent_config.enroll,
            agent_config.data_dir,
            stop=stop,
            hardware=agent_config.telemetry.hardware or None,
        )
        if enrolled is None:
            return  # stopped before the hub accepted it
        agent_config = _config(config)  # with the identity it now has
    settings = _settings(agent_config)
    for handler in root_log.handlers:
        handler.setFormatter(_log_format(settings.device_id))
    from edge_agent.agent import Agent
    from edge_agent.outbox import OutboxError

    try:
        agent = Agent(settings)
        agent.start()
    except (OSError, OutboxError) as exc:
        typer.echo(f"error: cannot start the agent: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        while not stop.wait(1.0):
            pass
    finally:
        agent.stop()


@app.command()
def enroll(
    hub: Annotated[
        str | None, typer.Option(help="The hub's URL (default: the config's enroll.hub).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="The fleet enrollment token (--token-file keeps it out of `ps`)."),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="A file holding the token; deleted once enrolled.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="The agent's TOML config file.")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help=f"Where the identity is kept (default: the config's, else {DEFAULT_DATA_DIR})."
        ),
    ] = None,
    hardware_id: Annotated[
        str | None, typer.Option(help="This machine's hardware id (default: detected).")
    ] = None,
    hub_ca_file: Annotated[
        Path | None, typer.Option(help="The CA (PEM) of an https hub's certificate.")
    ] = None,
) -> None:
    """Enroll this device at the hub once (no retries): prints its device id and fleet, and
    writes its identity (the broker password stays in the 0600 identity file). Exit code 2 with
    the hub's reason when it refuses (an expired, revoked or used-up token, a revoked device)."""
    from edge_agent.enroll import EnrollmentError, EnrollmentRefused, HubUnreachable
    from edge_agent.enroll import enroll as enroll_once

    if token is not None and token_file is not None:
        typer.echo("error: give --token or --token-file, not both", err=True)
        raise typer.Exit(2)
    given = {
        "hub": hub,
        "token": token,
        "token_file": str(token_file.absolute()) if token_file is not None else None,
        "hardware_id": hardware_id,
        "hub_ca_file": str(hub_ca_file.absolute()) if hub_ca_file is not None else None,
    }
    options = {key: value for key, value in given.items() if value is not None}
    settings, where = _enroll_settings(options, config, data_dir)
    try:
        result = enroll_once(settings, where)
    except EnrollmentRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except HubUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except EnrollmentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    identity = result.identity
    what = "re-enrolled (same device, new broker password)" if result.reenrolled else "enrolled"
    typer.echo(f"{what}: device {identity.device_id} in fleet {identity.fleet}")
    typer.echo(f"identity: {result.identity_path}")
    if result.token_file_removed is not None:
        typer.echo(f"token file removed: {result.token_file_removed}")


def _enroll_settings(
    options: dict[str, str], config: Path | None, data_dir: Path | None
) -> tuple[EnrollSettings, Path]:
    """The enroll section from the command line over the config file (if any)."""
    from pydantic import ValidationError

    from edge_agent.config import ENV_PREFIX, EnrollSettings

    if config is not None:
        env = dict(os.environ)
        for key, value in options.items():
            env[f"{ENV_PREFIX}ENROLL_{key.upper()}"] = value
        if data_dir is not None:
            env[f"{ENV_PREFIX}DATA_DIR"] = str(data_dir.absolute())
        agent_config = _config(config, env)
        if agent_config.enroll is None:
            typer.echo(f"error: {config} has no [enroll] section: give --hub", err=True)
            raise typer.Exit(2)
        settings = agent_config.enroll
        if "token" in options or "token_file" in options:
            settings = settings.model_copy(
                update={"token": options.get("token"), "token_file": _token_path(options)}
            )
        return settings, agent_config.data_dir
    if "hub" not in options:
        typer.echo("error: give --hub (or --config with an [enroll] section)", err=True)
        raise typer.Exit(2)
    if "token" not in options and "token_file" not in options:
        typer.echo("error: give --token or --token-file", err=True)
        raise typer.Exit(2)
    try:
        settings = EnrollSettings.model_validate(options)
    except ValidationError as exc:
        problems = [
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-') or 'options'}: {e['msg']}"
            for e in exc.errors()
        ]
        typer.echo("error: " + "\n".join(problems), err=True)
        raise typer.Exit(2) from None
    return settings, (data_dir or DEFAULT_DATA_DIR).absolute()


def _token_path(options: dict[str, str]) -> Path | None:
    return Path(options["token_file"]) if "token_file" in options else None


@app.command()
def status(config: ConfigOpt) -> None:
    """Print a running agent's /v1/status, with its enrollment (device id, fleet, hub)."""
    from edge_agent.config import needs_enrollment

    agent_config = _config(config)
    if needs_enrollment(agent_config):
        hub = agent_config.enroll.hub if agent_config.enroll is not None else "the hub"
        typer.echo(
            f"error: not enrolled yet: the agent enrolls at {hub} when it runs (see its log)",
            err=True,
        )
        raise typer.Exit(1)
    settings = _settings(agent_config)
    identity = agent_config.identity
    enrollment = None
    if identity is not None:
        enrollment = {
            "device_id": identity.device_id,
            "fleet": identity.fleet,
            "hub": identity.hub,
            "hardware_id": identity.hardware_id,
            "enrolled_at": identity.enrolled_at,
        }
    port = settings.http.port
    if port == 0:
        try:
            port = int((settings.data_dir / "http.port").read_text())
        except (OSError, ValueError):
            if enrollment is not None:
                typer.echo(f"enrolled: {json.dumps(enrollment)}", err=True)
            typer.echo("error: the agent is not running (no http.port file)", err=True)
            raise typer.Exit(1) from None
    host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "") else settings.http.host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v1/status", timeout=5) as response:
            doc = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        if enrollment is not None:
            typer.echo(f"enrolled: {json.dumps(enrollment)}", err=True)
        typer.echo(f"error: cannot reach the agent on port {port}: {exc}", err=True)
        raise typer.Exit(1) from None
    if enrollment is not None and isinstance(doc, dict):
        doc["enrollment"] = enrollment
    typer.echo(json.dumps(doc, indent=2))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
