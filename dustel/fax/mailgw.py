"""E-mail to fax (F-08): ``dustel mailgw serve``, an aiosmtpd server.

A mail to ``<fax number>@<fax_mail_domain>`` with a PDF attachment is
faxed when:

- the sender is one of the tenant's addresses (the tenant's own or one of
  its fax boxes'): mail from anyone else is refused at the SMTP level (550),
  and nobody outside is ever sent a report (no backscatter);
- the subject carries the PIN of one of that tenant's fax boxes (compared
  with the stored PBKDF2 hash in constant time); 5 wrong PINs from one
  sender within 15 minutes lock that sender out for 15 minutes;
- the PDF is readable, not encrypted, and within the page limit.

The fax is sent from a number routed to that fax box.  An accepted mail
becomes a fax job (the sender gets the delivery report); a refused one a
report to the sender saying why — nothing queued, nothing charged.  Mail
and jobs are rows in PostgreSQL: a restart of the gateway loses nothing
it has answered 250 to.
"""
from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..errors import DustelError
from ..provisioning import targets
from ..provisioning import validate as v
from . import outbound, outbox

log = logging.getLogger("dustel.mailgw")

LOCK_AFTER = 5              # wrong PINs from one sender …
LOCK_MINUTES = 15           # … within this many minutes lock it out as long


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    reason: str
    job_id: int | None = None


_SENDER = """
SELECT t.id AS tenant_id FROM tenants t WHERE lower(t.email) = lower(%(a)s)
UNION SELECT f.tenant_id FROM faxboxes f WHERE lower(f.email) = lower(%(a)s)
"""


def tenant_of_sender(conn: psycopg.Connection, address: str) -> int | None:
    rows = conn.execute(_SENDER, {"a": address}).fetchall()
    return int(rows[0]["tenant_id"]) if len(rows) == 1 else None     # an address of two tenants: neither


def _pdf(msg: EmailMessage) -> bytes | None:
    for part in msg.walk():
        if part.get_content_type() == "application/pdf" or (part.get_filename() or "").lower().endswith(".pdf"):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return data
    return None


def process(conn: psycopg.Connection, sender: str, recipient: str, msg: EmailMessage, max_pages: int,
            retry: outbound.Retry = outbound.DEFAULT_RETRY) -> Outcome:
    """One recipient of an accepted mail, in one transaction (the caller's).
    The sender's tenant was checked at RCPT time."""
    tenant_id = tenant_of_sender(conn, sender)
    if tenant_id is None:
        return Outcome(False, "the sender is not an address of a customer")
    locked = conn.execute(
        """SELECT count(*) AS n FROM mailgw_pin_failures
            WHERE sender = lower(%s) AND at > now() - make_interval(mins => %s)""",
        (sender, LOCK_MINUTES)).fetchone()["n"]
    if locked >= LOCK_AFTER:
        return _refused(conn, tenant_id, sender, msg,
                        f"too many wrong PINs from {sender}; try again in {LOCK_MINUTES} minutes")
    pin = "".join(re.findall(r"\b[0-9]{4,8}\b", str(msg.get("Subject", "")))[:1])
    boxes = conn.execute("""SELECT f.id, f.name, f.pin_hash,
                                   (SELECT n.e164 FROM numbers n WHERE n.faxbox_id = f.id
                                     AND n.status IN ('active', 'porting_out') ORDER BY n.e164 LIMIT 1) AS number
                              FROM faxboxes f WHERE f.tenant_id = %s AND f.pin_hash IS NOT NULL ORDER BY f.id""",
                         (tenant_id,)).fetchall()
    box = None
    for b in boxes:                       # every box is checked: the time taken does not tell which matched
        if pin and targets.check_pin(pin, b["pin_hash"]) and box is None:
            box = b
    if box is None:
        conn.execute("INSERT INTO mailgw_pin_failures (sender) VALUES (lower(%s))", (sender,))
        log.warning("mailgw: wrong or missing PIN from %s", sender)
        return _refused(conn, tenant_id, sender, msg, "the subject carries no valid fax box PIN")
    if not box["number"]:
        return _refused(conn, tenant_id, sender, msg, f"fax box {box['name']} has no number to send from")
    local = recipient.rsplit("@", 1)[0]
    try:
        to = v.e164("to", local)
    except DustelError:
        return _refused(conn, tenant_id, sender, msg, f"{local} is not a fax number")
    document = _pdf(msg)
    if document is None:
        return _refused(conn, tenant_id, sender, msg, "the mail has no PDF attachment")
    try:
        with conn.transaction():
            job = outbound.queue(conn, tenant_id, box["number"], to, document, report_to=sender, max_pages=max_pages,
                                   retry=retry)
    except DustelError as exc:
        return _refused(conn, tenant_id, sender, msg, f"the PDF cannot be faxed: {exc}")
    log.info("mailgw: fax job %s from %s (box %s) to %s, %s page(s)", job["id"], sender, box["name"], to,
             job["pages"])
    return Outcome(True, "queued", int(job["id"]))


def _refused(conn: psycopg.Connection, tenant_id: int, sender: str, msg: EmailMessage, why: str) -> Outcome:
    outbox.enqueue(conn, tenant_id=tenant_id, kind="fax_report", recipient=sender,
                   subject=f"Fax NOT sent: {str(msg.get('Subject', ''))[:80]}",
                   body=f"Your mail to the fax gateway was not faxed: {why}.\nNothing was sent or charged.\n")
    log.info("mailgw: refused mail from %s: %s", sender, why)
    return Outcome(False, why)


class Handler:
    """aiosmtpd handler: RCPT checks the domain and the sender, DATA does the rest."""

    def __init__(self, dsn: str, domain: str, max_pages: int = outbound.MAX_PAGES,
                 retry: outbound.Retry = outbound.DEFAULT_RETRY) -> None:
        self.dsn, self.domain, self.max_pages, self.retry = dsn, domain.lower(), max_pages, retry

    def _sender_known(self, address: str) -> bool:
        with psycopg.connect(self.dsn, row_factory=dict_row, connect_timeout=5) as conn:
            return tenant_of_sender(conn, address) is not None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        if address.rsplit("@", 1)[-1].lower() != self.domain:
            return "550 5.1.1 not a fax address of this gateway"
        sender = parseaddr(envelope.mail_from or "")[1]
        try:
            known = await asyncio.to_thread(self._sender_known, sender)
        except psycopg.Error:
            return "451 4.3.0 try again later"
        if not known:
            return "550 5.7.1 sender not allowed to fax"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def _data(self, sender: str, rcpts: list[str], content: bytes) -> list[Outcome]:
        msg = email.message_from_bytes(content, policy=email.policy.default)
        out = []
        with psycopg.connect(self.dsn, row_factory=dict_row, connect_timeout=5) as conn:
            for rcpt in rcpts:
                with conn.transaction():
                    out.append(process(conn, sender, rcpt, msg, self.max_pages, self.retry))   # type: ignore[arg-type]
        return out

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        sender = parseaddr(envelope.mail_from or "")[1]
        try:
            await asyncio.to_thread(self._data, sender, list(envelope.rcpt_tos), envelope.content)
        except psycopg.Error:
            return "451 4.3.0 try again later"      # nothing stored: the sender's server retries
        return "250 OK: queued (the result comes by mail)"


def serve(dsn: str, host: str, port: int, domain: str, retry: outbound.Retry = outbound.DEFAULT_RETRY) -> None:
    """Run the gateway in the foreground until interrupted."""
    from aiosmtpd.controller import Controller
    controller = Controller(Handler(dsn, domain, retry=retry), hostname=host, port=port)
    controller.start()
    log.info("mail gateway listening on %s:%s for *@%s", host, port, domain)
    try:
        import threading
        threading.Event().wait()
    finally:
        controller.stop()
