"""A billing month as an accountant checks it (issue 26, "what it must
show"): November 2026 with plan changes both ways and between postpaid
plans, reconciliation before and after an invoice run, a preview, the run,
partial credit notes — and then every cent: each call billed once by the
plan it was made under (postpaid on exactly one invoice, prepaid from the
credit), the ledger equal to what the invoices and credit notes say, the
preview equal to the run, the pending debits equal to what is still owed,
every document keeping EN 16931's rules, the numbers without a gap."""
from __future__ import annotations

import datetime as dt
from collections import defaultdict

import psycopg

from dustel.billing import einvoice, invoices, money, sepa
from dustel.provisioning import tenants

from ..billing_support import at, cdr, en16931_violations, old_tenant, reconcile_fix, settled_call

NOV = dt.date(2026, 11, 1)
IBAN = "DE02120300000000202051"


def test_a_month_with_plan_changes_reconciliation_preview_and_credit_notes_adds_up_to_the_cent(
        conn: psycopg.Connection) -> None:
    a = old_tenant(conn, "business_flex", dt.date(2026, 9, 1), name="Alpha GmbH", number_quota=20,
                   options={"extra_line": 1})
    b = old_tenant(conn, "complete", dt.date(2025, 9, 1), name="Familie Becker")         # → business flex
    c = old_tenant(conn, "starter", dt.date(2026, 1, 5), customer_type="business", name="Start UG")  # → flex
    d = old_tenant(conn, "business_flex", dt.date(2026, 9, 1), name="Delta GmbH", number_quota=10)  # → starter
    e = old_tenant(conn, "business_flex", dt.date(2026, 1, 5), customer_type="public_body", name="Stadt Neuss",
                   email="rechnung@neuss.example", number_quota=10)
    with conn.transaction():
        for t in (a, d):
            sepa.add_mandate(conn, t["id"], holder=t["name"], iban=IBAN, bic=None, signed_on=dt.date(2026, 9, 1),
                             reference=f"M-{t['id']}")
        conn.execute("INSERT INTO billing_profiles (tenant_id, leitweg_id) VALUES (%s, '05162024-NEUSS-12')",
                     (e["id"],))
        money.post(conn, c["id"], 2000, "topup", "seed:c")
    postpaid: dict[int, list[str]] = defaultdict(list)      # the calls each tenant's invoices must bill
    prepaid: dict[int, list[str]] = defaultdict(list)       # the calls paid from credit

    def call(t: dict, when: str, billsec: int, cents: int, paid: dict[int, list[str]]) -> str:
        cid = settled_call(conn, t["id"], "de_mobile", billsec, cents, at(when))
        paid[t["id"]].append(cid)
        return cid

    # October, invoiced on 2 November
    a_oct = call(a, "2026-10-20 10:00", 200, 30, postpaid)
    for t in (b, d, e):
        call(t, "2026-10-21 10:00", 120, 18, postpaid)
    call(c, "2026-10-22 10:00", 120, 18, prepaid)
    invoices.run(conn, dt.date(2026, 10, 1), dt.date(2026, 11, 2))

    # November, with the plan changes
    a_n1 = call(a, "2026-11-05 10:00", 200, 30, postpaid)
    a_n2 = call(a, "2026-11-06 10:00", 400, 60, postpaid)
    call(e, "2026-11-07 10:00", 60, 9, postpaid)
    call(c, "2026-11-08 10:00", 100, 15, prepaid)
    with conn.transaction():
        assert tenants.set_fields(conn, c["id"], at=at("2026-11-10 09:00"), plan="business_flex",
                                  number_quota=10)["closing_invoices"] == []
    call(c, "2026-11-12 10:00", 100, 15, postpaid)
    call(b, "2026-11-13 10:00", 300, 45, postpaid)
    with conn.transaction():
        closed_b = tenants.set_fields(conn, b["id"], at=at("2026-11-15 12:00"), plan="business_flex",
                                      customer_type="business", number_quota=10)["closing_invoices"]
    call(b, "2026-11-18 10:00", 300, 45, postpaid)
    call(d, "2026-11-19 10:00", 200, 30, postpaid)
    with conn.transaction():
        closed_d = tenants.set_fields(conn, d["id"], at=at("2026-11-20 12:00"), plan="starter")["closing_invoices"]
    call(d, "2026-11-25 10:00", 200, 30, prepaid)
    assert len(closed_b) == 1 and len(closed_d) == 1

    # the engines' records disagree with three charges: reconciled before the run
    cdr(conn, a_oct, 100)            # October, invoiced already: 15 ct back on November's invoice
    cdr(conn, a_n1, 300)             # November: 45, not 30
    cdr(conn, a_n2, 100)             # November: 15, not 60
    assert sorted(f.action for f in reconcile_fix(conn)) == ["adjusted +15 ct", "adjusted -15 ct",
                                                             "adjusted -45 ct"]
    conn.execute("UPDATE ledger SET created_at = '2026-11-28 12:00+01' WHERE kind = 'adjust'")

    # the preview, then the run: the same documents to the cent
    with conn.transaction():
        preview = invoices.preview(conn, NOV)
    run = invoices.run(conn, NOV, dt.date(2026, 12, 2))
    assert run.issued == len(preview) == 4                 # a, b (business flex part), c, e; d is prepaid now
    cols = ("kind", "description", "quantity", "unit_cents", "amount_cents", "net_cents")
    with conn.transaction():
        for p in preview:
            (number,) = [r["number"] for r in conn.execute(
                """SELECT number FROM invoices WHERE tenant_id = %s AND period = %s AND kind = 'invoice'
                    ORDER BY id DESC LIMIT 1""", (p["tenant_id"], NOV))]
            inv = invoices.get(conn, number)
            assert (inv["net_cents"], inv["vat_cents"], inv["gross_cents"]) == (
                p["net_cents"], p["vat_cents"], p["gross_cents"])
            assert [tuple(ln[k] for k in cols) for ln in inv["lines"]] == [tuple(ln[k] for k in cols)
                                                                           for ln in p["lines"]]
        a_nov = invoices.get(conn, conn.execute("SELECT number FROM invoices WHERE tenant_id = %s AND period = %s",
                                                (a["id"], NOV)).fetchone()["number"])
    assert [(ln["quantity"], ln["amount_cents"]) for ln in a_nov["lines"] if ln["kind"] == "usage"] == [
        (1, 45 + 15), (-1, -15)]

    # partial credit notes, the larger one more than half of what is left
    with conn.transaction():
        invoices.credit_note(conn, a_nov["number"], "Störung 3 Tage", 200, dt.date(2026, 12, 3))
        invoices.credit_note(conn, a_nov["number"], "Kulanz", a_nov["net_cents"] - 200 - 50, dt.date(2026, 12, 4))
        e_nov = conn.execute("SELECT number FROM invoices WHERE tenant_id = %s AND period = %s",
                             (e["id"], NOV)).fetchone()["number"]
        invoices.credit_note(conn, e_nov, "Ausfall", 100, dt.date(2026, 12, 4))

    # --- every cent -------------------------------------------------------
    docs = conn.execute("SELECT * FROM invoices ORDER BY number").fetchall()
    final = {r["call_id"]: r["charged_cents"] for r in conn.execute("SELECT call_id, charged_cents FROM calls")}
    issuer = einvoice.Issuer(**{f: f"x{f}" for f in einvoice.Issuer.__dataclass_fields__})
    for t in (a, b, c, d, e):
        mine = [x for x in docs if x["tenant_id"] == t["id"]]
        billed = sum(x["usage_cents"] for x in mine if x["kind"] == "invoice")
        # each postpaid call billed once, at what the engine says it cost
        assert billed == sum(final[cid] for cid in postpaid[t["id"]]), t["name"]
        gross = sum(x["gross_cents"] for x in mine if x["kind"] == "invoice")
        credited = sum(x["gross_cents"] for x in mine if x["kind"] == "credit_note")
        topups = conn.execute("SELECT coalesce(sum(amount_cents), 0) AS s FROM ledger WHERE tenant_id = %s "
                              "AND kind = 'topup'", (t["id"],)).fetchone()["s"]
        ledger = conn.execute("SELECT sum(amount_cents) AS s FROM ledger WHERE tenant_id = %s",
                              (t["id"],)).fetchone()["s"]
        # the ledger is what the invoices and credit notes say, plus the prepaid part
        assert ledger == topups - sum(final[cid] for cid in prepaid[t["id"]]) - gross + credited, t["name"]
        # what a pending debit collects is what the invoice still asks for
        for x in mine:
            if x["kind"] != "invoice":
                continue
            owed = x["gross_cents"] - sum(y["gross_cents"] for y in mine if y["corrects"] == x["id"])
            debit = conn.execute("SELECT amount_cents FROM direct_debits WHERE invoice_id = %s AND state = 'pending'",
                                 (x["id"],)).fetchone()
            if x["payment_means"] == "sepa_dd":
                assert debit == {"amount_cents": owed}, x["number"]
            else:
                assert debit is None
    assert money.reconciles(conn) == []
    with conn.transaction():
        for x in docs:
            assert en16931_violations(einvoice.build_xml(invoices.get(conn, x["number"]), issuer)) == [], x["number"]
    for series in ("RE", "GS"):
        got = sorted(int(x["number"].rsplit("-", 1)[1]) for x in docs if x["number"].startswith(series))
        assert got == list(range(1, len(got) + 1)), series
    # nothing of the month is left to invoice, and the next run bills no November call again
    assert invoices.run(conn, NOV, dt.date(2026, 12, 5)).issued == 0
    with conn.transaction():
        december = invoices.preview(conn, dt.date(2026, 12, 1))
    assert all(ln["kind"] != "usage" for p in december for ln in p["lines"])
