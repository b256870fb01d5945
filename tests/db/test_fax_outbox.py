"""The durable mail outbox (issue 14): a fax mail survives an SMTP server
that is down, is delivered once when it is back, and after the last
attempt becomes a failure report to the tenant; two deliverers never send
the same mail."""
from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import psycopg
import pytest

from dustel.fax import inbound, outbox
from dustel.provisioning import targets
from tests.factories import tenant
from tests.fax_support import Mailbox, fax_tiff
from tests.net import free_port


@pytest.fixture
def box(conn: psycopg.Connection) -> dict[str, Any]:
    t = tenant(conn)
    conn.execute("UPDATE tenants SET email = 'chef@example.org' WHERE id = %s", (t["id"],))
    with conn.transaction():
        targets.faxbox_add(conn, t["id"], "office", "fax@example.org")
    return t


def fax_in(conn: psycopg.Connection, t: dict[str, Any], call_id: str = "c1", pages: int = 2, success: bool = True,
           tiff: bytes | None = None) -> dict[str, object]:
    r = inbound.Received(node="n1", call_id=call_id, tenant_id=t["id"], faxbox="office", caller="+4930555123",
                         success=success, pages=pages, result="OK" if success else "Far end hung up")
    with conn.transaction():
        return inbound.received(conn, r, fax_tiff(pages) if tiff is None else tiff)


def mails(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM mail_outbox ORDER BY id").fetchall()


def test_a_mail_waits_for_the_server_and_is_delivered_once(conn: psycopg.Connection, box: dict[str, Any]) -> None:
    port = free_port()
    smtp = outbox.Smtp("127.0.0.1", port, "fax@dustel.test")
    assert fax_in(conn, box)["status"] == "received"
    assert fax_in(conn, box)["status"] == "already"           # the same call reported twice: one mail
    t0 = dt.datetime.now(dt.UTC)
    # the SMTP server is down: the mail stays, retried with backoff
    assert outbox.deliver_due(conn, smtp, now=t0) == {"sent": 0, "retry": 1, "failed": 0}
    (m,) = mails(conn)
    assert (m["state"], m["attempts"]) == ("queued", 1) and "ConnectionRefused" in m["last_error"]
    assert m["next_attempt_at"] == t0 + dt.timedelta(seconds=outbox.BACKOFF_SECONDS[0])
    assert outbox.deliver_due(conn, smtp, now=t0) == {"sent": 0, "retry": 0, "failed": 0}    # not due yet
    mb = Mailbox(port).start()
    try:
        later = t0 + dt.timedelta(seconds=61)
        assert outbox.deliver_due(conn, smtp, now=later) == {"sent": 1, "retry": 0, "failed": 0}
        assert outbox.deliver_due(conn, smtp, now=later + dt.timedelta(days=1)) == {"sent": 0, "retry": 0,
                                                                                      "failed": 0}
    finally:
        mb.stop()
    (msg,) = mb.messages
    assert msg["Message-ID"] == f"<outbox-{m['id']}@dustel.invalid>" and msg["To"] == "fax@example.org"
    assert [p.get_filename() for p in msg.iter_attachments()][0].endswith("-4930555123.pdf")
    assert mails(conn)[0]["state"] == "sent"


def test_a_relay_outage_is_retried_for_days_then_the_tenant_gets_a_failure_report(
        conn: psycopg.Connection, box: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Issue 26 item 5: the outbox gave up after ~4 h 20 min of relay outage
    (six attempts); a received fax's mail is now retried until it is older
    than the relay's max age (five days by default), hourly after the first
    hour, and only then failed (logged at ERROR, reported)."""
    port = free_port()
    smtp = outbox.Smtp("127.0.0.1", port, "fax@dustel.test", max_age=dt.timedelta(days=5))
    fax_in(conn, box)
    made = mails(conn)[0]["created_at"]
    t = made
    for _ in range(60):                       # what the deliverer would see, every due attempt, for 4 days
        t = max(t, mails(conn)[0]["next_attempt_at"])
        if t > made + dt.timedelta(days=4):
            break
        outbox.deliver_due(conn, smtp, now=t)
    first = mails(conn)[0]
    assert first["state"] == "queued" and first["attempts"] > 6           # the old rule failed it at 6
    assert first["next_attempt_at"] - t <= dt.timedelta(hours=1)           # hourly, never a day's gap
    with caplog.at_level("ERROR", logger="dustel.fax.outbox"):
        assert outbox.deliver_due(conn, smtp, now=made + dt.timedelta(days=5, minutes=1))["failed"] == 1
    first, report = mails(conn)
    assert first["state"] == "failed" and "retried for 120 h" in first["last_error"]
    assert any("failed after" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert (report["kind"], report["recipient"], report["state"]) == ("failure_report", "chef@example.org", "queued")
    assert report["subject"].startswith("Undeliverable: Fax from +4930555123")
    mb = Mailbox(port).start()
    try:
        assert outbox.deliver_due(conn, smtp, now=made + dt.timedelta(days=5, minutes=2)) == \
            {"sent": 1, "retry": 0, "failed": 0}
    finally:
        mb.stop()
    assert [m["To"] for m in mb.messages] == ["chef@example.org"] and "fax@example.org" in \
        mb.messages[0].get_content()


def test_a_partial_fax_is_delivered_and_marked_and_a_failed_one_says_so(conn: psycopg.Connection,
                                                                       box: dict[str, Any]) -> None:
    assert fax_in(conn, box, "p1", pages=1, success=False)["status"] == "partial"
    assert fax_in(conn, box, "p2", pages=0, success=False, tiff=b"")["status"] == "failed"
    part, failed = mails(conn)
    assert "(partial)" in part["subject"] and "INCOMPLETE" in part["body"] and part["attachment"] is not None
    assert "(failed)" in failed["subject"] and "no page arrived" in failed["body"] and failed["attachment"] is None


def test_two_deliverers_never_send_the_same_mail(db_url: str, conn: psycopg.Connection,
                                                 box: dict[str, Any]) -> None:
    for i in range(6):
        fax_in(conn, box, f"c{i}", pages=1)
    port = free_port()
    mb = Mailbox(port).start()
    smtp = outbox.Smtp("127.0.0.1", port, "fax@dustel.test")
    from psycopg.rows import dict_row
    try:
        def run() -> None:
            with psycopg.connect(db_url, row_factory=dict_row, autocommit=True) as c:
                outbox.deliver_due(c, smtp)
        workers = [threading.Thread(target=run) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
    finally:
        mb.stop()
    ids = sorted(m["Message-ID"] for m in mb.messages)
    assert len(ids) == 6 and len(set(ids)) == 6
    assert all(m["state"] == "sent" for m in mails(conn))


def test_fax_list_show_retry_and_deliver_through_the_cli(run: Any, conn: psycopg.Connection, box: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    port = free_port()
    monkeypatch.setenv("DUSTEL_SMTP_PORT", str(port))
    fid = fax_in(conn, box)["fax_id"]
    conn.execute("UPDATE mail_outbox SET state = 'failed', attempts = 6, last_error = 'SMTPRecipientsRefused'")
    (row,) = json.loads(run.ok("fax", "list", "--tenant", str(box["id"]), "--json").stdout)
    assert (row["id"], row["status"], row["pages"], row["mail"]) == (fid, "received", 2, "failed")
    shown = json.loads(run.ok("fax", "show", str(fid), "--json").stdout)
    assert shown["mails"][0]["last_error"] == "SMTPRecipientsRefused"
    assert json.loads(run.ok("fax", "retry", str(fid), "--json").stdout)["requeued"] == [shown["mails"][0]["id"]]
    r = run("fax", "retry", str(fid))
    assert r.exit_code == 1 and r.stderr == f"error: fax: fax {fid} has no failed mail to retry\n"
    r = run("fax", "show", "999999")
    assert r.exit_code == 1 and r.stderr == "error: fax: no fax 999999\n"
    mb = Mailbox(port).start()
    try:
        assert json.loads(run.ok("fax", "deliver", "--json").stdout) == {"sent": 1, "retry": 0, "failed": 0,
                                                                        "faxes_started": []}
    finally:
        mb.stop()
    assert len(mb.messages) == 1
