"""The Kundencenter's ASGI application: the API under ``/api/v1`` (OpenAPI
at ``/api/v1/openapi.json``, docs at ``/api/docs``), the pages, the live
view's notification hub.  ``create_app`` is what ``dustel portal serve``
runs under uvicorn and what the tests drive."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..config import Settings
from ..errors import DustelError
from . import live, pages, web
from .api import accounts, auth, fax, features, media, money, numbers, queues

log = logging.getLogger("dustel.portal")
PREFIX = "/api/v1"
POOL_SIZE = 20


def _rule(err: dict) -> tuple[str, str]:
    """A request that does not fit the API's shape, as field and rule."""
    loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form", "header", "cookie")]
    field = loc[-1] if loc and not loc[-1].isdigit() else (loc[-2] if len(loc) > 1 else "request")
    kind = err.get("type", "")
    rule = {"missing": "is required", "int_parsing": "must be a whole number", "int_type": "must be a whole number",
            "bool_parsing": "must be true or false", "bool_type": "must be true or false",
            "string_type": "must be text", "list_type": "must be a list",
            "json_invalid": "not valid JSON", "model_attributes_type": "must be an object"}.get(kind)
    return field, rule or str(err.get("msg", "not valid"))


def create_app(settings: Settings, url: str, pool_size: int = POOL_SIZE) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        portal = web.Portal(settings, url, web.make_pool(url, pool_size))
        app.state.portal = portal
        app.state.hub = hub = live.Hub(url)
        hub.start()
        try:
            yield
        finally:
            await hub.stop()
            portal.pool.close()

    app = FastAPI(title="dustel Kundencenter", version="1", lifespan=lifespan, openapi_url=f"{PREFIX}/openapi.json",
                  docs_url="/api/docs", redoc_url=None)

    @app.exception_handler(DustelError)
    async def dustel_error(request: Request, exc: DustelError) -> JSONResponse:
        return JSONResponse(web.error_body(exc), status_code=web.status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def shape_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        field, rule = _rule(errs[0]) if errs else ("request", "not valid")
        return JSONResponse({"error": {"field": field, "rule": rule}}, status_code=422)

    for r in (auth.api, accounts.api, numbers.api, features.api, media.api, fax.api, money.api, queues.api):
        app.include_router(r, prefix=PREFIX)
    app.include_router(pages.pages)
    return app
