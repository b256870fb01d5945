"""What every router of the Kundencenter shares: the portal's state (settings,
connection pool, secret), one transaction per request, the caller bound to
a tenant and a role, the one edge rule for every text a request brings,
and errors as the CLI's: ``{"error": {"field": …, "rule": …}}``.

The domain modules are synchronous (psycopg); the routers are plain
``def`` functions, which the ASGI server runs in its thread pool, so the
event loop (the live view's notifications, slow clients) never waits on
the database."""
from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.routing import APIRoute
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from ..config import Settings
from ..errors import DustelError, NotFound, db_errors
from ..provisioning import validate
from . import users

COOKIE = "dustel_session"
CSRF_HEADER = "X-CSRF-Token"
MAX_UPLOAD_BYTES = 25 * 2**20       # a PDF to fax or an audio file: larger bodies are refused before parsing


class Forbidden(DustelError):
    """The caller's role may not do this (403)."""


class Unauthenticated(DustelError):
    """No session, or it expired (401)."""


@dataclass
class Portal:
    """The running portal: one per process (``app.state.portal``)."""

    settings: Settings
    url: str
    pool: ConnectionPool

    @property
    def secret(self) -> str:
        return self.settings.portal_secret

    @contextlib.contextmanager
    def tx(self) -> Iterator[psycopg.Connection]:
        """One transaction: all of a request's writes or none; database
        errors caused by input become DustelError (field: rule)."""
        with db_errors(), self.pool.connection() as conn, conn.transaction():
            yield conn


def make_pool(url: str, size: int) -> ConnectionPool:
    return ConnectionPool(url, min_size=1, max_size=size, open=True,
                          kwargs={"row_factory": dict_row, "autocommit": True})


def portal_of(request: Request) -> Portal:
    return request.app.state.portal  # type: ignore[no-any-return]


# ------------------------------------------------------------------ the edge rule

def _edge(name: str, value: Any) -> None:
    """validate.edge on every text in a parsed parameter, named by it (the
    CLI's EdgeContext does the same for options and arguments)."""
    if isinstance(value, str):
        validate.edge(name, value)
    elif isinstance(value, list | tuple | set):
        for item in value:
            _edge(name, item)
    elif isinstance(value, dict):
        for k, item in value.items():
            _edge(name, k)
            _edge(f"{name}.{k}" if name else str(k), item)
    elif isinstance(value, BaseModel):
        for k in type(value).model_fields:
            _edge(k, getattr(value, k))
    elif isinstance(value, UploadFile) and value.filename is not None:
        validate.edge(name, value.filename)


def edge_checked(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """The endpoint, with every text it is given checked first."""
    if inspect.iscoroutinefunction(endpoint):
        @functools.wraps(endpoint)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            for k, val in kwargs.items():
                _edge(k, val)
            return await endpoint(*args, **kwargs)
        return async_wrapper

    @functools.wraps(endpoint)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for k, val in kwargs.items():
            _edge(k, val)
        return endpoint(*args, **kwargs)
    return wrapper


class EdgeRoute(APIRoute):
    """Every route of the portal: no endpoint can forget the edge rule."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kw: Any) -> None:
        super().__init__(path, edge_checked(endpoint), **kw)


def router(**kw: Any) -> APIRouter:
    return APIRouter(route_class=EdgeRoute, **kw)


# ------------------------------------------------------------------ who is calling

def _token(request: Request) -> tuple[str, bool]:
    """(session token, came as a cookie)."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    return request.cookies.get(COOKIE, ""), True


def peer(request: Request) -> str:
    return request.client.host if request.client else ""


def session_caller(request: Request) -> users.Caller | None:
    portal = portal_of(request)
    token, _ = _token(request)
    for ch in token:
        if not (33 <= ord(ch) <= 126):
            return None
    with portal.tx() as conn:
        return users.session(conn, token, secret=portal.secret, idle_minutes=portal.settings.portal_session_minutes)


def api_caller(request: Request) -> users.Caller:
    """The caller of an API request: a bearer token, or the session cookie
    (then a changing request carries the page's form token in X-CSRF-Token)."""
    token, cookie = _token(request)
    caller = session_caller(request)
    if caller is None:
        raise Unauthenticated("session", "log in first (POST /api/v1/login); a session ends after "
                                         f"{portal_of(request).settings.portal_session_minutes} idle minutes")
    if cookie and request.method not in ("GET", "HEAD", "OPTIONS"):
        sent = request.headers.get(CSRF_HEADER, "")
        if sent != users.form_token(portal_of(request).secret, token):
            raise Forbidden("csrf", f"a request with the session cookie carries the form token in {CSRF_HEADER}")
    return caller


def role(*allowed: str) -> Callable[..., users.Caller]:
    """A dependency: the caller, when its role is one of ``allowed``."""
    def dependency(caller: users.Caller = Depends(api_caller)) -> users.Caller:
        if caller.role not in allowed:
            raise Forbidden("role", f"{caller.role} may not do this (needs {' or '.join(allowed)})")
        return caller
    return dependency


admin = role("admin")
supervisor = role("admin", "supervisor")


def account_of(conn: psycopg.Connection, caller: users.Caller, username: str) -> dict[str, Any]:
    """The caller's tenant's SIP account; another tenant's is not found."""
    from ..provisioning import accounts
    return accounts.get(conn, username, tenant_id=caller.tenant_id)


def error_body(exc: DustelError) -> dict[str, Any]:
    return {"error": {"field": exc.field, "rule": " ".join(exc.rule.split())}}


def status_of(exc: DustelError) -> int:
    if isinstance(exc, users.LoginRefused):
        return 429 if exc.locked else 401
    if isinstance(exc, Unauthenticated):
        return 401
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, NotFound):
        return 404
    return 400


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """An uploaded file's bytes, refused beyond ``limit``."""
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise DustelError("file", f"larger than {limit} bytes")
    return data
