"""Money that reaches us other than by direct debit (SPEC F-09): bank
statement lines (CSV import), PayPal, Giropay and Klarna payments.

Statement CSV (UTF-8 or Windows-1252): a header line with the columns ``date`` (YYYY-MM-DD or
DD.MM.YYYY), ``amount`` (EUR, ``12.34`` or ``12,34``, negative for money
going out), ``reference`` (what the payer wrote), ``transaction_id`` (the
bank's id of the line; a line imported before is skipped), and optionally
``name`` and ``iban``; comma or semicolon separated.  Every line is checked
before anything is written: one bad line refuses the file, naming the line
(the physical line it starts on) and the field.  Every cell meets the edge
rule (``validate.edge``: no control character, line or paragraph break)
before its column's own rule, as a CLI option does.  Matching, in this
order:

1. ``DD-<n>`` with a negative amount: the bank returned direct debit n →
   booked back with the return fee (``sepa.return_debit``);
2. an invoice number ``RE-YYYY-NNNNNN``: a payment of that invoice;
3. a customer number ``KD-<tenant>``: a top-up (prepaid) or a payment on
   account (postpaid);
4. anything else is kept as an ``unmatched`` payment for a person to look
   at — never dropped.

PayPal: a customer's first PayPal payment is held until it is cleared
(``payment clear``); later ones, Giropay and Klarna are credited at once.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from ..errors import DustelError
from ..provisioning import validate
from . import invoices, money, sepa

METHODS = ("transfer", "paypal", "giropay", "klarna")


@dataclass(frozen=True)
class StatementLine:
    line: int
    date: dt.date
    cents: int
    reference: str
    transaction_id: str
    name: str
    iban: str


def _date(field: str, text: str) -> dt.date:
    for fmt in ("%Y-%m-%d", "%d.%m.%Y"):
        try:
            return dt.datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            pass
    raise DustelError(field, "must be a date YYYY-MM-DD or DD.MM.YYYY")


REQUIRED = {"date", "amount", "reference", "transaction_id"}      # and optionally name, iban


def _records(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """The CSV records of ``text`` with the physical line each starts on
    (a quoted cell may span lines; blank lines are skipped).  A CR alone in
    an unquoted cell, which the csv module cannot read past, meets the edge
    rule like any cell's control character, named by its line and column."""
    text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)       # lines end at LF alone
    header: list[str] = []
    last = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = lines[reader.line_num - 1] if 0 < reader.line_num <= len(lines) else ""
            if "\r" in line:
                cells = next(csv.reader([line[:line.index("\r")]], delimiter=delimiter), [])
                column = header[len(cells) - 1] if 0 < len(cells) <= len(header) else "cell"
                validate.edge(f"statement line {reader.line_num} {column}", "\r")
            raise DustelError(f"statement line {reader.line_num}", f"is not CSV ({exc})") from None
        start, last = last + 1, reader.line_num
        if row:
            if not header:
                header = [c.strip().lower() for c in row]
            yield start, row


def read_statement(data: bytes) -> list[StatementLine]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:                                  # what German online banking exports as often
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            raise DustelError("statement", "must be UTF-8 or Windows-1252 text") from None
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = ";" if first.count(";") > first.count(",") else ","
    records = _records(text, delimiter)
    n, head = next(records, (1, []))
    cols = [validate.edge(f"statement line {n} header", c).strip().lower() for c in head]
    missing = REQUIRED - set(cols)
    if missing:
        raise DustelError("statement", f"the header lacks the column(s) {', '.join(sorted(missing))}")
    out, seen = [], set()
    for i, cells in records:
        where = f"statement line {i}"
        if len(cells) > len(cols):
            raise DustelError(where, f"has {len(cells)} cells, the header names {len(cols)} (a cell holding "
                                     f"'{delimiter}' must be quoted)")
        # every cell meets the one edge rule first, named by its line and column
        row = {c: validate.edge(f"{where} {c}", v).strip() for c, v in zip(cols, cells, strict=False)}
        cents = money.signed_cents(f"{where} amount", row.get("amount", ""))
        if cents == 0:
            raise DustelError(f"{where} amount", "must not be 0")
        tx = row.get("transaction_id", "")
        if not tx or len(tx) > 100:
            raise DustelError(f"{where} transaction_id", "must be 1 to 100 characters")
        if tx in seen:
            raise DustelError(f"{where} transaction_id", f"{tx} is in the file twice")
        seen.add(tx)
        if len(row.get("reference", "")) > 300:
            raise DustelError(f"{where} reference", "must be at most 300 characters")
        out.append(StatementLine(i, _date(f"{where} date", row.get("date", "")), cents, row.get("reference", ""), tx,
                                 row.get("name", "")[:140], row.get("iban", "")[:34]))
    return out


def import_statement(conn: psycopg.Connection, lines: list[StatementLine], return_fee_cents: int) -> dict[str, Any]:
    """Book the lines in the caller's transaction; returns what happened."""
    result: dict[str, list[Any]] = {"paid": [], "topped_up": [], "returned": [], "unmatched": [], "skipped": []}
    for ln in lines:
        ref = f"bank:{ln.transaction_id}"
        if conn.execute("SELECT 1 FROM payments WHERE ref = %s UNION ALL SELECT 1 FROM ledger WHERE ref = %s",
                        (ref, ref)).fetchone():
            result["skipped"].append(ln.transaction_id)
            continue
        d = sepa.END_TO_END.search(ln.reference)
        if ln.cents < 0:
            if d:
                debit = conn.execute("SELECT * FROM direct_debits WHERE id = %s", (int(d.group(1)),)).fetchone()
                # a collected debit of that amount; a second notice of a return is left to a person
                if debit is not None and debit["amount_cents"] == -ln.cents and debit["state"] == "collected":
                    sepa.return_debit(conn, debit["id"], return_fee_cents)
                    conn.execute("""INSERT INTO payments (tenant_id, method, amount_cents, ref, reference, state,
                                                          invoice_id, received_on)
                                    VALUES (%s, 'transfer', %s, %s, %s, 'credited', %s, %s)""",
                                 (debit["tenant_id"], ln.cents, ref, ln.reference, debit["invoice_id"], ln.date))
                    result["returned"].append(debit["id"])
                    continue
            _unmatched(conn, ln, ref)
            result["unmatched"].append(ln.line)
            continue
        inv = None
        m = invoices.NUMBER.search(ln.reference)
        if m:
            inv = conn.execute("SELECT id, tenant_id FROM invoices WHERE number = %s AND kind = 'invoice'",
                               (m.group(0),)).fetchone()
        tenant_id = inv["tenant_id"] if inv else None
        if tenant_id is None:
            c = money.CUSTOMER_NUMBER.search(ln.reference)
            if c and conn.execute("SELECT 1 FROM tenants WHERE id = %s", (int(c.group(1)),)).fetchone():
                tenant_id = int(c.group(1))
        if tenant_id is None:
            _unmatched(conn, ln, ref)
            result["unmatched"].append(ln.line)
            continue
        kind = _book(conn, tenant_id, ln.cents, "transfer", ref, ln.reference, inv["id"] if inv else None, ln.date)
        result["paid" if kind == "payment" else "topped_up"].append(ln.line)
    return result


def _unmatched(conn: psycopg.Connection, ln: StatementLine, ref: str) -> None:
    conn.execute("""INSERT INTO payments (tenant_id, method, amount_cents, ref, reference, state, received_on)
                    VALUES (NULL, 'transfer', %s, %s, %s, 'unmatched', %s)""",
                 (ln.cents, ref, f"{ln.reference} [{ln.name} {ln.iban}]".strip(), ln.date))


def received_kind(conn: psycopg.Connection, tenant_id: int) -> str:
    """Money received is prepaid credit (``topup``) or pays what a postpaid
    tenant owes (``payment``)."""
    prepaid = conn.execute("SELECT p.payment = 'prepaid' AS p FROM tenants t JOIN plans p ON p.code = t.plan "
                           "WHERE t.id = %s", (tenant_id,)).fetchone()["p"]
    return "topup" if prepaid else "payment"


def _book(conn: psycopg.Connection, tenant_id: int, cents: int, method: str, ref: str, reference: str,
          invoice_id: int | None, received_on: dt.date, held: bool = False) -> str:
    kind = received_kind(conn, tenant_id)
    conn.execute("""INSERT INTO payments (tenant_id, method, amount_cents, ref, reference, state, invoice_id,
                                          received_on)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                 (tenant_id, method, cents, ref, reference, "held" if held else "credited", invoice_id, received_on))
    if not held:
        money.post(conn, tenant_id, cents, kind, ref, invoice_id=invoice_id)
    return kind


def add(conn: psycopg.Connection, tenant_id: int, cents: int, method: str, transaction_id: str,
        received_on: dt.date, invoice_number: str | None = None) -> dict[str, Any]:
    """A payment reported by a payment provider (or a transfer by hand)."""
    if method not in METHODS:
        raise DustelError("method", f"must be one of {', '.join(METHODS)}")
    if cents <= 0:
        raise DustelError("amount", "must be more than 0")
    if not validate.edge("ref", transaction_id) or len(transaction_id) > 100 or " " in transaction_id:
        raise DustelError("ref", "must be 1 to 100 characters without spaces")
    if conn.execute("SELECT 1 FROM tenants WHERE id = %s FOR UPDATE", (tenant_id,)).fetchone() is None:
        raise DustelError("tenant", f"no tenant {tenant_id}")
    invoice_id = None
    if invoice_number:
        inv = conn.execute("SELECT id FROM invoices WHERE number = %s AND tenant_id = %s AND kind = 'invoice'",
                           (invoice_number, tenant_id)).fetchone()
        if inv is None:
            raise DustelError("invoice", f"tenant {tenant_id} has no invoice {invoice_number}")
        invoice_id = inv["id"]
    ref = f"{method}:{transaction_id}"
    old = conn.execute("SELECT * FROM payments WHERE ref = %s", (ref,)).fetchone()
    if old is not None:
        return {**old, "applied": False}
    held = method == "paypal" and not conn.execute(
        "SELECT 1 FROM payments WHERE tenant_id = %s AND method = 'paypal' AND state = 'credited'",
        (tenant_id,)).fetchone()
    _book(conn, tenant_id, cents, method, ref, transaction_id, invoice_id, received_on, held=held)
    return {**conn.execute("SELECT * FROM payments WHERE ref = %s", (ref,)).fetchone(), "applied": True}


def clear(conn: psycopg.Connection, payment_id: int) -> dict[str, Any]:
    """A held payment cleared: credit it."""
    p = conn.execute("SELECT * FROM payments WHERE id = %s FOR UPDATE", (payment_id,)).fetchone()
    if p is None:
        raise DustelError("payment", f"no payment {payment_id}")
    if p["state"] != "held":
        raise DustelError("payment", f"payment {payment_id} is {p['state']}, not held")
    conn.execute("UPDATE payments SET state = 'credited' WHERE id = %s", (payment_id,))
    money.post(conn, p["tenant_id"], p["amount_cents"], received_kind(conn, p["tenant_id"]), p["ref"],
               invoice_id=p["invoice_id"])
    return {**p, "state": "credited"}
