"""A simulated year (issue 11): the demo provider plus generated tenants
and calls, a fixed clock walking from 2026-01-01 to 2027-01-03, the
scheduler's jobs every night, SEPA files every day, transfers arriving,
a credit note.  Then: every invoice adds up, every balance is its ledger,
the numbers have no gap, and re-running any month or night changes nothing."""
from __future__ import annotations

import datetime as dt
import random
import re
from pathlib import Path

import psycopg

from dustel import scheduler
from dustel.billing import einvoice, fees, invoices, money, months, payments, sepa
from dustel.config import Settings
from dustel.provisioning import demo, numbers

from ..billing_support import BERLIN, old_tenant, settled_call
from ..conftest import dump

ZONES = [("de_fixed", 0, "4930123456"), ("de_fixed", 2, "4989123456"), ("de_mobile", 9, "4915112345678"),
         ("eu_fixed", 3, "33123456789"), ("eu_mobile", 12, "4367612345")]
NIGHTLY = ["autotopup", "number_fees", "invoice_run", "collect_debits"]


def _provider(conn: psycopg.Connection, tmp_path: Path) -> list[dict]:
    with conn.transaction():
        demo.load(conn, tmp_path / "creds.txt", password=lambda: "Sim-Passw0rd-1")
        # the demo provider has been in business since January
        conn.execute("UPDATE tenants SET created_on = '2026-01-01', plan_since = '2026-01-01'")
        conn.execute("UPDATE numbers SET created_on = '2026-01-01'")
    made = []
    rnd = random.Random(11)
    for i in range(12):
        plan = ["starter", "complete", "business_flex"][i % 3]
        ctype = "public_body" if i == 11 else None
        created = dt.date(2026, 1 + rnd.randrange(9), 1 + rnd.randrange(28))
        t = old_tenant(conn, plan, created, name=f"Kunde {i} Ä", customer_type=ctype,
                       **({"number_quota": 100} if plan == "business_flex" else {}))
        with conn.transaction():
            if ctype is None and i % 2 == 0:
                sepa.add_mandate(conn, t["id"], holder=f"Kunde {i}", iban="DE89370400440532013000", bic=None,
                                 signed_on=created, reference=f"SIM-{t['id']}")
                if plan == "starter":
                    conn.execute("""INSERT INTO billing_profiles (tenant_id, autotopup_threshold_cents,
                                                                  autotopup_amount_cents) VALUES (%s, 800, 1500)""",
                                 (t["id"],))
            if ctype == "public_body":
                conn.execute("INSERT INTO billing_profiles (tenant_id, leitweg_id) VALUES (%s, '991-12345-67')",
                             (t["id"],))
            n = numbers.add(conn, t["id"], f"+4921177{i:02d}00", **({"block_size": 100} if plan == "business_flex"
                                                                   else {}))
            conn.execute("UPDATE numbers SET created_on = %s WHERE id = %s", (created, n["id"]))
            if plan == "business_flex":
                conn.execute("INSERT INTO tenant_options (tenant_id, plan, option, quantity) VALUES "
                             "(%s, 'business_flex', 'extra_line', %s)", (t["id"], 1 + i % 3))
        made.append(t)
    return made


def test_a_simulated_year_adds_up_and_reruns_change_nothing(db_url: str, conn: psycopg.Connection,
                                                           tmp_path: Path) -> None:
    _provider(conn, tmp_path)
    s = Settings(state_dir=tmp_path, smtp_port=1)
    issuer = einvoice.Issuer.of(s)
    rnd = random.Random(2026)
    tenants = conn.execute("SELECT t.id, t.created_on, p.payment, t.customer_type FROM tenants t "
                           "JOIN plans p ON p.code = t.plan ORDER BY t.id").fetchall()
    day = dt.date(2026, 1, 1)
    statement_tx = 0
    while day <= dt.date(2027, 1, 3):
        live = [t for t in tenants if t["created_on"] <= day]
        for _ in range(rnd.randrange(4)):
            t = rnd.choice(live)
            zone, cpm, dest = rnd.choice(ZONES)
            secs = rnd.randrange(5, 900)
            when = dt.datetime.combine(day, dt.time(8 + rnd.randrange(14), rnd.randrange(60)), BERLIN)
            settled_call(conn, t["id"], zone, secs, (secs * cpm + 59) // 60, when, dest)
        now = dt.datetime.combine(day, dt.time(6, 30), BERLIN)
        scheduler.run_once(db_url, s, now, NIGHTLY)
        with conn.transaction():
            sepa.export(conn, day + dt.timedelta(days=2), issuer, today=day)
        # transfers: invoices without a mandate are paid 10 days after issue
        due = conn.execute("""SELECT i.number, i.gross_cents FROM invoices i WHERE i.kind = 'invoice'
                                AND i.payment_means = 'transfer' AND i.issued_on = %s""",
                           (day - dt.timedelta(days=10),)).fetchall()
        lines = []
        for inv in due:
            statement_tx += 1
            lines.append(payments.StatementLine(1, day, inv["gross_cents"], f"RE {inv['number']}",
                                                f"sim{statement_tx}", "", ""))
        if day.day == 15:       # a starter customer tops up by transfer once a month
            statement_tx += 1
            starter = next(t for t in tenants if t["payment"] == "prepaid")
            lines.append(payments.StatementLine(1, day, 1000, f"KD-{starter['id']}", f"sim{statement_tx}", "", ""))
        if lines:
            with conn.transaction():
                payments.import_statement(conn, lines, s.debit_return_fee_cents)
        if day == dt.date(2026, 7, 10):
            with conn.transaction():
                first = conn.execute("SELECT number FROM invoices WHERE period = '2026-06-01' ORDER BY number "
                                     "LIMIT 1").fetchone()["number"]
                invoices.credit_note(conn, first, "Ausfall Juni", 500, day)
        day += dt.timedelta(days=1)

    # every invoice adds up
    docs = conn.execute("SELECT * FROM invoices ORDER BY number").fetchall()
    postpaid = [t for t in tenants if t["payment"] == "postpaid"]
    assert len([d for d in docs if d["kind"] == "invoice"]) == sum(
        12 - t["created_on"].month + 1 for t in postpaid)            # one per month since the tenant's first
    for d in docs:
        lines = conn.execute("SELECT * FROM invoice_lines WHERE invoice_id = %s", (d["id"],)).fetchall()
        assert lines and d["gross_cents"] == d["net_cents"] + d["vat_cents"]
        assert sum(ln["net_cents"] for ln in lines) == d["net_cents"]
        assert sum(ln["amount_cents"] for ln in lines) == (d["net_cents"] if d["prices_net"] else d["gross_cents"])
        assert all(ln["amount_cents"] == ln["quantity"] * ln["unit_cents"] for ln in lines)
        if d["prices_net"]:
            assert d["vat_cents"] == money.div_round(d["net_cents"] * 19, 100)
    # gap-free numbers per series and year
    for series in ("RE", "GS"):
        for year in (2026, 2027):
            got = sorted(int(d["number"].rsplit("-", 1)[1]) for d in docs
                         if re.fullmatch(rf"{series}-{year}-\d{{6}}", d["number"]))
            assert got == list(range(1, len(got) + 1)), (series, year)
    # every balance is the sum of its movements; every debit collected once
    assert money.reconciles(conn) == []
    collected = conn.execute("SELECT count(*) AS n FROM direct_debits WHERE state = 'collected'").fetchone()["n"]
    booked = conn.execute("SELECT count(*) AS n FROM ledger WHERE ref LIKE 'dd:%'").fetchone()["n"]
    assert collected == booked > 20
    assert conn.execute("SELECT count(*) AS n FROM direct_debits WHERE purpose = 'autotopup'").fetchone()["n"] > 3
    # postpaid tenants paid everything invoiced up to the last month's debits still on their way
    # (and the fees prepaid tenants owe are in their balance)
    assert conn.execute("SELECT count(*) AS n FROM ledger WHERE kind = 'fee'").fetchone()["n"] > 5

    # re-running any month or night changes nothing
    before = dump(db_url)
    month = dt.date(2026, 1, 1)
    while month <= dt.date(2026, 12, 1):
        assert invoices.run(conn, month, dt.date(2027, 1, 3), today=dt.date(2027, 1, 3)).issued == 0
        month = months.next_month(month)
    with conn.transaction():
        assert fees.charge_due(conn, dt.date(2027, 1, 3)) == []
    for night in (dt.date(2026, 2, 1), dt.date(2026, 7, 15), dt.date(2026, 12, 1)):
        got = scheduler.run_once(db_url, s, dt.datetime.combine(night, dt.time(1, 30), BERLIN), NIGHTLY)
        assert all(v is None for v in got.values()), got
        with conn.transaction():
            assert sepa.collect(conn, night) == []
    assert dump(db_url) == before
