"""Sending a fax (issue 14): bad documents and bad numbers are refused with
the rule and nothing is queued; an attempt's result retries busy / no
answer / a failed transmission, never a refusal; the sender gets one
report at the end."""
from __future__ import annotations

import io
import json
from typing import Any

import psycopg
import pytest
from PIL import Image

from dustel.errors import DustelError
from dustel.fax import outbound
from dustel.provisioning import targets
from tests.fax_support import fax_customer, fax_pdf

pdf = fax_pdf


def encrypted() -> bytes:
    import pypdf
    w = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf())))
    w.encrypt("secret", algorithm="RC4-128")
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def test_a_pdf_becomes_a_fax_tiff() -> None:
    tiff, pages = outbound.pdf_to_tiff(pdf(3))
    assert pages == 3
    with Image.open(io.BytesIO(tiff)) as im:
        assert (im.n_frames, im.mode, im.width) == (3, "1", 1728)
        assert im.info["compression"] == "group4" and tuple(round(x) for x in im.info["dpi"]) == (204, 196)
        assert abs(im.height - 2292) <= 2       # A4 (11.69 in) at 196 dpi


@pytest.mark.parametrize(("data", "rule"), [
    (b"hello", "file: is not a PDF"),
    (b"%PDF-1.4 broken", "file: is not a readable PDF"),
    ("encrypted", "file: is encrypted"),
    ("many", "file: has 4 pages; at most 3"),
])
def test_bad_documents_are_refused(data: Any, rule: str) -> None:
    data = encrypted() if data == "encrypted" else pdf(4) if data == "many" else data
    with pytest.raises(DustelError) as exc:
        outbound.pdf_to_tiff(data, max_pages=3)
    assert str(exc.value).startswith(rule), str(exc.value)


@pytest.fixture
def org(conn: psycopg.Connection) -> dict[str, Any]:
    return fax_customer(conn)


def test_fax_send_refuses_and_queues_nothing(run: Any, org: dict[str, Any], tmp_path: Any,
                                             conn: psycopg.Connection) -> None:
    good, bad = tmp_path / "a.pdf", tmp_path / "b.pdf"
    good.write_bytes(pdf(2))
    bad.write_bytes(encrypted())
    tid = str(org["id"])
    for args, err in (
            (["--from", "+4930123456", "--to", "+4940123456", str(good)], "error: from: +4930123456 is not an active "
                                                                           "number of tenant"),
            (["--from", "+492119876601", "--to", "fax-me", str(good)], "error: to:"),
            (["--from", "+492119876601", "--to", "+4940123456", str(bad)], "error: file: is encrypted"),
            (["--from", "+492119876601", "--to", "+4940123456", str(tmp_path / "none.pdf")], "error: file: cannot "
                                                                                             "read")):
        r = run("fax", "send", tid, *args)
        assert r.exit_code == 1 and r.stderr.startswith(err), (args, r.stderr)
    assert conn.execute("SELECT count(*) AS n FROM fax_jobs").fetchone()["n"] == 0
    job = json.loads(run.ok("fax", "send", tid, "--from", "+492119876601", "--to", "0401234567", str(good),
                            "--json").stdout)
    assert (job["pages"], job["to_number"], job["state"], job["report_to"]) == (2, "+49401234567", "queued",
                                                                                "chef@example.org")
    (row,) = json.loads(run.ok("fax", "jobs", "--tenant", tid, "--json").stdout)
    assert row["id"] == job["id"]


def sending(conn: psycopg.Connection, org: dict[str, Any]) -> int:
    with conn.transaction():
        job = outbound.queue(conn, org["id"], "+492119876601", "+4940123456", pdf())
    conn.execute("UPDATE fax_jobs SET state = 'sending', attempts = attempts + 1 WHERE id = %s", (job["id"],))
    return int(job["id"])


def again(conn: psycopg.Connection, job: int) -> None:
    conn.execute("UPDATE fax_jobs SET state = 'sending', attempts = attempts + 1 WHERE id = %s", (job,))


def reports(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM mail_outbox WHERE kind = 'fax_report' ORDER BY id").fetchall()


def test_busy_is_retried_then_reported_once(conn: psycopg.Connection, org: dict[str, Any]) -> None:
    job = sending(conn, org)        # the default rule: 4 attempts, waits of 1, 2, 3 x 300 s
    for n in range(1, 4):           # attempts 1..3 fail: retried with growing waits
        with conn.transaction():
            assert outbound.result(conn, job, "DIAL", "BUSY") == "queued"
        row = conn.execute("SELECT *, next_attempt_at - now() AS wait FROM fax_jobs WHERE id = %s", (job,)).fetchone()
        assert abs(row["wait"].total_seconds() - n * 300) < 5
        again(conn, job)
    with conn.transaction():
        assert outbound.result(conn, job, "FAX", "FAILED", 0, "The call dropped prematurely") == "failed"
    with conn.transaction():        # a late second word on the same attempt changes nothing
        assert outbound.result(conn, job, "DIAL", "BUSY") == "unknown"
    (r,) = reports(conn)
    assert r["subject"] == "Fax to +4940123456 NOT delivered" and "transmission failed" in r["body"]
    assert "Attempts: 4" in r["body"]


def test_the_retry_rule_comes_from_the_settings_and_stays_with_the_job(conn: psycopg.Connection,
                                                                      org: dict[str, Any], run: Any,
                                                                      tmp_path: Any) -> None:
    """fax_max_attempts / fax_retry_seconds: stored with the job when it is
    queued (the policy servers apply the rule the job came with); a rule out
    of range is refused naming the setting, nothing queued."""
    with conn.transaction():
        job = int(outbound.queue(conn, org["id"], "+492119876601", "+4940123456", pdf(),
                                 retry=outbound.Retry(max_attempts=2, seconds=45))["id"])
    again(conn, job)
    with conn.transaction():
        assert outbound.result(conn, job, "DIAL", "NO_ANSWER") == "queued"     # FreeSWITCH's word, retried
    row = conn.execute("SELECT *, next_attempt_at - now() AS wait FROM fax_jobs WHERE id = %s", (job,)).fetchone()
    assert abs(row["wait"].total_seconds() - 45) < 5
    again(conn, job)
    with conn.transaction():
        assert outbound.result(conn, job, "DIAL", "USER_BUSY") == "failed"     # attempt 2 of 2 was the last
    with conn.transaction():
        other = sending(conn, org)
        assert outbound.result(conn, other, "DIAL", "UNALLOCATED_NUMBER") == "failed"   # no such number: final
    for setting, value, rule in (("fax_max_attempts", 0, "must be 1 to 10"),
                                 ("fax_retry_seconds", 5, "must be 30 to 86400 seconds")):
        with pytest.raises(DustelError) as exc:
            outbound.Retry(**{"max_attempts" if setting == "fax_max_attempts" else "seconds": value})
        assert exc.value.field == setting and exc.value.rule.startswith(rule), str(exc.value)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "dustel.toml").write_text("fax_max_attempts = 11\n")
    f = tmp_path / "a.pdf"
    f.write_bytes(pdf())
    before = conn.execute("SELECT count(*) AS n FROM fax_jobs").fetchone()["n"]
    r = run("fax", "send", str(org["id"]), "--from", "+492119876601", "--to", "+4940123456", str(f))
    assert r.exit_code == 1 and r.stderr.startswith("error: fax_max_attempts: must be 1 to 10"), r.stderr
    assert conn.execute("SELECT count(*) AS n FROM fax_jobs").fetchone()["n"] == before


def test_the_originate_names_only_our_values(conn: psycopg.Connection, org: dict[str, Any]) -> None:
    job = conn.execute("SELECT * FROM fax_jobs WHERE id = %s", (sending(conn, org),)).fetchone()
    assert outbound.originate(job) == (
        f"originate {{^^:dustel_tenant={org['id']}:dustel_fax_job={job['id']}:"
        "origination_caller_id_number=+492119876601:origination_caller_id_name=Fax:fax_ident=+492119876601:"
        "originate_timeout=120:ignore_early_media=true:_nolocal_absolute_codec_string=PCMA,PCMU:"
        "export_vars=_nolocal_absolute_codec_string}loopback/+4940123456/dustel-fax-out "
        "fax-send XML dustel-fax-send")
    assert outbound.originate(job, t38=True).startswith(
        f"originate {{^^:dustel_tenant={org['id']}:dustel_fax_job={job['id']}:")
    assert ":_nolocal_fax_enable_t38=true:_nolocal_execute_on_answer_t38='t38_gateway self':export_vars=" \
        "_nolocal_absolute_codec_string,_nolocal_fax_enable_t38,_nolocal_execute_on_answer_t38}loopback/" \
        in outbound.originate(job, t38=True)
    for bad in ({"to_number": "+49401 &bgapi hupall"}, {"from_number": "+4921,dustel_tenant=1"},
                {"tenant_id": "1}x"}):
        with pytest.raises((DustelError, ValueError)):
            outbound.originate({**job, **bad})


def test_the_fax_leg_to_the_carrier_offers_g711_and_carries_the_tenant(conn: psycopg.Connection,
                                                                       org: dict[str, Any]) -> None:
    """Issue 32.5: fax sending on FreeSWITCH failed ``call not answered:
    INCOMPATIBLE_DESTINATION`` — (b) the carrier leg, bridged from the
    loopback B leg, offered only the loopback's L16/8000; (c) its CDR had no
    tenant (``dustel-fax-out`` never exported ``dustel_tenant``).  The
    originate as FreeSWITCH reads it, through the rendered context, gives
    the carrier leg G.711 and the tenant."""
    from dustel.render import service
    from tests.esl_emulator import (
        LOOPBACK_CODEC,
        bridged_leg_variables,
        dialplan_variables,
        fs_bracket_vars,
        fs_split_blank,
        offered_codecs,
    )
    from tests.render_fixture import GOLDEN_SETTINGS
    with conn.transaction():
        public = service.render_files(conn, GOLDEN_SETTINGS, ["freeswitch"])["freeswitch"]["dialplan/public.xml"]
    job = conn.execute("SELECT * FROM fax_jobs WHERE id = %s", (sending(conn, org),)).fetchone()
    url = fs_split_blank(outbound.originate(job))[1]
    originate_vars = fs_bracket_vars(url[1:url.index("}loopback/")])
    b_leg = dialplan_variables(public, "dustel-fax-out", str(job["to_number"]), originate_vars)
    assert b_leg is not None and b_leg["dustel_fax_dial"] == job["to_number"]
    carrier = bridged_leg_variables(b_leg)
    offer = offered_codecs(carrier, originator_codec=LOOPBACK_CODEC)
    assert offer == "PCMA,PCMU", f"the carrier leg offers {offer}"
    assert carrier.get("dustel_tenant") == str(org["id"]), f"the carrier leg's variables: {carrier}"


def test_a_refused_call_is_not_retried(conn: psycopg.Connection, org: dict[str, Any]) -> None:
    job = sending(conn, org)
    with conn.transaction():
        assert outbound.result(conn, job, "REFUSED", "insufficient_credit") == "failed"
    (r,) = reports(conn)
    assert "refused: insufficient_credit" in r["body"]


def test_the_call_file_names_only_our_values(conn: psycopg.Connection, org: dict[str, Any]) -> None:
    job = conn.execute("SELECT * FROM fax_jobs WHERE id = %s", (sending(conn, org),)).fetchone()
    text = outbound.call_file(job, "/var/spool/dustel/fax/out-1-1.tif")
    assert text.splitlines()[:2] == ["Channel: Local/+4940123456@dustel-fax-out", "CallerID: <+492119876601>"]
    assert f"Setvar: __DUSTEL_FAX_JOB={job['id']}" in text
    with pytest.raises(DustelError):
        outbound.call_file({**job, "to_number": "+49401\nChannel: Local/110@x"}, "/x")


def test_faxbox_set_and_remove_through_the_cli(run: Any, org: dict[str, Any], conn: psycopg.Connection) -> None:
    tid = str(org["id"])
    run.ok("faxbox", "add", tid, "office", "--email", "fax@example.org")
    r = run("faxbox", "set", tid, "office", "--pin-stdin", input="12\n")
    assert r.exit_code == 1 and r.stderr.startswith("error: pin:")
    r = run("faxbox", "set", tid, "office")
    assert r.exit_code == 1 and r.stderr == ("error: faxbox: nothing to change (--email, --pin, --no-pin, "
                                             "--smtp-password or --no-smtp-password)\n")
    row = json.loads(run.ok("faxbox", "set", tid, "office", "--email", "office@example.org", "--pin-stdin",
                            "--json", input="4711\n").stdout)
    assert row["email"] == "office@example.org"
    stored = conn.execute("SELECT pin_hash FROM faxboxes WHERE name = 'office'").fetchone()["pin_hash"]
    # a hash, never the PIN (hex digits of salt or digest may contain "4711" by chance: 1 run in ~700)
    assert stored.startswith("pbkdf2$") and "4711" not in stored.split("$") and targets.check_pin("4711", stored)
    run.ok("number", "assign", "+492119876601", "--fax", "office")
    r = run("faxbox", "remove", tid, "office")
    assert r.exit_code == 1 and "number +492119876601 is routed to it" in r.stderr
    conn.execute("UPDATE numbers SET target_kind = NULL, faxbox_id = NULL WHERE e164 = '+492119876601'")
    run.ok("faxbox", "remove", tid, "office")
    assert conn.execute("SELECT count(*) AS n FROM faxboxes").fetchone()["n"] == 0


def test_fax_deliver_names_a_bad_fax_engine_and_places_nothing(run: Any, org: dict[str, Any], tmp_path: Any,
                                                                conn: psycopg.Connection) -> None:
    job = sending(conn, org)
    conn.execute("UPDATE fax_jobs SET state = 'queued' WHERE id = %s", (job,))
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "dustel.toml").write_text('fax_engine = "sip"\n')
    r = run("fax", "deliver")
    assert r.exit_code == 1 and r.stderr == "error: fax_engine: must be asterisk or freeswitch (got 'sip')\n"
    assert conn.execute("SELECT state, attempts FROM fax_jobs WHERE id = %s", (job,)).fetchone() == \
        {"state": "queued", "attempts": 1}
