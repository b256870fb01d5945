"""Log in and out; the tenant's customer users (admin only)."""
from __future__ import annotations

from fastapi import Depends, Request, Response
from pydantic import BaseModel

from ...errors import DustelError
from .. import users
from ..web import COOKIE, admin, api_caller, peer, portal_of, router

api = router(tags=["auth"])


class LoginIn(BaseModel):
    login: str
    password: str


def open_session(request: Request, response: Response, login: str, password: str) -> dict:
    """Check the login (failures are recorded even though the request is
    refused) and set the session cookie; the token is returned for API clients."""
    portal = portal_of(request)
    s = portal.settings
    refused: DustelError | None = None
    with portal.tx() as conn:
        try:
            token, user = users.login(conn, login, password, peer(request), secret=portal.secret,
                                      idle_minutes=s.portal_session_minutes, max_hours=s.portal_session_hours)
        except users.LoginRefused as exc:
            refused = exc
    if refused is not None:
        raise refused
    response.set_cookie(COOKIE, token, max_age=s.portal_session_hours * 3600, httponly=True, samesite="strict",
                        secure=bool(s.portal_cookie_secure), path="/")
    return {"token": token, "csrf": users.form_token(portal.secret, token), **user}


@api.post("/login")
def login(body: LoginIn, request: Request, response: Response):
    """Open a session: a cookie for browsers, the token for API clients
    (``Authorization: Bearer``)."""
    return open_session(request, response, body.login, body.password)


@api.post("/logout")
def logout(request: Request, response: Response, caller: users.Caller = Depends(api_caller)):
    portal = portal_of(request)
    with portal.tx() as conn:
        users.logout(conn, caller.token, secret=portal.secret)
    response.delete_cookie(COOKIE, path="/")
    return {"logged_out": caller.login}


@api.get("/me")
def me(request: Request, caller: users.Caller = Depends(api_caller)):
    with portal_of(request).tx() as conn:
        return users.get(conn, caller.tenant_id, caller.user_id)


class UserIn(BaseModel):
    login: str
    role: str
    password: str
    agent: str | None = None


class PasswordIn(BaseModel):
    """A new password (a portal user's or a SIP account's)."""
    password: str


@api.get("/users")
def user_list(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return users.listing(conn, caller.tenant_id)


@api.post("/users", status_code=201)
def user_add(body: UserIn, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return users.add(conn, caller.tenant_id, body.login, body.role, body.password, body.agent)


@api.put("/users/{user_id}/password")
def user_password(user_id: int, body: PasswordIn, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        users.set_password(conn, caller.tenant_id, user_id, body.password)
    return {"changed": user_id}


@api.delete("/users/{user_id}")
def user_remove(user_id: int, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        users.remove(conn, caller.tenant_id, user_id)
    return {"removed": user_id}
