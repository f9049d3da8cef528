"""Which modules read or write each table of the hub's database.

`table_owners()` maps every table the migrations create (`cloud_hub.core.migrations`) to the
dotted names of the modules whose source names it in SQL inside a string literal
(FROM/JOIN/INTO/UPDATE/TABLE <name>) or indexes it (`db["name"]`, `table("name")`).
Scope: the hub's database only (the edge agent's outbox SQLite is its own file, not scanned for).
The migrations module itself is left out: it creates every table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from cloud_hub.core.migrations import MIGRATIONS

_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cloud_hub", "converters", "edge_agent")
_SKIP = {"cloud_hub.core.migrations", "cloud_hub.devtools.tables"}

_CREATE = re.compile(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)
_DROP = re.compile(r"\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(\w+)", re.I)
_RENAME = re.compile(r"\bALTER\s+TABLE\s+(\w+)\s+RENAME\s+TO\s+(\w+)", re.I)
_SQL_NAME = re.compile(
    r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?(\w+)", re.I
)
_INDEX_CALLS = {"table"}


def migration_tables() -> list[str]:
    """The tables that exist after every migration ran, sorted."""
    tables: set[str] = set()
    for migration in MIGRATIONS:
        for statement in migration.statements:
            for name in _CREATE.findall(statement):
                tables.add(name)
            for name in _DROP.findall(statement):
                tables.discard(name)
            for old, new in _RENAME.findall(statement):
                tables.discard(old)
                tables.add(new)
    return sorted(tables)


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes (prose: "from devices' outboxes" is no SQL)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _strings(tree: ast.AST) -> list[str]:
    out: list[str] = []
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if id(node) in docs:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            out.append(
                "".join(
                    v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else " ? "
                    for v in node.values
                )
            )
    return out


def _direct_names(tree: ast.AST) -> set[str]:
    """Names used as `x["name"]` or `x.table("name")` / `table("name")`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_db(node.value):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                names.add(key.value)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                fname in _INDEX_CALLS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                names.add(first.value)
    return names


def _modules() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for package in PACKAGES:
        for path in sorted((_ROOT / package).rglob("*.py")):
            rel = path.relative_to(_ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append((".".join(parts), path))
    return found


def tables_used(source: str, tables: set[str]) -> set[str]:
    """The tables among `tables` that `source` reads or writes."""
    tree = ast.parse(source)
    used: set[str] = set()
    for text in _strings(tree):
        for name in _SQL_NAME.findall(text):
            if name in tables:
                used.add(name)
    return used | (_direct_names(tree) & tables)


def _is_db(node: ast.expr) -> bool:
    """`db[...]` or `self.db[...]`: a database handle indexed by a table name."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name in {"db", "_db", "conn", "_conn"}


def table_owners() -> dict[str, list[str]]:
    """Every migration table -> sorted dotted names of the modules that read or write it."""
    tables = migration_tables()
    wanted = set(tables)
    owners: dict[str, set[str]] = {t: set() for t in tables}
    for module, path in _modules():
        if module in _SKIP:
            continue
        for table in tables_used(path.read_text(encoding="utf-8"), wanted):
            owners[table].add(module)
    return {t: sorted(owners[t]) for t in tables}


if __name__ == "__main__":
    for table, modules in table_owners().items():
        print(f"{table}: {', '.join(modules)}")
