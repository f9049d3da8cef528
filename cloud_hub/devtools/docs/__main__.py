"""`python -m cloud_hub.devtools.docs [DOCS_DIR]`: rewrite every generated page (default ./docs)."""

from __future__ import annotations

import sys
from pathlib import Path

from cloud_hub.devtools.docs import write_all

if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(p)
