"""Model-in-image: a Docker build context that bakes a version (or an endpoint and its models)
into an image serving it with no registry access.

The context holds:

- `Dockerfile`: a slim Python base, `pip install -r requirements.txt`, the code, the bundle, and
  `CMD python -m cloud_hub.serving.image.server --bundle bundle` (port from `PORT`).
- `requirements.txt`: numpy, pydantic, and the runtime the artifacts need (onnxruntime or
  LiteRT), plus OpenCV only when a step reads images; pinned to the hub's own versions.
- `cloud_hub/`, `edge_agent/`: the engine's modules the server imports (found by following its
  imports), without the registry, the database or the web framework; `cloud_hub/serving/
  __init__.py` is a stub, so nothing else is pulled in.
- `bundle/manifest.json`: the endpoint spec with each model reference pinned to a version and
  artifact, and each version's record; `bundle/models/PROJECT-MODEL-N/`: the artifact(s),
  `labels.json`, `preprocessing.json`, `version.json`.

A version named alone is served as `preprocess → model` when it has a preprocessing spec (images
or raw rows in, as the agent does), else as `model`.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloud_hub.core.errors import InvalidInput
from cloud_hub.registry.registry import Registry
from cloud_hub.registry.schemas import Artifact, Version
from cloud_hub.serving.engine.models import choose_artifact
from cloud_hub.serving.engine.spec import EndpointSpec, ModelRef, StepSpec
from cloud_hub.serving.engine.store import EndpointStore
from cloud_hub.serving.image.server import BUNDLE_FORMAT, MANIFEST

# what the image server imports, followed to every module of ours it needs
_ROOTS = ("cloud_hub.serving.image.server", "cloud_hub.serving.steps")
_PACKAGES = ("cloud_hub", "edge_agent")
_STUBS = {
    "cloud_hub.serving": '"""The serving engine: the modules a model image needs."""\n\n'
    "from cloud_hub.serving import steps as _steps  # noqa: F401  (registers the built-in kinds)\n"
}
# an image must never carry these: they need the registry, its database or the web framework
FORBIDDEN = (
    "cloud_hub.registry.registry",
    "cloud_hub.core.db",
    "cloud_hub.hub",
    "cloud_hub.api",
    "cloud_hub.serving.engine.engine",
    "cloud_hub.serving.engine.store",
)
# what the build writes into the output directory (and what --force replaces)
_WRITTEN = ("Dockerfile", ".dockerignore", "requirements.txt", "README.md", "bundle", *_PACKAGES)
_EXT = {"onnx": "onnx", "tflite": "tflite"}


class BuildError(InvalidInput):
    """The image cannot be built as asked (a bad target, a non-empty output directory...)."""


@dataclass
class ImageBuild:
    out: Path
    endpoint: str
    models: dict[str, str]  # alias → "PROJECT/MODEL:N onnx/fp32"
    requirements: list[str]
    command: list[str]
    files: list[str] = field(default_factory=list)


def is_version_ref(target: str) -> bool:
    """`PROJECT/MODEL[:N]` or a version id; anything else names an endpoint."""
    return "/" in target or target.isdigit()


def version_spec(version: Version, ref: ModelRef) -> EndpointSpec:
    """The endpoint a version named alone is served as."""
    name = f"{version.project}-{version.model}-v{version.number}"[:64]
    steps = [StepSpec(name="predict", kind="model", params={"model": "model"})]
    if version.preprocessing:
        steps = [
            StepSpec(name="pre", kind="preprocess", params={"model": "model"}),
            StepSpec(name="predict", kind="model", inputs=["pre"], params={"model": "model"}),
        ]
    return EndpointSpec(
        name=name,
        description=f"{version.ref} baked into an image (model-in-image)",
        models={"model": ref},
        steps=steps,
    )


def _module_file(name: str) -> Path | None:
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    py = base.with_suffix(".py")
    return py if py.is_file() else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> set[str]:
    """Modules imported anywhere in the tree (functions too), except under TYPE_CHECKING."""
    found: set[str] = set()
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))
    return {m for m in found if m.split(".")[0] in _PACKAGES}


def server_modules() -> dict[str, Path]:
    """Every module of ours the image server needs (with the packages that hold them)."""
    modules: dict[str, Path] = {}
    todo = list(_ROOTS)
    while todo:
        name = todo.pop()
        if name in modules:
            continue
        path = _module_file(name)
        if path is None:
            continue  # `from package import name` where name is not a module
        modules[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages above it
        if name not in _STUBS:
            todo += sorted(_imports(ast.parse(path.read_text(), str(path))))
    bad = sorted(m for m in modules if m.startswith(FORBIDDEN))
    if bad:
        raise RuntimeError(f"the image server would import {', '.join(bad)}")
    return modules


def _pinned(dist: str, fallback: str) -> str:
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist}{fallback}"


def requirements(spec: EndpointSpec, artifacts: list[Artifact]) -> list[str]:
    reqs = [_pinned("numpy", ">=2.0"), _pinned("pydantic", ">=2.7")]
    formats = {a.format for a in artifacts}
    if "onnx" in formats:
        reqs.append(_pinned("onnxruntime", ">=1.20"))
    if "tflite" in formats:
        reqs.append(_pinned("ai-edge-litert", ">=2.0"))
    if any(s.kind in ("preprocess", "data_cache") for s in spec.steps):
        reqs.append(_pinned("opencv-python-headless", ">=4.10"))  # image decoding, resizing
    return reqs


def dockerfile(base: str, port: int, command: list[str], header: str) -> str:
    health = [
        "python",
        "-c",
        "import os, urllib.request as u; "
        "u.urlopen('http://127.0.0.1:%s/health' % os.environ['PORT'], timeout=2)",
    ]
    return (
        f"# {header}\n"
        f"FROM {base}\n"
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \\\n"
        f"    HOST=0.0.0.0 PORT={port}\n"
        "WORKDIR /srv\n"
        "COPY requirements.txt .\n"
        "RUN pip install --no-cache-dir -r requirements.txt\n"
        "COPY cloud_hub/ cloud_hub/\n"
        "COPY edge_agent/ edge_agent/\n"
        "COPY bundle/ bundle/\n"
        "USER nobody\n"
        f"EXPOSE {port}\n"
        f"HEALTHCHECK --interval=30s --timeout=3s CMD {json.dumps(health)}\n"
        f"CMD {json.dumps(command)}\n"
    )


def parse_cmd(dockerfile_text: str) -> list[str]:
    """The exec-form CMD of a Dockerfile written here (the last one)."""
    cmds = [ln[4:] for ln in dockerfile_text.splitlines() if ln.startswith("CMD ")]
    if not cmds:
        raise ValueError("the Dockerfile has no CMD")
    command = json.loads(cmds[-1])
    assert isinstance(command, list)
    return [str(part) for part in command]


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise BuildError(f"{out} is not empty: give another directory, or --force")
        for name in _WRITTEN:  # only what a build writes: anything else there is kept
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def build_image(
    registry: Registry,
    target: str,
    out: Path,
    *,
    base: str = "python:3.11-slim",
    port: int = 8080,
    format: str | None = None,  # noqa: A002
    precision: str | None = None,
    force: bool = False,
) -> ImageBuild:
    """Write the build context for `target` (an endpoint name, or a version) into `out`."""
    if is_version_ref(target):
        version = registry.resolve_version(target)
        ref = ModelRef.model_validate({"ref": target, "format": format, "precision": precision})
        spec = version_spec(version, ref)
    else:
        if format is not None or precision is not None:
            raise BuildError("--format/--precision apply to a version; an endpoint names its own")
        spec = EndpointSpec.model_validate(EndpointStore(registry.db).get(target).spec.model_dump())

    # pin every model: the version it resolves to now, and the artifact it would run
    chosen: dict[str, tuple[Version, Artifact, ModelRef]] = {}
    for alias, ref in spec.model_refs().items():
        version = registry.resolve_version(ref.ref)
        if version.status != "ready":
            raise BuildError(f"model {alias!r}: version {version.ref} is {version.status}")
        try:
            artifact = choose_artifact(version, ref)
        except LookupError as exc:
            raise BuildError(f"model {alias!r}: {exc}") from None
        chosen[alias] = (version, artifact, ref)
    if not chosen:
        raise BuildError(f"endpoint {spec.name!r} uses no model")

    _prepare_out(out, force)
    bundle = out / "bundle"
    versions: dict[str, dict[str, Any]] = {}
    files: dict[str, str] = {}
    for version, artifact, _ in chosen.values():
        folder = f"models/{version.project}-{version.model}-{version.number}"
        vdir = bundle / folder
        vdir.mkdir(parents=True, exist_ok=True)
        name = f"{folder}/{artifact.format}-{artifact.precision}.{_EXT[artifact.format]}"
        if artifact.sha256 not in files:
            (bundle / name).write_bytes(registry.artifact_blob(artifact.sha256))
            files[artifact.sha256] = name
        entry = versions.setdefault(version.ref, {"dir": folder, "version": version})
        entry["artifacts"] = sorted({*entry.get("artifacts", []), artifact.sha256})
    for entry in versions.values():
        version = entry.pop("version")
        keep = set(entry.pop("artifacts"))
        baked = version.model_copy(
            update={"artifacts": [a for a in version.artifacts if a.sha256 in keep]}
        )
        vdir = bundle / entry["dir"]
        (vdir / "labels.json").write_text(json.dumps(baked.labels, indent=1) + "\n")
        (vdir / "preprocessing.json").write_text(json.dumps(baked.preprocessing, indent=2) + "\n")
        (vdir / "version.json").write_text(baked.model_dump_json(indent=2) + "\n")
        entry["version"] = baked.model_dump(mode="json")

    pinned = spec.model_copy(
        update={
            "models": {
                alias: ModelRef(
                    ref=v.ref, format=a.format, precision=a.precision, threads=ref.threads
                )
                for alias, (v, a, ref) in chosen.items()
            }
        }
    )
    built_at = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = {
        "format": BUNDLE_FORMAT,
        "built_from": target,
        "built_at": built_at,
        "endpoint": pinned.model_dump(mode="json"),
        "versions": versions,
        "artifacts": files,
    }
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    for module, path in server_modules().items():
        rel = Path(*module.split("."))
        dest = out / rel / "__init__.py" if path.name == "__init__.py" else out / f"{rel}.py"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if module in _STUBS:
            dest.write_text(_STUBS[module])
        else:
            shutil.copyfile(path, dest)

    artifacts = [a for _, a, _ in chosen.values()]
    reqs = requirements(pinned, artifacts)
    (out / "requirements.txt").write_text("\n".join(reqs) + "\n")
    command = ["python", "-m", "cloud_hub.serving.image.server", "--bundle", "bundle"]
    models = {alias: f"{v.ref} {a.format}/{a.precision}" for alias, (v, a, _) in chosen.items()}
    header = f"edgepilot build-image {target}: endpoint {pinned.name} ({built_at})"
    (out / "Dockerfile").write_text(dockerfile(base, port, command, header))
    (out / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")
    (out / "README.md").write_text(_readme(pinned.name, models, port))
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return ImageBuild(out, pinned.name, models, reqs, command, written)


def _readme(name: str, models: dict[str, str], port: int) -> str:
    lines = "\n".join(f"- `{alias}`: {ref}" for alias, ref in models.items())
    return f"""# Model image: {name}

Written by `edgepilot build-image`. Models baked in:

{lines}

```bash
docker build -t {name} .
docker run --rm -p {port}:{port} {name}
curl -s localhost:{port}/health
curl -s -X POST localhost:{port}/predict -H 'Content-Type: application/json' \\
     -d '{{"inputs": [[...]]}}'       # or {{"image_b64": ...}}, or an image/png body
```

The server (`cloud_hub/serving/image/server.py`) reads only `bundle/`: no registry, no network.
Without Docker: `pip install -r requirements.txt && PORT={port} python -m \
cloud_hub.serving.image.server --bundle bundle` from this directory.
"""
