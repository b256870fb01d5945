"""A plan change in the middle of a month (issue 26.10): every call is
billed by the plan in force when it was made, and leaving a postpaid plan
closes it with its own invoice."""
from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from dustel.billing import invoices, money, sepa
from dustel.errors import DustelError
from dustel.provisioning import tenants

from ..billing_support import at, old_tenant, settled_call
from ..conftest import dump

NOV = dt.date(2026, 11, 1)
ISSUED = dt.date(2026, 12, 2)
SWITCH = at("2026-11-15 12:00")


def _invoice(conn: psycopg.Connection, tenant_id: int, period: dt.date = NOV) -> list[dict]:
    with conn.transaction():
        return [invoices.get(conn, r["number"]) for r in conn.execute(
            "SELECT number FROM invoices WHERE tenant_id = %s AND period = %s AND kind = 'invoice' ORDER BY number",
            (tenant_id, period))]


def _switch(conn: psycopg.Connection, tenant_id: int, plan: str, **kw: object) -> dict:
    with conn.transaction():
        return tenants.set_fields(conn, tenant_id, at=SWITCH, plan=plan, **kw)


def test_prepaid_calls_before_a_switch_to_postpaid_are_not_invoiced_again(conn: psycopg.Connection) -> None:
    """starter → business flex: the calls paid from prepaid credit were
    invoiced again, with VAT on top."""
    t = old_tenant(conn, "starter", dt.date(2026, 1, 5), customer_type="business", name="Start GmbH")
    with conn.transaction():
        money.post(conn, t["id"], 1000, "topup", "seed")
    settled_call(conn, t["id"], "de_mobile", 200, 30, at("2026-11-03 10:00"))       # prepaid: paid from credit
    assert _switch(conn, t["id"], "business_flex", number_quota=10)["closing_invoices"] == []
    settled_call(conn, t["id"], "de_mobile", 100, 15, at("2026-11-25 10:00"))       # business flex
    invoices.run(conn, NOV, ISSUED)
    (inv,) = _invoice(conn, t["id"])
    usage = [(ln["amount_cents"], ln["period_start"], ln["period_end"]) for ln in inv["lines"] if ln["kind"] == "usage"]
    assert usage == [(15, dt.date(2026, 11, 15), dt.date(2026, 11, 30))]
    # the plan's first month in full, and December in advance (no pro rata)
    assert [(ln["kind"], ln["period_start"].month) for ln in inv["lines"][1:]] == [("base_fee", 11), ("base_fee", 12)]
    assert inv["net_cents"] == 15 + 2 * 720
    assert money.reconciles(conn) == []


def test_leaving_postpaid_closes_the_plan_with_its_own_invoice(conn: psycopg.Connection) -> None:
    """business flex → starter: the month's postpaid usage was never
    invoiced (the run takes postpaid tenants only)."""
    t = old_tenant(conn, "business_flex", dt.date(2026, 9, 1), name="Firma GmbH", number_quota=20)
    with conn.transaction():
        sepa.add_mandate(conn, t["id"], holder="Firma GmbH", iban="DE02120300000000202051", bic=None,
                         signed_on=dt.date(2026, 9, 1), reference="M-FIRMA")
    settled_call(conn, t["id"], "de_mobile", 200, 30, at("2026-10-03 10:00"))
    settled_call(conn, t["id"], "de_mobile", 200, 30, at("2026-11-03 10:00"))
    invoices.run(conn, dt.date(2026, 9, 1), dt.date(2026, 10, 2))       # September
    # October was never invoiced (the scheduler was down): the switch closes it too
    got = _switch(conn, t["id"], "starter")
    assert got["closing_invoices"] == ["RE-2026-000002", "RE-2026-000003"] and got["number_quota"] is None
    (octo,) = _invoice(conn, t["id"], dt.date(2026, 10, 1))
    assert [(ln["kind"], ln["amount_cents"]) for ln in octo["lines"]] == [("usage", 30), ("base_fee", 720)]
    (nov,) = _invoice(conn, t["id"])
    assert [(ln["kind"], ln["amount_cents"], ln["period_end"]) for ln in nov["lines"]] == [
        ("usage", 30, dt.date(2026, 11, 15))]                      # to the switch; no fees in advance
    assert nov["issued_on"] == dt.date(2026, 11, 15) and nov["gross_cents"] == 36
    debit = conn.execute("SELECT amount_cents, due_on FROM direct_debits WHERE invoice_id = %s",
                         (nov["id"],)).fetchone()
    assert debit == {"amount_cents": 36, "due_on": dt.date(2026, 11, 29)}
    settled_call(conn, t["id"], "de_mobile", 100, 15, at("2026-11-25 10:00"))       # prepaid now
    assert invoices.run(conn, NOV, ISSUED).issued == 0
    assert conn.execute("SELECT count(*) AS n FROM invoices").fetchone()["n"] == 3
    assert money.reconciles(conn) == []


def test_a_switch_between_postpaid_plans_bills_each_part_at_its_own_prices(conn: psycopg.Connection) -> None:
    """complete (gross prices) → business flex (net prices): each part of the
    month on its own invoice, at its plan's prices."""
    t = old_tenant(conn, "complete", dt.date(2025, 9, 1), name="Becker")
    invoices.run(conn, dt.date(2026, 10, 1), dt.date(2026, 11, 2), tenant_id=t["id"])    # Nov's fee in advance
    settled_call(conn, t["id"], "de_mobile", 200, 119, at("2026-11-03 10:00"))
    got = _switch(conn, t["id"], "business_flex", customer_type="business", number_quota=10)
    settled_call(conn, t["id"], "de_mobile", 200, 100, at("2026-11-25 10:00"))
    invoices.run(conn, NOV, ISSUED)
    closed, flex = _invoice(conn, t["id"])
    assert got["closing_invoices"] == [closed["number"]]
    assert (closed["prices_net"], closed["gross_cents"], [ln["kind"] for ln in closed["lines"]]) == (
        False, 119, ["usage"])
    # business flex from the switch: its calls, and its fees from December (November was paid for already)
    assert flex["prices_net"] and [(ln["kind"], ln["amount_cents"], ln["period_start"]) for ln in flex["lines"]] == [
        ("usage", 100, dt.date(2026, 11, 15)), ("base_fee", 720, dt.date(2026, 12, 1))]
    assert invoices.run(conn, NOV, ISSUED).issued == 0


def test_a_switch_waits_for_the_calls_in_progress(conn: psycopg.Connection) -> None:
    t = old_tenant(conn, "business_flex", dt.date(2026, 9, 1), name="Firma GmbH", number_quota=20)
    conn.execute("""INSERT INTO calls (node, call_id, tenant_id, account, direction, route, destination,
                                       max_seconds, expires_at)
                    VALUES ('fs1', 'up', %s, '000387000001', 'out', 'external', '4930', 3600, now() + '1 h')""",
                 (t["id"],))
    before = dump(conn.info.dsn)
    with pytest.raises(DustelError, match="^plan: tenant .* has 1 call.s. in progress"), conn.transaction():
        tenants.set_fields(conn, t["id"], at=SWITCH, plan="starter")
    assert dump(conn.info.dsn) == before


def test_a_switch_closes_no_month_before_dustel_billed(conn: psycopg.Connection) -> None:
    """A tenant with a past and no invoice of dustel's (billed elsewhere
    before): the switch closes the month before it and its own month — or,
    with billing_first_month, the months from there — never all its past."""
    old = old_tenant(conn, "business_flex", dt.date(2025, 1, 1), name="Alt GmbH", number_quota=10)
    also = old_tenant(conn, "business_flex", dt.date(2025, 1, 1), name="Auch Alt GmbH", number_quota=10)
    for t in (old, also):
        settled_call(conn, t["id"], "de_mobile", 200, 30, at("2026-11-03 10:00"))
    closed = _switch(conn, old["id"], "starter")["closing_invoices"]
    assert [f"{r['period']:%Y-%m}" for r in conn.execute(
        "SELECT period FROM invoices WHERE number = ANY(%s) ORDER BY period", (closed,))] == ["2026-10", "2026-11"]
    with conn.transaction():
        closed = tenants.set_fields(conn, also["id"], at=SWITCH, plan="starter",
                                    first_month=dt.date(2026, 8, 1))["closing_invoices"]
    assert len(closed) == 4                                      # August to November
