"""Sending a fax (F-08): a PDF becomes a fax TIFF (``pypdfium2`` renders each
page at fax fine resolution, 204 × 196 dpi, on A4 width 1728 px; Pillow
thresholds it to 1 bit and stores CCITT G4), and a job the deliverer runs:
an outbound call of the tenant through the same call-time policy (zones,
rate, money, a line), ``SendFAX``, the result reported back; busy, no
answer or a failed transmission is retried; the sender gets a report.

A bad document is refused before anything is queued — nothing sent,
nothing charged.
"""
from __future__ import annotations

import io

import psycopg

from ..errors import DustelError, NotFound
from ..provisioning import validate as v

WIDTH = 1728                 # T.4 A4 line: 1728 pixels
DPI_X, DPI_Y = 204, 196      # fine resolution
MAX_PAGES = 50
RETRY_SECONDS = (120, 300, 900)     # before attempt 2, 3, 4 (busy / no answer / failed transmission)


def pdf_to_tiff(pdf: bytes, max_pages: int = MAX_PAGES, what: str = "file") -> tuple[bytes, int]:
    """(multi-page G4 TIFF, pages) of a PDF, or a DustelError naming the rule."""
    import pypdfium2 as pdfium
    from PIL import Image

    if not pdf.startswith(b"%PDF"):
        raise DustelError(what, "is not a PDF")
    try:
        doc = pdfium.PdfDocument(pdf)
    except pdfium.PdfiumError as exc:
        reason = "is encrypted (a fax cannot be sent from a locked PDF)" if "password" in str(exc).lower() \
            else f"is not a readable PDF ({exc})"
        raise DustelError(what, reason) from None
    try:
        n = len(doc)
        if n == 0:
            raise DustelError(what, "has no page")
        if n > max_pages:
            raise DustelError(what, f"has {n} pages; at most {max_pages}")
        frames = []
        for i in range(n):
            page = doc[i]
            w_pt = page.get_width()
            scale = min(DPI_X / 72, WIDTH / w_pt)    # fine resolution; a page wider than A4 shrinks to fit
            gray = page.render(scale=scale, grayscale=True).to_pil().convert("L")
            # the vertical resolution is lower than the horizontal one
            gray = gray.resize((gray.width, max(1, round(gray.height * DPI_Y / DPI_X))))
            canvas = Image.new("L", (WIDTH, gray.height), 255)
            canvas.paste(gray, ((WIDTH - gray.width) // 2, 0))
            frames.append(canvas.point(lambda p: 255 if p > 160 else 0).convert("1"))
    finally:
        doc.close()
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", compression="group4", dpi=(DPI_X, DPI_Y), save_all=True,
                   append_images=frames[1:])
    return buf.getvalue(), len(frames)


def queue(conn: psycopg.Connection, tenant_id: int, from_number: str, to_number: str, pdf: bytes,
          report_to: str | None = None, max_pages: int = MAX_PAGES) -> dict[str, object]:
    """Validate and queue a fax job (the caller's transaction)."""
    t = conn.execute("SELECT id, email FROM tenants WHERE id = %s", (tenant_id,)).fetchone()
    if t is None:
        raise NotFound("tenant", f"no tenant {tenant_id}")
    sender = v.e164("from", from_number)
    if conn.execute("SELECT 1 FROM numbers WHERE tenant_id = %s AND e164 = %s AND status IN ('active', 'porting_out')",
                    (tenant_id, sender)).fetchone() is None:
        raise DustelError("from", f"{sender} is not an active number of tenant {tenant_id}")
    dest = v.e164("to", to_number)
    report = v.email("report_to", report_to) if report_to else t["email"]
    tiff, pages = pdf_to_tiff(pdf, max_pages)
    return conn.execute(
        """INSERT INTO fax_jobs (tenant_id, from_number, to_number, pages, tiff, report_to)
           VALUES (%s, %s, %s, %s, %s, %s)
           RETURNING id, tenant_id, from_number, to_number, pages, state, report_to""",
        (tenant_id, sender, dest, pages, tiff, report)).fetchone()


# ------------------------------------------------------------------ placing the calls (Asterisk)

STUCK_SECONDS = 600          # a job 'sending' this long got no result from the engine: a failed attempt


def call_file(job: dict[str, object], engine_tiff: str) -> str:
    """An Asterisk call file (pbx_spool) for one attempt: the Local channel's
    dialling half runs ``dustel-fax-out`` (the policy, then the carrier), the
    other half ``dustel-fax-send`` (SendFAX) once the far end answered.
    Every value is a validated number, an id or a path of ours."""
    for key in ("id", "tenant_id"):
        if not str(job[key]).isdigit():
            raise ValueError(f"{key}: not a number")
    to = v.e164("to", str(job["to_number"]))
    return (f"Channel: Local/{to}@dustel-fax-out\n"
            f"CallerID: <{v.e164('from', str(job['from_number']))}>\n"
            "MaxRetries: 0\nWaitTime: 90\nArchive: no\n"
            "Context: dustel-fax-send\nExtension: s\nPriority: 1\n"
            f"Setvar: __DUSTEL_FAX_JOB={job['id']}\n"
            f"Setvar: __DUSTEL_TENANT={job['tenant_id']}\n"
            f"Setvar: __DUSTEL_FAX_FILE={engine_tiff}\n")


def start_due(conn: psycopg.Connection, spool_local: str, spool_engine: str, outgoing_local: str,
              limit: int = 20) -> list[int]:
    """Place the calls of the due jobs: the TIFF into the fax spool, a call
    file into Asterisk's outgoing directory (written aside, then renamed in:
    pbx_spool never reads half a file).  Jobs stuck in 'sending' count as a
    failed attempt first.  Returns the job ids started."""
    import os
    conn.execute(
        """UPDATE fax_jobs SET state = 'queued', last_result = 'no result from the engine', updated_at = now()
            WHERE state = 'sending' AND updated_at < now() - make_interval(secs => %s)""", (STUCK_SECONDS,))
    started = []
    for _ in range(limit):
        with conn.transaction():
            job = conn.execute("""SELECT * FROM fax_jobs WHERE state = 'queued' AND next_attempt_at <= now()
                                   ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED""").fetchone()
            if job is None:
                break
            if job["attempts"] > len(RETRY_SECONDS):
                finish(conn, job, ok=False, result=job["last_result"] or "no result from the engine")
                continue
            name = f"out-{job['id']}-{job['attempts'] + 1}.tif"
            tmp = f"{outgoing_local}/.fax-{job['id']}.call"
            try:
                with open(f"{spool_local}/{name}", "wb") as f:
                    f.write(bytes(job["tiff"]))
                os.chmod(f"{spool_local}/{name}", 0o644)
                with open(tmp, "w") as f:
                    f.write(call_file(job, f"{spool_engine}/{name}"))
            except OSError as exc:         # the job stays queued (this transaction rolls back)
                raise DustelError("fax_spool_dir", f"cannot write the fax or its call file: {exc}") from None
            conn.execute("""UPDATE fax_jobs SET state = 'sending', attempts = attempts + 1, updated_at = now()
                             WHERE id = %s""", (job["id"],))
            os.replace(tmp, f"{outgoing_local}/fax-{job['id']}-{job['attempts'] + 1}.call")
            started.append(int(job["id"]))
    return started


RETRYABLE = {"BUSY", "NOANSWER", "CONGESTION", "CHANUNAVAIL", "FAILED"}


def result(conn: psycopg.Connection, job_id: int, kind: str, status: str, pages: int = 0, text: str = "") \
        -> str:
    """The engine's word on an attempt: ``FAX`` (SendFAX ended: SUCCESS /
    FAILED), ``DIAL`` (the call was not answered: DIALSTATUS) or
    ``REFUSED`` (the policy refused the call: its reason — not retried).
    Returns the job's new state."""
    job = conn.execute("SELECT * FROM fax_jobs WHERE id = %s AND state = 'sending' FOR UPDATE",
                       (job_id,)).fetchone()
    if job is None:
        return "unknown"
    if kind == "FAX" and status == "SUCCESS":
        finish(conn, job, ok=True, result="OK", pages=pages)
        return "sent"
    what = {"FAX": f"transmission failed: {text or status}", "DIAL": f"call not answered: {status}",
            "REFUSED": f"refused: {status}"}.get(kind, f"{kind} {status}")
    retry = (kind == "FAX" or status in RETRYABLE) and job["attempts"] <= len(RETRY_SECONDS)
    if retry:
        conn.execute("""UPDATE fax_jobs SET state = 'queued', last_result = %s, updated_at = now(),
                               next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s""",
                     (what, RETRY_SECONDS[job["attempts"] - 1], job_id))
        return "queued"
    finish(conn, job, ok=False, result=what, pages=pages)
    return "failed"


def finish(conn: psycopg.Connection, job: dict[str, object], ok: bool, result: str, pages: int = 0) -> None:
    from . import outbox
    conn.execute("""UPDATE fax_jobs SET state = %s, last_result = %s, pages_sent = %s, updated_at = now(),
                           sent_at = CASE WHEN %s THEN now() END WHERE id = %s""",
                 ("sent" if ok else "failed", result, pages, ok, job["id"]))
    if not job["report_to"]:
        return
    if ok:
        subject = f"Fax to {job['to_number']} delivered, {pages} page{'s' if pages != 1 else ''}"
        body = (f"Your fax from {job['from_number']} to {job['to_number']} was delivered.\n"
                f"Pages: {pages} of {job['pages']}\nAttempts: {job['attempts']}\n")
    else:
        subject = f"Fax to {job['to_number']} NOT delivered"
        body = (f"Your fax from {job['from_number']} to {job['to_number']} could not be delivered.\n"
                f"Reason: {result}\nAttempts: {job['attempts']}\n")
    outbox.enqueue(conn, tenant_id=int(str(job["tenant_id"])), kind="fax_report", recipient=str(job["report_to"]),
                   subject=subject, body=body)
