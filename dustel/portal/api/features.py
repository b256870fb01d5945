"""Forwarding and group call (with schedules), destination release, black-
and whitelists, speed dials, limits — ``dustel forward/group/zones/…``'s
rules, through the same functions.  Like the CLI's, a change is live for
the next call and the next leg of a ringing one: the call-time policy
reads these from the database per call and per leg (README, F-05)."""
from __future__ import annotations

from fastapi import Depends, Request
from pydantic import BaseModel

from ...provisioning import features
from .. import users
from ..web import account_of, admin, portal_of, router

api = router(tags=["features"])


class ForwardIn(BaseModel):
    mode: str                          # immediate | no-answer | unregistered
    targets: list[str]
    timeout: int | None = None
    when: list[str] = []
    holidays: str | None = None
    holiday_dates: list[str] = []


class GroupIn(BaseModel):
    targets: list[str]
    ring_seconds: int | None = None
    when: list[str] = []
    holidays: str | None = None
    holiday_dates: list[str] = []


def set_forward(conn, caller: users.Caller, username: str, body: ForwardIn) -> dict:
    acc = account_of(conn, caller, username)
    return features.set_diversion(conn, acc["username"], kind="forward", targets=body.targets,
                                  mode=body.mode.replace("-", "_"), timeout=body.timeout, when=body.when,
                                  holiday_region=body.holidays, holiday_dates=body.holiday_dates)


@api.get("/accounts/{username}/forward")
@api.get("/accounts/{username}/group")
def diversion_show(username: str, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return features.show_diversion(conn, account_of(conn, caller, username)["username"])


@api.put("/accounts/{username}/forward")
def forward_set(username: str, body: ForwardIn, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return set_forward(conn, caller, username, body)


@api.put("/accounts/{username}/group")
def group_set(username: str, body: GroupIn, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        acc = account_of(conn, caller, username)
        return features.set_diversion(conn, acc["username"], kind="group", targets=body.targets,
                                      timeout=body.ring_seconds, when=body.when, holiday_region=body.holidays,
                                      holiday_dates=body.holiday_dates)


@api.delete("/accounts/{username}/forward")
def forward_clear(username: str, request: Request, caller: users.Caller = Depends(admin)):
    return _clear(request, caller, username, "forward")


@api.delete("/accounts/{username}/group")
def group_clear(username: str, request: Request, caller: users.Caller = Depends(admin)):
    return _clear(request, caller, username, "group")


def _clear(request: Request, caller: users.Caller, username: str, kind: str) -> dict:
    with portal_of(request).tx() as conn:
        acc = account_of(conn, caller, username)
        features.clear_diversion(conn, acc["username"], kind)
        return features.show_diversion(conn, acc["username"])


class ZonesIn(BaseModel):
    preset: str | None = None
    allow: list[str] | None = None        # [] withdraws every extra zone


@api.get("/accounts/{username}/zones")
def zones_show(username: str, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return features.show_zones(conn, account_of(conn, caller, username)["username"])


@api.put("/accounts/{username}/zones")
def zones_set(username: str, body: ZonesIn, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        acc = account_of(conn, caller, username)
        return features.set_zones(conn, acc["username"], preset=body.preset, allow=body.allow)


class PatternIn(BaseModel):
    pattern: str


def _which(which: str) -> str:
    from ...errors import NotFound
    if which not in ("blacklist", "whitelist"):
        raise NotFound("list", f"no list {which!r} (blacklist or whitelist)")
    return which.removesuffix("list")


@api.get("/accounts/{username}/{which}")
def screening_list(username: str, which: str, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return features.list_show(conn, account_of(conn, caller, username)["username"], _which(which))


@api.post("/accounts/{username}/{which}", status_code=201)
def screening_add(username: str, which: str, body: PatternIn, request: Request,
                  caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        acc = account_of(conn, caller, username)
        features.list_add(conn, acc["username"], _which(which), body.pattern)
        return features.list_show(conn, acc["username"], _which(which))


@api.delete("/accounts/{username}/{which}/{pattern}")
def screening_remove(username: str, which: str, pattern: str, request: Request,
                     caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        acc = account_of(conn, caller, username)
        features.list_remove(conn, acc["username"], _which(which), pattern)
        return features.list_show(conn, acc["username"], _which(which))


class SpeedDialIn(BaseModel):
    target: str


@api.get("/speeddials")
def speeddial_list(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return features.speed_dial_list(conn, caller.tenant_id)


@api.put("/speeddials/{code}")
def speeddial_set(code: str, body: SpeedDialIn, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        features.speed_dial_set(conn, caller.tenant_id, code, body.target)
        return features.speed_dial_list(conn, caller.tenant_id)


@api.delete("/speeddials/{code}")
def speeddial_remove(code: str, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        features.speed_dial_remove(conn, caller.tenant_id, code)
        return features.speed_dial_list(conn, caller.tenant_id)


class LimitsIn(BaseModel):
    credit_limit: str | None = None       # EUR ("50", "49.90"); "none" removes it
    max_call_seconds: int | None = None
    account: str | None = None            # max_call_seconds for this account only


@api.get("/limits")
def limits_show(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return features.show_limits(conn, caller.tenant_id)


@api.put("/limits")
def limits_set(body: LimitsIn, request: Request, caller: users.Caller = Depends(admin)):
    cents, remove = features.credit_limit_arg(body.credit_limit)
    with portal_of(request).tx() as conn:
        if body.account is not None:
            account_of(conn, caller, body.account)
        return features.set_limits(conn, caller.tenant_id, credit_limit_cents=cents,
                                   max_call_seconds=body.max_call_seconds, account=body.account,
                                   remove_credit_limit=remove)
