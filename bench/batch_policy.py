"""What the engine's batching policy ("auto", the default) measures and decides for the models
of the serving benchmarks: µs per row at batch sizes 1, 4, 16 and 64, one inference thread.

    .venv/bin/python bench/batch_policy.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "peers"))

from mobilenet import mobilenet_v2_bytes  # noqa: E402  (bench/peers/mobilenet.py)

from cloud_hub.devtools.synthetic_models import random_mlp  # noqa: E402
from cloud_hub.serving.engine.batch_policy import measure  # noqa: E402
from edge_agent.core.runtimes import load_runtime  # noqa: E402


def main() -> None:
    models = {
        "MLP 64-64-10 (tiny)": random_mlp(64, 64, 1),
        "MLP 1024-2560-2560-10 (26 MB, bench/serving.py)": random_mlp(1024, 2560, 2),
        "MobileNetV2-shaped, 224x224 (bench/peers)": mobilenet_v2_bytes(),
    }
    print("| model | µs/row @1 | @4 | @16 | @64 | batching | why |")
    print("|---|---|---|---|---|---|---|")
    for name, data in models.items():
        choice = measure(load_runtime(data, "onnx", threads=1), 64, budget_s=5.0)
        cost = choice.us_per_row
        cells = " | ".join(f"{cost[s]:.0f}" if s in cost else "–" for s in (1, 4, 16, 64))
        state = f"on, ≤{choice.max_batch_size}" if choice.enabled else "off"
        print(f"| {name} | {cells} | {state} | {choice.reason} |")


if __name__ == "__main__":
    main()
