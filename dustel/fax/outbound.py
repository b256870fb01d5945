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
from dataclasses import dataclass
from typing import Any

import psycopg

from ..callpath.calls import Flow, Q
from ..errors import DustelError, NotFound
from ..provisioning import validate as v

WIDTH = 1728                 # T.4 A4 line: 1728 pixels
DPI_X, DPI_Y = 204, 196      # fine resolution
MAX_PAGES = 50


@dataclass(frozen=True)
class Retry:
    """How often a job is tried (``fax_max_attempts``) and the wait before
    attempt n+1 after attempt n failed: n × ``fax_retry_seconds`` (so 5, 10,
    15 min with the default 300 s) — busy, no answer, congestion or a failed
    transmission; a refusal by the policy is final.  Stored with the job."""

    max_attempts: int = 4
    seconds: int = 300

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 10:
            raise DustelError("fax_max_attempts", f"must be 1 to 10 (got {self.max_attempts})")
        if not 30 <= self.seconds <= 86400:
            raise DustelError("fax_retry_seconds", f"must be 30 to 86400 seconds (got {self.seconds})")

    @classmethod
    def of(cls, settings: Any) -> Retry:
        return cls(int(settings.fax_max_attempts), int(settings.fax_retry_seconds))


DEFAULT_RETRY = Retry()


# What a page may cost.  A4 at fine resolution is 2292 lines of 1728 pixels;
# a page is scaled to the fax width first, so its length in lines is what
# it costs to render and to send.  Everything is checked from the page
# sizes alone, before any page is rendered (a 335-byte PDF can declare a
# page 300 000 pt long: rendered, gigabytes).
A4_LINES = 2292
MAX_PAGE_LINES = 2 * A4_LINES     # a page at most two A4 lengths (594 mm) long at fax width
MAX_PAGE_PT = 14400               # PDF's own limit for a page side (ISO 32000-1, annex C: 200 inches)
MIN_PAGE_PT = 36                  # half an inch: less is no page a fax machine prints


def page_lines(width_pt: float, height_pt: float) -> int:
    """Fax lines a page of this size becomes: scaled to fine resolution, a
    page wider than A4 shrunk to the fax width."""
    scale = min(DPI_X / 72, WIDTH / width_pt)
    return max(1, round(height_pt * scale * DPI_Y / DPI_X))


def check_pages(sizes: list[tuple[float, float]], max_pages: int, what: str = "file") -> None:
    """Refuse a document whose pages a fax cannot be rendered from within
    budget: each page within PDF's limits and at most MAX_PAGE_LINES long at
    fax width, the whole at most ``max_pages`` A4 pages' worth of lines."""
    if not sizes:
        raise DustelError(what, "has no page")
    if len(sizes) > max_pages:
        raise DustelError(what, f"has {len(sizes)} pages; at most {max_pages}")
    total = 0
    for n, (w, h) in enumerate(sizes, start=1):
        if not (MIN_PAGE_PT <= w <= MAX_PAGE_PT and MIN_PAGE_PT <= h <= MAX_PAGE_PT):
            raise DustelError(what, f"page {n} measures {w:.0f} x {h:.0f} pt; each side must be "
                                    f"{MIN_PAGE_PT} to {MAX_PAGE_PT} pt")
        lines = page_lines(w, h)
        if lines > MAX_PAGE_LINES:
            raise DustelError(what, f"page {n} is {lines * 25.4 / DPI_Y:.0f} mm long at fax width; "
                                    f"at most {MAX_PAGE_LINES * 25.4 / DPI_Y:.0f} mm (two A4 pages)")
        total += lines
    if total > max_pages * A4_LINES:
        raise DustelError(what, f"its pages are {total / A4_LINES:.1f} A4 pages long at fax width; "
                                f"at most {max_pages}")


@dataclass(frozen=True)
class Document:
    """A PDF made into a fax: the multi-page G4 TIFF and its page count."""

    tiff: bytes
    pages: int


def pdf_to_tiff(pdf: bytes, max_pages: int = MAX_PAGES, what: str = "file") -> tuple[bytes, int]:
    """(multi-page G4 TIFF, pages) of a PDF, or a DustelError naming the
    rule.  The page sizes are checked before anything is rendered
    (``check_pages``), and pages are rendered and encoded one at a time, so
    memory holds one page, never the document."""
    import pypdfium2 as pdfium
    from PIL import Image, TiffImagePlugin

    if not pdf.startswith(b"%PDF"):
        raise DustelError(what, "is not a PDF")
    try:
        doc = pdfium.PdfDocument(pdf)
    except pdfium.PdfiumError as exc:
        reason = "is encrypted (a fax cannot be sent from a locked PDF)" if "password" in str(exc).lower() \
            else f"is not a readable PDF ({exc})"
        raise DustelError(what, reason) from None
    buf = io.BytesIO()
    try:
        n = len(doc)
        if n > max_pages:                # before the sizes: a million pages are not even looked at
            raise DustelError(what, f"has {n} pages; at most {max_pages}")
        sizes = []
        for i in range(n):
            page = doc[i]
            sizes.append(page.get_size())
            page.close()
        check_pages(sizes, max_pages, what)
        with TiffImagePlugin.AppendingTiffWriter(buf, new=True) as tf:
            for i, (w_pt, _) in enumerate(sizes):
                page = doc[i]
                scale = min(DPI_X / 72, WIDTH / w_pt)    # fine resolution; a page wider than A4 shrinks to fit
                gray = page.render(scale=scale, grayscale=True).to_pil().convert("L")
                page.close()
                # the vertical resolution is lower than the horizontal one
                gray = gray.resize((gray.width, max(1, round(gray.height * DPI_Y / DPI_X))))
                canvas = Image.new("L", (WIDTH, gray.height), 255)
                canvas.paste(gray, ((WIDTH - gray.width) // 2, 0))
                del gray
                canvas.point(lambda p: 255 if p > 160 else 0).convert("1").save(
                    tf, format="TIFF", compression="group4", dpi=(DPI_X, DPI_Y))
                tf.newFrame()
    finally:
        doc.close()
    return buf.getvalue(), n


def document(pdf: bytes, max_pages: int = MAX_PAGES, what: str = "file") -> Document:
    tiff, pages = pdf_to_tiff(pdf, max_pages, what)
    return Document(tiff, pages)


def queue(conn: psycopg.Connection, tenant_id: int, from_number: str, to_number: str, pdf: bytes | Document,
          report_to: str | None = None, max_pages: int = MAX_PAGES, retry: Retry = DEFAULT_RETRY,
          message_id: str | None = None) -> dict[str, object] | None:
    """Validate and queue a fax job (the caller's transaction) with its retry
    rule.  ``pdf`` is the PDF, or a Document made once for several
    recipients.  With ``message_id`` (the mail it came in) a job for the same
    tenant, mail and number is queued once: None when it was before."""
    t = conn.execute("SELECT id, email FROM tenants WHERE id = %s", (tenant_id,)).fetchone()
    if t is None:
        raise NotFound("tenant", f"no tenant {tenant_id}")
    sender = v.e164("from", from_number)
    if conn.execute("SELECT 1 FROM numbers WHERE tenant_id = %s AND e164 = %s AND status IN ('active', 'porting_out')",
                    (tenant_id, sender)).fetchone() is None:
        raise DustelError("from", f"{sender} is not an active number of tenant {tenant_id}")
    dest = v.e164("to", to_number)
    report = v.email("report_to", report_to) if report_to else t["email"]
    doc = pdf if isinstance(pdf, Document) else document(pdf, max_pages)
    return conn.execute(
        """INSERT INTO fax_jobs (tenant_id, from_number, to_number, pages, tiff, report_to, max_attempts,
                                 retry_seconds, mail_message_id)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (tenant_id, mail_message_id, to_number) WHERE mail_message_id IS NOT NULL DO NOTHING
           RETURNING id, tenant_id, from_number, to_number, pages, state, report_to, max_attempts, retry_seconds""",
        (tenant_id, sender, dest, doc.pages, doc.tiff, report, retry.max_attempts, retry.seconds,
         message_id)).fetchone()


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


class CallFiles:
    """Asterisk: a call file per attempt into ``asterisk_outgoing_dir``,
    written aside, then renamed in (pbx_spool never reads half a file)."""

    def __init__(self, outgoing_local: str) -> None:
        self.outgoing_local = outgoing_local

    def place(self, job: dict[str, object], engine_tiff: str, attempt: int) -> None:
        import os
        tmp = f"{self.outgoing_local}/.fax-{job['id']}.call"
        with open(tmp, "w") as f:
            f.write(call_file(job, engine_tiff))
        os.replace(tmp, f"{self.outgoing_local}/fax-{job['id']}-{attempt}.call")


# What the carrier leg of a fax offers.  Bridged from the loopback B leg, FreeSWITCH offers only
# the originating channel's codec (switch_core_media_prepare_codecs: ``originator_codec``) —
# mod_loopback's L16/8000, which a carrier refuses (INCOMPATIBLE_DESTINATION) — unless the leg has
# an ``absolute_codec_string``.  G.711 carries a fax (mod_spandsp needs it); A-law first, the
# German PSTN's.
FAX_CODECS = "PCMA,PCMU"


def originate(job: dict[str, object], t38: bool = False) -> str:
    """FreeSWITCH: the ``originate`` of one attempt.  ``loopback/<to>/dustel-fax-out``
    hands its B leg — carrying the ``{…}`` variables (mod_loopback copies
    them) — to the policy through the rendered context ``dustel-fax-out``:
    an outbound leg of the tenant bridged to the carrier; once the far end
    answered, the A leg is answered and transferred to ``fax-send`` in
    context ``dustel-fax-send``, which hands it to the policy server to run
    ``txfax``.  The file is the job's attempt's (``fax_send_path``: the policy
    server derives it from the job, no path travels in a variable); every
    value is a validated number or an id.

    The carrier leg's own variables travel as ``_nolocal_<name>`` (set on
    neither loopback leg) named in ``export_vars``: the B leg's bridge hands
    them to the leg it creates as ``<name>`` (switch_channel_process_export) —
    the codecs (``FAX_CODECS``) and, with ``t38`` (setting ``fax_send_t38``: the
    carrier takes T.38), ``fax_enable_t38`` and mod_spandsp's ``t38_gateway
    self`` once the carrier answered (any variable starting ``execute_on_answer``
    runs then).  The list is delimited by ``:`` (``{^^:…}``, switch_event_create_brackets)
    because values hold commas; the one value with a space is quoted for the
    api's own word split, which drops the quotes."""
    for key in ("id", "tenant_id"):
        if not str(job[key]).isdigit():
            raise ValueError(f"{key}: not a number")
    to = v.e164("to", str(job["to_number"]))
    sender = v.e164("from", str(job["from_number"]))
    leg = {"absolute_codec_string": FAX_CODECS}
    if t38:
        leg |= {"fax_enable_t38": "true", "execute_on_answer_t38": "'t38_gateway self'"}
    own = [f"dustel_tenant={job['tenant_id']}", f"dustel_fax_job={job['id']}",
           f"origination_caller_id_number={sender}", "origination_caller_id_name=Fax", f"fax_ident={sender}",
           "originate_timeout=120", "ignore_early_media=true",
           *(f"_nolocal_{k}={val}" for k, val in leg.items()),
           "export_vars=" + ",".join(f"_nolocal_{k}" for k in leg)]
    return f"originate {{^^:{':'.join(own)}}}loopback/{to}/dustel-fax-out fax-send XML dustel-fax-send"


def fax_send_path(spool_engine: str, job_id: int, attempt: int) -> str:
    """Where an attempt's TIFF lies for the engine (written by ``start_due``)."""
    return f"{spool_engine}/out-{int(job_id)}-{int(attempt)}.tif"


class EventSocket:
    """FreeSWITCH: ``bgapi originate`` over the inbound Event Socket of one
    node (``wire.commands.ESLClient``: blocking, one shot — the deliverer is
    no gevent process)."""

    def __init__(self, host: str, port: int, password: str, timeout: float = 10, t38: bool = False) -> None:
        self.host, self.port, self.password, self.timeout, self.t38 = host, port, password, timeout, t38

    def place(self, job: dict[str, object], engine_tiff: str, attempt: int) -> None:
        from ..wire import esl
        from ..wire.commands import ESLClient
        # its ConnectionError / PermissionError are OSErrors: start_due keeps the job queued
        (reply,) = ESLClient(self.host, self.port, self.password, self.timeout).run(
            [esl.command("bgapi " + originate(job, self.t38))])
        if not reply.ok:
            raise OSError(f"originate refused: {reply.reply_text}")


def start_due(conn: psycopg.Connection, spool_local: str, spool_engine: str, placer: CallFiles | EventSocket,
              limit: int = 20) -> list[int]:
    """Place the calls of the due jobs: the TIFF into the fax spool, then the
    call (``placer``: Asterisk call files or a FreeSWITCH originate).  Jobs
    stuck in 'sending' count as a failed attempt first.  A job whose file or
    call cannot be placed stays queued (its transaction rolls back).
    Returns the job ids started."""
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
            if job["attempts"] >= job["max_attempts"]:
                finish(conn, job, ok=False, result=job["last_result"] or "no result from the engine")
                continue
            attempt = int(job["attempts"]) + 1
            local = fax_send_path(spool_local, job["id"], attempt)
            try:
                with open(local, "wb") as f:
                    f.write(bytes(job["tiff"]))
                os.chmod(local, 0o644)
            except OSError as exc:
                raise DustelError("fax_spool_dir", f"cannot write the fax: {exc}") from None
            conn.execute("""UPDATE fax_jobs SET state = 'sending', attempts = attempts + 1, updated_at = now()
                             WHERE id = %s""", (job["id"],))
            try:
                placer.place(job, fax_send_path(spool_engine, job["id"], attempt), attempt)
            except OSError as exc:
                raise DustelError("fax", f"job {job['id']}: the call cannot be placed: {exc}") from None
            started.append(int(job["id"]))
    return started


def sending_job(tenant: int, job_id: int) -> Flow:
    """A flow (callpath.calls): the job of this tenant being sent now, or None."""
    rows = (yield Q("SELECT id, from_number, to_number, attempts FROM fax_jobs WHERE id = %(j)s "
                    "AND tenant_id = %(t)s AND state = 'sending'", {"j": job_id, "t": tenant}))
    return rows[0] if rows else None


# the attempts worth repeating: Asterisk's DIALSTATUS and FreeSWITCH's originate_disposition words for
# busy, no answer, congestion and an unreachable network (an unallocated number or a refusal is final)
RETRYABLE = {"BUSY", "NOANSWER", "CONGESTION", "CHANUNAVAIL", "FAILED",
             "USER_BUSY", "NO_ANSWER", "NO_USER_RESPONSE", "NORMAL_CIRCUIT_CONGESTION", "SWITCH_CONGESTION",
             "NORMAL_TEMPORARY_FAILURE", "DESTINATION_OUT_OF_ORDER", "NETWORK_OUT_OF_ORDER",
             "RECOVERY_ON_TIMER_EXPIRE"}


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
    retry = (kind == "FAX" or status in RETRYABLE) and job["attempts"] < job["max_attempts"]
    if retry:
        conn.execute("""UPDATE fax_jobs SET state = 'queued', last_result = %s, updated_at = now(),
                               next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s""",
                     (what, job["attempts"] * job["retry_seconds"], job_id))
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
