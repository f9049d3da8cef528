"""scripts/check_imports.py: the import rules CI holds the tree to."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check_imports.py"
spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
assert spec is not None and spec.loader is not None
check_imports = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_imports)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_repository_holds_the_rules() -> None:
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout


def test_a_cycle_hidden_in_a_function_is_still_a_cycle(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "cloud_hub/__init__.py": "",
            "cloud_hub/fleet/__init__.py": "",
            "cloud_hub/fleet/a.py": "from cloud_hub.fleet.b import B\n",
            "cloud_hub/fleet/b.py": "def f():\n    from cloud_hub.fleet.a import A\n",
            "cloud_hub/fleet/c.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from cloud_hub.fleet.a import A\n"
            ),
        },
    )
    found = check_imports.breaches(root)
    assert found == ["cycle: cloud_hub.fleet.a -> cloud_hub.fleet.b"]


def test_layers_packages_and_private_names_are_checked(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "cloud_hub/__init__.py": "",
            "cloud_hub/core/__init__.py": "",
            "cloud_hub/core/db.py": "from cloud_hub.registry.store import Store\n",
            "cloud_hub/registry/__init__.py": "",
            "cloud_hub/registry/store.py": "from cloud_hub.core.db import _connect\n",
            "edge_agent/__init__.py": "",
            "edge_agent/core/__init__.py": "",
            "edge_agent/core/wire.py": "import cloud_hub.core.db\n",
        },
    )
    found = check_imports.breaches(root)
    assert (
        "cloud_hub/core/db.py:1: layer: cloud_hub.core.db imports cloud_hub.registry.store" in found
    )
    assert (
        "edge_agent/core/wire.py:1: layer: edge_agent.core.wire imports cloud_hub.core.db" in found
    )
    assert (
        "cloud_hub/registry/store.py:1: private: cloud_hub.registry.store imports "
        "cloud_hub.core.db._connect" in found
    )
    assert "package cycle: cloud_hub.core <-> cloud_hub.registry" in found
