"""Money rules of billing, in one place: integer cents, the rounding rule,
the VAT split, and the one way a movement reaches the ledger.

Rounding (written down, as the issue asks):
- every amount is an integer number of cents; nothing goes through float;
- a division rounds half away from zero ("kaufmännisch"), in integers;
- business plans price net: VAT = round(net sum × 19 / 100), per invoice and
  rate, gross = net + VAT;
- private plans price gross: the gross sum is what the customer pays; the
  net sum = round(gross × 100 / 119), VAT = gross − net.  Each line's net
  amount (the e-invoice needs one) is rounded the same way, and the cent the
  lines' rounding leaves over goes to the largest line, so the lines' nets
  always add up to the invoice's net.
"""
from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import psycopg
from psycopg.types.json import Jsonb

from ..callpath import calls
from ..errors import DustelError


def div_round(n: int, d: int) -> int:
    """n / d rounded half away from zero, for integers (d > 0)."""
    q = (abs(n) * 2 + d) // (2 * d)
    return q if n >= 0 else -q


def vat_split(amounts: list[int], prices_net: bool, vat_percent: int) -> tuple[list[int], int, int, int]:
    """The lines' net amounts, and the document's net, VAT and gross."""
    if prices_net:
        net = sum(amounts)
        vat = div_round(net * vat_percent, 100)
        return list(amounts), net, vat, net + vat
    gross = sum(amounts)
    net = div_round(gross * 100, 100 + vat_percent)
    nets = [div_round(a * 100, 100 + vat_percent) for a in amounts]
    if nets:
        largest = max(range(len(nets)), key=lambda i: abs(amounts[i]))
        nets[largest] += net - sum(nets)
    return nets, net, gross - net, gross


def decimal_eur(cents: int) -> Decimal:
    """Cents as an exact EUR decimal with two places (for XML and files)."""
    return (Decimal(cents) / 100).quantize(Decimal("0.01"))


def eur(cents: int, plain: bool = False, *, lang: str = "de") -> str:
    """Cents as text, the sign in front of the whole amount: German style
    (1.234,56; documents, mails), English (1,234.56; an English invoice) or
    ``plain`` (1234.56).  Never through floor division of a negative number
    (-150 ct is -1,50)."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    if plain:
        return f"{sign}{whole}.{part:02d}"
    if lang == "en":
        return f"{sign}{whole:,}.{part:02d}"
    return f"{sign}{whole:,}".replace(",", ".") + f",{part:02d}"


_AMOUNT = re.compile(r"(-?)([0-9]{1,9})(?:[.,]([0-9]{1,2}))?")


def signed_cents(field: str, value: str) -> int:
    """A signed amount in EUR as text (12, -12,5, 12.50) to cents; a float
    with more places, thousands separators or exponents are refused."""
    m = _AMOUNT.fullmatch(value.strip())
    if not m:
        raise DustelError(field, "must be an amount in EUR with at most 2 decimal places, such as 49.90 or -12,50")
    cents = int(m.group(2)) * 100 + int((m.group(3) or "0").ljust(2, "0"))
    return -cents if m.group(1) else cents


def customer_number(tenant_id: int) -> str:
    """The reference a customer writes on a transfer (statement import)."""
    return f"KD-{tenant_id}"


CUSTOMER_NUMBER = re.compile(r"\bKD-(\d{1,12})\b")     # customer_number in a statement line


def post(conn: psycopg.Connection, tenant_id: int, cents: int, kind: str, ref: str, *,
         invoice_id: int | None = None, at: dt.datetime | None = None) -> bool:
    """Book one movement (``calls.BOOK``: the ledger row and the balance) in
    the caller's transaction.  A reference booked before is a no-op (False)."""
    return post_many(conn, [calls.book_row(tenant_id, cents, kind, ref, invoice_id, at)]) > 0


def post_many(conn: psycopg.Connection, rows: list[dict]) -> int:
    """Book many movements (``calls.book_row`` each) in one statement;
    returns how many tenants' balances moved."""
    return len(conn.execute(calls.BOOK, {"rows": Jsonb(rows)}).fetchall()) if rows else 0


def reconciles(conn: psycopg.Connection, tenant_id: int | None = None) -> list[dict]:
    """Tenants whose balance is not the sum of their ledger (should be none)."""
    return conn.execute(
        """SELECT m.tenant_id, m.balance_cents, coalesce(l.s, 0)::bigint AS ledger_cents
             FROM tenant_money m
             LEFT JOIN (SELECT tenant_id, sum(amount_cents) AS s FROM ledger GROUP BY tenant_id) l
                    ON l.tenant_id = m.tenant_id
            WHERE m.balance_cents <> coalesce(l.s, 0) AND (%(t)s::bigint IS NULL OR m.tenant_id = %(t)s)
            ORDER BY m.tenant_id""", {"t": tenant_id}).fetchall()
