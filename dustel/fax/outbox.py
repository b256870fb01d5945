"""The durable mail outbox (F-08): a mail is a row first and a message on
the wire second.  ``deliver_due`` sends what is due, one row at a time,
locked (``FOR UPDATE SKIP LOCKED``: two deliverers never take the same
mail) for the duration of the SMTP transaction, and marks it sent in the
same database transaction.  A refused or failed attempt (server down, 4xx,
5xx) is retried with backoff; after the last attempt the mail is failed
and its ``report_to`` address gets a failure report (itself an outbox
mail).  Every message carries ``Message-ID: <outbox-<id>@…>``: should the
process die between the server's 250 and the commit, the one repeat that
follows is recognisable as the same mail.
"""
from __future__ import annotations

import datetime as dt
import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import psycopg

log = logging.getLogger("dustel.fax.outbox")

BACKOFF_SECONDS = (60, 300, 900, 3600, 3 * 3600)    # before attempt 2, 3, …


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    sender: str
    max_attempts: int = 6
    timeout: float = 15.0
    domain: str = "dustel.invalid"


def enqueue(conn: psycopg.Connection, *, tenant_id: int | None, kind: str, recipient: str, subject: str, body: str,
            report_to: str | None = None, attachment: tuple[str, bytes] | None = None,
            fax_id: int | None = None) -> int:
    row = conn.execute(
        """INSERT INTO mail_outbox (tenant_id, fax_id, kind, recipient, report_to, subject, body, attachment_name,
                                    attachment)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (tenant_id, fax_id, kind, recipient, report_to, subject, body,
         attachment[0] if attachment else None, attachment[1] if attachment else None)).fetchone()
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


def deliver_due(conn: psycopg.Connection, smtp: Smtp, now: dt.datetime | None = None, limit: int = 100) \
        -> dict[str, int]:
    """Send the mails that are due; returns how many were sent / retried / failed."""
    counts = {"sent": 0, "retry": 0, "failed": 0}
    for _ in range(limit):
        with conn.transaction():
            row = conn.execute(
                """SELECT * FROM mail_outbox WHERE state = 'queued' AND next_attempt_at <= coalesce(%s, now())
                    ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED""", (now,)).fetchone()
            if row is None:
                break
            try:
                _send(message(row, smtp), smtp)
            except (smtplib.SMTPException, OSError) as exc:
                attempts = row["attempts"] + 1
                error = f"{type(exc).__name__}: {exc}"[:500]
                if attempts >= smtp.max_attempts:
                    conn.execute("""UPDATE mail_outbox SET state = 'failed', attempts = %s, last_error = %s
                                     WHERE id = %s""", (attempts, error, row["id"]))
                    counts["failed"] += 1
                    log.warning("mail id=%s to=%s failed after %s attempts: %s", row["id"], row["recipient"],
                                attempts, error)
                    if row["report_to"] and row["kind"] != "failure_report":
                        enqueue(conn, tenant_id=row["tenant_id"], kind="failure_report", recipient=row["report_to"],
                                subject=f"Undeliverable: {row['subject']}",
                                body=f"The mail to {row['recipient']} could not be delivered after {attempts} "
                                     f"attempts.\nLast error: {error}\n\n--- the undelivered mail ---\n{row['body']}")
                else:
                    wait = BACKOFF_SECONDS[min(attempts, len(BACKOFF_SECONDS)) - 1]
                    conn.execute("""UPDATE mail_outbox SET attempts = %s, last_error = %s,
                                           next_attempt_at = coalesce(%s, now()) + make_interval(secs => %s)
                                     WHERE id = %s""", (attempts, error, now, wait, row["id"]))
                    counts["retry"] += 1
                    log.info("mail id=%s to=%s attempt %s failed (%s); next in %s s", row["id"], row["recipient"],
                             attempts, error, wait)
                continue
            conn.execute("UPDATE mail_outbox SET state = 'sent', attempts = attempts + 1, sent_at = now() "
                         "WHERE id = %s", (row["id"],))
            counts["sent"] += 1
            log.info("mail id=%s to=%s sent", row["id"], row["recipient"])
    return counts
