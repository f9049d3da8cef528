"""API tokens: create (the secret is shown once), list, revoke. Admin only."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from cloud_hub.api.auth import ADMIN, get_authenticator
from cloud_hub.api.deps import HubDep
from cloud_hub.auth.tokens import ApiToken, NewToken, TokenCreate

router = APIRouter(tags=["auth"])


@router.post("/tokens", status_code=status.HTTP_201_CREATED, dependencies=[ADMIN])
def create_token(body: TokenCreate, hub: HubDep) -> NewToken:
    """A new token; its secret (`token`) is in this response only: the hub keeps a hash."""
    return hub.tokens.create(body)


@router.get("/tokens", dependencies=[ADMIN])
def list_tokens(hub: HubDep, include_revoked: bool = False) -> list[ApiToken]:
    return hub.tokens.list(include_revoked=include_revoked)


@router.delete("/tokens/{name}", dependencies=[ADMIN])
def revoke_token(name: str, hub: HubDep, request: Request) -> ApiToken:
    """Revoke the live token of that name: refused from now on by this hub process."""
    revoked = hub.tokens.revoke(name)
    get_authenticator(request).forget()
    return revoked
