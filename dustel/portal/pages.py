"""The Kundencenter's web pages (server-rendered jinja2, German and English)
for the common tasks: forwarding, sending a fax, invoices, and the
supervisors' live queue view.  Every page is a thin shell over the same
functions as the API (and so the CLI); a refused form shows the rule next
to the form, nothing written.  Forms carry the session's form token."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi import Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..billing import invoices
from ..commands.common import euro
from ..errors import DustelError
from ..provisioning import accounts, features
from . import users, web
from .api import fax as fax_api
from .api import features as features_api
from .i18n import LANGS, TEXTS, language

pages = web.router(include_in_schema=False)
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                          autoescape=True, undefined=jinja2.StrictUndefined)
_env.filters["euro"] = euro
LANG_COOKIE = "dustel_lang"


def render(request: Request, name: str, caller: users.Caller | None, status: int = 200, **ctx: Any) -> HTMLResponse:
    lang = language(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE),
                    request.headers.get("accept-language", ""))
    csrf = users.form_token(web.portal_of(request).secret, caller.token) if caller else ""
    ctx.setdefault("error", None)
    ctx.setdefault("done", None)
    html = _env.get_template(name).render(t=TEXTS[lang], lang=lang, langs=LANGS, caller=caller, csrf=csrf,
                                          path=request.url.path, **ctx)
    resp = HTMLResponse(html, status_code=status)
    if request.query_params.get("lang") == lang:
        resp.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", path="/")
    return resp


class _Login(Exception):
    pass


def page_caller(request: Request, *roles: str) -> users.Caller:
    """The page's caller from the session cookie (else to the login page)."""
    caller = web.session_caller(request)
    if caller is None:
        raise _Login()
    if roles and caller.role not in roles:
        raise web.Forbidden("role", f"{caller.role} may not open this page")
    return caller


def checked(request: Request, csrf: str, *roles: str) -> users.Caller:
    """A form's caller: the session, and the form token that page gave it."""
    caller = page_caller(request, *roles)
    if csrf != users.form_token(web.portal_of(request).secret, caller.token):
        raise web.Forbidden("csrf", "the form is out of date: open the page again")
    return caller


def _guard(fn):  # type: ignore[no-untyped-def]
    """A page without a session goes to the login page; a role that may not
    open it gets a 403 page."""
    import functools
    import inspect

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_wrapper(request: Request, *a: Any, **kw: Any) -> Response:
            try:
                return await fn(request, *a, **kw)
            except _Login:
                return RedirectResponse("/login", status_code=303)
            except web.Forbidden as exc:
                return render(request, "error.html", None, status=403, error=exc)
        return async_wrapper

    @functools.wraps(fn)
    def wrapper(request: Request, *a: Any, **kw: Any) -> Response:
        try:
            return fn(request, *a, **kw)
        except _Login:
            return RedirectResponse("/login", status_code=303)
        except web.Forbidden as exc:
            return render(request, "error.html", None, status=403, error=exc)
    return wrapper


@pages.get("/login")
def login_page(request: Request):
    return render(request, "login.html", None)


@pages.post("/login")
def login_post(request: Request, login: str = Form(""), password: str = Form("")):
    resp = RedirectResponse("/", status_code=303)
    try:
        from .api.auth import open_session
        open_session(request, resp, login, password)
    except DustelError as exc:
        return render(request, "login.html", None, status=web.status_of(exc), error=exc, login=login)
    return resp


@pages.post("/logout")
@_guard
def logout_post(request: Request, csrf: str = Form("")):
    caller = checked(request, csrf)
    portal = web.portal_of(request)
    with portal.tx() as conn:
        users.logout(conn, caller.token, secret=portal.secret)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(web.COOKIE, path="/")
    return resp


@pages.get("/")
@_guard
def home(request: Request):
    caller = page_caller(request)
    return render(request, "home.html", caller)


def _forwarding(request: Request, caller: users.Caller, status: int = 200, **ctx: Any) -> HTMLResponse:
    with web.portal_of(request).tx() as conn:
        rows = [features.show_diversion(conn, a["username"]) | {"display_name": a["display_name"]}
                for a in accounts.list_for(conn, caller.tenant_id)]
    return render(request, "forwarding.html", caller, status=status, accounts=rows, **ctx)


@pages.get("/forwarding")
@_guard
def forwarding(request: Request):
    return _forwarding(request, page_caller(request, "admin"))


@pages.post("/forwarding")
@_guard
def forwarding_post(request: Request, csrf: str = Form(""), account: str = Form(""), action: str = Form("set"),
                    mode: str = Form("immediate"), targets: str = Form(""), timeout: str = Form("")):
    caller = checked(request, csrf, "admin")
    try:
        with web.portal_of(request).tx() as conn:
            if action == "clear":
                features.clear_diversion(conn, web.account_of(conn, caller, account)["username"], "forward")
            else:
                t = timeout.strip()
                if t and not (t.isascii() and t.isdigit()):
                    raise DustelError("timeout", "must be a whole number")
                body = features_api.ForwardIn(mode=mode, targets=targets.replace(",", " ").split(),
                                              timeout=int(t) if t else None)
                features_api.set_forward(conn, caller, account, body)
    except DustelError as exc:
        return _forwarding(request, caller, status=web.status_of(exc), error=exc, form_account=account)
    return _forwarding(request, caller, done=account)


def _fax(request: Request, caller: users.Caller, status: int = 200, **ctx: Any) -> HTMLResponse:
    with web.portal_of(request).tx() as conn:
        numbers = [r["e164"] for r in conn.execute(
            "SELECT e164 FROM numbers WHERE tenant_id = %s AND status IN ('active', 'porting_out') ORDER BY e164",
            (caller.tenant_id,))]
        jobs = conn.execute("""SELECT id, created_at, to_number, pages, state, attempts, last_result FROM fax_jobs
                                WHERE tenant_id = %s ORDER BY id DESC LIMIT 20""", (caller.tenant_id,)).fetchall()
    return render(request, "fax.html", caller, status=status, numbers=numbers, jobs=jobs, **ctx)


@pages.get("/fax")
@_guard
def fax_page(request: Request):
    return _fax(request, page_caller(request, "admin"))


@pages.post("/fax")
@_guard
async def fax_post(request: Request, file: UploadFile, csrf: str = Form(""), from_number: str = Form("", alias="from"),
                   to_number: str = Form("", alias="to")):
    caller = await run_in_threadpool(checked, request, csrf, "admin")
    portal = web.portal_of(request)
    try:
        pdf = await web.read_upload(file, web.MAX_UPLOAD_BYTES)
        job = await run_in_threadpool(fax_api.send, portal, caller, from_number, to_number, None, pdf)
    except DustelError as exc:
        return await run_in_threadpool(_fax, request, caller, web.status_of(exc), error=exc)
    return await run_in_threadpool(_fax, request, caller, done=job)


@pages.get("/invoices")
@_guard
def invoice_page(request: Request):
    caller = page_caller(request, "admin")
    with web.portal_of(request).tx() as conn:
        rows = invoices.listing(conn, caller.tenant_id, None)
    return render(request, "invoices.html", caller, invoices=list(reversed(rows)))


@pages.get("/live")
@_guard
def live_page(request: Request):
    return render(request, "live.html", page_caller(request, "admin", "supervisor"))
