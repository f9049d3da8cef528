"""A model file's input/output signature, as stored on its artifact."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from converters import ModelFileInfo


def signature_of(info: ModelFileInfo) -> dict[str, Any]:
    dumped = info.model_dump(mode="json")
    return {"inputs": dumped["inputs"], "outputs": dumped["outputs"]}
