"""Invoices (issue 11): what a month bills, VAT and rounding, gap-free
numbers, re-runs, credit notes, and the documents (PDF with Factur-X,
XRechnung) checked against the schemas and looked at as an image."""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image

from dustel.billing import invoices, money
from dustel.provisioning import numbers

from ..billing_support import (
    ISSUER,
    at,
    cdr,
    en16931_violations,
    issuer_config,
    old_tenant,
    pdfa3b_violations,
    reconcile_fix,
    settled_call,
)
from ..conftest import dump

NOV = dt.date(2026, 11, 1)
ISSUED = dt.date(2026, 12, 2)


def _month(conn: psycopg.Connection) -> dict[str, dict]:
    """A business flex tenant with options, numbers and calls; a complete
    (private, gross prices) tenant whose plan started in November; a starter
    tenant (prepaid: no invoice); a public body."""
    b = old_tenant(conn, "business_flex", dt.date(2026, 10, 10), name="Müller Logistik GmbH", number_quota=200,
                   options={"extra_line": 2, "acd": 1, "flat_de_fixed": 1})
    c = old_tenant(conn, "complete", dt.date(2026, 11, 5), name="Familie Becker", options={"flat_de_mobile": 1})
    s = old_tenant(conn, "starter", dt.date(2026, 1, 5), name="Anna Schmitz")
    p = old_tenant(conn, "business_flex", dt.date(2026, 1, 5), customer_type="public_body", name="Stadt Neuss",
                   email="rechnungseingang@neuss.example")
    with conn.transaction():
        numbers.add(conn, b["id"], "+492115550001")
        numbers.add(conn, b["id"], "+4921155501", block_size=100)
        conn.execute("INSERT INTO billing_profiles (tenant_id, leitweg_id) VALUES (%s, '05162024-NEUSS-12')",
                     (p["id"],))
        conn.execute("""INSERT INTO sepa_mandates (tenant_id, reference, holder, iban, bic, signed_on)
                        VALUES (%s, 'DUSTEL-B-1', 'Müller Logistik GmbH', 'DE89370400440532013000', 'COBADEFFXXX',
                                '2026-10-01')""", (b["id"],))
    settled_call(conn, b["id"], "de_mobile", 100, 15, at("2026-11-03 10:00"), "4915112345678")
    settled_call(conn, b["id"], "de_mobile", 200, 30, at("2026-11-30 23:30"), "4915112345678")
    settled_call(conn, b["id"], "eu_fixed", 60, 10, at("2026-11-12 09:00"), "33123456789")
    settled_call(conn, b["id"], "de_fixed", 600, 0, at("2026-11-12 09:30"))     # on the flat: not billed
    settled_call(conn, b["id"], "de_mobile", 60, 9, at("2026-12-01 00:10"))     # December in Berlin
    settled_call(conn, c["id"], "eu_mobile", 300, 129, at("2026-11-20 18:00"), "4367612345")
    settled_call(conn, s["id"], "de_mobile", 60, 9, at("2026-11-20 18:00"))
    settled_call(conn, p["id"], "de_fixed", 120, 6, at("2026-11-02 08:00"))
    return {"b": b, "c": c, "s": s, "p": p}


def test_a_month_bills_usage_fees_and_vat_exactly_and_once(conn: psycopg.Connection) -> None:
    t = _month(conn)
    r = invoices.run(conn, NOV, ISSUED)
    assert r.issued == 3 and r.numbers == ["RE-2026-000001", "RE-2026-000002", "RE-2026-000003"]
    assert r.direct_debits == 1 and r.without_mandate == [t["c"]["id"]]

    with conn.transaction():
        b = invoices.get(conn, "RE-2026-000001")
        c = invoices.get(conn, "RE-2026-000002")
        p = invoices.get(conn, "RE-2026-000003")
    assert b["tenant_id"] == t["b"]["id"] and c["tenant_id"] == t["c"]["id"] and p["tenant_id"] == t["p"]["id"]
    lines = [(ln["kind"], ln["quantity"], ln["unit_cents"], ln["amount_cents"]) for ln in b["lines"]]
    assert lines == [("usage", 1, 45, 45), ("usage", 1, 10, 10),            # de_mobile 15+30, eu_fixed
                     ("base_fee", 1, 720, 720),
                     ("option", 1, 832, 832), ("option", 2, 84, 168), ("option", 1, 832, 832),  # acd, lines, flat
                     ("numbers", 1, 42, 42), ("numbers", 100, 36, 3600)]
    assert "2 Verbindungen, 5:00 min" in b["lines"][0]["description"]      # German unless the tenant chose English
    assert all(ln["period_start"] == dt.date(2026, 12, 1) for ln in b["lines"][2:])   # fees in advance
    # business: net prices, VAT 19 % on the net sum, rounded half up
    assert (b["net_cents"], b["vat_cents"], b["gross_cents"]) == (6249, 1187, 7436)
    assert b["payment_means"] == "sepa_dd" and b["usage_cents"] == 55 and b["due_on"] == dt.date(2026, 12, 16)

    # complete: gross prices; its plan started in November, so November's fees too
    assert [(ln["kind"], ln["amount_cents"], ln["net_cents"], ln["period_start"].month) for ln in c["lines"]] == [
        ("usage", 129, 108, 11), ("base_fee", 790, 664, 11), ("option", 690, 580, 11),
        ("base_fee", 790, 664, 12), ("option", 690, 580, 12)]
    assert (c["gross_cents"], c["net_cents"], c["vat_cents"]) == (3089, 2596, 493)
    assert c["payment_means"] == "transfer"
    assert p["payment_means"] == "transfer" and p["recipient"]["leitweg_id"] == "05162024-NEUSS-12"

    for inv in (b, c, p):
        assert sum(ln["net_cents"] for ln in inv["lines"]) == inv["net_cents"]
        basis = inv["net_cents"] if inv["prices_net"] else inv["gross_cents"]
        assert sum(ln["amount_cents"] for ln in inv["lines"]) == basis

    # the ledger: the calls were booked as they happened, the invoice books the rest
    rows = conn.execute("SELECT amount_cents, ref FROM ledger WHERE tenant_id = %s AND kind = 'invoice'",
                        (t["b"]["id"],)).fetchall()
    assert rows == [{"amount_cents": -(7436 - 55), "ref": "invoice:RE-2026-000001"}]
    assert money.reconciles(conn) == []
    debit = conn.execute("SELECT * FROM direct_debits").fetchone()
    assert (debit["amount_cents"], debit["due_on"], debit["state"]) == (7436, dt.date(2026, 12, 16), "pending")

    # a second run for the month, and a run on another day: nothing changes
    before = dump(conn.info.dsn)
    assert invoices.run(conn, NOV, ISSUED).issued == 0
    assert invoices.run(conn, NOV, dt.date(2026, 12, 5)).issued == 0
    assert dump(conn.info.dsn) == before


def test_the_numbers_have_no_gap_and_a_month_not_ended_is_refused(conn: psycopg.Connection) -> None:
    _month(conn)
    with pytest.raises(Exception, match="month: 2026-11 has not ended"):
        invoices.run(conn, NOV, dt.date(2026, 11, 30))
    # a run in small batches numbers on where the last batch stopped
    invoices.run(conn, dt.date(2026, 10, 1), dt.date(2026, 11, 2), batch=1)   # the two tenants of October
    invoices.run(conn, NOV, ISSUED, batch=2)
    got = [r["number"] for r in conn.execute("SELECT number FROM invoices ORDER BY number")]
    assert got == [f"RE-2026-{i:06d}" for i in range(1, len(got) + 1)] and len(got) == 5
    # a new year starts at 1
    invoices.run(conn, dt.date(2026, 12, 1), dt.date(2027, 1, 2), today=dt.date(2027, 1, 2))
    assert conn.execute("SELECT min(number) AS n FROM invoices WHERE issued_on >= '2027-01-01'").fetchone()["n"] \
        == "RE-2027-000001"


def test_a_credit_note_corrects_an_invoice_and_never_exceeds_it(conn: psycopg.Connection, run) -> None:
    from facturx import xml_check_xsd

    _month(conn)
    invoices.run(conn, NOV, ISSUED)
    r = run("credit-note", "RE-2026-000001", "--reason", "Störung 3. bis 5.11.", "--amount", "10.00", "--json")
    assert r.exit_code == 0, r.output
    cn = json.loads(r.output)
    assert cn["number"].startswith("GS-") and (cn["net_cents"], cn["vat_cents"], cn["gross_cents"]) == (1000, 190, 1190)
    with conn.transaction():
        assert invoices.get(conn, "RE-2026-000001")["gross_cents"] == 7436      # the invoice itself unchanged
    led = conn.execute("SELECT amount_cents FROM ledger WHERE kind = 'credit_note'").fetchall()
    assert led == [{"amount_cents": 1190}]
    assert conn.execute("SELECT amount_cents FROM direct_debits").fetchone()["amount_cents"] == 7436 - 1190
    before = dump(conn.info.dsn)
    r = run("credit-note", "RE-2026-000001", "--reason", "zu viel", "--amount", "99999")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "amount:" in r.stderr and "left uncredited" in r.stderr
    r = run("credit-note", "RE-2026-000001", "--reason", "x", "--amount", "1.005")
    assert r.exit_code == 1 and "amount: must be an amount in EUR" in r.stderr
    assert dump(conn.info.dsn) == before
    # the credit note as a document: type 381, naming the invoice it corrects
    xml = run.ok("invoice", "xml", cn["number"]).stdout_bytes
    xml_check_xsd(xml, flavor="factur-x", level="en16931")
    assert b"<ram:TypeCode>381</ram:TypeCode>" in xml and b"RE-2026-000001</ram:IssuerAssignedID>" in xml
    # crediting the rest drops the pending debit: nothing is collected
    run.ok("credit-note", "RE-2026-000001", "--reason", "Kulanz")
    assert conn.execute("SELECT count(*) AS n FROM direct_debits").fetchone()["n"] == 0
    assert conn.execute("SELECT sum(amount_cents) AS s FROM ledger WHERE tenant_id = %s",
                        (cn["tenant_id"],)).fetchone()["s"] == -9      # December's call: next invoice
    assert money.reconciles(conn) == []


def test_the_pdf_shows_the_totals_and_carries_a_valid_en16931_invoice(conn: psycopg.Connection, run,
                                                                       tmp_path: Path) -> None:
    from facturx import get_xml_from_pdf, xml_check_xsd
    from lxml import etree

    _month(conn)
    invoices.run(conn, NOV, ISSUED)
    pdf = tmp_path / "re1.pdf"
    run.ok("invoice", "pdf", "RE-2026-000001", "--out", str(pdf))
    _, xml = get_xml_from_pdf(pdf.read_bytes(), check_xsd=True)
    xml_check_xsd(xml, flavor="factur-x", level="en16931")
    tree = etree.fromstring(xml)
    ns = {"rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
          "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"}
    assert tree.findtext(".//ram:GrandTotalAmount", namespaces=ns) == "74.36"
    assert tree.findtext(".//ram:TaxBasisTotalAmount", namespaces=ns) == "62.49"
    assert tree.findtext(".//ram:DirectDebitMandateID", namespaces=ns) == "DUSTEL-B-1"
    assert tree.findtext(".//ram:BuyerTradeParty/ram:Name", namespaces=ns) == "Müller Logistik GmbH"
    assert len(tree.findall(".//ram:IncludedSupplyChainTradeLineItem", namespaces=ns)) == 8

    if shutil.which("pdftoppm") is None:
        pytest.fail("pdftoppm missing: make test installs poppler-utils (scripts/system-deps.sh)")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    for shown in ("Rechnung RE-2026-000001", "Summe netto", "62,49 EUR", "USt 19 %", "11,87 EUR",
                  "Gesamtbetrag", "74,36 EUR", "Müller Logistik GmbH", "DUSTEL-B-1", "Leistungszeitraum"):
        assert shown in text, shown
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-singlefile", str(pdf), str(tmp_path / "page")], check=True)
    img = Image.open(tmp_path / "page.png").convert("L")
    assert img.size[0] < img.size[1]                                  # A4 portrait
    pages = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Pages:\s+1$", pages, re.M), pages
    dark = int((np.asarray(img) < 128).sum())
    assert dark > 2000                                                 # printed, not a blank page


def test_public_bodies_get_an_xrechnung_that_needs_a_leitweg_id(conn: psycopg.Connection, run,
                                                                 tmp_path: Path) -> None:
    from facturx import xml_check_xsd

    _month(conn)
    invoices.run(conn, NOV, ISSUED)
    out = tmp_path / "x.xml"
    run.ok("invoice", "xml", "RE-2026-000003", "--out", str(out))
    xml = out.read_bytes()
    xml_check_xsd(xml, flavor="factur-x", level="en16931")
    assert b"urn:xeinkauf.de:kosit:xrechnung_3.0" in xml
    assert b"<ram:BuyerReference>05162024-NEUSS-12</ram:BuyerReference>" in xml
    assert b'<ram:URIID schemeID="EM">rechnungseingang@neuss.example</ram:URIID>' in xml      # BT-49
    assert b"<ram:TypeCode>58</ram:TypeCode>" in xml and b"DE89370400440532013000" in xml  # transfer to us
    conn.execute("UPDATE invoices SET recipient = recipient - 'leitweg_id' WHERE number = 'RE-2026-000003'")
    r = run("invoice", "xml", "RE-2026-000003", "--out", str(tmp_path / "y.xml"))
    assert r.exit_code == 1 and r.stderr.startswith("error: leitweg_id:") and not (tmp_path / "y.xml").exists()
    conn.execute("""UPDATE invoices SET recipient = (recipient || '{"leitweg_id": "05162024-NEUSS-12"}'::jsonb)
                                                    - 'email'::text WHERE number = 'RE-2026-000003'""")
    r = run("invoice", "xml", "RE-2026-000003", "--out", str(tmp_path / "y.xml"))
    assert r.exit_code == 1 and r.stderr.startswith("error: email:") and "BT-49" in r.stderr


def test_cli_invoice_run_list_show(conn: psycopg.Connection, run) -> None:
    _month(conn)
    issuer_config(run.state_dir)
    r = run("invoice", "run", "--month", "2026-11", "--date", "2026-12-02", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["issued"] == 3
    again = json.loads(run.ok("invoice", "run", "--month", "2026-11", "--date", "2026-12-02", "--json").output)
    assert again["issued"] == 0
    rows = json.loads(run.ok("invoice", "list", "--month", "2026-11", "--json").output)
    assert [x["gross_cents"] for x in rows] == [7436, 3089, rows[2]["gross_cents"]]
    shown = run.ok("invoice", "show", "RE-2026-000002").output
    assert "gross 30,89 €" in shown and "Grundgebühr complete, 11/2026" in shown
    for bad, msg in ((["--month", "11/2026"], "month: must be YYYY-MM"),
                     (["--month", "2026-11", "--date", "2026-11-15"], "month: 2026-11 has not ended")):
        r = run("invoice", "run", *bad)
        assert r.exit_code == 1 and msg in r.stderr, r.stderr


def test_a_partial_credit_note_lowers_the_pending_debit_and_never_drops_it(conn: psycopg.Connection) -> None:
    """Issue 26.8: a credit of half the debit or more deleted the debit (the
    delete compared the already lowered amount): the rest stayed open."""
    _month(conn)
    invoices.run(conn, NOV, ISSUED)
    with conn.transaction():
        invoices.credit_note(conn, "RE-2026-000001", "Störung", 4000, ISSUED)       # 47,60 gross of 74,36
    debit = conn.execute("SELECT amount_cents, state FROM direct_debits").fetchall()
    assert debit == [{"amount_cents": 7436 - 4760, "state": "pending"}]
    with conn.transaction():
        invoices.credit_note(conn, "RE-2026-000001", "Kulanz", 2000, ISSUED)       # 23,80 of the 26,76 left
    assert conn.execute("SELECT amount_cents FROM direct_debits").fetchall() == [{"amount_cents": 296}]
    with conn.transaction():
        invoices.credit_note(conn, "RE-2026-000001", "Rest", None, ISSUED)         # the rest: nothing to collect
    assert conn.execute("SELECT count(*) AS n FROM direct_debits").fetchone()["n"] == 0
    tid = conn.execute("SELECT tenant_id FROM invoices WHERE number = 'RE-2026-000001'").fetchone()["tenant_id"]
    # all of November credited: the tenant owes only December's call, billed next time
    assert conn.execute("SELECT sum(amount_cents) AS s FROM ledger WHERE tenant_id = %s", (tid,)).fetchone()["s"] == -9
    assert money.reconciles(conn) == []


def test_the_demo_issuer_is_refused_outside_the_demo(conn: psycopg.Connection, run, tmp_path: Path) -> None:
    """Issue 26.15: the defaults are the demo's issuer IBAN, creditor id and
    VAT id; invoice run and sepa export issued real documents with them."""
    from dustel.billing import sepa

    _month(conn)
    with conn.transaction():                  # a debit due, so that sepa export has a file to write
        conn.execute("""INSERT INTO direct_debits (tenant_id, mandate_id, purpose, ref, amount_cents, due_on)
                        SELECT tenant_id, id, 'autotopup', 'autotopup:x', 1000, current_date FROM sepa_mandates""")
    before = dump(conn.info.dsn)
    due = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    for args in (("invoice", "run", "--month", "2026-11", "--date", "2026-12-02"),
                 ("sepa", "export", "--date", due, "--out", str(tmp_path / "dd.xml"))):
        r = run(*args)
        assert r.exit_code == 1 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert r.stderr.startswith("error: issuer_iban: is the demo's placeholder DE89370400440532013000")
    assert dump(conn.info.dsn) == before and not (tmp_path / "dd.xml").exists()
    # each placeholder on its own is refused too
    for name, placeholder in (("sepa_creditor_id", "DE98ZZZ09999999999"), ("issuer_vat_id", "DE999999999")):
        cfg = issuer_config(run.state_dir)
        cfg.write_text(cfg.read_text().replace(ISSUER[name], placeholder))
        r = run("invoice", "run", "--month", "2026-11", "--date", "2026-12-02")
        assert r.exit_code == 1 and r.stderr.startswith(f"error: {name}: is the demo's placeholder"), r.stderr
    assert dump(conn.info.dsn) == before
    # the provider's own issuer: issued
    issuer_config(run.state_dir)
    assert json.loads(run.ok("invoice", "run", "--month", "2026-11", "--date", "2026-12-02", "--json").output)[
        "issued"] == 3
    run.ok("sepa", "export", "--date", due, "--out", str(tmp_path / "dd.xml"))
    assert sepa.message_id((tmp_path / "dd.xml").read_bytes())
    assert b"DE02120300000000202051" in (tmp_path / "dd.xml").read_bytes()


def test_the_demo_issues_with_its_placeholders(conn: psycopg.Connection, run, tmp_path: Path) -> None:
    from dustel.provisioning import demo

    with conn.transaction():
        demo.load(conn, tmp_path / "creds.txt", password=lambda: "Demo-Passw0rd-1")
        conn.execute("UPDATE tenants SET created_on = '2026-10-01', plan_since = '2026-10-01'")
    r = run.ok("invoice", "run", "--month", "2026-11", "--date", "2026-12-02", "--json")
    assert json.loads(r.output)["issued"] == 2                  # complete and business flex


def test_an_issue_date_after_today_is_refused_and_preview_issues_nothing(conn: psycopg.Connection, run) -> None:
    """Issue 26.11: `invoice run --date` in the future issued real invoices
    (numbers of next year, the rest of the month never billed) — the demo
    even called it a preview.  Refused now; `invoice preview` shows drafts."""
    from dustel.billing.months import next_month

    t = _month(conn)
    issuer_config(run.state_dir)
    today = dt.date.today()
    this_month = today.replace(day=1)
    before = dump(conn.info.dsn)
    for month, date in ((this_month, next_month(this_month)), (NOV, today + dt.timedelta(days=1))):
        r = run("invoice", "run", "--month", f"{month:%Y-%m}", "--date", date.isoformat())
        assert r.exit_code == 1 and r.stderr == f"error: date: {date} is after today ({today}): invoices are " \
            "issued on the day they are made; invoice preview shows what a month would bill\n", r.stderr
    drafts = json.loads(run.ok("invoice", "preview", "--month", "2026-11", "--json").output)
    human = run.ok("invoice", "preview", "--month", "2026-11").output
    assert dump(conn.info.dsn) == before                                 # nothing numbered, stored or booked
    assert [(d["tenant_id"], d["gross_cents"]) for d in drafts][:2] == [(t["b"]["id"], 7436), (t["c"]["id"], 3089)]
    assert human.count("DRAFT 2026-11") == 3 and "nothing was issued" in human
    # the run then issues exactly the drafts, line by line, to the cent
    run.ok("invoice", "run", "--month", "2026-11", "--date", "2026-12-02")
    cols = ("kind", "description", "quantity", "unit_cents", "amount_cents", "net_cents")
    with conn.transaction():
        for d in drafts:
            inv = invoices.get(conn, conn.execute("SELECT number FROM invoices WHERE tenant_id = %s",
                                                  (d["tenant_id"],)).fetchone()["number"])
            assert (inv["net_cents"], inv["vat_cents"], inv["gross_cents"]) == (
                d["net_cents"], d["vat_cents"], d["gross_cents"])
            assert [tuple(ln[c] for c in cols) for ln in inv["lines"]] == [tuple(ln[c] for c in cols)
                                                                           for ln in d["lines"]]
    # the month still running: its drafts so far
    running = json.loads(run.ok("invoice", "preview", "--month", f"{this_month:%Y-%m}", "--json").output)
    assert {d["tenant_id"] for d in running} == {t["b"]["id"], t["c"]["id"], t["p"]["id"]}


def test_the_demo_hints_an_invoice_command_that_issues_nothing(conn: psycopg.Connection, run) -> None:
    out = run.ok("demo").output
    hints = [ln.split("   #")[0].split(" --state-dir ")[1].split()[1:] for ln in out.splitlines()
             if " invoice " in ln]
    assert hints and all(h[0] == "invoice" for h in hints), hints
    before = dump(conn.info.dsn)
    for h in hints:
        run.ok(*h)
    assert dump(conn.info.dsn) == before


def test_a_refund_line_has_a_positive_price_and_every_document_keeps_the_en16931_rules(
        conn: psycopg.Connection) -> None:
    """Issue 26.13: a negative correction was a line with a negative item
    net price (BR-27), which the XSD does not catch.  Now: quantity -1 at a
    positive price.  Every document of the month — a business and a private
    invoice with a refund line, a credit note — keeps BR-26, BR-27 and the
    totals rules BR-CO-10 to BR-CO-17."""
    from dustel.billing import einvoice

    issuer = einvoice.Issuer(**{f: f"x{f}" for f in einvoice.Issuer.__dataclass_fields__})
    b = old_tenant(conn, "business_flex", dt.date(2026, 9, 1), name="Firma", number_quota=20)
    c = old_tenant(conn, "complete", dt.date(2025, 9, 1), name="Becker")
    calls = {t["id"]: settled_call(conn, t["id"], "de_mobile", 200, 30, at("2026-10-20 10:00"))
             for t in (b, c)}
    invoices.run(conn, dt.date(2026, 10, 1), dt.date(2026, 11, 2))
    for t in (b, c):                                  # the engines say 100 s, not 200: 15 ct, not 30
        cdr(conn, calls[t["id"]], 100)
        settled_call(conn, t["id"], "de_mobile", 60, 9, at("2026-11-10 10:00"))
    assert {f.action for f in reconcile_fix(conn)} == {"adjusted -15 ct"}
    conn.execute("UPDATE ledger SET created_at = '2026-11-15 12:00+01' WHERE kind = 'adjust'")
    invoices.run(conn, NOV, ISSUED)
    docs = []
    with conn.transaction():
        for t in (b, c):
            inv = invoices.get(conn, conn.execute("SELECT number FROM invoices WHERE tenant_id = %s AND "
                                                  "period = %s", (t["id"], NOV)).fetchone()["number"])
            refund = [ln for ln in inv["lines"] if ln["amount_cents"] < 0]
            assert [(ln["quantity"], ln["unit_cents"], ln["amount_cents"]) for ln in refund] == [(-1, 15, -15)]
            docs.append(inv)
        cn = invoices.credit_note(conn, docs[1]["number"], "Kulanz", 100, ISSUED)
        docs.append(invoices.get(conn, cn["number"]))
    for inv in docs:
        xml = einvoice.build_xml(inv, issuer)
        assert en16931_violations(xml) == [], inv["number"]
    # the checker itself fails on what it must catch
    xml = einvoice.build_xml(docs[0], issuer)
    bad = re.sub(rb"(<ram:NetPriceProductTradePrice>\s*<ram:ChargeAmount>)", rb"\1-", xml, count=1)
    bad = bad.replace(b"<ram:GrandTotalAmount>", b"<ram:GrandTotalAmount>1", 1)
    assert [v.split(" ")[0].rstrip(":") for v in en16931_violations(bad)] == ["BR-27", "BR-CO-15", "BR-CO-16"]


def test_the_invoice_pdf_is_pdfa3b_with_embedded_fonts_and_shows_any_name_exactly(conn: psycopg.Connection, run,
                                                                                 tmp_path: Path) -> None:
    """Issue 26.12: the Factur-X PDF claimed PDF/A-3B but used the core fonts
    (not embedded) and had no OutputIntent; names outside Latin-1 were
    printed by their base letter."""
    import pikepdf
    from facturx import get_xml_from_pdf

    t = _month(conn)
    conn.execute("UPDATE tenants SET name = 'Łódź Żurek Spółka' WHERE id = %s", (t["b"]["id"],))
    invoices.run(conn, NOV, ISSUED)
    with conn.transaction():
        cn = invoices.credit_note(conn, "RE-2026-000002", "Kulanz – Störung", 500, ISSUED)
    for number in ("RE-2026-000001", "RE-2026-000003", cn["number"]):
        pdf = tmp_path / f"{number}.pdf"
        run.ok("invoice", "pdf", number, "--out", str(pdf))
        data = pdf.read_bytes()
        assert (number, pdfa3b_violations(data)) == (number, [])
        with pikepdf.open(pdf) as doc:
            (fs,) = doc.Root.AF
            assert fs.AFRelationship == "/Alternative"      # the XML is the invoice, the PDF its rendering
        name, xml = get_xml_from_pdf(data, check_xsd=True)
        assert name == "factur-x.xml" and number.encode() in xml
    text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "RE-2026-000001.pdf"), "-"], capture_output=True,
                          text=True, check=True).stdout
    assert "Łódź Żurek Spółka" in text and "Gläubiger-ID" in text
    text = subprocess.run(["pdftotext", "-layout", str(tmp_path / f"{cn['number']}.pdf"), "-"], capture_output=True,
                          text=True, check=True).stdout
    assert "Kulanz – Störung" in text


def test_the_pdfa_checker_fails_a_pdf_with_core_fonts_and_no_output_intent() -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", "", 10)
    pdf.cell(0, 5, "Rechnung")
    got = pdfa3b_violations(bytes(pdf.output()))
    assert [v.split(":")[0] for v in got] == ["6.2.11.4", "6.2.3", "6.6.2.1"], got


def test_a_correction_is_billed_once_whether_reconciled_before_or_after_the_invoice(conn: psycopg.Connection) -> None:
    """Issue 26.9: reconciling before the invoice run billed a correction
    twice — the call's charge was rewritten and an `adjust` line added on
    top (and a negative correction was taken off twice).  A correction of a
    month not invoiced yet is in its calls' charges; one of a month invoiced
    already is a line of the next invoice; each once."""
    b = old_tenant(conn, "business_flex", dt.date(2026, 9, 1), name="Firma", number_quota=20)
    o1 = settled_call(conn, b["id"], "de_mobile", 200, 30, at("2026-10-20 10:00"))
    invoices.run(conn, dt.date(2026, 10, 1), dt.date(2026, 11, 2))            # October: o1 billed at 30
    n1 = settled_call(conn, b["id"], "de_mobile", 200, 30, at("2026-11-10 10:00"))
    n2 = settled_call(conn, b["id"], "de_mobile", 200, 30, at("2026-11-11 10:00"))
    for call, billsec in ((o1, 100), (n1, 300), (n2, 160)):         # the engines say: 15, 45 and 24 ct
        cdr(conn, call, billsec)
    fixed = {f.call_id: f.action for f in reconcile_fix(conn)}
    assert fixed == {o1: "adjusted -15 ct", n1: "adjusted +15 ct", n2: "adjusted -6 ct"}
    conn.execute("UPDATE ledger SET created_at = '2026-11-20 12:00+01' WHERE kind = 'adjust'")   # in November
    invoices.run(conn, NOV, ISSUED)
    with conn.transaction():
        inv = invoices.get(conn, "RE-2026-000002")
    usage = [(ln["quantity"], ln["unit_cents"], ln["amount_cents"]) for ln in inv["lines"] if ln["kind"] == "usage"]
    assert usage == [(1, 69, 69), (-1, 15, -15)]        # n1 + n2 at what the engines say; o1's 15 ct back
    assert inv["usage_cents"] == 54 and inv["net_cents"] == 54 + 720
    # December's invoice bills no correction again
    invoices.run(conn, dt.date(2026, 12, 1), dt.date(2027, 1, 2), today=dt.date(2027, 1, 2))
    with conn.transaction():
        dec = invoices.get(conn, "RE-2027-000001")
    assert [ln["kind"] for ln in dec["lines"]] == ["base_fee"]
    # the ledger and the invoices agree to the cent: all that was booked was invoiced, once
    grosses = conn.execute("SELECT sum(gross_cents) AS s FROM invoices WHERE tenant_id = %s",
                           (b["id"],)).fetchone()["s"]
    assert conn.execute("SELECT sum(amount_cents) AS s FROM ledger WHERE tenant_id = %s",
                        (b["id"],)).fetchone()["s"] == -grosses
    assert money.reconciles(conn) == []
