"""What an endpoint's A/B split steps choose between (the order A/B reports list them in)."""

from __future__ import annotations

from cloud_hub.serving.engine.spec import EndpointSpec


def ab_variants(spec: EndpointSpec) -> list[str]:
    """The variants of the spec's A/B split steps, in the spec's order."""
    return [v for s in spec.steps if s.kind == "ab_split" for v in s.params["variants"]]
