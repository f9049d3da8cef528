"""The import rules CI holds the tree to (the layers in docs/architecture.md), from the source.

1. No import cycles between our modules, counting imports made inside functions (an import moved
   into a function to dodge a cycle is still a cycle), nor between the hub's packages
   (`cloud_hub.fleet` <-> `cloud_hub.training`, ...; serving's engine, steps, jobs and image count
   as packages of their own); imports under `if TYPE_CHECKING:` are left out, as they never run.
2. Layers: each package imports only what the table `ALLOWED` lets it.
3. No private name (`_x`) is imported from another module.

Exit 0 when all hold; otherwise each breach is printed and the exit code is 1.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_agent", "converters", "cloud_hub", "firmware_configs")

#: What the hub's domain packages may use: the layers below the API and the CLI.
DOMAIN = (
    "cloud_hub.core",
    "cloud_hub.auth",
    "cloud_hub.registry",
    "cloud_hub.fleet",
    "cloud_hub.training",
    "cloud_hub.serving",
    "cloud_hub.predlog",
    "cloud_hub.monitoring",
    "edge_agent.core",
    "converters",
    "firmware_configs",
)

#: prefix -> the prefixes (of our packages) it may import; the longest matching prefix rules.
ALLOWED: dict[str, tuple[str, ...]] = {
    "edge_agent.core": ("edge_agent.core",),
    "edge_agent": ("edge_agent",),
    "converters": ("converters", "edge_agent.core"),
    "firmware_configs": ("firmware_configs",),
    "cloud_hub.core": ("cloud_hub.core", "edge_agent.core"),
    "cloud_hub.auth": ("cloud_hub.auth", "cloud_hub.core", "edge_agent.core"),
    "cloud_hub.registry": ("cloud_hub.registry", "cloud_hub.core", "edge_agent.core", "converters"),
    "cloud_hub.predlog": ("cloud_hub.predlog", "cloud_hub.core", "edge_agent.core"),
    "cloud_hub.fleet": DOMAIN,
    "cloud_hub.training": DOMAIN,
    "cloud_hub.serving": DOMAIN,
    "cloud_hub.monitoring": DOMAIN,
    "cloud_hub.provisioning": (*DOMAIN, "cloud_hub.provisioning"),
    # the live stream and the terminal view that reads it
    "cloud_hub.stream": (*DOMAIN, "cloud_hub.stream", "cloud_hub.hub"),
    "cloud_hub.watch": ("cloud_hub.watch", "cloud_hub.stream", "cloud_hub.core"),
    # the composition root, the API and the CLI may use every layer of the hub
    "cloud_hub": ("cloud_hub", "edge_agent.core", "converters", "firmware_configs"),
    # the development tools run a real agent in-process or beside the hub
    "cloud_hub.devtools": ("cloud_hub", "edge_agent", "converters", "firmware_configs"),
    # the flasher writes the agent's own config file, validated by the agent's own model
    "cloud_hub.cli.flash": ("cloud_hub", "edge_agent.core", "edge_agent.config"),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import that runs."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, [], child.lineno
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                yield child.module, [a.name for a in child.names], child.lineno
            stack.append(child)


def breaches(root: Path = ROOT) -> list[str]:
    """Every breach of the rules in the tree at `root`."""
    modules: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            modules[module_name(path, root)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    found: list[str] = []
    for mod, path in modules.items():
        rel = path.relative_to(root)
        for target, names, line in _imports(ast.parse(path.read_text(), str(path))):
            if target.split(".")[0] not in PACKAGES:
                continue
            deps = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules] or [target]
            for dep in deps:
                base = dep
                while base not in modules and "." in base:
                    base = base.rsplit(".", 1)[0]
                if base != mod and base in modules:
                    graph[mod].add(base)
            rule = max((p for p in ALLOWED if mod == p or mod.startswith(p + ".")), key=len)
            if not any(target == a or target.startswith(a + ".") for a in ALLOWED[rule]):
                found.append(f"{rel}:{line}: layer: {mod} imports {target}")
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    found.append(f"{rel}:{line}: private: {mod} imports {target}.{name}")
    found += [f"cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    found += [f"package cycle: {' <-> '.join(c)}" for c in _cycles(_packages(graph))]
    return found


def main() -> int:
    found = breaches()
    for breach in found:
        print(breach)
    print(f"{len(found)} breaches of the import rules", file=sys.stderr)
    return 1 if found else 0


def package_of(module: str) -> str:
    """The unit of the package-level check: `cloud_hub.X` (`cloud_hub.serving.X` in serving, and
    the reference-docs generator `cloud_hub.devtools.docs`, which reads the CLI that uses the other
    development tools), `edge_agent.core` or `edge_agent`, `converters`, `firmware_configs`."""
    parts = module.split(".")
    if parts[0] == "cloud_hub":
        nested = parts[1:2] == ["serving"] or parts[1:3] == ["devtools", "docs"]
        depth = 3 if len(parts) > 2 and nested else 2
        return ".".join(parts[:depth])
    if parts[0] == "edge_agent" and len(parts) > 1 and parts[1] == "core":
        return "edge_agent.core"
    return parts[0]


def _packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        here = out.setdefault(package_of(mod), set())
        for dep in deps:
            there = package_of(dep)
            out.setdefault(there, set())
            if there != package_of(mod):
                here.add(there)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One example cycle per strongly connected component (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


if __name__ == "__main__":
    sys.exit(main())
