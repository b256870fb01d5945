"""Fax to e-mail (F-08): a received TIFF becomes a PDF (``img2pdf``: CCITT
G3/G4 pages are embedded losslessly; other encodings are decoded by Pillow
first) and a mail to the fax box's address in the durable outbox, with the
caller's number, the pages, the date and the transmission status.  A
partially received fax is delivered too, marked as such; a fax with no
page at all still gets a mail saying so.  Both engines report the same
facts (``Received``), so both go through ``received``."""
from __future__ import annotations

import datetime as dt
import io
import logging
import zoneinfo
from dataclasses import dataclass

import psycopg

from . import outbox

log = logging.getLogger("dustel.fax")


@dataclass(frozen=True)
class Received:
    """What an engine says about one received fax."""
    node: str
    call_id: str
    tenant_id: int
    faxbox: str
    caller: str
    success: bool
    pages: int                 # pages the engine says it received
    result: str                # the engine's result text (e.g. OK, or why it failed)
    bit_rate: int | None = None
    remote_station: str = ""


def tiff_to_pdf(tiff: bytes) -> tuple[bytes, int]:
    """(PDF, pages) of a fax TIFF; ValueError when it holds no readable page."""
    import img2pdf
    from PIL import Image, ImageSequence

    try:
        with Image.open(io.BytesIO(tiff)) as im:
            pages = im.n_frames
    except (OSError, ValueError) as exc:
        raise ValueError(f"not a readable TIFF: {exc}") from None
    try:
        return img2pdf.convert(tiff, rotation=img2pdf.Rotation.ifvalid), pages
    except (img2pdf.ImageOpenError, ValueError, OSError):
        # an encoding img2pdf cannot embed as it is: decode each page, store it as G4 (still lossless for 1-bit)
        out = io.BytesIO()
        with Image.open(io.BytesIO(tiff)) as im:
            frames = [f.convert("1") for f in ImageSequence.Iterator(im)]
            dpi = im.info.get("dpi", (204, 196))
        buf = io.BytesIO()
        frames[0].save(buf, format="TIFF", compression="group4", save_all=True, append_images=frames[1:], dpi=dpi)
        out.write(img2pdf.convert(buf.getvalue()))
        return out.getvalue(), len(frames)


def status_of(r: Received, pages: int) -> str:
    if r.success and pages > 0:
        return "received"
    return "partial" if pages > 0 else "failed"


def received(conn: psycopg.Connection, r: Received, tiff: bytes | None) -> dict[str, object]:
    """Record the fax and queue its mail, in one transaction (the caller's);
    a repeat for the same call changes nothing."""
    box = conn.execute("""SELECT f.email, t.email AS tenant_email, t.timezone FROM faxboxes f
                            JOIN tenants t ON t.id = f.tenant_id WHERE f.tenant_id = %s AND f.name = %s""",
                       (r.tenant_id, r.faxbox)).fetchone()
    if box is None:
        raise LookupError(f"tenant {r.tenant_id} has no fax box {r.faxbox!r}")
    pdf, pages, note = None, 0, ""
    if tiff:
        try:
            pdf, pages = tiff_to_pdf(tiff)
        except ValueError as exc:
            note = f" (the received file could not be read: {exc})"
    status = status_of(r, pages)
    row = conn.execute(
        """INSERT INTO faxes (tenant_id, direction, faxbox, node, call_id, remote_number, remote_station, status,
                              pages, result, bit_rate)
           VALUES (%s, 'in', %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (node, call_id) DO NOTHING RETURNING id""",
        (r.tenant_id, r.faxbox, r.node, r.call_id, r.caller, r.remote_station, status, pages, r.result[:200],
         r.bit_rate)).fetchone()
    if row is None:
        return {"status": "already", "pages": pages}
    when = dt.datetime.now(zoneinfo.ZoneInfo(box["timezone"] or "Europe/Berlin"))
    caller = r.caller or "anonymous"
    state = {"received": "complete", "partial": "INCOMPLETE — only part of the fax arrived",
             "failed": "FAILED — no page arrived"}[status]
    subject = f"Fax from {caller}, {pages} page{'s' if pages != 1 else ''}" + \
        ("" if status == "received" else f" ({status})")
    body = (f"Fax box: {r.faxbox}\nFrom: {caller}\nReceived: {when:%Y-%m-%d %H:%M %Z}\nPages: {pages}\n"
            f"Transmission: {state}; the fax machine's result: {r.result or '-'}{note}\n"
            f"Remote station: {r.remote_station or '-'}\n")
    stamp = when.strftime("%Y%m%d-%H%M%S")
    outbox.enqueue(conn, tenant_id=r.tenant_id, kind="fax_in", recipient=box["email"],
                   report_to=box["tenant_email"] or None, subject=subject, body=body, fax_id=row["id"],
                   attachment=(f"fax-{stamp}-{caller.lstrip('+')}.pdf", pdf) if pdf else None)
    log.info("fax in call=%s tenant=%s box=%s from=%s pages=%s status=%s", r.call_id, r.tenant_id, r.faxbox,
             caller, pages, status)
    return {"status": status, "pages": pages, "fax_id": row["id"]}
