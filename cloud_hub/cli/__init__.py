"""EdgePilot."""
