"""The tenant's numbers and their routing — ``dustel number assign``'s rules
(blocks routed whole, targets of the number's own tenant)."""
from __future__ import annotations

from fastapi import Depends, Request
from pydantic import BaseModel

from ...errors import NotFound
from ...provisioning import numbers
from ...provisioning import validate as v
from .. import users
from ..web import admin, portal_of, router

api = router(tags=["numbers"])


class RouteIn(BaseModel):
    kind: str | None = None        # account | queue | fax | group; none: unrouted
    target: str | None = None


def number_of(conn, caller: users.Caller, e164: str) -> dict:
    """The caller's tenant's number (or block); another tenant's is not
    provisioned as far as this caller can tell (a block's name included)."""
    row = numbers.find(conn, e164, whole=False)
    if row["tenant_id"] != caller.tenant_id:
        raise NotFound("number", f"{v.e164('number', e164)} is not provisioned")
    return row


@api.get("/numbers")
def number_list(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return numbers.list_for(conn, caller.tenant_id)


@api.put("/numbers/{e164}/route")
def number_route(e164: str, body: RouteIn, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        number_of(conn, caller, e164)
        row = numbers.assign(conn, e164, body.kind, body.target if body.kind else None)
    return {k: row[k] for k in ("e164", "block_size", "status", "target_kind")}
