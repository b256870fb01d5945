"""Number and porting fees of prepaid (starter) tenants, booked against
their credit by the nightly job (SPEC F-01, F-09); postpaid plans bill
theirs on the invoice (invoices.py).

- a new number: 9.90 once, and 4.90 per billing year in advance — a
  number's billing year starts on the day it was added and on each
  anniversary; a year is charged on its first day (a night missed is caught
  up, each year once: the reference names the number and the year);
- a cancelled number (``cancel``) is not charged for a year after its
  ``cancel_at``: notice must reach us at least 14 days before the billing
  year ends, or it runs another year;
- ported-in numbers of a tariff created on or after 2023-07-01: 5.00 per
  year for every started 10, the year counted from the first ported-in
  number; older tariffs are exempt.

The balance may go below zero by a fee: calls are then refused until a
top-up, as with any other charge.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from ..callpath import calls
from ..errors import DustelError
from ..provisioning import tenants
from . import money
from .months import last_day

NOTICE_DAYS = 14

_DUE = """
WITH y AS (
  SELECT n.id, n.tenant_id, n.e164, p.new_number_yearly_cents * coalesce(n.block_size, 1) AS cents,
         (n.created_on + make_interval(years => k))::date AS starts
    FROM numbers n JOIN tenants t ON t.id = n.tenant_id JOIN plans p ON p.code = t.plan
    CROSS JOIN LATERAL generate_series(0, extract(year FROM age(%(today)s::date, n.created_on))::int) AS k
   WHERE p.payment = 'prepaid' AND n.origin = 'new' AND n.status IN ('active', 'porting_out')
     AND p.new_number_yearly_cents > 0 AND n.created_on <= %(today)s)
SELECT tenant_id, -cents AS a, 'fee' AS k, 'numfee:year:' || id || ':' || starts AS ref,
       'yearly fee ' || e164 || ' from ' || starts AS what
  FROM y WHERE starts <= %(today)s
   AND NOT EXISTS (SELECT 1 FROM numbers c WHERE c.id = y.id AND c.cancel_at IS NOT NULL AND c.cancel_at < y.starts)
UNION ALL
SELECT n.tenant_id, -(p.new_number_once_cents * coalesce(n.block_size, 1)), 'fee', 'numfee:setup:' || n.id,
       'setup fee ' || n.e164
  FROM numbers n JOIN tenants t ON t.id = n.tenant_id JOIN plans p ON p.code = t.plan
 WHERE p.payment = 'prepaid' AND n.origin = 'new' AND n.status IN ('active', 'porting_out')
   AND p.new_number_once_cents > 0 AND n.created_on <= %(today)s"""


# ported-in numbers (block members counted) whose port is done, per prepaid
# tenant, and the day the first of them came: its porting year starts then
_PORTED = """
SELECT t.id AS tenant_id, t.created_on, p.*, sum(coalesce(n.block_size, 1))::int AS ported,
       min(n.created_on) AS first_on
  FROM numbers n JOIN tenants t ON t.id = n.tenant_id JOIN plans p ON p.code = t.plan
 WHERE p.payment = 'prepaid' AND n.origin = 'ported_in' AND n.status IN ('active', 'porting_out')
   AND n.created_on <= %(today)s
 GROUP BY t.id, p.code"""


def _porting_due(conn: psycopg.Connection, today: dt.date) -> list[dict[str, Any]]:
    """The porting fee (tenants.porting_fee_cents: the rule) of each porting
    year begun by today, one row per started group of numbers."""
    out = []
    for r in conn.execute(_PORTED, {"today": today}):
        yearly = tenants.porting_fee_cents(r, r["created_on"], r["ported"])
        if not yearly:
            continue
        groups = yearly // r["porting_fee_yearly_cents"]
        starts, k = r["first_on"], 0
        while starts <= today:
            for g in range(1, groups + 1):
                out.append({"tenant_id": r["tenant_id"], "a": -r["porting_fee_yearly_cents"], "k": "fee",
                            "ref": f"portfee:{r['tenant_id']}:{starts}:{g}"})
            k += 1
            starts = _add_years(r["first_on"], k)
    return out


def charge_due(conn: psycopg.Connection, today: dt.date) -> list[dict[str, Any]]:
    """Book every fee due by ``today`` not booked yet (in the caller's
    transaction); returns the ones booked now."""
    rows = conn.execute(_DUE + " ORDER BY 1, 4", {"today": today}).fetchall() + _porting_due(conn, today)
    if not rows:
        return []
    refs = [r["ref"] for r in rows]
    booked = {r["ref"] for r in conn.execute("SELECT ref FROM ledger WHERE ref = ANY(%s)", (refs,))}
    todo = [r for r in rows if r["ref"] not in booked]
    money.post_many(conn, [calls.book_row(r["tenant_id"], r["a"], "fee", r["ref"]) for r in todo])
    return todo


def billing_year_end(created_on: dt.date, today: dt.date) -> dt.date:
    """The last day of the billing year (from ``created_on``) holding today."""
    years = today.year - created_on.year
    start = _add_years(created_on, years)
    if start > today:
        start = _add_years(created_on, years - 1)
    return _add_years(start, 1) - dt.timedelta(days=1)


def _add_years(d: dt.date, n: int) -> dt.date:
    try:
        return d.replace(year=d.year + n)
    except ValueError:          # 29 February
        return d.replace(year=d.year + n, day=28)


def cancel(conn: psycopg.Connection, e164: str, today: dt.date) -> dict[str, Any]:
    """Give notice for a number: it ends with its billing year if notice
    comes at least 14 days before that year ends, else a year later."""
    n = conn.execute("""SELECT n.*, p.payment FROM numbers n JOIN tenants t ON t.id = n.tenant_id
                          JOIN plans p ON p.code = t.plan WHERE n.e164 = %s FOR UPDATE OF n""", (e164,)).fetchone()
    if n is None:
        raise DustelError("number", f"{e164} is not ours (a block is cancelled by its first number)")
    if n["status"] != "active":
        raise DustelError("number", f"{e164} is {n['status']}; only an active number can be cancelled")
    if n["cancel_at"] is not None:
        raise DustelError("number", f"{e164} is cancelled already, to {n['cancel_at']}")
    if n["payment"] == "prepaid":
        end = billing_year_end(n["created_on"], today)
        if (end - today).days < NOTICE_DAYS:
            end = _add_years(end + dt.timedelta(days=1), 1) - dt.timedelta(days=1)
    else:                                    # billed monthly: to the end of the month
        end = last_day(today)
    conn.execute("UPDATE numbers SET cancel_at = %s WHERE id = %s", (end, n["id"]))
    return {"e164": e164, "tenant_id": n["tenant_id"], "cancel_at": end}
