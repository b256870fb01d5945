"""Faxes (F-08): send a PDF (``fax/outbound.queue``, as ``dustel fax send``),
the jobs sent, the faxes received and their PDF."""
from __future__ import annotations

from fastapi import Depends, Form, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from ...errors import NotFound
from ...fax import outbound
from .. import users
from ..web import MAX_UPLOAD_BYTES, admin, portal_of, read_upload, router

api = router(tags=["fax"])


def send(portal, caller: users.Caller, from_number: str, to_number: str, report_to: str | None, pdf: bytes) -> dict:
    """Queue a fax job (one transaction); the deliverer places the call."""
    retry = outbound.Retry.of(portal.settings)
    with portal.tx() as conn:
        return outbound.queue(conn, caller.tenant_id, from_number, to_number, pdf, report_to or None, retry=retry)


@api.post("/faxes", status_code=201)
async def fax_send(request: Request, file: UploadFile, from_number: str = Form(..., alias="from"),
                   to_number: str = Form(..., alias="to"), report_to: str | None = Form(None),
                   caller: users.Caller = Depends(admin)):
    """Send ``file`` (a PDF) from one of the tenant's numbers to ``to``."""
    portal = portal_of(request)
    pdf = await read_upload(file, MAX_UPLOAD_BYTES)
    return await run_in_threadpool(send, portal, caller, from_number, to_number, report_to, pdf)


@api.get("/faxes/jobs")
def fax_jobs(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return conn.execute("""SELECT id, created_at, from_number, to_number, pages, state, attempts, pages_sent,
                                      last_result FROM fax_jobs WHERE tenant_id = %s ORDER BY id DESC LIMIT 200""",
                            (caller.tenant_id,)).fetchall()


@api.get("/faxes")
def fax_received(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return conn.execute("""SELECT id, created_at, faxbox, remote_number, status, pages FROM faxes
                                WHERE tenant_id = %s AND direction = 'in' ORDER BY created_at DESC, id DESC
                                LIMIT 200""", (caller.tenant_id,)).fetchall()


@api.get("/faxes/{fax_id}/pdf")
def fax_pdf(fax_id: int, request: Request, caller: users.Caller = Depends(admin)):
    """A received fax as the PDF its mail carried."""
    with portal_of(request).tx() as conn:
        row = conn.execute("""SELECT m.attachment FROM faxes f JOIN mail_outbox m ON m.fax_id = f.id
                               WHERE f.id = %s AND f.tenant_id = %s AND m.kind = 'fax_in'
                                 AND m.attachment IS NOT NULL ORDER BY m.id LIMIT 1""",
                           (fax_id, caller.tenant_id)).fetchone()
    if row is None:
        raise NotFound("fax", f"no received fax {fax_id} with a PDF")
    return Response(bytes(row["attachment"]), media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="fax-{fax_id}.pdf"'})
