"""`edgepilot-agent`: the device-side command line.

For now it inspects a model file and runs local inference with the runtime a device would use;
`edgepilot-agent run` (MQTT delivery, outbox) arrives with the agent itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from edge_agent.runtimes import ModelLoadError, RuntimeUnavailable, detect_format, load_runtime

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
) -> None:
    """Run a batch through the model; print the top class and score per sample as JSON lines."""
    runtime = _load(model, threads)
    try:
        batch = np.load(inputs).astype(np.float32)
        scores = runtime.predict(batch)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for row in scores:
        top = int(row.argmax())
        typer.echo(json.dumps({"class": top, "score": float(row[top])}))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
