"""Money coming in (issue 11): SEPA mandates and pain.008, collection and
returns, automatic top-up once per night, bank statements, PayPal's held
first payment, number and porting fees, minimum terms — and bad input
refused with one line and nothing written."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import psycopg
import pytest
import xmlschema

from dustel.billing import fees, invoices, money, payments, sepa
from dustel.billing.einvoice import Issuer
from dustel.config import Settings
from dustel.provisioning import numbers

from ..billing_support import at, issuer_config, old_tenant, settled_call
from ..conftest import dump

IBAN = "DE89370400440532013000"
ISSUER = Issuer.of(Settings(state_dir=Path(".")))


def _mandate(conn: psycopg.Connection, tenant_id: int, ref: str) -> dict:
    with conn.transaction():
        return sepa.add_mandate(conn, tenant_id, holder="Anna Schmitz", iban=IBAN, bic=None,
                                signed_on=dt.date(2026, 1, 2), reference=ref)


def _starter_with_autotopup(conn: psycopg.Connection, name: str, balance: int) -> dict:
    t = old_tenant(conn, "starter", dt.date(2026, 1, 5), name=name)
    _mandate(conn, t["id"], f"M-{t['id']}")
    with conn.transaction():
        conn.execute("""INSERT INTO billing_profiles (tenant_id, autotopup_threshold_cents, autotopup_amount_cents)
                        VALUES (%s, 500, 2000)""", (t["id"],))
        if balance:
            money.post(conn, t["id"], balance, "topup", f"seed:{t['id']}")
    return t


def test_mandates_check_iban_and_bic_and_refuse_bad_input_with_one_line(conn: psycopg.Connection, run) -> None:
    t = old_tenant(conn, "complete", dt.date(2026, 1, 5))
    pb = old_tenant(conn, "business_flex", dt.date(2026, 1, 5), customer_type="public_body")
    before = dump(run.url)
    for args, msg in (
            (["--iban", "DE89370400440532013001"], "iban: not a valid IBAN"),     # checksum
            (["--iban", "DE8937040044053201"], "iban: not a valid IBAN"),
            (["--iban", IBAN, "--bic", "COBAXXFF"], "bic: not a valid BIC"),
            (["--iban", IBAN, "--signed", "2999-01-01"], "signed_on: must not be in the future"),
            (["--iban", IBAN, "--signed", "1.1.2026"], "signed: must be a date")):
        opts = {"--holder": "Becker", "--signed": "2026-01-02"}
        argv = ["mandate", "add", str(t["id"])]
        for k, v in opts.items():
            if k not in args:
                argv += [k, v]
        r = run(*argv, *args)
        assert r.exit_code != 0 and msg in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    r = run("mandate", "add", str(pb["id"]), "--holder", "Stadt", "--iban", IBAN, "--signed", "2026-01-02")
    assert r.exit_code == 1 and "public bodies pay by invoice" in r.stderr
    assert dump(run.url) == before
    m = json.loads(run.ok("mandate", "add", str(t["id"]), "--holder", "Becker", "--iban", "de89 3704 0044 0532 0130 00",
                          "--signed", "2026-01-02", "--json").output)
    assert (m["iban"], m["bic"], m["reference"]) == (IBAN, "COBADEFFXXX", f"DUSTEL-{t['id']}-1")
    r = run("mandate", "add", str(t["id"]), "--holder", "B", "--iban", IBAN, "--signed", "2026-01-02")
    assert r.exit_code == 1 and "has an active mandate" in r.stderr


def test_money_input_is_integer_cents_and_never_negative(conn: psycopg.Connection, run) -> None:
    t = old_tenant(conn, "starter", dt.date(2026, 1, 5))
    before = dump(run.url)
    for argv, msg in ((["credit", "topup", str(t["id"]), "12.345", "--ref", "a"], "amount: must be an amount"),
                      (["credit", "topup", "--ref", "a", "--", str(t["id"]), "-5"], "amount: must not be negative"),
                      (["credit", "topup", str(t["id"]), "-5", "--ref", "a"], "amount: must not be negative"),
                      (["payment", "add", str(t["id"]), "-10", "--method", "giropay", "--ref", "x"],
                       "amount: must not be negative"),
                      (["credit", "topup", str(t["id"]), "1e3", "--ref", "a"], "amount: must be an amount"),
                      (["payment", "add", "--method", "giropay", "--ref", "x", "--", str(t["id"]), "-10"],
                       "amount: must not be negative"),
                      (["payment", "add", str(t["id"]), "0", "--method", "klarna", "--ref", "x"],
                       "amount: must be more than 0"),
                      (["billing", "profile", str(t["id"]), "--autotopup-below", "5", "--autotopup-amount", "20"],
                       "has no SEPA mandate")):
        r = run(*argv)
        assert r.exit_code != 0 and msg in r.stderr and r.stderr.count("\n") == 1, (argv, r.stderr)
    assert dump(run.url) == before


def test_autotopup_debits_once_per_night_and_credits_on_the_due_date(conn: psycopg.Connection, run) -> None:
    low = _starter_with_autotopup(conn, "Low", 300)          # below 5.00
    ok = _starter_with_autotopup(conn, "Fine", 900)
    night = dt.date(2026, 12, 2)
    with conn.transaction():
        first = sepa.autotopup(conn, night, 2)
    with conn.transaction():
        again = sepa.autotopup(conn, night, 2)
    assert [(r["tenant_id"], r["amount_cents"], r["due_on"]) for r in first] == [(low["id"], 2000,
                                                                                   dt.date(2026, 12, 4))]
    assert again == []
    # the next night the debit is on its way: counted, so no second one
    with conn.transaction():
        assert sepa.autotopup(conn, night + dt.timedelta(days=1), 2) == []
    # the file for the bank: validated against pain.008.001.08, FRST for a new mandate
    with conn.transaction():
        ex = sepa.export(conn, dt.date(2026, 12, 4), ISSUER, today=dt.date(2026, 12, 2))
    assert ex is not None and ex.count == 1 and ex.total_cents == 2000
    xmlschema.XMLSchema(_pain_xsd()).validate(ex.xml.decode())
    doc = ex.xml.decode()
    assert "<SeqTp>FRST</SeqTp>" in doc and f"<MndtId>M-{low['id']}</MndtId>" in doc
    assert "<EndToEndId>DD-1</EndToEndId>" in doc and '<InstdAmt Ccy="EUR">20.00</InstdAmt>' in doc
    with conn.transaction():
        assert sepa.collect(conn, dt.date(2026, 12, 3)) == []           # not yet due
    with conn.transaction():
        assert len(sepa.collect(conn, dt.date(2026, 12, 4))) == 1
    bal = conn.execute("SELECT balance_cents FROM tenant_money WHERE tenant_id = %s", (low["id"],)).fetchone()
    assert bal["balance_cents"] == 2300
    # returned by the bank: booked back with the fee; the next debit of the mandate is RCUR
    r = run.ok("sepa", "return", "1", "--json")
    assert json.loads(r.output)["state"] == "returned"
    bal = conn.execute("SELECT balance_cents FROM tenant_money WHERE tenant_id = %s", (low["id"],)).fetchone()
    assert bal["balance_cents"] == 300 - 300
    with conn.transaction():
        assert len(sepa.autotopup(conn, dt.date(2026, 12, 5), 2)) == 1
        ex2 = sepa.export(conn, dt.date(2026, 12, 8), ISSUER, today=dt.date(2026, 12, 5))
    assert "<SeqTp>RCUR</SeqTp>" in ex2.xml.decode()
    assert money.reconciles(conn) == []
    assert ok["id"] not in [r["tenant_id"] for r in conn.execute("SELECT tenant_id FROM direct_debits")]


def _pain_xsd() -> str:
    import sepaxml
    return str(Path(sepaxml.__file__).parent / "schemas" / f"{sepa.SCHEMA}.xsd")


def test_sepa_export_writes_the_file_or_nothing(conn: psycopg.Connection, run, tmp_path: Path) -> None:
    issuer_config(run.state_dir)
    _starter_with_autotopup(conn, "Low", 100)
    with conn.transaction():
        sepa.autotopup(conn, dt.date.today(), 2)
    out = tmp_path / "dd.xml"
    before = dump(run.url)
    r = run("sepa", "export", "--date", dt.date.today().isoformat(), "--out", str(out))
    assert r.exit_code == 1 and "date: the collection date must be after today" in r.stderr
    assert not out.exists() and dump(run.url) == before
    due = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    got = json.loads(run.ok("sepa", "export", "--date", due, "--out", str(out), "--json").output)
    assert got["count"] == 1 and out.read_bytes().startswith(b"<?xml")
    xmlschema.XMLSchema(_pain_xsd()).validate(out.read_text())
    assert json.loads(run.ok("sepa", "export", "--date", due, "--json").output) == {"count": 0}


def test_the_pain008_message_id_is_the_one_stored_and_printed(conn: psycopg.Connection, run, tmp_path: Path) -> None:
    """Issue 26.14: the file's MsgId was sepaxml's own random id, not the
    export id dustel stored and printed; a bank's pain.002 names the file's."""
    from lxml import etree

    issuer_config(run.state_dir)
    for name in ("A", "B"):
        _starter_with_autotopup(conn, name, 100)
    with conn.transaction():
        sepa.autotopup(conn, dt.date.today(), 2)
    out = tmp_path / "dd.xml"
    due = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    printed = json.loads(run.ok("sepa", "export", "--date", due, "--out", str(out), "--json").output)
    ns = {"p": f"urn:iso:std:iso:20022:tech:xsd:{sepa.SCHEMA}"}
    in_file = etree.fromstring(out.read_bytes()).findtext("p:CstmrDrctDbtInitn/p:GrpHdr/p:MsgId", namespaces=ns)
    stored = {r["export_id"] for r in json.loads(run.ok("sepa", "list", "--json").output)}
    assert in_file and stored == {printed["message_id"]} == {in_file}
    assert run.ok("sepa", "list").output.count(in_file) == 2            # shown beside each debit


def test_a_bank_statement_pays_invoices_tops_up_returns_and_keeps_the_unknown(conn: psycopg.Connection, run,
                                                                             tmp_path: Path) -> None:
    b = old_tenant(conn, "complete", dt.date(2026, 1, 5), name="Becker")
    s = _starter_with_autotopup(conn, "Schmitz", 100)
    settled_call(conn, b["id"], "de_mobile", 60, 19, at("2026-11-03 10:00"))
    invoices.run(conn, dt.date(2026, 11, 1), dt.date(2026, 12, 2))
    inv = conn.execute("SELECT number, gross_cents FROM invoices").fetchone()
    with conn.transaction():
        sepa.autotopup(conn, dt.date(2026, 12, 2), 2)
        sepa.export(conn, dt.date(2026, 12, 4), ISSUER, dt.date(2026, 12, 2))
        sepa.collect(conn, dt.date(2026, 12, 4))
    csv = tmp_path / "konto.csv"
    csv.write_text("date;amount;reference;name;iban;transaction_id\n"
                   f"03.12.2026;{money.eur(inv['gross_cents'])};Rechnung {inv['number']} danke;Becker;{IBAN};tx1\n"
                   f"2026-12-03;25,00;Guthaben KD-{s['id']};Schmitz;{IBAN};tx2\n"
                   "2026-12-03;7,77;irgendwas;Fremd;;tx3\n"
                   "2026-12-06;-20,00;RUECKLASTSCHRIFT DD-1 MD06;Bank;;tx4\n", encoding="utf-8")
    got = json.loads(run.ok("payment", "import", str(csv), "--json").output)
    assert (len(got["paid"]), len(got["topped_up"]), got["returned"], got["unmatched"]) == (1, 1, [1], [4])
    led_b = conn.execute("SELECT coalesce(sum(amount_cents), 0) AS s FROM ledger WHERE tenant_id = %s",
                         (b["id"],)).fetchone()["s"]
    assert led_b == 0                                       # the invoice paid in full
    bal_s = conn.execute("SELECT balance_cents FROM tenant_money WHERE tenant_id = %s", (s["id"],)).fetchone()
    assert bal_s["balance_cents"] == 100 + 2000 + 2500 - 2000 - 300
    unmatched = json.loads(run.ok("payment", "list", "--unmatched", "--json").output)
    assert [(u["amount_cents"], u["tenant_id"]) for u in unmatched] == [(777, None)]
    before = dump(run.url)
    again = json.loads(run.ok("payment", "import", str(csv), "--json").output)
    assert again["skipped"] == ["tx1", "tx2", "tx3", "tx4"] and dump(run.url) == before
    latin = tmp_path / "export-latin1.csv"        # as many German banks export it
    latin.write_bytes(f"date;amount;reference;name;iban;transaction_id\n"
                      f"04.12.2026;5,00;Überweisung KD-{s['id']};Schmitz;;tx5\n".encode("cp1252"))
    assert len(json.loads(run.ok("payment", "import", str(latin), "--json").output)["topped_up"]) == 1
    before = dump(run.url)
    bad = tmp_path / "bad.csv"
    bad.write_text("date,amount,reference,transaction_id\n2026-12-03,5.00,KD-1,t9\n2026-12-03,12.345,KD-1,t10\n")
    r = run("payment", "import", str(bad))
    assert r.exit_code == 1 and "statement line 3 amount:" in r.stderr and r.stderr.count("\n") == 1
    assert dump(run.url) == before
    assert money.reconciles(conn) == []


def test_a_first_paypal_payment_is_held_until_cleared(conn: psycopg.Connection, run) -> None:
    t = old_tenant(conn, "starter", dt.date(2026, 1, 5))
    p1 = json.loads(run.ok("payment", "add", str(t["id"]), "20", "--method", "paypal", "--ref", "PP-1",
                           "--json").output)
    assert p1["state"] == "held"
    bal = lambda: conn.execute("SELECT balance_cents FROM tenant_money WHERE tenant_id = %s",  # noqa: E731
                               (t["id"],)).fetchone()["balance_cents"]
    assert bal() == 0
    run.ok("payment", "clear", str(p1["id"]))
    assert bal() == 2000
    p2 = json.loads(run.ok("payment", "add", str(t["id"]), "10", "--method", "paypal", "--ref", "PP-2",
                           "--json").output)
    assert p2["state"] == "credited" and bal() == 3000
    dup = json.loads(run.ok("payment", "add", str(t["id"]), "10", "--method", "paypal", "--ref", "PP-2",
                            "--json").output)
    assert dup["applied"] is False and bal() == 3000
    gp = json.loads(run.ok("payment", "add", str(t["id"]), "5", "--method", "giropay", "--ref", "G-1",
                           "--json").output)
    assert gp["state"] == "credited" and bal() == 3500
    r = run("payment", "clear", str(p2["id"]))
    assert r.exit_code == 1 and "not held" in r.stderr
    assert money.reconciles(conn) == []


def test_number_fees_each_year_once_and_notice_14_days_before_the_year_ends(conn: psycopg.Connection) -> None:
    t = old_tenant(conn, "starter", dt.date(2025, 1, 5))
    with conn.transaction():
        n = numbers.add(conn, t["id"], "+492115550001")
        conn.execute("UPDATE numbers SET created_on = '2025-11-20' WHERE id = %s", (n["id"],))
    with conn.transaction():
        booked = fees.charge_due(conn, dt.date(2026, 11, 25))
    assert sorted(r["ref"] for r in booked) == sorted([f"numfee:setup:{n['id']}", f"numfee:year:{n['id']}:2025-11-20",
                                                      f"numfee:year:{n['id']}:2026-11-20"])
    assert -sum(r["a"] for r in booked) == 990 + 490 + 490
    with conn.transaction():
        assert fees.charge_due(conn, dt.date(2026, 11, 26)) == []
    # notice on 2026-11-25: the year ends 2027-11-19, more than 14 days away
    with conn.transaction():
        assert fees.cancel(conn, "+492115550001", dt.date(2026, 11, 25))["cancel_at"] == dt.date(2027, 11, 19)
    with conn.transaction():
        assert fees.charge_due(conn, dt.date(2027, 11, 20)) == []         # no year after the notice
    # a notice 10 days before the year ends runs one more year
    with conn.transaction():
        m = numbers.add(conn, t["id"], "+492115550002")
        conn.execute("UPDATE numbers SET created_on = '2025-12-05' WHERE id = %s", (m["id"],))
        assert fees.cancel(conn, "+492115550002", dt.date(2026, 11, 24))["cancel_at"] == dt.date(2027, 12, 4)
        with pytest.raises(Exception, match="cancelled already"):
            fees.cancel(conn, "+492115550002", dt.date(2026, 11, 24))
    assert money.reconciles(conn) == []


def test_porting_fee_per_started_ten_numbers_and_old_tariffs_exempt(conn: psycopg.Connection) -> None:
    new = old_tenant(conn, "starter", dt.date(2024, 3, 1), name="Neu")
    old = old_tenant(conn, "starter", dt.date(2023, 6, 30), name="Alt")
    with conn.transaction():
        for t, base in ((new, "+4921155560"), (old, "+4921155570")):
            for i in range(11):
                numbers.add(conn, t["id"], f"{base}{i:02d}", origin="ported_in")
        conn.execute("UPDATE numbers SET created_on = '2026-02-01'")
    with conn.transaction():
        booked = fees.charge_due(conn, dt.date(2026, 3, 1))
    assert sorted((r["tenant_id"], r["ref"], r["a"]) for r in booked) == [
        (new["id"], f"portfee:{new['id']}:2026-02-01:1", -500), (new["id"], f"portfee:{new['id']}:2026-02-01:2", -500)]


def test_the_minimum_term_holds_plan_changes(conn: psycopg.Connection, run) -> None:
    t = old_tenant(conn, "complete", dt.date.today() - dt.timedelta(days=100))
    before = dump(run.url)
    r = run("tenant", "set", str(t["id"]), "--plan", "starter")
    assert r.exit_code == 1 and "plan: the plan complete has a minimum term running until" in r.stderr
    assert dump(run.url) == before
    conn.execute("UPDATE tenants SET plan_since = current_date - 400 WHERE id = %s", (t["id"],))
    r = run("tenant", "set", str(t["id"]), "--plan", "starter")       # it would close complete by invoices
    assert r.exit_code == 1 and r.stderr.startswith("error: issuer_iban: is the demo's placeholder")
    issuer_config(run.state_dir)
    got = json.loads(run.ok("tenant", "set", str(t["id"]), "--plan", "starter", "--json").output)
    row = conn.execute("SELECT plan, plan_since FROM tenants WHERE id = %s", (t["id"],)).fetchone()
    assert row == {"plan": "starter", "plan_since": dt.date.today()}
    # the months of complete never invoiced are, now (a month each, from the tenant's first)
    assert got["closing_invoices"] == [r["number"] for r in conn.execute(
        "SELECT number FROM invoices WHERE tenant_id = %s ORDER BY period", (t["id"],))] != []


def test_a_cancellation_ends_with_a_month_and_not_before_the_minimum_term(conn: psycopg.Connection, run) -> None:
    today = dt.date.today()
    month_end = (today.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
    young = old_tenant(conn, "complete", today - dt.timedelta(days=40), name="Jung")
    before = dump(run.url)
    r = run("tenant", "cancel", str(young["id"]), "--on", month_end.isoformat())
    assert r.exit_code == 1 and "on: the contract can end on" in r.stderr and "minimum term of complete" in r.stderr
    r = run("tenant", "cancel", str(young["id"]), "--on", "2099-01-15")
    assert r.exit_code == 1 and "on: must be the last day of a month" in r.stderr
    assert dump(run.url) == before
    got = json.loads(run.ok("tenant", "cancel", str(young["id"]), "--json").output)
    ends = dt.date.fromisoformat(got["cancel_at"])
    assert ends > today + dt.timedelta(days=300) and (ends + dt.timedelta(days=1)).day == 1   # 12 months on
    flex = old_tenant(conn, "business_flex", dt.date(2026, 1, 5), name="Flex")
    got = json.loads(run.ok("tenant", "cancel", str(flex["id"]), "--json").output)
    assert got["cancel_at"] == month_end.isoformat()                                          # 1 month term served
    r = run("tenant", "cancel", str(flex["id"]))
    assert r.exit_code == 1 and "cancelled already" in r.stderr


def test_a_cancelled_contract_bills_its_last_usage_but_no_fees_after_it(conn: psycopg.Connection) -> None:
    t = old_tenant(conn, "business_flex", dt.date(2026, 1, 5), options={"extra_line": 1})
    conn.execute("UPDATE tenants SET cancel_at = '2026-11-30' WHERE id = %s", (t["id"],))
    settled_call(conn, t["id"], "de_mobile", 60, 9, at("2026-11-20 10:00"))
    invoices.run(conn, dt.date(2026, 11, 1), dt.date(2026, 12, 2))
    with conn.transaction():
        inv = invoices.get(conn, "RE-2026-000001")
    assert [ln["kind"] for ln in inv["lines"]] == ["usage"] and inv["net_cents"] == 9
    assert invoices.run(conn, dt.date(2026, 12, 1), dt.date(2027, 1, 2), today=dt.date(2027, 1, 2)).issued == 0


def test_mandate_list_masks_the_iban_and_a_pdf_never_goes_to_a_terminal(conn: psycopg.Connection, run,
                                                                        db_url: str, tmp_path) -> None:
    """Issue 31 item 11: `mandate list` printed the full IBAN (`mandate add`
    masks it); `invoice pdf` without --out wrote binary to the terminal."""
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path
    t = old_tenant(conn, "complete", dt.date(2026, 1, 5))
    run.ok("mandate", "add", str(t["id"]), "--holder", "Becker", "--iban", IBAN, "--signed", "2026-01-02")
    out = run.ok("mandate", "list").stdout
    assert "DE89**************3000" in out and IBAN not in out
    assert [m["iban"] for m in json.loads(run.ok("mandate", "list", "--json").stdout)] == ["DE89**************3000"]
    main, child = pty.openpty()
    try:
        r = subprocess.run([str(Path(sys.executable).with_name("dustel")), "--state-dir", str(tmp_path / "s"),
                            "invoice", "pdf", "RE-2026-000001"], stdout=child, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "DATABASE_URL": db_url}, timeout=60)
    finally:
        os.close(child)
        os.close(main)
    assert r.returncode == 1 and r.stderr == ("error: out: the PDF is binary and stdout is a terminal: give --out "
                                              "FILE.pdf (or redirect stdout)\n")


@pytest.mark.parametrize("column,cell,code", [
    ("reference", '"KD-{t} line\nbreak"', "000A"), ("reference", "KD-{t} bare\rCR", "000D"),
    ("reference", '"KD-{t} quoted\rCR"', "000D"), ("reference", "KD-{t}\ttab", "0009"),
    ("reference", "KD-{t}\u2028ls", "2028"), ("reference", "KD-{t}\x85nel", "0085"),
    ("reference", "KD-{t}\x00nul", "0000"), ("reference", "KD-{t}\u202erlo", "202E"),
    ("name", '"Anna\nSchmitz"', "000A"), ("name", "Anna\rSchmitz", "000D"), ("name", "Anna\tSchmitz", "0009"),
    ("name", "Anna\u2028Schmitz", "2028"), ("name", "Anna\x85Schmitz", "0085"),
    ("transaction_id", "tx\u20282", "2028"), ("memo", "an\tunused column", "0009")])
def test_a_statement_cell_with_a_control_character_refuses_the_file(conn: psycopg.Connection, run, tmp_path: Path,
                                                                    column: str, cell: str, code: str) -> None:
    """Issue 31 item 18: `payment import` stored references and names with
    LF, CR, tab, U+2028 or U+0085 verbatim (a bare CR crashed the csv
    reader).  Every cell meets the edge rule, named by its line and column;
    one bad line refuses the whole file."""
    t = old_tenant(conn, "starter", dt.date(2026, 1, 5), name="Anna Schmitz")
    row = {"date": "2026-12-03", "amount": "5,00", "reference": f"KD-{t['id']}", "transaction_id": "tx2",
           "name": "Anna Schmitz", "memo": "-"}
    row[column] = cell.format(t=t["id"])
    csv = tmp_path / "konto.csv"
    csv.write_bytes(("date;amount;reference;transaction_id;name;memo\n"
                     f"2026-12-02;5,00;KD-{t['id']};tx1;Anna Schmitz;-\n" + ";".join(row.values()) + "\n")
                    .encode("utf-8"))
    before = dump(run.url)
    r = run("payment", "import", str(csv))
    assert (r.exit_code, r.stderr) == (1, f"error: statement line 3 {column}: must not contain control characters "
                                          f"or line breaks (U+{code})\n")
    assert dump(run.url) == before                                  # line 2 was good: nothing of the file is kept


def test_a_statement_line_with_more_cells_than_the_header_is_refused(conn: psycopg.Connection, run,
                                                                     tmp_path: Path) -> None:
    """A reference holding the separator unquoted shifted the cells (and a
    cell beyond the header crashed the import with an AttributeError)."""
    csv = tmp_path / "konto.csv"
    csv.write_text("date,amount,reference,transaction_id\n2026-12-03,5.00,KD-1,thanks,tx1\n")
    r = run("payment", "import", str(csv))
    assert (r.exit_code, r.stderr) == (1, "error: statement line 2: has 5 cells, the header names 4 (a cell holding "
                                          "',' must be quoted)\n")


def test_old_rows_print_on_one_line_and_free_text_options_meet_the_edge_rule(conn: psycopg.Connection, run) -> None:
    """Issue 31 item 18: `payment list` printed what an earlier import
    stored raw (a row broken over lines); U+0085 was accepted by
    credit-note --reason, payment add --ref and mandate add --holder, and
    by the functions behind them."""
    from dustel.errors import DustelError

    t = old_tenant(conn, "complete", dt.date(2026, 1, 5), name="Becker")
    settled_call(conn, t["id"], "de_mobile", 60, 19, at("2026-11-03 10:00"))
    invoices.run(conn, dt.date(2026, 11, 1), dt.date(2026, 12, 2))
    with conn.transaction():                    # as the import before the rule stored it
        conn.execute("""INSERT INTO payments (tenant_id, method, amount_cents, ref, reference, state, received_on)
                        VALUES (NULL, 'transfer', 777, 'bank:old', 'line\nbreak\u2028and\x85nel\rcr', 'unmatched',
                                '2026-12-03')""")
    out = run.ok("payment", "list", "--unmatched").stdout
    assert out.splitlines()[1].endswith(r"line\nbreak\u2028and\x85nel\rcr") and len(out.splitlines()) == 2, out
    before = dump(run.url)
    for args, field in ((["credit-note", "RE-2026-000001", "--reason", "Kulanz\x85x"], "reason"),
                        (["payment", "add", str(t["id"]), "5", "--method", "giropay", "--ref", "G\x851"], "ref"),
                        (["mandate", "add", str(t["id"]), "--holder", "Becker\x85x", "--iban", IBAN, "--signed",
                          "2026-01-02"], "holder")):
        r = run(*args)
        assert (r.exit_code, r.stderr) == (1, f"error: {field}: must not contain control characters or line breaks "
                                              "(U+0085)\n"), args
    assert dump(run.url) == before
    for call, field in ((lambda: invoices.credit_note(conn, "RE-2026-000001", "Kulanz\x85x", None,
                                                      dt.date(2026, 12, 3)), "reason"),
                        (lambda: payments.add(conn, t["id"], 500, "giropay", "G\x851", dt.date(2026, 12, 3)), "ref"),
                        (lambda: sepa.add_mandate(conn, t["id"], holder="Becker\x85x", iban=IBAN, bic=None,
                                                  signed_on=dt.date(2026, 1, 2), reference=None), "holder")):
        with pytest.raises(DustelError) as exc, conn.transaction():
            call()
        assert (exc.value.field, exc.value.rule) == (field, "must not contain control characters or line breaks "
                                                            "(U+0085)")
    assert dump(run.url) == before


def test_a_mandate_reference_is_a_sepa_mandate_id(conn: psycopg.Connection, run, tmp_path: Path) -> None:
    """Issue 31 item 19: `mandate add --reference` took a space (which the
    EPC's pain.008 schema refuses in a mandate id, RestrictedIdentificationSEPA2),
    a leading, trailing or double '/' (the EPC's rule for every identifier)
    and a reference differing only in case from one in use (banks ignore
    case) — none of which sepaxml's schema (Max35Text) catches before the
    bank does.  Refused now with the field and the rule, nothing written."""
    from lxml import etree

    t = old_tenant(conn, "starter", dt.date(2026, 1, 5), name="Anna")
    u = old_tenant(conn, "starter", dt.date(2026, 1, 5), name="Bert")
    run.ok("mandate", "add", str(u["id"]), "--holder", "Bert", "--iban", IBAN, "--signed", "2026-01-02",
           "--reference", "dustel-x-1")
    before = dump(run.url)
    chars = "must hold only the SEPA characters A-Z a-z 0-9 / - ? : ( ) . , ' + (no space); "
    for ref, rule in (("DUSTEL 1", chars + "U+0020 is not one"), ("x;1", chars + "';' (U+003B) is not one"),
                      ("Müller-1", chars + "'ü' (U+00FC) is not one"), ("a|b", chars + "'|' (U+007C) is not one"),
                      ("x" * 36, "must be 1 to 35 characters (a SEPA mandate reference), not 36"),
                      ("/M-1", "must not start or end with '/' nor hold '//' (the EPC rule for SEPA identifiers)"),
                      ("M-1/", "must not start or end with '/' nor hold '//' (the EPC rule for SEPA identifiers)"),
                      ("M//1", "must not start or end with '/' nor hold '//' (the EPC rule for SEPA identifiers)"),
                      ("DUSTEL-X-1", "DUSTEL-X-1 is used already as dustel-x-1 (banks ignore case)")):
        r = run("mandate", "add", str(t["id"]), "--holder", "Anna", "--iban", IBAN, "--signed", "2026-01-02",
                "--reference", ref)
        assert (r.exit_code, r.stderr) == (1, f"error: reference: {rule}\n"), ref
    assert dump(run.url) == before
    # every SEPA identifier character is a mandate id's, and it reaches the pain.008 as written
    # (x,1,System(id) and ../../etc/passwd, the issue's examples, are SEPA mandate ids too: see Decisions)
    ref = "KD/1-a?b:(c).d,e'f+g"
    run.ok("mandate", "add", str(t["id"]), "--holder", "Anna", "--iban", IBAN, "--signed", "2026-01-02",
           "--reference", ref)
    issuer_config(run.state_dir)
    with conn.transaction():
        conn.execute("INSERT INTO billing_profiles (tenant_id, autotopup_threshold_cents, autotopup_amount_cents) "
                     "VALUES (%s, 500, 2000)", (t["id"],))
        sepa.autotopup(conn, dt.date.today(), 2)
    out = tmp_path / "dd.xml"
    run.ok("sepa", "export", "--date", (dt.date.today() + dt.timedelta(days=3)).isoformat(), "--out", str(out))
    ids = etree.fromstring(out.read_bytes()).findall(f".//{{urn:iso:std:iso:20022:tech:xsd:{sepa.SCHEMA}}}MndtId")
    assert [m.text for m in ids] == [ref]
