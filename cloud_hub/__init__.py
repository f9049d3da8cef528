"""EdgePilot hub: registry, training, conversion and the fleet's REST API."""

__version__ = "0.1.0"
