"""`edgepilot build-image`: a Docker build context serving a version or an endpoint with no
registry access (the model-in-image pattern; see `cloud_hub/serving/image/build.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def build_image(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(help="An endpoint name, or a version: PROJECT/MODEL[:N|:latest] or id.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The build context to write.")],
    base: Annotated[str, typer.Option(help="The base image.")] = "python:3.11-slim",
    port: Annotated[int, typer.Option(min=1, max=65535, help="The port it serves on.")] = 8080,
    fmt: Annotated[
        str | None, typer.Option("--format", help="A version's artifact: onnx or tflite.")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="A version's artifact: fp32 or int8.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty directory (replacing a build).")
    ] = False,
) -> None:
    """Write a Dockerfile and build context that bake a version (or an endpoint and its models)
    into an image serving predictions with no registry access."""
    from cloud_hub.cli import render
    from cloud_hub.cli.base import state as _state
    from cloud_hub.cli.base import user_errors
    from cloud_hub.serving.image.build import build_image as build

    with user_errors():
        result = build(
            _state(ctx).hub.registry,
            target,
            out,
            base=base,
            port=port,
            format=fmt,
            precision=precision,
            force=force,
        )
    render.console.print(f"wrote the build context for endpoint {result.endpoint} to {out}")
    for alias, ref in result.models.items():
        render.console.print(f"  model {alias}: {ref}")
    render.console.print(f"  requirements: {', '.join(result.requirements)}")
    render.console.print(f"  entry: {' '.join(result.command)}  (port {port})")
    render.console.print(f"build: docker build -t {result.endpoint} {out}")
