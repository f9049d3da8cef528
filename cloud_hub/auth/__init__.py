"""Who may call the hub: API tokens with a role, and the device credentials devices call with."""

from cloud_hub.auth.roles import Role
from cloud_hub.auth.tokens import LOCAL_ADMIN, ApiToken, NewToken, TokenStore, ensure_local_admin

__all__ = ["LOCAL_ADMIN", "ApiToken", "NewToken", "Role", "TokenStore", "ensure_local_admin"]
