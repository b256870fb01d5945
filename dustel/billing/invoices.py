"""Invoices of postpaid tenants (SPEC F-09) and credit notes.

In the first days of month M+1 every postpaid tenant gets one invoice (one
per plan: a postpaid plan left in M was closed by its own invoice then):
- the usage of M: its calls settled in M (in the tenant's time zone), one
  line per zone, at their charge as reconciled by then; and one line for
  the reconciliation's corrections of calls invoiced before (each
  correction billed once: ledger.invoice_id names the invoice that did);
- the base fee and the booked options of M+1, in advance (and those of M
  too when the plan started in M: the first month is billed in full);
- number fees of M+1 (business flex: per number and month, 0.42 net for
  single numbers and blocks up to 50, 0.36 for larger blocks);
- VAT as money.py says (net plans + 19 %, gross plans include it).

Numbers are ``RE-<year>-<6 digits>`` (credit notes ``GS-…``), taken from
``document_counters`` under a row lock in the transaction that stores the
documents: a number exists exactly when its document does (gap-free).
Re-running a month changes nothing (one invoice per tenant and month, a
unique index); a correction is a credit note, never an edited invoice.

The ledger gets, per invoice, what it bills beyond the call charges already
booked call by call (``invoice:<number>``), so after an invoice the month
stands in the ledger at its gross total; a payment or collected debit
brings it back.  The run works in batches (``BATCH`` tenants per
transaction) so the money rows it locks are held briefly at night.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb

from ..callpath import calls
from ..errors import DustelError
from ..provisioning import validate
from . import money, texts
from .months import last_day, next_month

BATCH = 500


@dataclass
class Line:
    kind: str
    description: str
    quantity: int
    unit_cents: int
    period_start: dt.date
    period_end: dt.date

    @property
    def amount_cents(self) -> int:
        return self.quantity * self.unit_cents


def signed_line(kind: str, description: str, cents: int, start: dt.date, end: dt.date) -> Line:
    """One line of ``cents``, which may be negative: a refund is quantity -1
    at a positive price (EN 16931 BR-27: an item's net price is never
    negative)."""
    return Line(kind, description, -1 if cents < 0 else 1, abs(cents), start, end)


@dataclass
class Draft:
    tenant_id: int
    period: dt.date
    prices_net: bool
    vat_percent: int
    recipient: dict[str, Any]
    mandate_id: int | None
    language: str = texts.DEFAULT               # its texts' (tenants.language on the day it is drafted)
    plan_from: dt.datetime | None = None       # the plan period it bills (tenants.plan_changed_at)
    lines: list[Line] = field(default_factory=list)
    usage_cents: int = 0
    corrections: list[int] = field(default_factory=list)     # ledger ids of the corrections it bills

    @property
    def payment_means(self) -> str:
        return "sepa_dd" if self.mandate_id is not None else "transfer"


_TENANTS = """
SELECT t.id, t.name, t.customer_type, t.email, t.plan_since, t.plan_changed_at, t.timezone, t.cancel_at,
       t.language, p.name AS plan_name, p.prices_net, p.vat_percent,
       -- the month the plan started: its fees unless an earlier plan's invoice billed them in advance
       CASE WHEN t.plan_since >= %(m0)s AND t.plan_since < %(m1)s THEN NOT EXISTS (
           SELECT 1 FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id
            WHERE i.tenant_id = t.id AND i.kind = 'invoice' AND l.kind IN ('base_fee', 'option', 'numbers')
              AND l.period_start = %(m0)s) ELSE false END AS first_month,
       p.base_fee_cents, p.number_monthly_cents, p.number_monthly_large_cents, p.number_large_block_over,
       bp.leitweg_id, bp.vat_id,
       (SELECT to_jsonb(a) FROM addresses a WHERE a.tenant_id = t.id
         ORDER BY array_position(ARRAY['seat', 'residence', 'branch', 'second_residence'], a.kind), a.id
         LIMIT 1) AS address,
       (SELECT m.id FROM sepa_mandates m WHERE m.tenant_id = t.id AND m.revoked_on IS NULL) AS mandate_id
  FROM tenants t JOIN plans p ON p.code = t.plan
  LEFT JOIN billing_profiles bp ON bp.tenant_id = t.id
 WHERE p.payment = 'postpaid' AND t.created_on < %(m1)s AND (t.cancel_at IS NULL OR t.cancel_at >= %(m0)s)
   AND (%(tenant)s::bigint IS NULL OR t.id = %(tenant)s)
   AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.tenant_id = t.id AND i.period = %(m0)s AND i.kind = 'invoice'
                      AND i.plan_from IS NOT DISTINCT FROM t.plan_changed_at)
 ORDER BY t.id"""

# the month in each tenant's own time zone: its bounds computed once per
# tenant, the calls (one scan of the month's settled calls) joined to them
# (the calls made under the tenant's current plan only: a call made before
# a plan change belongs to the plan then, prepaid or closed by its own invoice)
_BOUNDS = """
WITH tb AS (SELECT t.id, t.timezone, (%(m0)s::timestamp AT TIME ZONE t.timezone) AS lo,
                   (%(m1)s::timestamp AT TIME ZONE t.timezone) AS hi, t.plan_changed_at AS since
              FROM tenants t JOIN plans p ON p.code = t.plan AND p.payment = 'postpaid'
             WHERE (%(tenant)s::bigint IS NULL OR t.id = %(tenant)s))"""
_IN_USAGE = ("c.state = 'settled' AND c.settled_at >= tb.lo AND c.settled_at < tb.hi"
             " AND (tb.since IS NULL OR c.started_at >= tb.since)")
_USAGE = _BOUNDS + f""",
u AS (SELECT c.tenant_id, c.zone, count(*)::int AS calls, sum(c.billsec)::bigint AS seconds,
             sum(c.charged_cents)::bigint AS cents
        FROM calls c JOIN tb ON tb.id = c.tenant_id
       WHERE {_IN_USAGE} AND c.charged_cents > 0
       GROUP BY 1, 2)
SELECT u.*, z.description, z.description_de FROM u JOIN zones z ON z.code = u.zone
 ORDER BY 1, 2"""

# the reconciliation's corrections no invoice has billed yet (each names its
# call): one of a call billed with this month is in the call's charge; one
# of a call whose month was invoiced already (or of no known call) is a line
_CORRECTIONS = _BOUNDS + f"""
SELECT l.id, l.tenant_id, (-l.amount_cents)::bigint AS cents, l.created_at < tb.hi AS booked,
       coalesce({_IN_USAGE}, false) AS in_usage,
       c.node IS NULL OR EXISTS (
           SELECT 1 FROM invoices i WHERE i.tenant_id = l.tenant_id AND i.kind = 'invoice'
              AND i.period = date_trunc('month', c.settled_at AT TIME ZONE tb.timezone)::date) AS invoiced
  FROM ledger l JOIN tb ON tb.id = l.tenant_id
  LEFT JOIN calls c ON c.node = l.call_node AND c.call_id = l.call_id
 WHERE l.kind = 'adjust' AND l.invoice_id IS NULL
 ORDER BY l.id"""

_OPTIONS = """
SELECT tp.tenant_id, tp.option, tp.quantity, po.price_cents, po.description, po.description_de
  FROM tenant_options tp JOIN plan_options po ON po.plan = tp.plan AND po.option = tp.option
 WHERE po.price_cents > 0 AND (%(tenant)s::bigint IS NULL OR tp.tenant_id = %(tenant)s)
 ORDER BY tp.tenant_id, tp.option"""

_NUMBERS = """
SELECT n.tenant_id,
       coalesce(sum(coalesce(n.block_size, 1)) FILTER (WHERE coalesce(n.block_size, 1) <= p.number_large_block_over
                                                         OR p.number_large_block_over IS NULL), 0)::int AS small,
       coalesce(sum(n.block_size) FILTER (WHERE n.block_size > p.number_large_block_over), 0)::int AS large
  FROM numbers n JOIN tenants t ON t.id = n.tenant_id JOIN plans p ON p.code = t.plan
 WHERE p.payment = 'postpaid' AND p.number_monthly_cents > 0 AND n.status IN ('active', 'porting_out')
   AND (%(tenant)s::bigint IS NULL OR n.tenant_id = %(tenant)s)
 GROUP BY 1"""


def _minutes(seconds: int) -> str:
    return f"{seconds // 60}:{seconds % 60:02d} min"


def drafts(conn: psycopg.Connection, period: dt.date, tenant_id: int | None = None, *,
           until: dt.date | None = None) -> list[Draft]:
    """The invoices month ``period`` would get, for tenants not invoiced yet
    for it under their current plan; drafts with nothing to bill are left
    out.  ``until``: the plan ends that day (a plan change closing it): no
    fees in advance, usage to that day."""
    m1 = next_month(period)
    p = {"m0": period, "m1": m1, "tenant": tenant_id}
    tenants = conn.execute(_TENANTS, p).fetchall()
    if not tenants:
        return []
    by_tenant: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for name, sql in (("usage", _USAGE), ("adjust", _CORRECTIONS), ("options", _OPTIONS), ("numbers", _NUMBERS)):
        rows: dict[int, list[dict[str, Any]]] = {}
        for r in conn.execute(sql, p):
            rows.setdefault(r["tenant_id"], []).append(r)
        by_tenant[name] = rows
    out = []
    for t in tenants:
        addr = t["address"] or {}
        recipient = {"name": t["name"], "customer_type": t["customer_type"], "email": t["email"],
                     "street": addr.get("street", ""), "postcode": addr.get("postcode", ""),
                     "city": addr.get("city", ""), "country": "DE", "leitweg_id": t["leitweg_id"],
                     "vat_id": t["vat_id"], "customer_number": money.customer_number(t["id"]), "plan": t["plan_name"]}
        d = Draft(t["id"], period, t["prices_net"], t["vat_percent"], recipient,
                  None if t["customer_type"] == "public_body" else t["mandate_id"], t["language"],
                  t["plan_changed_at"])
        say = texts.of(d.language)
        changed = t["plan_changed_at"].astimezone(ZoneInfo(t["timezone"])).date() if t["plan_changed_at"] else None
        used_from = max(period, changed) if changed else period         # the usage lines' period
        used_to = min(last_day(period), until) if until else last_day(period)
        for u in by_tenant["usage"].get(t["id"], []):
            d.lines.append(Line("usage", say("line.usage", zone=texts.name_of(u, d.language),
                                             calls=say.calls(u["calls"]), minutes=_minutes(u["seconds"])),
                                1, u["cents"], used_from, used_to))
            d.usage_cents += u["cents"]
        corrected = 0
        for a in by_tenant["adjust"].get(t["id"], []):
            if a["in_usage"] or (a["invoiced"] and a["booked"]):
                d.corrections.append(a["id"])            # billed by this invoice: in a call's charge or below
                corrected += 0 if a["in_usage"] else a["cents"]
        if corrected:
            d.lines.append(signed_line("usage", say("line.corrections"), corrected, used_from, used_to))
            d.usage_cents += corrected
        months = [] if until else [m1]        # a plan closed: nothing in advance
        if t["first_month"]:
            months.insert(0, period)          # the first month, billed with the first invoice
        for start in months:
            if t["cancel_at"] is not None and start > t["cancel_at"]:
                continue                      # the contract has ended: no fees in advance
            end = last_day(start)
            label = f"{start:%m/%Y}"
            if t["base_fee_cents"]:
                d.lines.append(Line("base_fee", say("line.base_fee", plan=t["plan_name"], month=label), 1,
                                    t["base_fee_cents"], start, end))
            for o in by_tenant["options"].get(t["id"], []):
                d.lines.append(Line("option", say("line.option", option=texts.name_of(o, d.language), month=label),
                                    o["quantity"], o["price_cents"], start, end))
            size = t["number_large_block_over"]
            for n in by_tenant["numbers"].get(t["id"], []):
                if n["small"]:
                    d.lines.append(Line("numbers", say("line.numbers_small", size=size, month=label) if size
                                        else say("line.numbers_any", month=label),
                                        n["small"], t["number_monthly_cents"], start, end))
                if n["large"]:
                    d.lines.append(Line("numbers", say("line.numbers_large", size=size, month=label),
                                        n["large"], t["number_monthly_large_cents"], start, end))
        if d.lines or d.corrections:
            out.append(d)
    return out


NUMBER = re.compile(r"\bRE-\d{4}-\d{6}\b")       # an invoice's number in a statement line


def _counter(conn: psycopg.Connection, series: str, year: int) -> int:
    """The last number of a series and year, under the counter's row lock
    (held to the end of the caller's transaction: the numbers taken next
    exist exactly when the caller's documents do)."""
    conn.execute("INSERT INTO document_counters (series, year, last) VALUES (%s, %s, 0) ON CONFLICT DO NOTHING",
                 (series, year))
    return conn.execute("SELECT last FROM document_counters WHERE series = %s AND year = %s FOR UPDATE",
                        (series, year)).fetchone()["last"]


def _take(conn: psycopg.Connection, series: str, year: int, last: int, n: int) -> list[str]:
    """The n numbers after ``last`` (read by ``_counter``), taken."""
    conn.execute("UPDATE document_counters SET last = %s WHERE series = %s AND year = %s", (last + n, series, year))
    return [f"{series}-{year}-{i:06d}" for i in range(last + 1, last + n + 1)]


_STORE = """
INSERT INTO invoices (number, kind, tenant_id, period, issued_on, due_on, prices_net, vat_percent, net_cents,
                      vat_cents, gross_cents, usage_cents, corrects, reason, payment_means, recipient, plan_from,
                      language, created_at)
SELECT number, kind, tenant_id, period, issued_on, due_on, prices_net, vat_percent, net_cents, vat_cents,
       gross_cents, usage_cents, corrects, reason, payment_means, recipient, plan_from, language, coalesce(at, now())
  FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
       number text, kind text, tenant_id bigint, period date, issued_on date, due_on date, prices_net boolean,
       vat_percent int, net_cents bigint, vat_cents bigint, gross_cents bigint, usage_cents bigint,
       corrects bigint, reason text, payment_means text, recipient jsonb, plan_from timestamptz, language text,
       at timestamptz)
RETURNING id, number, tenant_id"""

_STORE_LINES = """
INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, unit_cents, amount_cents,
                           net_cents, period_start, period_end)
SELECT invoice_id, position, kind, description, quantity, unit_cents, amount_cents, net_cents,
       period_start, period_end
  FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
       invoice_id bigint, position int, kind text, description text, quantity int, unit_cents bigint,
       amount_cents bigint, net_cents bigint, period_start date, period_end date)"""


def price(d: Draft) -> dict[str, Any]:
    """A draft's totals (``money.vat_split``) and its lines as stored, each
    with its net amount: what an invoice of it would say."""
    nets, net, vat, gross = money.vat_split([ln.amount_cents for ln in d.lines], d.prices_net, d.vat_percent)
    lines = [{"position": pos, "kind": ln.kind, "description": ln.description, "quantity": ln.quantity,
              "unit_cents": ln.unit_cents, "amount_cents": ln.amount_cents, "net_cents": n,
              "period_start": ln.period_start.isoformat(), "period_end": ln.period_end.isoformat()}
             for pos, (ln, n) in enumerate(zip(d.lines, nets, strict=True), start=1)]
    return {"net_cents": net, "vat_cents": vat, "gross_cents": gross, "lines": lines}


def preview(conn: psycopg.Connection, period: dt.date, tenant_id: int | None = None) -> list[dict[str, Any]]:
    """The invoices month ``period`` would get now, as drafts: no number,
    nothing stored or booked (also for a month still running)."""
    return [{"tenant_id": d.tenant_id, "name": d.recipient["name"], "plan": d.recipient["plan"],
             "language": d.language, "period": d.period, "prices_net": d.prices_net, "vat_percent": d.vat_percent,
             "usage_cents": d.usage_cents, "payment_means": d.payment_means, **price(d)}
            for d in drafts(conn, period, tenant_id)]


@dataclass(frozen=True)
class RunResult:
    month: str
    issued: int
    numbers: list[str]
    gross_cents: int
    direct_debits: int
    without_mandate: list[int]


def store(conn: psycopg.Connection, batch: list[Draft], issued_on: dt.date, due_days: int,
          at: dt.datetime | None = None) -> tuple[list[dict[str, Any]], int]:
    """Number and store a batch of drafts, book them, and queue their
    direct debits, in the caller's transaction.  Drafts of tenants invoiced
    meanwhile (another run) are dropped before numbering."""
    if not batch:
        return [], 0
    last = _counter(conn, "RE", issued_on.year)    # the counter's lock first, then what is still to do
    done = {r["t"] for r in conn.execute(
        """SELECT r.t FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(t bigint, p date, f timestamptz)
            WHERE EXISTS (SELECT 1 FROM invoices i WHERE i.tenant_id = r.t AND i.kind = 'invoice' AND i.period = r.p
                             AND i.plan_from IS NOT DISTINCT FROM r.f)""",
        {"rows": Jsonb([{"t": d.tenant_id, "p": d.period.isoformat(),
                         "f": d.plan_from.isoformat() if d.plan_from else None} for d in batch])})}
    batch = [d for d in batch if d.tenant_id not in done]
    if not batch:
        return [], 0
    numbers = _take(conn, "RE", issued_on.year, last, len(batch))
    due_on = issued_on + dt.timedelta(days=due_days)
    rows, priced = [], []
    for d, number in zip(batch, numbers, strict=True):
        p = price(d)
        priced.append(p)
        rows.append({"number": number, "kind": "invoice", "tenant_id": d.tenant_id, "period": d.period.isoformat(),
                     "issued_on": issued_on.isoformat(), "due_on": due_on.isoformat(), "prices_net": d.prices_net,
                     "vat_percent": d.vat_percent, "net_cents": p["net_cents"], "vat_cents": p["vat_cents"],
                     "gross_cents": p["gross_cents"], "usage_cents": d.usage_cents, "corrects": None, "reason": None,
                     "payment_means": d.payment_means, "recipient": d.recipient,
                     "plan_from": d.plan_from.isoformat() if d.plan_from else None, "language": d.language,
                     "at": at.isoformat() if at else None})
    ids = {r["tenant_id"]: r["id"] for r in conn.execute(_STORE, {"rows": Jsonb(rows)})}
    lines, ledger, debits, corrections = [], [], [], []
    for d, row, p in zip(batch, rows, priced, strict=True):
        inv = ids[d.tenant_id]
        row["id"] = inv
        lines += [{"invoice_id": inv, **ln} for ln in p["lines"]]
        corrections += [{"id": c, "inv": inv} for c in d.corrections]
        beyond = row["gross_cents"] - d.usage_cents
        if beyond:
            ledger.append(calls.book_row(d.tenant_id, -beyond, "invoice", f"invoice:{row['number']}", inv, at))
        if d.mandate_id is not None and row["gross_cents"] > 0:
            debits.append({"t": d.tenant_id, "m": d.mandate_id, "ref": f"invoice:{row['number']}", "inv": inv,
                           "a": row["gross_cents"], "due": row["due_on"]})
    if lines:
        conn.execute(_STORE_LINES, {"rows": Jsonb(lines)})
    if corrections:                   # billed now, never again
        conn.execute("""UPDATE ledger l SET invoice_id = r.inv FROM jsonb_to_recordset(%(rows)s::jsonb)
                               AS r(id bigint, inv bigint) WHERE l.id = r.id AND l.invoice_id IS NULL""",
                     {"rows": Jsonb(corrections)})
    money.post_many(conn, ledger)
    if debits:
        conn.execute("""INSERT INTO direct_debits (tenant_id, mandate_id, purpose, ref, invoice_id, amount_cents,
                                                   due_on)
                        SELECT t, m, 'invoice', ref, inv, a, due FROM jsonb_to_recordset(%(rows)s::jsonb)
                               AS r(t bigint, m bigint, ref text, inv bigint, a bigint, due date)""",
                     {"rows": Jsonb(debits)})
    return rows, len(debits)


def run(conn: psycopg.Connection, period: dt.date, issued_on: dt.date, *, due_days: int = 14,
        tenant_id: int | None = None, at: dt.datetime | None = None, batch: int = BATCH,
        today: dt.date | None = None) -> RunResult:
    """Invoice month ``period`` for every postpaid tenant not invoiced yet,
    issued on ``issued_on``: after the month, and never after ``today`` (the
    clock's date by default) — an invoice dated ahead would take numbers of
    days to come and leave the rest of a running month unbilled.
    ``conn`` is in autocommit mode: each batch is its own transaction."""
    today = today or dt.date.today()
    if issued_on > today:
        raise DustelError("date", f"{issued_on} is after today ({today}): invoices are issued on the day they "
                                  "are made; invoice preview shows what a month would bill")
    if issued_on < next_month(period):
        raise DustelError("month", f"{period:%Y-%m} has not ended on {issued_on}; invoices are issued after it")
    with conn.transaction():          # one snapshot: a call's charge and its correction seen together
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        all_drafts = drafts(conn, period, tenant_id)
    issued: list[dict[str, Any]] = []
    n_debits = 0
    for i in range(0, len(all_drafts), batch):
        with conn.transaction():
            rows, nd = store(conn, all_drafts[i:i + batch], issued_on, due_days, at)
        issued += rows
        n_debits += nd
    return RunResult(f"{period:%Y-%m}", len(issued), [r["number"] for r in issued],
                     sum(r["gross_cents"] for r in issued), n_debits,
                     [r["tenant_id"] for r in issued
                      if r["payment_means"] == "transfer" and r["recipient"]["customer_type"] != "public_body"])


def credit_note(conn: psycopg.Connection, number: str, reason: str, amount_cents: int | None,
                issued_on: dt.date) -> dict[str, Any]:
    """A credit note against invoice ``number``: its whole amount (None) or
    ``amount_cents`` in the invoice's prices (net for business, gross for
    private).  Never more than what is left uncredited."""
    inv = conn.execute("SELECT * FROM invoices WHERE number = %s AND kind = 'invoice' FOR UPDATE",
                       (number,)).fetchone()
    if inv is None:
        raise DustelError("invoice", f"no invoice {number}")
    reason_text = validate.edge("reason", reason).strip()
    if not 1 <= len(reason_text) <= 200:
        raise DustelError("reason", "must be 1 to 200 characters of text on one line")
    # a credit note is a document of its own day: in the tenant's language then
    lang = conn.execute("SELECT language FROM tenants WHERE id = %s", (inv["tenant_id"],)).fetchone()["language"]
    done = conn.execute("""SELECT coalesce(sum(gross_cents), 0)::bigint AS gross,
                                  coalesce(sum(net_cents), 0)::bigint AS net
                             FROM invoices WHERE corrects = %s""", (inv["id"],)).fetchone()
    credited = done["gross"]
    if amount_cents is None:          # all that is left: exactly, whatever the rounding of earlier notes
        gross = inv["gross_cents"] - credited
        net = inv["net_cents"] - done["net"]
        vat = gross - net
        amount = net if inv["prices_net"] else gross
    else:
        amount = amount_cents
        _, net, vat, gross = money.vat_split([amount], inv["prices_net"], inv["vat_percent"])
    if amount <= 0 or gross <= 0:
        raise DustelError("amount", "must be more than 0" if amount_cents is not None
                          else f"nothing of {number} is left uncredited")
    if gross + credited > inv["gross_cents"]:
        raise DustelError("amount", f"credits {money.eur(gross)} EUR gross, but only "
                                    f"{money.eur(inv['gross_cents'] - credited)} EUR of {number} are left uncredited")
    (num,) = _take(conn, "GS", issued_on.year, _counter(conn, "GS", issued_on.year), 1)
    row = conn.execute(
        """INSERT INTO invoices (number, kind, tenant_id, period, issued_on, due_on, prices_net, vat_percent,
                                 net_cents, vat_cents, gross_cents, corrects, reason, payment_means, recipient,
                                 language)
           VALUES (%s, 'credit_note', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *""",
        (num, inv["tenant_id"], inv["period"], issued_on, issued_on, inv["prices_net"], inv["vat_percent"],
         net, vat, gross, inv["id"], reason_text, inv["payment_means"], Jsonb(inv["recipient"]), lang)).fetchone()
    conn.execute("""INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, unit_cents,
                                               amount_cents, net_cents, period_start, period_end)
                    VALUES (%s, 1, 'correction', %s, 1, %s, %s, %s, %s, %s)""",
                 (row["id"], texts.of(lang)("line.credit", number=number, reason=reason_text), amount, amount, net,
                  inv["period"], last_day(inv["period"])))
    money.post(conn, inv["tenant_id"], gross, "credit_note", f"credit_note:{num}", invoice_id=row["id"])
    # a credit for an invoice still to be collected lowers the debit, or drops
    # it when nothing is left to collect: one decision on the amount before
    # the credit (a delete after the update compared the lowered amount)
    conn.execute("""WITH d AS (DELETE FROM direct_debits WHERE invoice_id = %(inv)s AND state = 'pending'
                                                         AND amount_cents <= %(g)s RETURNING id)
                    UPDATE direct_debits SET amount_cents = amount_cents - %(g)s
                     WHERE invoice_id = %(inv)s AND state = 'pending' AND amount_cents > %(g)s""",
                 {"inv": inv["id"], "g": gross})
    return dict(row)


def close_plan(conn: psycopg.Connection, tenant_id: int, at: dt.datetime, *, due_days: int = 14,
               first_month: dt.date | None = None) -> list[str]:
    """Close the postpaid plan a tenant leaves at ``at`` with its own
    invoices, in the caller's transaction (the plan change's): every month
    of the plan not invoiced yet — from ``first_month`` (billing_first_month)
    on, or else from the month before the change (the scheduler bills
    nothing older on its own either) — then the running month with the
    usage of the calls made under it and no fees in advance (they were
    billed the month before).  Refused while one of the tenant's calls is
    up — made under this plan, it would settle after the plan's last
    invoice.  A prepaid plan has nothing to close.  Returns the numbers."""
    te = conn.execute("""SELECT t.*, p.payment FROM tenants t JOIN plans p ON p.code = t.plan
                          WHERE t.id = %s""", (tenant_id,)).fetchone()
    if te is None or te["payment"] != "postpaid":
        return []
    # the money row's lock: no call of the tenant is admitted until the change commits
    conn.execute("SELECT 1 FROM tenant_money WHERE tenant_id = %s FOR UPDATE", (tenant_id,))
    up = conn.execute("SELECT count(*) AS n FROM calls WHERE tenant_id = %s AND state = 'active'",
                      (tenant_id,)).fetchone()["n"]
    if up:
        raise DustelError("plan", f"tenant {tenant_id} has {up} call(s) in progress, billed by the plan they were "
                                  "made under; change the plan when they have ended")
    today = at.astimezone(ZoneInfo(te["timezone"])).date()
    start = te["plan_changed_at"].astimezone(ZoneInfo(te["timezone"])).date() if te["plan_changed_at"] \
        else te["created_on"]
    last = conn.execute("""SELECT max(period) AS p FROM invoices WHERE tenant_id = %s AND kind = 'invoice'
                              AND plan_from IS NOT DISTINCT FROM %s""", (tenant_id, te["plan_changed_at"])).fetchone()
    floor = first_month or (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    month = max(start.replace(day=1), next_month(last["p"]) if last["p"] else floor, floor)
    numbers: list[str] = []
    while month <= today:
        rows, _ = store(conn, drafts(conn, month, tenant_id, until=today if month == today.replace(day=1) else None),
                        today, due_days)
        numbers += [r["number"] for r in rows]
        month = next_month(month)
    return numbers


def document(conn: psycopg.Connection, number: str, tenant_id: int | None = None) \
        -> tuple[dict[str, Any], dict[str, Any] | None]:
    """An invoice or credit note with the mandate its PDF and XML name (a
    credit note: its invoice's); with ``tenant_id`` another tenant's is no
    invoice (the same error as a number that does not exist)."""
    inv = get(conn, number)
    if tenant_id is not None and inv["tenant_id"] != tenant_id:
        raise DustelError("invoice", f"no invoice or credit note {number}")
    from . import sepa
    return inv, sepa.mandate_of_invoice(conn, inv["corrects"] or inv["id"])


def get(conn: psycopg.Connection, number: str) -> dict[str, Any]:
    inv = conn.execute("""SELECT i.*, c.number AS corrects_number FROM invoices i
                            LEFT JOIN invoices c ON c.id = i.corrects WHERE i.number = %s""", (number,)).fetchone()
    if inv is None:
        raise DustelError("invoice", f"no invoice or credit note {number}")
    inv = dict(inv)
    inv["lines"] = conn.execute("SELECT * FROM invoice_lines WHERE invoice_id = %s ORDER BY position",
                                (inv["id"],)).fetchall()
    return inv


def listing(conn: psycopg.Connection, tenant_id: int | None, month: dt.date | None) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT number, kind, tenant_id, period, issued_on, due_on, net_cents, vat_cents, gross_cents,
                  payment_means FROM invoices
            WHERE (%(t)s::bigint IS NULL OR tenant_id = %(t)s) AND (%(m)s::date IS NULL OR period = %(m)s)
            ORDER BY issued_on, number""", {"t": tenant_id, "m": month}).fetchall()


def as_dict(r: RunResult) -> dict[str, Any]:
    return asdict(r)
