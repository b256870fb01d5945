"""The durable mail outbox (F-08): a mail is a row first and a message on
the wire second.  ``deliver_due`` sends what is due, one row at a time,
locked (``FOR UPDATE SKIP LOCKED``: two deliverers never take the same
mail) for the duration of the SMTP transaction, and marks it sent in the
same database transaction.

- A temporary failure (the relay down or slow, a 4xx) is retried with
  backoff (1, 5, 15, 60 minutes, then hourly) until the mail is older than
  ``max_age`` (``mail_max_age_hours``, default five days, like an MTA's
  queue lifetime); a permanent refusal (5xx) fails it at once.  A failed
  mail is logged at ERROR, listed by ``fax list --failed`` and counted by
  ``dustel health``; its ``report_to`` address gets a failure report
  (itself an outbox mail, which is never reported on again).
- What reaches a header is made safe where it is queued (``header_text``:
  no CR, LF or other control character survives), and a row that still
  cannot become a message is failed on its own (``unbuildable``) — one bad
  row never blocks the mail of anyone else.
- Every message carries ``Message-ID: <outbox-<id>@…>``: should the
  process die between the server's 250 and the commit, the one repeat that
  follows is recognisable as the same mail.
"""
from __future__ import annotations

import datetime as dt
import logging
import smtplib
import unicodedata
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import psycopg

from ..errors import DustelError
from ..provisioning import validate as v

log = logging.getLogger("dustel.fax.outbox")

BACKOFF_SECONDS = (60, 300, 900, 3600)    # before attempt 2, 3, 4, 5; then the last one again
SUBJECT_MAX = 200


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    sender: str
    max_age: dt.timedelta = dt.timedelta(hours=120)
    timeout: float = 15.0
    domain: str = "dustel.invalid"

    @classmethod
    def of(cls, settings: Any) -> Smtp:
        """The relay of the settings (``smtp_host``, ``smtp_port``, ``mail_from``, ``mail_max_age_hours``)."""
        hours = int(settings.mail_max_age_hours)
        if not 1 <= hours <= 24 * 30:
            raise DustelError("mail_max_age_hours", f"must be 1 to 720 hours (got {hours})")
        return cls(settings.smtp_host, int(settings.smtp_port), settings.mail_from, dt.timedelta(hours=hours))


def header_text(value: str, max_len: int = SUBJECT_MAX) -> str:
    """``value`` fit for a mail header: every control, format, surrogate or
    unassigned character and every line or paragraph separator (CR, LF,
    NEL, U+2028 …) becomes a space, runs of white space one space, and the
    text is cut at ``max_len`` characters.  A header built from it can never
    be split or extended by what a sender wrote."""
    out = []
    for ch in value:
        cat = unicodedata.category(ch)
        out.append(" " if cat[0] == "C" or cat in ("Zl", "Zp") else ch)
    return " ".join("".join(out).split())[:max_len]


def body_text(value: str) -> str:
    """A mail body: line breaks and tabs kept, every other control character
    (NUL among them: PostgreSQL's text refuses it) replaced."""
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else "\ufffd"
                   for ch in value.replace("\r\n", "\n").replace("\r", "\n"))


def enqueue(conn: psycopg.Connection, *, tenant_id: int | None, kind: str, recipient: str, subject: str, body: str,
            report_to: str | None = None, attachment: tuple[str, bytes] | None = None,
            fax_id: int | None = None, at: dt.datetime | None = None) -> int:
    """Queue one mail in the caller's transaction.  The addresses must be
    addresses (a DustelError names the field otherwise); the subject and the
    attachment's name are made header-safe, the body text-safe."""
    recipient = v.email("recipient", recipient)
    report_to = v.email("report_to", report_to) if report_to else None
    name = header_text(attachment[0], 100).replace("/", "_").replace("\\", "_") or "fax.pdf" if attachment else None
    row = conn.execute(
        """INSERT INTO mail_outbox (tenant_id, fax_id, kind, recipient, report_to, subject, body, attachment_name,
                                    attachment, created_at, next_attempt_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, coalesce(%s, now()), coalesce(%s, now())) RETURNING id""",
        (tenant_id, fax_id, kind, recipient, report_to, header_text(subject), body_text(body), name,
         attachment[1] if attachment else None, at, at)).fetchone()
    return int(row["id"] if isinstance(row, dict) else row[0])


def message(row: dict[str, Any], smtp: Smtp) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = smtp.sender
    msg["To"] = row["recipient"]
    msg["Subject"] = row["subject"]
    msg["Date"] = format_datetime(row["created_at"])
    msg["Message-ID"] = f"<outbox-{row['id']}@{smtp.domain}>"
    msg.set_content(row["body"])
    if row["attachment"] is not None:
        msg.add_attachment(bytes(row["attachment"]), maintype="application", subtype="pdf",
                           filename=row["attachment_name"] or "fax.pdf")
    return msg


def _send(msg: EmailMessage, smtp: Smtp) -> None:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as s:
        s.send_message(msg)


def permanent(exc: BaseException) -> bool:
    """A refusal the relay will repeat (5xx): retrying it is pointless.
    Refused recipients count as permanent only when every one was a 5xx."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return bool(exc.recipients) and all(code >= 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code >= 500
    return False


def _fail(conn: psycopg.Connection, row: dict[str, Any], attempts: int, error: str) -> None:
    """The mail is given up: marked failed, logged at ERROR, and its
    ``report_to`` told (unless it is a failure report itself)."""
    conn.execute("UPDATE mail_outbox SET state = 'failed', attempts = %s, last_error = %s WHERE id = %s",
                 (attempts, error, row["id"]))
    log.error("mail id=%s kind=%s tenant=%s to=%s failed after %s attempt(s): %s", row["id"], row["kind"],
              row["tenant_id"], row["recipient"], attempts, error)
    if row["report_to"] and row["kind"] != "failure_report":
        try:
            enqueue(conn, tenant_id=row["tenant_id"], kind="failure_report", recipient=row["report_to"],
                    subject=f"Undeliverable: {row['subject']}",
                    body=f"The mail to {row['recipient']} could not be delivered after {attempts} attempt(s).\n"
                         f"Last error: {error}\n\n--- the undelivered mail ---\n{row['body']}", at=row["now"])
        except DustelError as exc:     # a row stored before addresses were checked here
            log.error("mail id=%s: no failure report to %r: %s", row["id"], row["report_to"], exc)


def deliver_due(conn: psycopg.Connection, smtp: Smtp, now: dt.datetime | None = None, limit: int = 100) \
        -> dict[str, int]:
    """Send the mails that are due; returns how many were sent / retried / failed."""
    counts = {"sent": 0, "retry": 0, "failed": 0}
    for _ in range(limit):
        with conn.transaction():
            row = conn.execute(
                """SELECT *, coalesce(%s, now()) AS now FROM mail_outbox
                    WHERE state = 'queued' AND next_attempt_at <= coalesce(%s, now())
                    ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED""", (now, now)).fetchone()
            if row is None:
                break
            attempts = row["attempts"] + 1
            try:
                msg = message(row, smtp)
            except Exception as exc:   # noqa: BLE001 - a row that cannot become a mail fails alone
                _fail(conn, row, attempts, f"unbuildable: {type(exc).__name__}: {exc}"[:500])
                counts["failed"] += 1
                continue
            try:
                _send(msg, smtp)
            except (smtplib.SMTPException, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
                too_old = row["now"] - row["created_at"] >= smtp.max_age
                if too_old:
                    error = f"{error} (retried for {smtp.max_age.total_seconds() / 3600:.0f} h)"
                if permanent(exc) or too_old:
                    _fail(conn, row, attempts, error)
                    counts["failed"] += 1
                    continue
                wait = BACKOFF_SECONDS[min(attempts, len(BACKOFF_SECONDS)) - 1]
                conn.execute("""UPDATE mail_outbox SET attempts = %s, last_error = %s,
                                       next_attempt_at = %s + make_interval(secs => %s)
                                 WHERE id = %s""", (attempts, error, row["now"], wait, row["id"]))
                counts["retry"] += 1
                log.warning("mail id=%s to=%s attempt %s failed (%s); next in %s s", row["id"], row["recipient"],
                            attempts, error, wait)
                if isinstance(exc, OSError):      # the relay is unreachable: the rest waits for the next pass
                    break
                continue
            except Exception as exc:   # noqa: BLE001 - e.g. an address the relay's encoding cannot carry
                _fail(conn, row, attempts, f"unsendable: {type(exc).__name__}: {exc}"[:500])
                counts["failed"] += 1
                continue
            conn.execute("UPDATE mail_outbox SET state = 'sent', attempts = %s, sent_at = now() WHERE id = %s",
                         (attempts, row["id"]))
            counts["sent"] += 1
            log.info("mail id=%s to=%s sent", row["id"], row["recipient"])
    return counts
