"""The roles a hub credential can hold, from least to most privileged.

- `viewer`: reads everything (the dashboard's role) and predicts through endpoints.
- `operator`: also changes what runs: deploys, serving parameters, endpoints, training,
  uploads, alert rules, jobs and batches.
- `admin`: also mints credentials: API tokens and device registrations (broker passwords).

A device authenticates with its own broker credentials and is not in this order: it may call
only what concerns itself (see `cloud_hub.api.auth`).
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        """Whether a credential of this role may do what `needed` is required for."""
        return self.rank >= needed.rank


_RANK = {Role.viewer: 0, Role.operator: 1, Role.admin: 2}
