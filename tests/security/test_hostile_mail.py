"""The e-mail to fax gateway and the mail outbox against a hostile sender
(issue 26, items 1-3 and 7): the real aiosmtpd gateway on loopback, mails
sent with smtplib from several client addresses (127.0.0.x), the outbox
delivering into a real SMTP sink.  One stranger must never stop or flood
anyone's fax."""
from __future__ import annotations

import concurrent.futures
import email.policy
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import psycopg
import pytest

from dustel.fax import inbound, mailgw, outbound, outbox
from dustel.provisioning import numbers, targets
from tests.factories import tenant
from tests.fax_support import Mailbox, fax_pdf, fax_tiff
from tests.net import free_port

TO = "+4940123456@fax.example.net"
PASSWORD = "Subm1ssion-Secret"


def bomb_pdf(width: int = 10, height: int = 300_000) -> bytes:
    """A PDF of a few hundred bytes whose one page is ``width`` x ``height``
    points: rendered at fax resolution, 10 x 300 000 pt took 4-5.6 GB."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] >>".encode()]
    out, offsets = b"%PDF-1.4\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + o + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def mail(sender: str, subject: str, attachment: bytes | None = fax_pdf(), message_id: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, TO, subject
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content("please fax")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="order.pdf")
    return msg.as_bytes(policy=email.policy.SMTP)


def send(port: int, sender: str, content: bytes, rcpts: list[str] | None = None, source: str = "127.0.0.1",
         login: tuple[str, str] | None = None) -> dict[str, Any]:
    """One SMTP session from client address ``source``; returns the refused
    recipients (smtplib raises when none was accepted)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as s:
        if login:
            s.starttls(context=_client_tls())
            s.login(*login)
        return s.sendmail(sender, rcpts or [TO], content)


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE          # the test's self-signed certificate
    return ctx


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "gw.key", d / "gw.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "2", "-subj", "/CN=fax.example.net"], check=True, capture_output=True)
    return str(crt), str(key)


@pytest.fixture
def gw(db_url: str, conn: psycopg.Connection, cert: tuple[str, str]) -> Iterator[dict[str, Any]]:
    t = tenant(conn)
    other = tenant(conn, name="Other GmbH")
    conn.execute("UPDATE tenants SET email = 'chef@example.org' WHERE id = %s", (t["id"],))
    conn.execute("UPDATE tenants SET email = 'boss@other.example' WHERE id = %s", (other["id"],))
    with conn.transaction():
        targets.faxbox_add(conn, t["id"], "office", "office@example.org", pin="4711")
        targets.faxbox_set(conn, t["id"], "office", smtp_password=PASSWORD)
        numbers.add(conn, t["id"], "+492119876600")
        numbers.assign(conn, "+492119876600", "fax", "office")
        targets.faxbox_add(conn, other["id"], "inbox", "fax@other.example")
    port = free_port()
    c = mailgw.controller(db_url, "127.0.0.1", port, "fax.example.net", tls=mailgw.tls_context(*cert))
    c.start()
    yield {"port": port, "tenant": t, "other": other}
    c.stop()


def rows(conn: psycopg.Connection, sql: str, *args: Any) -> list[dict[str, Any]]:
    return conn.execute(sql, args).fetchall()


def jobs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return rows(conn, "SELECT * FROM fax_jobs ORDER BY id")


def reports(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return rows(conn, "SELECT * FROM mail_outbox WHERE kind = 'refusal_report' ORDER BY id")


def failures(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT count(*) AS n FROM mailgw_pin_failures").fetchone()["n"])


# ---------------------------------------------------------------- 1. a poisoned subject

def test_a_poisoned_subject_is_refused_and_every_tenants_mail_still_goes(gw: dict[str, Any],
                                                                          conn: psycopg.Connection) -> None:
    """Item 1: an encoded-word Subject carrying CR/LF (and a Bcc it wants to
    smuggle in) from a customer's address without a PIN.  Before: the
    refusal report's subject held the CR/LF, ``outbox.message`` raised
    ValueError on it, the deliverer rolled back and took the same row first
    again: no mail for any tenant was sent any more."""
    # another tenant's received fax waits in the outbox
    with conn.transaction():
        inbound.received(conn, inbound.Received(node="n1", call_id="c-other", tenant_id=gw["other"]["id"],
                                                faxbox="inbox", caller="+4930555123", success=True, pages=1,
                                                result="OK"), fax_tiff(1))
    poison = (b"From: chef@example.org\r\nTo: " + TO.encode() + b"\r\n"
              b"Subject: =?utf-8?q?Bestellung=0D=0ABcc:_victim@example.net=0D=0A?=\r\n"
              b"Content-Type: text/plain\r\n\r\nno pin\r\n")
    send(gw["port"], "chef@example.org", poison)
    (r,) = reports(conn)
    assert "\r" not in r["subject"] and "\n" not in r["subject"]
    assert r["subject"] == "Fax NOT sent: Bestellung Bcc: victim@example.net"
    # a row the old code stored raw, before subjects were made safe where they are queued
    conn.execute("""INSERT INTO mail_outbox (tenant_id, kind, recipient, subject, body)
                    VALUES (%s, 'fax_report', 'chef@example.org', 'x' || chr(13) || chr(10) || 'Bcc: v@example.net',
                            'b')""", (gw["tenant"]["id"],))
    port = free_port()
    mb = Mailbox(port).start()
    try:
        counts = outbox.deliver_due(conn, outbox.Smtp("127.0.0.1", port, "fax@dustel.test"))
        again = outbox.deliver_due(conn, outbox.Smtp("127.0.0.1", port, "fax@dustel.test"))
    finally:
        mb.stop()
    assert counts == {"sent": 2, "retry": 0, "failed": 1} and again == {"sent": 0, "retry": 0, "failed": 0}
    assert sorted(str(m["To"]) for m in mb.messages) == ["chef@example.org", "fax@other.example"]
    assert all(m["Bcc"] is None for m in mb.messages)
    (bad,) = rows(conn, "SELECT state, last_error FROM mail_outbox WHERE subject LIKE 'x%%'")
    assert bad["state"] == "failed" and bad["last_error"].startswith("unbuildable: ValueError")


def test_header_text_leaves_no_line_break_or_control_character() -> None:
    nasty = "a\r\nb\x00c\x85d\u2028e\u2029f\x1b[31mg\u200bh\ufeffi" + "z" * 500
    clean = outbox.header_text(nasty)
    assert clean.startswith("a b c d e f [31mg h i") and len(clean) == outbox.SUBJECT_MAX
    assert all(ch.isprintable() for ch in clean)
    assert outbox.body_text("line 1\r\nline 2\x00\x07\tend") == "line 1\nline 2\ufffd\ufffd\tend"


# ---------------------------------------------------------------- 2. a PDF bomb

def test_a_pdf_bomb_is_refused_before_anything_is_rendered(gw: dict[str, Any], conn: psycopg.Connection,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 2: a 331-byte PDF with a 10 x 300 000 pt page took 4-5.6 GB and
    18-30 s per recipient.  Refused from the page sizes, no page rendered."""
    import pypdfium2 as pdfium
    rendered: list[int] = []
    real_render = pdfium.PdfPage.render
    monkeypatch.setattr(pdfium.PdfPage, "render", lambda self, **kw: rendered.append(1) or real_render(self, **kw))
    bomb = bomb_pdf()
    assert len(bomb) < 400
    send(gw["port"], "chef@example.org", mail("chef@example.org", "PIN 4711", bomb))
    (r,) = reports(conn)
    assert "page 1 measures 10 x 300000 pt; each side must be 36 to 14400 pt" in r["body"]
    assert jobs(conn) == [] and rendered == []


@pytest.mark.parametrize(("size", "rule"), [
    ((36, 14400), "page 1 is 5080 mm long at fax width; at most 594 mm (two A4 pages)"),
    ((1190, 14400), "page 1 is 2604 mm long at fax width; at most 594 mm"),     # a wide page shrinks first
    ((14401, 842), "page 1 measures 14401 x 842 pt; each side must be 36 to 14400 pt"),
    ((20, 842), "page 1 measures 20 x 842 pt"),
])
def test_pages_outside_the_budget_are_refused(size: tuple[int, int], rule: str) -> None:
    with pytest.raises(outbound.DustelError) as exc:
        outbound.pdf_to_tiff(bomb_pdf(*size))
    assert rule in str(exc.value)


def test_the_document_budget_counts_every_page() -> None:
    a4 = (595.0, 842.0)
    long_page = (595.0, 1600.0)          # 1.9 A4 lengths at fax width: a page of its own may be that long
    outbound.check_pages([a4] * 50, 50)
    outbound.check_pages([long_page] * 26, 50)
    with pytest.raises(outbound.DustelError) as exc:
        outbound.check_pages([long_page] * 27, 50)
    assert "A4 pages long at fax width; at most 50" in str(exc.value)


def test_a_mail_to_several_numbers_is_rendered_once(gw: dict[str, Any], conn: psycopg.Connection,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 2: the gateway rendered the PDF once per recipient."""
    calls: list[int] = []
    real = outbound.pdf_to_tiff
    monkeypatch.setattr(outbound, "pdf_to_tiff", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    rcpts = [f"+494012345{i}@fax.example.net" for i in range(3)]
    send(gw["port"], "chef@example.org", mail("chef@example.org", "PIN 4711", fax_pdf(2)), rcpts)
    assert [j["to_number"] for j in jobs(conn)] == ["+4940123450", "+4940123451", "+4940123452"]
    assert calls == [1]
    assert len({bytes(j["tiff"]) for j in jobs(conn)}) == 1


# ---------------------------------------------------------------- 3. a spoofed sender, floods

def test_a_forged_sender_at_another_address_locks_out_only_itself(gw: dict[str, Any],
                                                                  conn: psycopg.Connection) -> None:
    """Item 3: five wrong PINs 'from' the customer's address locked the real
    customer out.  Now the lock is per (sender, client address)."""
    for pin in ("1111", "2222", "3333", "4444", "5555"):
        send(gw["port"], "chef@example.org", mail("chef@example.org", f"PIN {pin}"), source="127.0.0.2")
    send(gw["port"], "chef@example.org", mail("chef@example.org", "PIN 4711"), source="127.0.0.2")
    assert jobs(conn) == []                                   # the forger's address is locked, right PIN or not
    send(gw["port"], "chef@example.org", mail("chef@example.org", "PIN 4711"), source="127.0.0.1")
    assert len(jobs(conn)) == 1                               # the customer is not


def test_the_tenant_cap_closes_the_pin_way_but_not_authenticated_submission(gw: dict[str, Any],
                                                                            conn: psycopg.Connection) -> None:
    sources = [f"127.0.0.{n}" for n in range(2, 2 + mailgw.TENANT_LOCK_AFTER // 4)]
    for source in sources:                                    # 4 wrong each: nobody locked on their own
        for pin in ("1111", "2222", "3333", "4444"):
            send(gw["port"], "chef@example.org", mail("chef@example.org", f"PIN {pin}"), source=source)
    assert failures(conn) == mailgw.TENANT_LOCK_AFTER
    send(gw["port"], "chef@example.org", mail("chef@example.org", "PIN 4711"), source="127.0.0.1")
    assert jobs(conn) == []
    send(gw["port"], "anyone@example.net", mail("anyone@example.net", "no PIN needed"),
         login=(f"{gw['tenant']['id']}/office", PASSWORD))
    (job,) = jobs(conn)
    assert job["report_to"] == "office@example.org"           # the box's address, not the envelope sender's


def test_parallel_wrong_pins_are_counted_under_a_lock(gw: dict[str, Any], db_url: str,
                                                     conn: psycopg.Connection) -> None:
    """Item 3: 40 parallel sessions got 7 wrong PINs checked in a window of 5.
    The gateway's caps (in flight, processing) are lifted here, as for many
    gateways on several hosts sharing one database: the advisory lock alone
    must hold the window."""
    port = free_port()
    c = mailgw.controller(db_url, "127.0.0.1", port, "fax.example.net", max_inflight=40, max_inflight_per_peer=40,
                          max_processing=40)
    c.start()
    try:
        def one(i: int) -> None:
            send(port, "chef@example.org", mail("chef@example.org", f"PIN {1000 + i}"), source="127.0.0.3")
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            list(pool.map(one, range(40)))
    finally:
        c.stop()
    assert failures(conn) == mailgw.LOCK_AFTER


def test_mails_in_flight_are_capped_per_client_and_in_all(gw: dict[str, Any], conn: psycopg.Connection) -> None:
    """Every mail in flight holds its whole content in the gateway's memory:
    40 parallel sessions took it past 400 MB (bench/mailgw.py).  At most
    MAX_INFLIGHT_PER_PEER from one client address and MAX_INFLIGHT in all;
    a place is free again when its mail is answered or its connection gone."""
    opened: list[smtplib.SMTP] = []

    def session(source: str) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", gw["port"], timeout=30, source_address=(source, 0))
        opened.append(s)
        s.ehlo()
        return s

    try:
        held = [session("127.0.0.5") for _ in range(mailgw.MAX_INFLIGHT_PER_PEER)]
        assert [s.mail("chef@example.org")[0] for s in held] == [250] * mailgw.MAX_INFLIGHT_PER_PEER
        extra = session("127.0.0.5")
        assert extra.mail("chef@example.org")[0] == 451                   # a third from the same client
        others = [session(f"127.0.1.{n}") for n in range(mailgw.MAX_INFLIGHT - mailgw.MAX_INFLIGHT_PER_PEER)]
        assert [s.mail("chef@example.org")[0] for s in others] == [250] * len(others)
        assert session("127.0.2.1").mail("chef@example.org")[0] == 451    # the gateway is full
        # a mail answered frees its place at once …
        held[0].rcpt(TO)
        assert held[0].data(mail("chef@example.org", "PIN 4711"))[0] == 250
        assert extra.mail("chef@example.org")[0] == 250
        # … and so does a client that vanishes (its connection closed, no QUIT)
        held[1].close()
        newcomer = session("127.0.2.2")
        codes = [newcomer.mail("chef@example.org")[0]]
        for _ in range(200):               # the server notices the closed connection in its own time
            if codes[-1] == 250:
                break
            newcomer.rset()
            codes.append(newcomer.mail("chef@example.org")[0])
        assert codes[-1] == 250 and set(codes) <= {250, 451}
    finally:
        for s in opened:
            s.close()
    assert len(jobs(conn)) == 1


def test_a_rcpt_flood_is_capped_and_gets_one_report(gw: dict[str, Any], conn: psycopg.Connection) -> None:
    """Item 3: 200 RCPT in one mail gave the customer 200 reports."""
    rcpts = [f"+4940{1000000 + i}@fax.example.net" for i in range(200)]
    refused = send(gw["port"], "chef@example.org", mail("chef@example.org", "PIN 0000"), rcpts)
    assert len(refused) == 200 - mailgw.MAX_RCPT and {code for code, _ in refused.values()} == {452}
    assert len(reports(conn)) == 1 and jobs(conn) == []
    send(gw["port"], "chef@example.org", mail("chef@example.org", "PIN 4711"), rcpts[:15])
    assert len(jobs(conn)) == mailgw.MAX_RCPT


def test_refusal_reports_to_one_address_are_rate_limited(gw: dict[str, Any], conn: psycopg.Connection) -> None:
    for n in range(2, 10):                                    # 8 wrong mails from 8 places: nobody locked
        send(gw["port"], "chef@example.org", mail("chef@example.org", "PIN 9999"), source=f"127.0.0.{n}")
    assert len(reports(conn)) == mailgw.REPORTS_PER_HOUR
    assert failures(conn) == 8


def test_authenticated_submission_only_after_starttls_and_wrong_logins_lock_out(gw: dict[str, Any],
                                                                                conn: psycopg.Connection) -> None:
    with smtplib.SMTP("127.0.0.1", gw["port"], timeout=30) as s:
        s.ehlo()
        assert s.has_extn("starttls") and not s.has_extn("auth")    # no password in the clear
        s.starttls(context=_client_tls())
        s.ehlo()
        assert set(s.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
    login = f"{gw['tenant']['id']}/office"
    for _ in range(mailgw.LOCK_AFTER):
        with pytest.raises(smtplib.SMTPAuthenticationError):
            send(gw["port"], "x@example.net", mail("x@example.net", "-"), login=(login, "Wrong-Passw0rd"),
                 source="127.0.0.4")
    with pytest.raises(smtplib.SMTPAuthenticationError):      # locked: the right password is refused too …
        send(gw["port"], "x@example.net", mail("x@example.net", "-"), login=(login, PASSWORD), source="127.0.0.4")
    send(gw["port"], "x@example.net", mail("x@example.net", "-"), login=(login, PASSWORD))   # … there only
    assert len(jobs(conn)) == 1
    with pytest.raises(smtplib.SMTPAuthenticationError):      # no such box: refused the same way
        send(gw["port"], "x@example.net", mail("x@example.net", "-"), login=("999/office", PASSWORD))


# ---------------------------------------------------------------- 7. one mail, one transaction

def test_a_mail_is_one_transaction_and_a_repeated_mail_is_not_faxed_twice(gw: dict[str, Any],
                                                                         conn: psycopg.Connection) -> None:
    """Item 7: the k-th recipient failing (451) after earlier ones had
    committed made the sender's retry fax (and charge) those again."""
    conn.execute("""CREATE FUNCTION fail_third() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN RAISE EXCEPTION 'disk full' USING ERRCODE = '53100'; END $$""")
    conn.execute("""CREATE TRIGGER fail_third BEFORE INSERT ON fax_jobs FOR EACH ROW
                    WHEN (NEW.to_number = '+4940123452') EXECUTE FUNCTION fail_third()""")
    rcpts = [f"+494012345{i}@fax.example.net" for i in range(3)]
    content = mail("chef@example.org", "PIN 4711", message_id="<order-17@example.org>")
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(gw["port"], "chef@example.org", content, rcpts)
    assert exc.value.smtp_code == 451
    assert jobs(conn) == []                                   # nothing of the mail was kept
    conn.execute("DROP TRIGGER fail_third ON fax_jobs")
    send(gw["port"], "chef@example.org", content, rcpts)      # the sender's server retries the mail
    send(gw["port"], "chef@example.org", content, rcpts)      # … and once more, its 250 lost on the way
    assert sorted(j["to_number"] for j in jobs(conn)) == ["+4940123450", "+4940123451", "+4940123452"]
    assert {j["mail_message_id"] for j in jobs(conn)} == {"<order-17@example.org>"}
