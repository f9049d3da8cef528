"""`edgepilot-agent`: the device-side command line.

`run` starts the agent process (MQTT delivery, outbox, local HTTP API); `status` asks a running
agent for its state; `info` and `predict` inspect a model file and run it locally.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from edge_agent.runtimes import (
    ModelLoadError,
    RuntimeUnavailable,
    detect_format,
    load_runtime,
)

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


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The agent's TOML config file.")]


def _settings(config: Path):  # type: ignore[no-untyped-def]
    from edge_agent.config import ConfigError, load_settings

    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: invalid configuration:\n{exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    config: ConfigOpt,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the agent until SIGTERM or SIGINT."""
    settings = _settings(config)
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s [{settings.device_id}] %(name)s: %(message)s",
    )
    from edge_agent.agent import Agent
    from edge_agent.outbox import OutboxError

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        logging.getLogger("edge_agent").info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
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
def status(config: ConfigOpt) -> None:
    """Print a running agent's /v1/status."""
    settings = _settings(config)
    port = settings.http.port
    if port == 0:
        try:
            port = int((settings.data_dir / "http.port").read_text())
        except (OSError, ValueError):
            typer.echo("error: the agent is not running (no http.port file)", err=True)
            raise typer.Exit(1) from None
    host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "") else settings.http.host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v1/status", timeout=5) as response:
            typer.echo(json.dumps(json.loads(response.read()), indent=2))
    except (urllib.error.URLError, OSError) as exc:
        typer.echo(f"error: cannot reach the agent on port {port}: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
