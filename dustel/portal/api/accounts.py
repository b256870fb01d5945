"""SIP accounts of the tenant: settings (TLS/SRTP, T.38, IP restriction,
caller ID), passwords (stored as HA1 only) — ``dustel account``'s rules."""
from __future__ import annotations

from fastapi import Depends, Request
from pydantic import BaseModel

from ...provisioning import accounts
from .. import users
from ..web import account_of, admin, portal_of, router
from .auth import PasswordIn

api = router(tags=["accounts"])


class AccountIn(BaseModel):
    display_name: str | None = None
    tls: str | None = None
    t38: str | None = None
    allowed_ips: list[str] | None = None       # [] allows calls from anywhere
    caller_id: str | None = None               # "" clears it
    location: str | None = None


@api.get("/accounts")
def account_list(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return accounts.list_for(conn, caller.tenant_id)


@api.get("/accounts/{username}")
def account_show(username: str, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return account_of(conn, caller, username)


@api.patch("/accounts/{username}")
def account_set(username: str, body: AccountIn, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        acc = account_of(conn, caller, username)
        return accounts.set_fields(conn, acc["username"], display_name=body.display_name, tls_mode=body.tls,
                                   t38=body.t38, allowed_nets=body.allowed_ips, caller_id=body.caller_id,
                                   location=body.location)


@api.put("/accounts/{username}/password")
def account_password(username: str, body: PasswordIn, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        acc = account_of(conn, caller, username)
        accounts.set_password(conn, acc["username"], body.password)
    return {"changed": acc["username"]}
