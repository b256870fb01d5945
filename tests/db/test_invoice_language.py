"""An invoice in its tenant's language (issue 31 item 12): German by
default, English when the tenant chose it — line texts, the PDF's
headings and payment texts, the e-invoice XML's notes and terms — and the
language an invoice was issued in stays with it."""
from __future__ import annotations

import datetime as dt
import io
import json
import re
from pathlib import Path

import psycopg
import pytest

from dustel.billing import invoices, sepa, texts
from dustel.provisioning import numbers, tenants

from ..billing_support import at, cdr, en16931_violations, old_tenant, pdfa3b_violations, reconcile_fix, settled_call
from ..conftest import Cli, dump

OCT, NOV = dt.date(2026, 10, 1), dt.date(2026, 11, 1)

# words of one language that must not be read on a document in the other
# (whole words, case-sensitive: names and addresses of the test data hold none)
ENGLISH = ("Invoice", "Credit", "Date of issue", "Service period", "Customer", "Plan", "Item", "Description", "Qty",
           "Unit", "Amount", "net", "gross", "Total", "VAT", "Please", "transfer", "collect", "direct debit",
           "Mandate", "creditor", "Creditor", "reference", "Calls", "calls", "call", "Base fee", "Numbers", "blocks",
           "Corrections", "charges", "Germany", "Europe", "mobile", "networks", "landlines", "flatrate", "concurrent",
           "one more", "account", "queues", "Payable", "deduction", "credited", "includes", "single")
GERMAN = ("Rechnung", "Gutschrift", "Rechnungsdatum", "Leistungszeitraum", "Kundennummer", "Tarif", "Pos.",
          "Leistung", "Menge", "Einzel", "Betrag", "netto", "brutto", "Summe", "Gesamtbetrag", "USt", "überweisen",
          "Lastschrift", "Mandatsreferenz", "Gläubiger-ID", "Verwendungszweck", "Kundenkonto", "Umsatzsteuer",
          "Verbindung", "Verbindungen", "Grundgebühr", "Rufnummern", "Korrektur", "Deutschland", "Europa",
          "Mobilfunknetze", "Festnetz", "gleichzeitiges", "weiteres", "Kundenservice", "Zahlbar", "Abzug", "Grund",
          "Blöcke", "einzeln", "ein", "und", "Sie", "Ihrem", "der", "den", "dem", "zu")
HEADINGS = {"de": ("Rechnungsdatum", "Leistungszeitraum", "Kundennummer", "Gesamtbetrag"),
            "en": ("Date of issue", "Service period", "Customer number", "Total")}
CII = {"ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"}


def _found(words: tuple[str, ...], text: str) -> list[str]:
    return [w for w in words if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text)]


def _month(conn: psycopg.Connection, run: Cli, lang: str | None) -> list[str]:
    """Three tenants in ``lang`` (None: as created, German) and every kind of
    document: an invoice with calls in two zones, a correction of a call
    billed before, base fee, options and numbers of both sizes (business
    flex: net prices, a SEPA debit); a private one (gross prices, a
    transfer); a credit note; the invoice closing a plan left.  Their
    numbers."""
    b = old_tenant(conn, "business_flex", dt.date(2026, 9, 1), name="Acme Ltd", number_quota=200,
                   options={"extra_line": 2, "acd": 1, "extra_account": 1, "flat_de_fixed": 1})
    c = old_tenant(conn, "complete", dt.date(2025, 9, 1), name="Jane Doe", options={"flat_de_mobile": 1})
    x = old_tenant(conn, "business_flex", dt.date(2026, 9, 1), name="Leaving Ltd", number_quota=20)
    with conn.transaction():
        numbers.add(conn, b["id"], "+492115550001")
        numbers.add(conn, b["id"], "+4921155501", block_size=100)
        sepa.add_mandate(conn, b["id"], holder="Acme Ltd", iban="DE89370400440532013000", bic=None,
                         signed_on=dt.date(2026, 9, 1), reference="M-ACME-1")
    if lang is not None:
        for t in (b, c, x):
            run.ok("tenant", "set", str(t["id"]), "--language", lang)
    ids = [b["id"], c["id"], x["id"]]
    before = {t: settled_call(conn, t, "de_mobile", 200, 30, at("2026-10-20 10:00")) for t in ids}
    for t in ids:
        invoices.run(conn, OCT, dt.date(2026, 11, 2), tenant_id=t)
        cdr(conn, before[t], 100)                      # the engines say 100 s: 15 ct back on the next invoice
    reconcile_fix(conn)
    conn.execute("UPDATE ledger SET created_at = '2026-11-15 12:00+01' WHERE kind = 'adjust'")
    for t in ids:
        settled_call(conn, t, "de_mobile", 100, 15, at("2026-11-03 10:00"))
        settled_call(conn, t, "de_mobile", 200, 30, at("2026-11-30 23:30"))
        settled_call(conn, t, "eu_fixed", 60, 10, at("2026-11-12 09:00"))
        invoices.run(conn, NOV, dt.date(2026, 12, 2), tenant_id=t)
    settled_call(conn, x["id"], "de_fixed", 120, 6, at("2026-12-05 09:00"))
    with conn.transaction():
        closing = tenants.set_fields(conn, x["id"], at=at("2026-12-10 12:00"), plan="starter")["closing_invoices"]
    assert len(closing) == 1
    nov = [r["number"] for r in conn.execute("SELECT number FROM invoices WHERE period = %s AND kind = 'invoice' "
                                             "AND tenant_id = ANY(%s) ORDER BY number", (NOV, ids))]
    credit = json.loads(run.ok("credit-note", nov[1], "--reason", "Outage 3-5 Nov" if lang == "en" else
                               "Störung 3.-5.11.", "--amount", "5.00", "--json").output)["number"]
    return [*nov, credit, *closing]


def _read(run: Cli, number: str, tmp_path: Path) -> tuple[str, str, bytes, bytes, dict]:
    """A document as a person and a program read it: the PDF's page text
    (pypdf), the XML's words (notes, payment terms, line names, contact),
    the PDF, its XML, and the stored invoice."""
    from facturx import get_xml_from_pdf
    from lxml import etree
    from pypdf import PdfReader

    out = tmp_path / f"{number}.pdf"
    run.ok("invoice", "pdf", number, "--out", str(out))
    data = out.read_bytes()
    page = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(io.BytesIO(data)).pages)
    _, xml = get_xml_from_pdf(data, check_xsd=True)
    root = etree.fromstring(xml)
    words = "\n".join(e.text or "" for path in (".//ram:IncludedNote/ram:Content",
                                                ".//ram:SpecifiedTradePaymentTerms/ram:Description",
                                                ".//ram:SpecifiedTradeProduct/ram:Name",
                                                ".//ram:DefinedTradeContact/ram:PersonName")
                      for e in root.findall(path, CII))
    shown = json.loads(run.ok("invoice", "show", number, "--json").output)
    return page, words, data, xml, shown


def _check(run: Cli, docs: list[str], lang: str, tmp_path: Path) -> dict[str, str]:
    from facturx import xml_check_xsd

    other, heads = (ENGLISH, HEADINGS["de"]) if lang == "de" else (GERMAN, HEADINGS["en"])
    pages = {}
    for number in docs:
        page, words, data, xml, inv = _read(run, number, tmp_path)
        lines = "\n".join(ln["description"] for ln in inv["lines"])
        assert (number, _found(other, lines)) == (number, []), lines           # the stored line texts
        assert (number, _found(other, page)) == (number, []), page             # the PDF a person reads
        assert (number, _found(other, words)) == (number, []), words           # the XML a program reads
        assert all(h in page for h in heads), (number, page)
        assert (number, en16931_violations(xml), pdfa3b_violations(data)) == (number, [], [])
        xml_check_xsd(xml, flavor="factur-x", level="en16931")
        assert inv["language"] == lang, number                                  # stored with the document
        pages[number] = page
    return pages


def test_a_german_invoice_has_no_english_text(conn: psycopg.Connection, run: Cli, tmp_path: Path) -> None:
    """Issue 31 item 12: German headings with English line texts ("Base fee
    business flex", "one more SIP account").  A tenant's documents are
    German unless it chose English: every line, heading and payment text."""
    docs = _month(conn, run, None)
    pages = _check(run, docs, "de", tmp_path)
    inv, gross, credit, closing = docs[0], docs[1], docs[3], docs[4]
    for shown in ("Rechnung", "Grundgebühr business flex, 12/2026", "ein weiteres SIP-Konto, 12/2026",
                  "Verbindungen: Deutschland, Mobilfunknetze (2 Verbindungen, 5:00 min)", "Europa, Festnetz",
                  "Korrektur früher berechneter Verbindungsentgelte", "Rufnummern in Blöcken über 50",
                  "Wir ziehen den Betrag am oder nach dem 16.12.2026 per SEPA-Lastschrift", "74,68 EUR"):
        assert shown in pages[inv], shown
    assert "Bitte überweisen Sie den Betrag bis zum 16.12.2026" in pages[gross]
    assert "Umsatzsteuer (19 %) enthalten" in pages[gross]
    assert "Gutschrift zu Rechnung" in pages[credit] and "Störung 3.-5.11." in pages[credit]
    assert "Verbindungen: Deutschland, Festnetz (1 Verbindung, 2:00 min)" in pages[closing]


def test_an_english_invoice_has_no_german_text_and_keeps_its_language(conn: psycopg.Connection, run: Cli,
                                                                       tmp_path: Path) -> None:
    """Issue 31 item 12, the other way: a tenant set to English gets English
    documents, amounts and dates as English readers write them; the
    language is stored with each document, which never changes (GoBD)."""
    docs = _month(conn, run, "en")
    pages = _check(run, docs, "en", tmp_path)
    inv, gross, credit, closing = docs[0], docs[1], docs[3], docs[4]
    for shown in ("Invoice", "Base fee business flex, 12/2026", "one more SIP account, 12/2026",
                  "Calls: Germany, mobile networks (2 calls, 5:00 min)", "Europe, landlines",
                  "Corrections of call charges billed before", "Numbers in blocks over 50",
                  "We collect the amount by SEPA direct debit", "16 December 2026", "74.68 EUR"):
        assert shown in pages[inv], shown
    assert "Please transfer the amount by 16 December 2026" in pages[gross]
    assert "Credit note" in pages[credit] and "Credit for invoice" in pages[credit]
    assert "Calls: Germany, landlines (1 call, 2:00 min)" in pages[closing]
    # an issued document keeps its language when the tenant changes it
    tid = json.loads(run.ok("invoice", "show", inv, "--json").output)["tenant_id"]
    run.ok("tenant", "set", str(tid), "--language", "de")
    page, *_ = _read(run, inv, tmp_path)
    assert page == pages[inv]
    assert json.loads(run.ok("tenant", "show", str(tid), "--json").output)["language"] == "de"


def test_a_language_is_german_or_english(conn: psycopg.Connection, run: Cli) -> None:
    t = old_tenant(conn, "complete", dt.date(2026, 1, 5))
    before = dump(run.url)
    r = run("tenant", "set", str(t["id"]), "--language", "fr")
    assert r.exit_code == 2 and "'--language': 'fr' is not one of 'de', 'en'" in r.stderr, r.stderr
    r = run("tenant", "set", str(t["id"]), "--language", "fr", "--json")
    assert r.exit_code == 2 and json.loads(r.stderr)["error"]["field"] == "language"
    assert dump(run.url) == before
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        conn.execute("UPDATE tenants SET language = 'fr' WHERE id = %s", (t["id"],))
    assert "invoices in de" in run.ok("tenant", "show", str(t["id"])).output
    for lang in texts.LANGUAGES:                     # the database's domain and the catalogue agree
        with conn.transaction():
            conn.execute("UPDATE tenants SET language = %s WHERE id = %s", (lang, t["id"]))


def test_every_option_and_zone_is_named_in_german_and_english(conn: psycopg.Connection) -> None:
    """Migration 0024 gave the options and zones of 0001-0021 their German
    names; one added since (copied from the English) is listed here."""
    same = [r["name"] for r in conn.execute(
        """SELECT plan || '/' || option AS name FROM plan_options WHERE description_de = description
           UNION ALL SELECT code FROM zones WHERE description_de = description""")]
    assert same == []
