"""E-mail to fax (issue 14): mails sent with smtplib to the running gateway
(aiosmtpd) are accepted or refused by the rules; an accepted one becomes a
fax job, a refused one a report to the sender; strangers are refused at the
SMTP level and never get a report."""
from __future__ import annotations

import io
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller
from PIL import Image

from dustel.fax import mailgw
from dustel.provisioning import numbers, targets
from tests.factories import tenant
from tests.net import free_port


def pdf(pages: int = 1) -> bytes:
    frames = [Image.new("L", (1240, 1754), 255) for _ in range(pages)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PDF", save_all=True, append_images=frames[1:], resolution=150)
    return buf.getvalue()


@pytest.fixture
def gw(db_url: str, conn: psycopg.Connection) -> Iterator[dict[str, Any]]:
    t = tenant(conn)
    conn.execute("UPDATE tenants SET email = 'chef@example.org' WHERE id = %s", (t["id"],))
    with conn.transaction():
        targets.faxbox_add(conn, t["id"], "office", "office@example.org", pin="4711")
        numbers.add(conn, t["id"], "+492119876600")
        numbers.assign(conn, "+492119876600", "fax", "office")
    port = free_port()
    c = Controller(mailgw.Handler(db_url, "fax.example.net", max_pages=3), hostname="127.0.0.1", port=port)
    c.start()
    yield {"port": port, "tenant": t}
    c.stop()


def send(port: int, sender: str, to: str, subject: str, attachment: bytes | None = None) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content("please fax")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="order.pdf")
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.send_message(msg)


def jobs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM fax_jobs ORDER BY id").fetchall()


def reports(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM mail_outbox WHERE kind IN ('fax_report', 'refusal_report') ORDER BY id"
                        ).fetchall()


def test_an_accepted_mail_becomes_a_fax_job(gw: dict[str, Any], conn: psycopg.Connection) -> None:
    send(gw["port"], "office@example.org", "+4940123456@fax.example.net", "Bestellung PIN 4711", pdf(2))
    (job,) = jobs(conn)
    assert (job["from_number"], job["to_number"], job["pages"], job["report_to"], job["state"]) == \
        ("+492119876600", "+4940123456", 2, "office@example.org", "queued")
    assert reports(conn) == []


@pytest.mark.parametrize(("to", "subject", "attachment", "why"), [
    ("+4940123456@fax.example.net", "Bestellung PIN 1234", pdf(), "no valid fax box PIN"),
    ("+4940123456@fax.example.net", "Bestellung", pdf(), "no valid fax box PIN"),
    ("+4940123456@fax.example.net", "PIN 4711", None, "has no PDF attachment"),
    ("+4940123456@fax.example.net", "PIN 4711", b"%PDF-1.4 broken", "the PDF cannot be faxed: file: is not a readable"),
    ("+4940123456@fax.example.net", "PIN 4711", pdf(4), "has 4 pages; at most 3"),
    ("pizza@fax.example.net", "PIN 4711", pdf(), "pizza is not a fax number"),
])
def test_refused_mails_get_a_report_and_queue_nothing(gw: dict[str, Any], conn: psycopg.Connection, to: str,
                                                      subject: str, attachment: bytes | None, why: str) -> None:
    send(gw["port"], "chef@example.org", to, subject, attachment)
    assert jobs(conn) == []
    (r,) = reports(conn)
    assert r["recipient"] == "chef@example.org" and why in r["body"] and "Nothing was sent or charged" in r["body"]


def test_strangers_and_other_domains_are_refused_at_the_smtp_level(gw: dict[str, Any],
                                                                   conn: psycopg.Connection) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as exc:
        send(gw["port"], "spam@evil.example", "+4940123456@fax.example.net", "PIN 4711", pdf())
    assert "sender not allowed" in str(exc.value)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(gw["port"], "chef@example.org", "+4940123456@example.net", "PIN 4711", pdf())
    assert jobs(conn) == [] and reports(conn) == []          # no backscatter to strangers


def test_five_wrong_pins_lock_the_sender_out(gw: dict[str, Any], conn: psycopg.Connection) -> None:
    for pin in ("1111", "2222", "3333", "4444", "5555"):
        send(gw["port"], "chef@example.org", "+4940123456@fax.example.net", f"PIN {pin}", pdf())
    send(gw["port"], "chef@example.org", "+4940123456@fax.example.net", "PIN 4711", pdf())   # right, but locked
    assert jobs(conn) == []
    # five reports, then the address's hourly allowance is used up: the lockout is logged, not mailed
    assert len(reports(conn)) == mailgw.REPORTS_PER_HOUR == 5
    # another sender of the same tenant is not locked
    send(gw["port"], "office@example.org", "+4940123456@fax.example.net", "PIN 4711", pdf())
    assert len(jobs(conn)) == 1
