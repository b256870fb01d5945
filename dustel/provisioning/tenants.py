"""Tenants, their addresses and booked options (SPEC F-01)."""
from __future__ import annotations

import datetime as dt
import math
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from ..billing import invoices, texts
from ..billing.months import last_day
from ..errors import DustelError, NotFound
from . import validate as v

CUSTOMER_TYPES = ("private", "business", "public_body")
ADDRESS_KINDS = ("seat", "residence", "branch", "second_residence")


def get(conn: psycopg.Connection, tenant_id: int, *, lock: bool = False) -> dict[str, Any]:
    row = conn.execute(
        "SELECT * FROM tenants WHERE id = %s" + (" FOR UPDATE" if lock else ""), (tenant_id,)
    ).fetchone()
    if row is None:
        raise NotFound("tenant", f"no tenant with id {tenant_id}")
    return row


def add(conn: psycopg.Connection, *, name: str, customer_type: str, plan: str,
        domain: str | None = None, email: str | None = None, timezone: str = "Europe/Berlin",
        created_on: dt.date | None = None, number_quota: int | None = None,
        domain_suffix: str = "sip.dustel.de") -> dict[str, Any]:
    name = v.text("name", name, max_len=100)
    if customer_type not in CUSTOMER_TYPES:
        raise DustelError("customer_type", f"must be one of {', '.join(CUSTOMER_TYPES)}")
    _plan(conn, plan)
    email = v.email("email", email) if email is not None else None
    timezone = v.timezone("timezone", timezone)
    tid = conn.execute("SELECT nextval('tenants_id_seq') AS id").fetchone()["id"]
    domain = v.domain("domain", domain) if domain is not None else v.domain("domain", f"t{tid}.{domain_suffix}")
    return conn.execute(
        """INSERT INTO tenants (id, name, customer_type, plan, sip_domain, email, timezone,
                                created_on, plan_since, number_quota)
           VALUES (%s, %s, %s, %s, %s, %s, %s, coalesce(%s, current_date), coalesce(%s, current_date), %s)
           RETURNING *""",
        (tid, name, customer_type, plan, domain, email, timezone, created_on, created_on, number_quota),
    ).fetchone()


def _plan(conn: psycopg.Connection, plan: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM plans WHERE code = %s", (plan,)).fetchone()
    if row is None:
        codes = [r["code"] for r in conn.execute("SELECT code FROM plans ORDER BY code")]
        raise DustelError("plan", f"must be one of {', '.join(codes)}")
    return row


def set_fields(conn: psycopg.Connection, tenant_id: int, *, at: dt.datetime | None = None, due_days: int = 14,
               first_month: dt.date | None = None, **changes: Any) -> dict[str, Any]:
    """Change tenant fields; only keys given (not None) are touched.  A plan
    change happens at ``at`` (default: now): calls made before it stay with
    the plan before — a postpaid plan is closed by its own invoices then
    (``invoices.close_plan``, due after ``due_days``, from ``first_month``),
    listed under ``closing_invoices`` in the result."""
    te = get(conn, tenant_id, lock=True)
    cols: dict[str, Any] = {}
    closing: list[str] = []
    if changes.get("name") is not None:
        cols["name"] = v.text("name", changes["name"], max_len=100)
    if changes.get("email") is not None:
        cols["email"] = v.email("email", changes["email"]) if changes["email"] != "" else None
    if changes.get("timezone") is not None:
        cols["timezone"] = v.timezone("timezone", changes["timezone"])
    if changes.get("language") is not None:     # its documents' from now on (a plan change's closing
        if changes["language"] not in texts.LANGUAGES:              # invoices too); issued ones keep theirs
            raise DustelError("language", f"must be one of {', '.join(texts.LANGUAGES)}")
        conn.execute("UPDATE tenants SET language = %s WHERE id = %s", (changes["language"], tenant_id))
    if changes.get("customer_type") is not None:
        if changes["customer_type"] not in CUSTOMER_TYPES:
            raise DustelError("customer_type", f"must be one of {', '.join(CUSTOMER_TYPES)}")
        cols["customer_type"] = changes["customer_type"]
    if changes.get("plan") is not None:
        cols["plan"] = _plan(conn, changes["plan"])["code"]
        if cols["plan"] != te["plan"]:
            at = at or conn.execute("SELECT now() AS t").fetchone()["t"]
            on = at.astimezone(ZoneInfo(te["timezone"])).date()
            _check_min_term(conn, te, "plan", on)
            closing = invoices.close_plan(conn, tenant_id, at, due_days=due_days, first_month=first_month)
            cols["plan_since"] = on
            cols["plan_changed_at"] = at
            if te["plan"] == "business_flex" and cols["plan"] != "business_flex":
                cols["number_quota"] = None            # a number quota is business flex's alone
    if "clip_agreement_on" in changes and changes["clip_agreement_on"] is not ...:
        cols["clip_agreement_on"] = changes["clip_agreement_on"]
    if changes.get("number_quota") is not None:
        cols["number_quota"] = changes["number_quota"]
    if changes.get("monthly_credit_limit_cents") is not None:
        cols["monthly_credit_limit_cents"] = changes["monthly_credit_limit_cents"]
    if changes.get("max_call_seconds") is not None:
        cols["max_call_seconds"] = changes["max_call_seconds"]
    if cols:
        sets = ", ".join(f"{c} = %s" for c in cols)
        conn.execute(f"UPDATE tenants SET {sets} WHERE id = %s", (*cols.values(), tenant_id))
    return {**get(conn, tenant_id), "closing_invoices": closing}


def min_term_end(conn: psycopg.Connection, te: dict[str, Any]) -> dt.date | None:
    """The last day of the tenant's minimum term, or None when it has none."""
    row = conn.execute("""SELECT (t.plan_since + make_interval(months => p.min_term_months))::date - 1 AS ends
                            FROM tenants t JOIN plans p ON p.code = t.plan
                           WHERE t.id = %s AND p.min_term_months > 0""", (te["id"],)).fetchone()
    return row["ends"] if row else None


def _check_min_term(conn: psycopg.Connection, te: dict[str, Any], field: str, on: dt.date) -> None:
    ends = min_term_end(conn, te)
    if ends is not None and ends >= on:
        raise DustelError(field, f"the plan {te['plan']} has a minimum term running until {ends}; "
                                 "it can be changed from the day after")


def cancel(conn: psycopg.Connection, tenant_id: int, on: dt.date | None, today: dt.date) -> dict[str, Any]:
    """Cancel a tenant's contract: it ends on the last day of a month — the
    current one by default — and never before its minimum term ends (the
    default moves there; an earlier ``on`` is refused)."""
    te = get(conn, tenant_id, lock=True)
    if te["cancel_at"] is not None:
        raise DustelError("tenant", f"tenant {tenant_id} is cancelled already, to {te['cancel_at']}")
    month_end = last_day(today)
    term_end = min_term_end(conn, te)
    earliest = max(month_end, last_day(term_end)) if term_end else month_end
    if on is None:
        on = earliest
    elif on < earliest:
        raise DustelError("on", f"the contract can end on {earliest} at the earliest"
                                + (f" (minimum term of {te['plan']} to {term_end})" if term_end and
                                   term_end >= month_end else ""))
    elif (on + dt.timedelta(days=1)).day != 1:
        raise DustelError("on", "must be the last day of a month")
    conn.execute("UPDATE tenants SET cancel_at = %s WHERE id = %s", (on, tenant_id))
    return get(conn, tenant_id)


def set_option(conn: psycopg.Connection, tenant_id: int, option: str, quantity: int) -> None:
    """Book ``quantity`` units of an option (0 cancels it)."""
    te = get(conn, tenant_id, lock=True)
    if quantity < 0:
        raise DustelError("quantity", "must be 0 or more")
    if quantity == 0:
        conn.execute("DELETE FROM tenant_options WHERE tenant_id = %s AND option = %s",
                     (tenant_id, option))
        return
    conn.execute(
        """INSERT INTO tenant_options (tenant_id, plan, option, quantity) VALUES (%s, %s, %s, %s)
           ON CONFLICT (tenant_id, option) DO UPDATE SET quantity = EXCLUDED.quantity""",
        (tenant_id, te["plan"], option, quantity),
    )


def add_address(conn: psycopg.Connection, tenant_id: int, *, kind: str, street: str,
                postcode: str, city: str, area_code: str) -> dict[str, Any]:
    get(conn, tenant_id)
    if kind not in ADDRESS_KINDS:
        raise DustelError("kind", f"must be one of {', '.join(ADDRESS_KINDS)}")
    return conn.execute(
        """INSERT INTO addresses (tenant_id, kind, street, postcode, city, area_code)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING *""",
        (tenant_id, kind, v.text("street", street, max_len=100), v.postcode("postcode", postcode),
         v.text("city", city, max_len=60), v.area_code("area_code", area_code)),
    ).fetchone()


def remove_address(conn: psycopg.Connection, tenant_id: int, address_id: int) -> None:
    cur = conn.execute("DELETE FROM addresses WHERE tenant_id = %s AND id = %s",
                       (tenant_id, address_id))
    if cur.rowcount == 0:
        raise NotFound("address", f"tenant {tenant_id} has no address {address_id}")


def list_all(conn: psycopg.Connection, plan: str | None = None) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT t.id, t.name, t.customer_type, t.plan, t.sip_domain,
                  (SELECT count(*) FROM sip_accounts a WHERE a.tenant_id = t.id) AS accounts,
                  dustel_number_count(t.id) AS numbers
             FROM tenants t WHERE %(plan)s::text IS NULL OR t.plan = %(plan)s ORDER BY t.id""",
        {"plan": plan},
    ).fetchall()


def limits(conn: psycopg.Connection, tenant_id: int) -> dict[str, Any]:
    """Effective limits: plan facts plus booked options."""
    row = conn.execute(
        """SELECT p.lines_in + dustel_option_qty(t.id, 'extra_line') AS lines_in,
                  p.lines_out + dustel_option_qty(t.id, 'extra_line') AS lines_out,
                  coalesce(p.accounts_max, p.accounts_included + dustel_option_qty(t.id, 'extra_account'))
                      AS accounts_max,
                  coalesce(p.numbers_max, t.number_quota) AS numbers_max,
                  dustel_option_qty(t.id, 'flat_de_fixed') AS flat_de_fixed,
                  dustel_option_qty(t.id, 'flat_de_mobile') AS flat_de_mobile,
                  CASE WHEN dustel_option_qty(t.id, 'per_minute_billing') > 0 THEN 60 ELSE 1 END
                      AS billing_increment,
                  t.monthly_credit_limit_cents, t.max_call_seconds, p.payment,
                  p.start_credit_seconds
             FROM tenants t JOIN plans p ON p.code = t.plan WHERE t.id = %s""",
        (tenant_id,),
    ).fetchone()
    if row is None:
        raise NotFound("tenant", f"no tenant with id {tenant_id}")
    return row


def porting_fee_cents(plan: dict[str, Any], created_on: dt.date, ported_numbers: int) -> int:
    """Yearly porting fee (F-01): starter tariffs created from the plan's
    cut-over date pay one fee per started group of ``porting_fee_covers``
    ported numbers; earlier tariffs and the other plans pay nothing."""
    since = plan["porting_fee_since"]
    if ported_numbers <= 0 or not plan["porting_fee_yearly_cents"] or since is None:
        return 0
    if created_on < since:
        return 0
    return math.ceil(ported_numbers / plan["porting_fee_covers"]) * plan["porting_fee_yearly_cents"]


def show(conn: psycopg.Connection, tenant_id: int) -> dict[str, Any]:
    te = get(conn, tenant_id)
    plan = _plan(conn, te["plan"])
    options = conn.execute(
        """SELECT o.option, o.quantity, po.price_cents, po.included
             FROM tenant_options o JOIN plan_options po USING (plan, option)
            WHERE o.tenant_id = %s ORDER BY o.option""", (tenant_id,)).fetchall()
    addresses = conn.execute(
        "SELECT id, kind, street, postcode, city, area_code FROM addresses WHERE tenant_id = %s ORDER BY id",
        (tenant_id,)).fetchall()
    ported = conn.execute(
        """SELECT coalesce(sum(coalesce(block_size, 1)), 0)::int AS n FROM numbers
            WHERE tenant_id = %s AND origin = 'ported_in' AND status <> 'ported_out'""",
        (tenant_id,)).fetchone()["n"]
    counts = conn.execute(
        """SELECT (SELECT count(*) FROM sip_accounts WHERE tenant_id = %(t)s) AS accounts,
                  dustel_number_count(%(t)s) AS numbers,
                  (SELECT count(*) FROM queues WHERE tenant_id = %(t)s) AS queues""",
        {"t": tenant_id}).fetchone()
    out = dict(te)
    out["plan_name"] = plan["name"]
    out["payment"] = plan["payment"]
    out["options"] = options
    out["addresses"] = addresses
    out["limits"] = limits(conn, tenant_id)
    out["counts"] = counts
    out["porting_fee_yearly_cents"] = porting_fee_cents(plan, te["created_on"], ported)
    return out
