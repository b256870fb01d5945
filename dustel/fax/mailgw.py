"""E-mail to fax (F-08): ``dustel mailgw serve``, an aiosmtpd server.

A mail to ``<fax number>@<fax_mail_domain>`` with a PDF attachment is
faxed, from a number routed to the fax box it is sent for, when one of
two ways says which box that is:

- **Authenticated submission** (the recommended way): SMTP AUTH (PLAIN or
  LOGIN, offered only after STARTTLS, with ``mailgw_tls_cert_file`` /
  ``mailgw_tls_key_file`` set) as ``<tenant id>/<box name>`` with the box's
  submission password (argon2, ``faxbox set --smtp-password``).  The
  envelope sender does not matter; reports go to the box's address.
- **PIN in the subject** (the fallback the product page promises): the
  envelope sender is one of the tenant's addresses (the tenant's own or one
  of its fax boxes'; anyone else is refused at RCPT with 550 and never gets
  a report — no backscatter), and the subject carries the PIN of one of
  that tenant's fax boxes (PBKDF2, compared with every box).

Against a hostile sender:
- wrong PINs lock out per (sender, client address): 5 within 15 minutes
  lock that pair for 15 minutes, so a stranger who forges a customer's
  address from elsewhere locks out himself, not the customer; a tenant's
  boxes take at most 20 wrong PINs per 15 minutes from everyone together
  (then the PIN way is closed for that tenant for the window;
  authenticated submission still works).  Wrong logins likewise per
  (login, client address).  Each decision is taken under the tenant's
  advisory lock, so parallel sessions cannot all slip under the limit;
- at most ``MAX_RCPT`` recipients per mail (452 beyond) and
  ``MAX_MAIL_BYTES`` per mail; at most ``MAX_INFLIGHT`` mails in flight
  (from MAIL FROM to the answer to DATA: each holds its whole content),
  ``MAX_INFLIGHT_PER_PEER`` of them from one client address (451 beyond:
  the sender's server tries again later), and ``MAX_PROCESSING`` parsed and
  rendered at once — so the gateway's memory has a ceiling whatever
  arrives (bench/mailgw.py prints it; the unit's MemoryMax= is the last
  line);
- the PDF is checked (page sizes, pages, a pixel budget) before anything
  is rendered, and rendered once per mail, whatever the recipients;
- a refused mail gets one report at most, and an address at most
  ``REPORTS_PER_HOUR`` refusal reports an hour (the rest are logged only).

A mail is one transaction: every recipient's job is queued, or none (a
database error answers 451 and the sender's server retries the whole
mail); each job remembers the mail's Message-ID, so a mail repeated after a
lost 250 is not faxed (and charged) twice.
"""
from __future__ import annotations

import asyncio
import email
import email.parser
import email.policy
import functools
import logging
import re
import ssl
import zlib
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.utils import parseaddr
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..errors import DustelError
from ..provisioning import targets
from ..provisioning import validate as v
from . import outbound, outbox

log = logging.getLogger("dustel.mailgw")

LOCK_AFTER = 5              # wrong PINs (or logins) from one sender at one client address …
LOCK_MINUTES = 15           # … within this many minutes lock that pair out as long
TENANT_LOCK_AFTER = 20      # wrong PINs for one tenant's boxes, from everyone, within the window
MAX_RCPT = 10               # recipients per mail
MAX_MAIL_BYTES = 10 * 2**20  # a mail's size (the PDF travels base64-encoded inside it)
MAX_INFLIGHT = 4            # mails between MAIL FROM and the answer to their DATA, from everyone …
MAX_INFLIGHT_PER_PEER = 2   # … and from one client address
MAX_PROCESSING = 1          # mails parsed, checked and rendered at once
REPORTS_PER_HOUR = 5        # refusal reports to one address an hour
_LOCK_CLASS = zlib.crc32(b"dustel.mailgw") & 0x7FFFFFFF   # advisory lock (class, tenant id)


@dataclass(frozen=True)
class Box:
    """The fax box a mail is sent for."""

    id: int
    tenant_id: int
    name: str
    email: str
    number: str | None


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    reason: str
    job_ids: tuple[int, ...] = ()
    reported: bool = False


_SENDER = """
SELECT t.id AS tenant_id FROM tenants t WHERE lower(t.email) = lower(%(a)s)
UNION SELECT f.tenant_id FROM faxboxes f WHERE lower(f.email) = lower(%(a)s)
"""

_BOXES = """
SELECT f.id, f.tenant_id, f.name, f.email, f.pin_hash, f.smtp_password_hash,
       (SELECT n.e164 FROM numbers n WHERE n.faxbox_id = f.id AND n.status IN ('active', 'porting_out')
         ORDER BY n.e164 LIMIT 1) AS number
  FROM faxboxes f WHERE f.tenant_id = %(t)s AND (%(name)s::text IS NULL OR f.name = %(name)s) ORDER BY f.id"""


def tenant_of_sender(conn: psycopg.Connection, address: str) -> int | None:
    rows = conn.execute(_SENDER, {"a": address}).fetchall()
    return int(rows[0]["tenant_id"]) if len(rows) == 1 else None     # an address of two tenants: neither


def _box(row: dict[str, Any]) -> Box:
    return Box(int(row["id"]), int(row["tenant_id"]), row["name"], row["email"], row["number"])


def _lock(conn: psycopg.Connection, tenant_id: int) -> None:
    """The tenant's gateway lock, to the end of the caller's transaction:
    counting failures, comparing and recording are one step."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, tenant_id))


def _failures(conn: psycopg.Connection, kind: str, tenant_id: int, sender: str, peer: str) -> tuple[int, int]:
    row = conn.execute(
        """SELECT count(*) FILTER (WHERE sender = lower(%(s)s) AND peer = %(p)s) AS mine, count(*) AS tenant
             FROM mailgw_pin_failures
            WHERE kind = %(k)s AND tenant_id = %(t)s AND at > now() - make_interval(mins => %(m)s)""",
        {"s": sender, "p": peer, "k": kind, "t": tenant_id, "m": LOCK_MINUTES}).fetchone()
    return int(row["mine"]), int(row["tenant"])


def _failed(conn: psycopg.Connection, kind: str, tenant_id: int, sender: str, peer: str) -> None:
    conn.execute("INSERT INTO mailgw_pin_failures (kind, tenant_id, sender, peer) VALUES (%s, %s, lower(%s), %s)",
                 (kind, tenant_id, sender, peer))


def pin_of(subject: str) -> str:
    """The PIN a subject carries: its first group of 4 to 8 digits."""
    return "".join(re.findall(r"\b[0-9]{4,8}\b", subject)[:1])


def box_by_pin(conn: psycopg.Connection, tenant_id: int, sender: str, peer: str, subject: str) -> Box | str:
    """The box whose PIN the subject carries, or why not (the caller's
    transaction, under the tenant's lock).  A wrong PIN is recorded."""
    _lock(conn, tenant_id)
    mine, everyone = _failures(conn, "pin", tenant_id, sender, peer)
    if mine >= LOCK_AFTER:
        return f"too many wrong PINs from {sender} at {peer}; try again in {LOCK_MINUTES} minutes"
    if everyone >= TENANT_LOCK_AFTER:
        return (f"too many wrong PINs for this customer's fax boxes; the PIN in the subject is refused for "
                f"{LOCK_MINUTES} minutes (authenticated submission still works)")
    pin = pin_of(subject)
    found = None
    for b in conn.execute(_BOXES, {"t": tenant_id, "name": None}).fetchall():
        # every box is checked: the time taken does not tell which matched
        if b["pin_hash"] and pin and targets.check_pin(pin, b["pin_hash"]) and found is None:
            found = _box(b)
    if found is None:
        _failed(conn, "pin", tenant_id, sender, peer)
        log.warning("mailgw: wrong or missing PIN from %s at %s (tenant %s)", sender, peer, tenant_id)
        return "the subject carries no valid fax box PIN"
    return found


_LOGIN = re.compile(r"([0-9]{1,12})/([a-z0-9][a-z0-9_-]{0,31})")


@functools.cache
def _no_box() -> str:
    """A hash to compare with when the login names no box: the same time."""
    return targets.hash_secret("no box has this password")


def box_by_login(conn: psycopg.Connection, login: str, password: str, peer: str) -> Box | None:
    """SMTP AUTH: the box ``<tenant id>/<box name>`` when ``password`` is its
    submission password (the caller's transaction).  Wrong logins are
    recorded and lock out (login, client address) like wrong PINs."""
    m = _LOGIN.fullmatch(login)
    tenant_id = int(m.group(1)) if m else None
    if tenant_id is None or conn.execute("SELECT 1 FROM tenants WHERE id = %s", (tenant_id,)).fetchone() is None:
        targets.check_secret(password, _no_box())
        return None
    _lock(conn, tenant_id)
    if _failures(conn, "auth", tenant_id, login, peer)[0] >= LOCK_AFTER:
        log.warning("mailgw: login %s from %s locked out", login, peer)
        return None
    row = conn.execute(_BOXES, {"t": tenant_id, "name": m.group(2) if m else None}).fetchone()
    stored = row["smtp_password_hash"] if row else None
    if not targets.check_secret(password, stored or _no_box()) or not stored:
        _failed(conn, "auth", tenant_id, login, peer)
        log.warning("mailgw: wrong login %s from %s", login, peer)
        return None
    return _box(row)


def _pdf(msg: EmailMessage) -> bytes | None:
    for part in msg.walk():
        if part.get_content_type() == "application/pdf" or (part.get_filename() or "").lower().endswith(".pdf"):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return data
    return None


def subject_of(msg: Message) -> str:
    """The decoded subject, header-safe (encoded words can carry CR/LF)."""
    try:
        raw = str(msg.get("Subject", ""))
    except (ValueError, TypeError, LookupError):     # a malformed encoded word
        raw = ""
    return outbox.header_text(raw)


def report(conn: psycopg.Connection, tenant_id: int, to: str, subject: str, why: str) -> bool:
    """One refusal report, unless ``to`` had REPORTS_PER_HOUR in the last
    hour (then only logged).  The caller's transaction, under the tenant's
    lock (taken here), so parallel refusals count each other.  True when
    queued."""
    _lock(conn, tenant_id)
    sent = conn.execute("""SELECT count(*) AS n FROM mail_outbox WHERE kind = 'refusal_report'
                            AND lower(recipient) = lower(%s) AND created_at > now() - interval '1 hour'""",
                        (to,)).fetchone()["n"]
    if sent >= REPORTS_PER_HOUR:
        log.warning("mailgw: refusal report to %s not sent (%s this hour): %s", to, sent, why)
        return False
    outbox.enqueue(conn, tenant_id=tenant_id, kind="refusal_report", recipient=to,
                   subject=f"Fax NOT sent: {subject[:80]}",
                   body=f"Your mail to the fax gateway was not faxed: {why}.\nNothing was sent or charged.\n")
    return True


def _refused(conn: psycopg.Connection, tenant_id: int, to: str, subject: str, why: str) -> Outcome:
    with conn.transaction():
        reported = report(conn, tenant_id, to, subject, why)
    log.info("mailgw: refused mail for tenant %s (report to %s): %s", tenant_id, to, why)
    return Outcome(False, why, reported=reported)


def deliver(conn: psycopg.Connection, sender: str, peer: str, rcpts: list[str], content: bytes,
            max_pages: int = outbound.MAX_PAGES, retry: outbound.Retry = outbound.DEFAULT_RETRY,
            box: Box | None = None) -> Outcome:
    """One accepted mail (``conn`` in autocommit; each step its own
    transaction): which box (``box`` when authenticated, else by the sender
    and the subject's PIN), the document rendered once, then every
    recipient's job queued in one transaction — or one refusal report.
    Only the headers are parsed before the sender is known to be allowed:
    a refused mail never has its body taken apart."""
    head = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(content)
    subject = subject_of(head)
    if box is None:
        tenant_id = tenant_of_sender(conn, sender)
        if tenant_id is None:
            return Outcome(False, "the sender is not an address of a customer")
        with conn.transaction():
            found = box_by_pin(conn, tenant_id, sender, peer, subject)
        if isinstance(found, str):
            return _refused(conn, tenant_id, sender, subject, found)
        box, report_to = found, sender
    else:
        report_to = box.email
    if not box.number:
        return _refused(conn, box.tenant_id, report_to, subject, f"fax box {box.name} has no number to send from")
    numbers, bad = [], []
    for rcpt in rcpts:
        local = rcpt.rsplit("@", 1)[0]
        try:
            numbers.append(v.e164("to", local))
        except DustelError:
            bad.append(outbox.header_text(local, 40))
    if bad:
        return _refused(conn, box.tenant_id, report_to, subject, f"{', '.join(bad)} is not a fax number")
    msg = email.message_from_bytes(content, policy=email.policy.default)
    pdf = _pdf(msg)       # type: ignore[arg-type]
    del msg
    if pdf is None:
        return _refused(conn, box.tenant_id, report_to, subject, "the mail has no PDF attachment")
    try:
        doc = outbound.document(pdf, max_pages)           # once, whatever the recipients
    except DustelError as exc:
        return _refused(conn, box.tenant_id, report_to, subject, f"the PDF cannot be faxed: {exc}")
    message_id = outbox.header_text(str(head.get("Message-ID", "")), 250) or None
    jobs = []
    with conn.transaction():
        for to in dict.fromkeys(numbers):
            job = outbound.queue(conn, box.tenant_id, box.number, to, doc, report_to=report_to, retry=retry,
                                 message_id=message_id)
            if job is not None:
                jobs.append(int(job["id"]))
    log.info("mailgw: fax job(s) %s from %s (box %s of tenant %s) to %s, %s page(s)%s", jobs or "-", report_to,
             box.name, box.tenant_id, ", ".join(numbers), doc.pages,
             "" if len(jobs) == len(set(numbers)) else " (repeated mail: queued before)")
    return Outcome(True, "queued", tuple(jobs))


class Handler:
    """aiosmtpd handler: RCPT checks the domain, the count and the sender;
    AUTH checks a box's login off the event loop; DATA does the rest."""

    def __init__(self, dsn: str, domain: str, max_pages: int = outbound.MAX_PAGES,
                 retry: outbound.Retry = outbound.DEFAULT_RETRY, max_inflight: int = MAX_INFLIGHT,
                 max_inflight_per_peer: int = MAX_INFLIGHT_PER_PEER, max_processing: int = MAX_PROCESSING) -> None:
        self.dsn, self.domain, self.max_pages, self.retry = dsn, domain.lower(), max_pages, retry
        self.max_inflight, self.max_inflight_per_peer = max_inflight, max_inflight_per_peer
        self.inflight: dict[int, str] = {}       # id(session's server) -> client address, from MAIL to DATA's end
        self.processing = asyncio.Semaphore(max_processing)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          mail_options: list[str]) -> str:
        key, peer = id(server), str(session.peer[0])
        if key not in self.inflight:
            mine = sum(1 for p in self.inflight.values() if p == peer)
            if len(self.inflight) >= self.max_inflight or mine >= self.max_inflight_per_peer:
                log.warning("mailgw: busy (%s mails in flight, %s from %s): MAIL deferred", len(self.inflight),
                            mine, peer)
                return "451 4.3.2 the gateway is busy; try again later"
            self.inflight[key] = peer
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    def release(self, server: Any) -> None:
        """The session's mail is done (answered, or its connection gone)."""
        self.inflight.pop(id(server), None)

    def _connect(self, autocommit: bool = False) -> psycopg.Connection:
        return psycopg.connect(self.dsn, row_factory=dict_row, connect_timeout=5, autocommit=autocommit)

    def _sender_known(self, address: str) -> bool:
        with self._connect() as conn:
            return tenant_of_sender(conn, address) is not None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        if address.rsplit("@", 1)[-1].lower() != self.domain:
            return "550 5.1.1 not a fax address of this gateway"
        if len(envelope.rcpt_tos) >= MAX_RCPT:
            return f"452 4.5.3 too many recipients (at most {MAX_RCPT} per mail)"
        if not session.authenticated:
            sender = parseaddr(envelope.mail_from or "")[1]
            try:
                known = await asyncio.to_thread(self._sender_known, sender)
            except psycopg.Error:
                return "451 4.3.0 try again later"
            if not known:
                return "550 5.7.1 sender not allowed to fax"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def _login(self, login: bytes, password: bytes, peer: str) -> Box | None:
        try:
            name, secret = login.decode(), password.decode()
        except UnicodeDecodeError:
            return None
        with self._connect() as conn:
            return box_by_login(conn, name, secret, peer)

    async def _auth(self, server: Any, args: list[str], builtin: Any) -> Any:
        from aiosmtpd.smtp import AuthResult
        # aiosmtpd's own mechanism parses the exchange; the authenticator it
        # calls (``_parsed``) only hands the credentials back, and the check
        # (a database look-up and argon2) runs here, off the event loop
        parsed = await builtin(server, None, args)
        if not parsed.success:
            return parsed
        creds = parsed.auth_data
        try:
            box = await asyncio.to_thread(self._login, creds.login, creds.password, str(server.session.peer[0]))
        except psycopg.Error:
            return AuthResult(success=False, handled=False, message="454 4.7.0 try again later")
        return AuthResult(success=box is not None, handled=False, auth_data=box)

    async def auth_PLAIN(self, server: Any, args: list[str]) -> Any:  # noqa: N802 (aiosmtpd's name)
        from aiosmtpd.smtp import SMTP
        return await self._auth(server, args, SMTP.auth_PLAIN)

    async def auth_LOGIN(self, server: Any, args: list[str]) -> Any:  # noqa: N802 (aiosmtpd's name)
        from aiosmtpd.smtp import SMTP
        return await self._auth(server, args, SMTP.auth_LOGIN)

    def _data(self, sender: str, peer: str, rcpts: list[str], content: bytes, box: Box | None) -> Outcome:
        with self._connect(autocommit=True) as conn:
            return deliver(conn, sender, peer, rcpts, content, self.max_pages, self.retry, box)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        sender = parseaddr(envelope.mail_from or "")[1]
        box = session.auth_data if session.authenticated and isinstance(session.auth_data, Box) else None
        try:
            async with self.processing:
                await asyncio.to_thread(self._data, sender, str(session.peer[0]), list(envelope.rcpt_tos),
                                        envelope.content, box)
        except psycopg.Error:
            return "451 4.3.0 try again later"      # no job stored: the sender's server retries the mail
        finally:
            self.release(server)
        return "250 OK: queued (the result comes by mail)"


def _parsed(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    """The authenticator aiosmtpd's own mechanisms call: the credentials,
    unchecked, back to ``Handler._auth`` (which checks them)."""
    from aiosmtpd.smtp import AuthResult
    return AuthResult(success=True, handled=False, auth_data=auth_data)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext | None:
    """The STARTTLS context of the gateway, or None without a certificate."""
    if not cert_file and not key_file:
        return None
    if not (cert_file and key_file):
        raise DustelError("mailgw_tls_cert_file", "and mailgw_tls_key_file must be set together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise DustelError("mailgw_tls_cert_file", f"cannot be loaded with its key: {exc}") from None
    return ctx


def controller(dsn: str, host: str, port: int, domain: str, retry: outbound.Retry = outbound.DEFAULT_RETRY,
               tls: ssl.SSLContext | None = None, max_pages: int = outbound.MAX_PAGES, **limits: int) -> Any:
    """The gateway's aiosmtpd controller (not started); ``limits``: the
    Handler's in-flight and processing caps."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    class Server(SMTP):
        """aiosmtpd's session, telling the handler when its connection is
        gone (a mail in flight whose sender vanished frees its place)."""

        def connection_lost(self, error: Exception | None) -> None:
            self.event_handler.release(self)
            super().connection_lost(error)

    class Gateway(Controller):
        def factory(self) -> SMTP:
            return Server(self.handler, **self.SMTP_kwargs)

    return Gateway(Handler(dsn, domain, max_pages=max_pages, retry=retry, **limits), hostname=host, port=port,
                   data_size_limit=MAX_MAIL_BYTES, tls_context=tls, authenticator=_parsed, auth_require_tls=True)


def serve(dsn: str, host: str, port: int, domain: str, retry: outbound.Retry = outbound.DEFAULT_RETRY,
          tls: ssl.SSLContext | None = None) -> None:
    """Run the gateway in the foreground until interrupted."""
    c = controller(dsn, host, port, domain, retry, tls)
    c.start()
    log.info("mail gateway listening on %s:%s for *@%s (%s)", host, port, domain,
             "STARTTLS and AUTH offered" if tls else "no TLS: PIN in the subject only")
    try:
        import threading
        threading.Event().wait()
    finally:
        c.stop()
