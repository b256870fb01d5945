"""Hold music and the sound logo (F-07, business flex): uploads converted by
``provisioning/media.py`` as ``dustel moh/logo upload`` does."""
from __future__ import annotations

from fastapi import Depends, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from ...provisioning import media
from ...provisioning import validate as v
from .. import users
from ..web import admin, portal_of, read_upload, router

api = router(tags=["media"])


@api.get("/moh")
def moh_list(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return media.listing(conn, caller.tenant_id, "moh")


@api.post("/moh/{cls}", status_code=201)
async def moh_upload(cls: str, file: UploadFile, request: Request, caller: users.Caller = Depends(admin)):
    """Add an audio file (WAV, MP3, FLAC, OGG) to the hold music class."""
    portal = portal_of(request)
    data = await read_upload(file, portal.settings.media_max_bytes)
    s = portal.settings
    return await run_in_threadpool(media.upload, portal.tx, s.moh_dir, caller.tenant_id, "moh", cls, data,
                                   max_bytes=s.media_max_bytes, max_seconds=s.media_max_seconds)


@api.delete("/moh/{cls}")
def moh_remove(cls: str, request: Request, caller: users.Caller = Depends(admin)):
    portal = portal_of(request)
    files = media.drop(portal.tx, portal.settings.moh_dir, caller.tenant_id, "moh", v.slug("class", cls))
    return {"removed": len(files)}


@api.get("/logo")
def logo_list(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return media.listing(conn, caller.tenant_id, "logo")


@api.post("/logo", status_code=201)
async def logo_upload(file: UploadFile, request: Request, number: str | None = Form(None),
                      caller: users.Caller = Depends(admin)):
    """Set the sound logo (of every number, or of ``number``), replacing the one before."""
    portal = portal_of(request)
    s = portal.settings
    data = await read_upload(file, s.media_max_bytes)
    return await run_in_threadpool(media.set_logo, portal.tx, s.logo_dir, caller.tenant_id,
                                   media.logo_class(number or None), data, max_bytes=s.media_max_bytes,
                                   max_seconds=s.media_max_seconds)


@api.delete("/logo")
def logo_remove(request: Request, number: str | None = None, caller: users.Caller = Depends(admin)):
    portal = portal_of(request)
    files = media.drop(portal.tx, portal.settings.logo_dir, caller.tenant_id, "logo",
                       media.logo_class(number or None))
    return {"removed": len(files)}
