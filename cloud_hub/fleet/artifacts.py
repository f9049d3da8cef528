"""Which artifact of a version a device gets."""

from __future__ import annotations

from collections.abc import Sequence

from cloud_hub.core.errors import InvalidInput
from cloud_hub.registry.schemas import Artifact

#: The model format each runtime loads.
RUNTIME_FORMAT = {"onnxruntime": "onnx", "litert": "tflite"}
#: Precision preference per runtime. LiteRT's int8 kernels are its reason to exist on small Arm
#: boards; onnxruntime's fp32 path is as fast as its int8 one on most CPUs
#: (docs/DEPENDENCIES.md) and loses no accuracy, so it gets fp32 first.
PRECISION_ORDER = {"onnxruntime": ("fp32", "int8"), "litert": ("int8", "fp32")}
FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "int8")


def parse_choice(choice: str) -> tuple[str, str] | None:
    """None for 'best', else (format, precision) from 'FORMAT/PRECISION'."""
    if choice == "best":
        return None
    fmt, sep, precision = choice.partition("/")
    if not sep or fmt not in FORMATS or precision not in PRECISIONS:
        raise InvalidInput(
            f"artifact {choice!r}: use 'best' or FORMAT/PRECISION with FORMAT in {list(FORMATS)} "
            f"and PRECISION in {list(PRECISIONS)}, e.g. onnx/int8"
        )
    return fmt, precision


def choose_artifact(
    artifacts: Sequence[Artifact], runtimes: Sequence[str], choice: str
) -> Artifact | None:
    """The artifact a device with `runtimes` (in preference order) should run, or None.

    'best': the first runtime of the device that has a usable (non-failed) artifact, in that
    runtime's precision order. 'FORMAT/PRECISION': that artifact, if the device can run FORMAT.
    """
    usable: dict[tuple[str, str], Artifact] = {
        (a.format, a.precision): a for a in artifacts if a.status != "failed"
    }
    wanted = parse_choice(choice)
    if wanted is not None:
        can_run = {RUNTIME_FORMAT[r] for r in runtimes if r in RUNTIME_FORMAT}
        return usable.get(wanted) if wanted[0] in can_run else None
    for runtime in runtimes:
        fmt = RUNTIME_FORMAT.get(runtime)
        for precision in PRECISION_ORDER.get(runtime, ()):
            if fmt is not None and (fmt, precision) in usable:
                return usable[(fmt, precision)]
    return None
