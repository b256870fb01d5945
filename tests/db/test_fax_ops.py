"""What operators see of fax and mail (issue 26, items 1, 4, 5 and 6): the
deliverer's two parts run on their own, the services' loops survive any
error, failures are visible (``fax list --failed``, ``dustel health``), and
PINs and passwords never travel on the command line."""
from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from dustel import scheduler
from dustel.config import Settings
from dustel.fax import inbound, outbound
from dustel.provisioning import targets
from tests.fax_support import Mailbox, fax_customer, fax_pdf, fax_tiff
from tests.net import free_port


@pytest.fixture
def org(conn: psycopg.Connection) -> dict[str, Any]:
    t = fax_customer(conn)
    with conn.transaction():
        targets.faxbox_add(conn, t["id"], "office", "fax@example.org")
    return t


def received(conn: psycopg.Connection, t: dict[str, Any], call_id: str = "c1") -> int:
    with conn.transaction():
        return int(inbound.received(conn, inbound.Received(
            node="n1", call_id=call_id, tenant_id=t["id"], faxbox="office", caller="+4930555123", success=True,
            pages=1, result="OK"), fax_tiff(1))["fax_id"])


def test_a_fax_that_cannot_be_placed_does_not_stop_the_mail(run: Any, org: dict[str, Any], tmp_path: Any,
                                                            conn: psycopg.Connection,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 4: ``fax deliver`` ran fax jobs and the outbox in one pass, the
    fax side first: its error (here the spool cannot be written) left every
    mail unsent."""
    with conn.transaction():
        outbound.queue(conn, org["id"], "+492119876601", "+4940123456", fax_pdf())
    received(conn, org)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "dustel.toml").write_text(f'fax_spool_dir = "{tmp_path}/no/such/dir"\n'
                                       f'asterisk_outgoing_dir = "{tmp_path}"\n')
    port = free_port()
    monkeypatch.setenv("DUSTEL_SMTP_PORT", str(port))
    mb = Mailbox(port).start()
    try:
        r = run("fax", "deliver", "--json")
    finally:
        mb.stop()
    assert [str(m["To"]) for m in mb.messages] == ["fax@example.org"]      # the mail went
    assert json.loads(r.stdout) == {"sent": 1, "retry": 0, "failed": 0}
    error = json.loads(r.stderr)["error"]
    assert r.exit_code == 1 and error["field"] == "fax_spool_dir" and error["rule"].startswith("cannot write the fax")
    assert conn.execute("SELECT state FROM fax_jobs").fetchone()["state"] == "queued"      # and the job waits


def test_a_scheduler_firing_that_fails_is_logged_and_the_service_goes_on(db_url: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Item 1: the scheduler's firings caught only database and OS errors;
    anything else (a row that broke a job) escaped its loop."""
    def broken(conn: psycopg.Connection, now: dt.datetime, s: Settings) -> dict[str, Any]:
        raise ValueError("Header values may not contain linefeed or carriage return characters")

    job = scheduler.Job("mail_outbox", {"minutes": 1}, None, broken, interval=True)
    with caplog.at_level(logging.ERROR, logger="dustel.scheduler"):
        assert scheduler.fire(db_url, job, Settings(state_dir=None), ZoneInfo("Europe/Berlin")) is False  # type: ignore[arg-type]
    (rec,) = [r for r in caplog.records if r.name == "dustel.scheduler"]
    assert rec.getMessage() == "job mail_outbox failed" and rec.exc_info and rec.exc_info[0] is ValueError


def test_failed_mails_are_listed_and_counted_by_health(run: Any, org: dict[str, Any],
                                                       conn: psycopg.Connection) -> None:
    """Item 5: a failed mail was visible only as a WARNING line; and a relay
    that is down was noticed when the outbox gave up."""
    r = run("health", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True
    failed = received(conn, org, "c1")
    received(conn, org, "c2")
    conn.execute("""UPDATE mail_outbox SET state = 'failed', attempts = 3, last_error = '550 no such user'
                     WHERE fax_id = %s""", (failed,))
    conn.execute("""UPDATE mail_outbox SET attempts = 4, last_error = 'ConnectionRefusedError',
                           created_at = now() - interval '2 hours' WHERE fax_id <> %s""", (failed,))
    (row,) = json.loads(run.ok("fax", "list", "--failed", "--json").stdout)
    assert (row["fax_id"], row["tenant_id"], row["recipient"], row["last_error"]) == \
        (failed, org["id"], "fax@example.org", "550 no such user")
    assert json.loads(run.ok("fax", "list", "--tenant", str(org["id"] + 1), "--failed", "--json").stdout) == []
    r = run("health", "--json")
    counts = {c["name"]: c["count"] for c in json.loads(r.stdout)["checks"]}
    assert r.exit_code == 1 and counts == {"mail_failed": 1, "mail_delayed": 1, "fax_jobs_stuck": 0,
                                           "reservations_overdue": 0, "reconcile": 0, "own_number_targets": 0}
    r = run("health")
    assert r.exit_code == 1 and "mail_failed" in r.stdout and "fax list --failed" in r.stdout
    assert {f["tenant_id"] for f in json.loads(run.ok("fax", "list", "--json").stdout)} == {org["id"]}


def test_pins_and_passwords_never_come_from_argv(run: Any, org: dict[str, Any], conn: psycopg.Connection) -> None:
    """Item 6: fax box and agent PINs were taken on argv (``--pin 4711``),
    where shell history and process lists keep them."""
    tid = str(org["id"])
    r = run("faxbox", "add", tid, "desk", "--email", "desk@example.org", "--pin", "4711")
    assert r.exit_code == 2 and "unexpected extra argument (4711)" in r.stderr
    r = run("agent", "add", tid, "anna", "--pin", "1234")
    assert r.exit_code == 2 and "No such option '--pin'" in r.stderr
    assert conn.execute("SELECT count(*) AS n FROM faxboxes WHERE name = 'desk'").fetchone()["n"] == 0
    run.ok("faxbox", "add", tid, "desk", "--email", "desk@example.org", "--pin-stdin", input="4711\n")
    run.ok("faxbox", "add", tid, "front", "--email", "front@example.org", "--pin", input="2468\n2468\n")  # prompt
    run.ok("agent", "add", tid, "anna", "--pin-stdin", input="1234\n")
    stored = {r["name"]: r["pin_hash"] for r in conn.execute("SELECT name, pin_hash FROM faxboxes WHERE pin_hash "
                                                            "IS NOT NULL").fetchall()}
    assert targets.check_pin("4711", stored["desk"]) and targets.check_pin("2468", stored["front"])
    agent = conn.execute("SELECT pin_hash FROM agents WHERE name = 'anna'").fetchone()["pin_hash"]
    assert targets.check_pin("1234", agent) and "1234" not in agent
    r = run("faxbox", "set", tid, "desk", "--pin-stdin", "--smtp-password-stdin",
            input="8642\nSubm1ssion-Secret\n")
    assert r.exit_code == 0, r.stderr
    box = conn.execute("SELECT pin_hash, smtp_password_hash FROM faxboxes WHERE name = 'desk'").fetchone()
    assert targets.check_pin("8642", box["pin_hash"]) and box["smtp_password_hash"].startswith("$argon2id$")
    assert targets.check_secret("Subm1ssion-Secret", box["smtp_password_hash"])
    listed = {b["name"]: b for b in json.loads(run.ok("faxbox", "list", "--tenant", tid, "--json").stdout)}
    assert (listed["desk"]["pin"], listed["desk"]["smtp_login"]) == (True, f"{tid}/desk")
    assert listed["office"]["smtp_login"] is None
    r = run("faxbox", "set", tid, "desk", "--smtp-password-stdin", input="short\n")
    assert r.exit_code == 1 and r.stderr == "error: smtp_password: must be 12 to 128 characters\n"
