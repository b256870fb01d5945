"""SEPA direct debit (SPEC F-09): mandates, the debits (invoices of postpaid
tenants, automatic top-ups of prepaid ones), the pain.008 file per
collection date, collection on the due date and returns.

A debit's life: ``pending`` (queued) → ``exported`` (in a pain.008 file
handed to the bank; its sequence FRST for a mandate's first debit, RCUR
after) → ``collected`` on its due date (booked: a top-up or an invoice
payment) → ``returned`` if the bank takes it back (booked back, plus the
return fee).  IBAN and BIC are checked with ``schwifty``; the file is built
with ``sepaxml`` and validated against its pain.008.001.08 schema before
anything is marked exported.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import psycopg

from ..errors import DustelError
from ..provisioning import validate
from . import money
from .einvoice import Issuer

SCHEMA = "pain.008.001.08"


def check_iban(value: str) -> str:
    from schwifty import IBAN
    from schwifty.exceptions import SchwiftyException
    try:
        return str(IBAN(value.replace(" ", "")).compact)
    except SchwiftyException as exc:
        raise DustelError("iban", f"not a valid IBAN ({exc})") from None


def check_bic(value: str | None, iban: str) -> str:
    from schwifty import BIC, IBAN
    from schwifty.exceptions import SchwiftyException
    if not value:
        bic = IBAN(iban).bic
        if bic is None:
            raise DustelError("bic", "required: the bank of this IBAN is not in schwifty's registry")
        return str(bic)
    try:
        return str(BIC(value.strip().upper()))
    except SchwiftyException as exc:
        raise DustelError("bic", f"not a valid BIC ({exc})") from None


# A mandate reference (MndtId, EPC AT-01) as the EPC's pain.008 schema has
# it (RestrictedIdentificationSEPA2; sepaxml's pain.008.001.08 schema says
# only Max35Text, so it would pass anything): the SEPA Latin characters
# without the space a message or end-to-end id may hold.  Migration 0024's
# CHECK on sepa_mandates.reference is the database's copy.
MANDATE_CHARACTERS = "A-Z a-z 0-9 / - ? : ( ) . , ' +"
_MANDATE_ID = re.compile(r"[A-Za-z0-9/?:().,'+-]+")


def mandate_reference(field: str, value: str) -> str:
    """A SEPA mandate reference: 1 to 35 of the EPC's identifier characters
    (no space), never starting or ending with '/' nor holding '//' (the
    EPC's rule for every reference and identifier).  Banks compare it
    without case (the uniqueness check does too)."""
    if not 1 <= len(value) <= 35:
        raise DustelError(field, f"must be 1 to 35 characters (a SEPA mandate reference), not {len(value)}")
    if not _MANDATE_ID.fullmatch(value):
        bad = next(ch for ch in value if not _MANDATE_ID.fullmatch(ch))
        shown = f"'{bad}' (U+{ord(bad):04X})" if bad.isprintable() and bad != " " else f"U+{ord(bad):04X}"
        raise DustelError(field, f"must hold only the SEPA characters {MANDATE_CHARACTERS} (no space); "
                                 f"{shown} is not one")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise DustelError(field, "must not start or end with '/' nor hold '//' (the EPC rule for SEPA identifiers)")
    return value


def add_mandate(conn: psycopg.Connection, tenant_id: int, *, holder: str, iban: str, bic: str | None,
                signed_on: dt.date, reference: str | None) -> dict[str, Any]:
    te = conn.execute("SELECT id, customer_type FROM tenants WHERE id = %s FOR UPDATE", (tenant_id,)).fetchone()
    if te is None:
        raise DustelError("tenant", f"no tenant {tenant_id}")
    if te["customer_type"] == "public_body":
        raise DustelError("tenant", "public bodies pay by invoice (bank transfer), not by direct debit")
    iban = check_iban(iban)
    bic = check_bic(bic, iban)
    holder = validate.edge("holder", holder).strip()
    if not 1 <= len(holder) <= 70:
        raise DustelError("holder", "must be 1 to 70 characters on one line")
    if signed_on > dt.date.today():
        raise DustelError("signed_on", "must not be in the future")
    if conn.execute("SELECT 1 FROM sepa_mandates WHERE tenant_id = %s AND revoked_on IS NULL",
                    (tenant_id,)).fetchone():
        raise DustelError("tenant", f"tenant {tenant_id} has an active mandate; revoke it first")
    if reference is None:
        n = conn.execute("SELECT count(*) AS n FROM sepa_mandates WHERE tenant_id = %s", (tenant_id,)).fetchone()["n"]
        reference = f"DUSTEL-{tenant_id}-{n + 1}"
    mandate_reference("reference", reference)
    used = conn.execute("SELECT reference FROM sepa_mandates WHERE upper(reference) = upper(%s)",
                        (reference,)).fetchone()
    if used:
        raise DustelError("reference", f"{reference} is used already" + (
            "" if used["reference"] == reference else f" as {used['reference']} (banks ignore case)"))
    return conn.execute(
        """INSERT INTO sepa_mandates (tenant_id, reference, holder, iban, bic, signed_on)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING *""",
        (tenant_id, reference, holder, iban, bic, signed_on)).fetchone()


def revoke_mandate(conn: psycopg.Connection, reference: str, on: dt.date) -> dict[str, Any]:
    """Revoke; debits not yet handed to the bank are dropped (an invoice's
    amount then stays open, to be paid by transfer)."""
    m = conn.execute("UPDATE sepa_mandates SET revoked_on = %s WHERE reference = %s AND revoked_on IS NULL "
                     "RETURNING *", (on, reference)).fetchone()
    if m is None:
        raise DustelError("mandate", f"no active mandate {reference}")
    dropped = conn.execute("DELETE FROM direct_debits WHERE mandate_id = %s AND state = 'pending' RETURNING id",
                           (m["id"],)).fetchall()
    return {**m, "debits_dropped": len(dropped)}


def active_mandate(conn: psycopg.Connection, tenant_id: int) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM sepa_mandates WHERE tenant_id = %s AND revoked_on IS NULL",
                        (tenant_id,)).fetchone()


def mandate_of_invoice(conn: psycopg.Connection, invoice_id: int) -> dict[str, Any] | None:
    return conn.execute("""SELECT m.* FROM direct_debits d JOIN sepa_mandates m ON m.id = d.mandate_id
                            WHERE d.invoice_id = %s ORDER BY d.id LIMIT 1""", (invoice_id,)).fetchone()


# ---------------------------------------------------------------- top-up

_AUTOTOPUP = """
INSERT INTO direct_debits (tenant_id, mandate_id, purpose, ref, amount_cents, due_on)
SELECT t.id, m.id, 'autotopup', 'autotopup:' || t.id || ':' || %(night)s::date, bp.autotopup_amount_cents,
       %(night)s::date + %(lead)s
  FROM tenants t
  JOIN plans p ON p.code = t.plan AND p.payment = 'prepaid'
  JOIN billing_profiles bp ON bp.tenant_id = t.id AND bp.autotopup_threshold_cents IS NOT NULL
  JOIN sepa_mandates m ON m.tenant_id = t.id AND m.revoked_on IS NULL
  JOIN tenant_money tm ON tm.tenant_id = t.id
 WHERE tm.balance_cents - tm.reserved_cents
       + coalesce((SELECT sum(d.amount_cents) FROM direct_debits d
                    WHERE d.tenant_id = t.id AND d.purpose = 'autotopup' AND d.state IN ('pending', 'exported')), 0)
       < bp.autotopup_threshold_cents
ON CONFLICT (ref) DO NOTHING
RETURNING tenant_id, amount_cents, due_on"""


def autotopup(conn: psycopg.Connection, night: dt.date, lead_days: int) -> list[dict[str, Any]]:
    """Queue a top-up debit for every prepaid tenant whose money (with the
    top-ups already on their way) is below its threshold.  The reference
    ``autotopup:<tenant>:<night>`` makes a second run for the same night —
    even one racing this one — queue nothing."""
    return conn.execute(_AUTOTOPUP, {"night": night, "lead": lead_days}).fetchall()


# ---------------------------------------------------------------- export

@dataclass(frozen=True)
class Export:
    message_id: str
    collection_date: dt.date
    count: int
    total_cents: int
    xml: bytes


def export(conn: psycopg.Connection, collection_date: dt.date, issuer: Issuer, today: dt.date) -> Export | None:
    """The pain.008 file of every pending debit due by ``collection_date``
    (later ones wait for their date), marked exported in the caller's
    transaction only after the file validated.  None: nothing to collect."""
    from sepaxml import SepaDD

    if collection_date <= today:
        raise DustelError("date", f"the collection date must be after today ({today}); a bank needs notice")
    rows = conn.execute(
        """SELECT d.*, m.reference AS mandate_ref, m.signed_on, m.iban, m.bic, m.holder,
                  EXISTS (SELECT 1 FROM direct_debits e WHERE e.mandate_id = d.mandate_id
                            AND e.state IN ('exported', 'collected', 'returned')) AS used_before
             FROM direct_debits d JOIN sepa_mandates m ON m.id = d.mandate_id
            WHERE d.state = 'pending' AND d.due_on <= %s AND m.revoked_on IS NULL
            ORDER BY d.id FOR UPDATE OF d""", (collection_date,)).fetchall()
    if not rows:
        return None
    for r in rows:                    # a mandate filed before the rule (migration 0024) would fail at the bank
        try:
            mandate_reference("reference", r["mandate_ref"])
        except DustelError as exc:
            raise DustelError(f"mandate {r['mandate_ref']}", f"{exc.rule}: filed before this rule, it cannot be "
                                                             f"collected; tenant {r['tenant_id']} needs a new mandate "
                                                             "(mandate revoke, mandate add)") from None
    sepa = SepaDD({"name": issuer.name, "IBAN": check_iban(issuer.iban), "BIC": issuer.bic, "batch": True,
                   "creditor_id": issuer.creditor_id, "currency": "EUR"}, schema=SCHEMA, clean=True)
    seq = {}
    for r in rows:
        seq[r["id"]] = "RCUR" if r["used_before"] else "FRST"
        what = (f"Rechnung {r['ref'].split(':', 1)[1]}" if r["purpose"] == "invoice"
                else f"Aufladung Guthaben {r['ref'].rsplit(':', 1)[1]}")
        sepa.add_payment({"name": r["holder"], "IBAN": r["iban"], "BIC": r["bic"], "amount": int(r["amount_cents"]),
                          "type": seq[r["id"]], "collection_date": collection_date, "mandate_id": r["mandate_ref"],
                          "mandate_date": r["signed_on"],
                          "description": f"{what} {money.customer_number(r['tenant_id'])}",
                          "endtoend_id": end_to_end(r["id"])})
    try:
        xml = sepa.export(validate=True)
    except Exception as exc:   # sepaxml raises plain exceptions with the schema's message
        raise DustelError("sepa", f"the pain.008 does not validate: {exc}") from None
    msg_id = message_id(xml)
    for r in rows:
        conn.execute("""UPDATE direct_debits SET state = 'exported', sequence = %s, export_id = %s, due_on = %s
                         WHERE id = %s""", (seq[r["id"]], msg_id, collection_date, r["id"]))
    return Export(msg_id, collection_date, len(rows), sum(int(r["amount_cents"]) for r in rows), xml)


def message_id(xml: bytes) -> str:
    """The file's own GrpHdr/MsgId: what the bank's pain.002 names, and so
    what dustel stores and prints for the export."""
    from lxml import etree
    found = etree.fromstring(xml).findtext("p:CstmrDrctDbtInitn/p:GrpHdr/p:MsgId",
                                           namespaces={"p": f"urn:iso:std:iso:20022:tech:xsd:{SCHEMA}"})
    if not found:
        raise DustelError("sepa", "the pain.008 has no GrpHdr/MsgId")
    return found


def end_to_end(debit_id: int) -> str:
    """The end-to-end id of a debit; a return names it (statement import)."""
    return f"DD-{debit_id}"


END_TO_END = re.compile(r"\bDD-(\d{1,12})\b")      # end_to_end's id in a statement line


def collect(conn: psycopg.Connection, today: dt.date) -> list[dict[str, Any]]:
    """Book the exported debits due by today: a top-up's credit, an
    invoice's payment.  Idempotent (the ledger reference ``dd:<id>``)."""
    rows = conn.execute("""UPDATE direct_debits SET state = 'collected'
                            WHERE state = 'exported' AND due_on <= %s
                            RETURNING id, tenant_id, purpose, amount_cents, invoice_id""", (today,)).fetchall()
    for r in rows:
        money.post(conn, r["tenant_id"], r["amount_cents"], "topup" if r["purpose"] == "autotopup" else "payment",
                   f"dd:{r['id']}", invoice_id=r["invoice_id"])
    return rows


def return_debit(conn: psycopg.Connection, debit_id: int, fee_cents: int) -> dict[str, Any]:
    """The bank took a collected debit back: book it back and the fee."""
    d = conn.execute("SELECT * FROM direct_debits WHERE id = %s FOR UPDATE", (debit_id,)).fetchone()
    if d is None:
        raise DustelError("debit", f"no direct debit {debit_id}")
    if d["state"] == "returned":
        return dict(d)
    if d["state"] != "collected":
        raise DustelError("debit", f"direct debit {debit_id} is {d['state']}; only a collected one can be returned")
    conn.execute("UPDATE direct_debits SET state = 'returned' WHERE id = %s", (debit_id,))
    money.post(conn, d["tenant_id"], -d["amount_cents"], "return", f"ddreturn:{debit_id}", invoice_id=d["invoice_id"])
    if fee_cents:
        money.post(conn, d["tenant_id"], -fee_cents, "fee", f"ddreturnfee:{debit_id}")
    return {**d, "state": "returned", "fee_cents": fee_cents}
