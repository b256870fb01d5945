"""The invoice as documents: a readable PDF (fpdf2) with the EN 16931 data
embedded as Factur-X/ZUGFeRD (profile EN 16931, ``factur-x``), and the
XRechnung (CII syntax) for public bodies — the XML built with
``drafthorse`` and checked against the Factur-X EN 16931 schema it ships,
once, before anything is written (the tests check again with factur-x's
own copy of the schema).

The PDF is a PDF/A-3B written by fpdf2 alone (it enforces the rules while
it writes): DejaVu Sans embedded, an sRGB OutputIntent, XMP with the
Factur-X extension schema, the XML attached as factur-x.xml with the
relationship "Alternative" (the XML is the invoice, the PDF shows it).
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from ..config import Settings, require_issuer
from ..errors import DustelError
from . import texts
from .money import decimal_eur

FACTURX_GUIDELINE = "urn:cen.eu:en16931:2017"
XRECHNUNG_GUIDELINE = "urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0"


@dataclass(frozen=True)
class Issuer:
    name: str
    street: str
    postcode: str
    city: str
    vat_id: str
    email: str
    phone: str
    iban: str
    bic: str
    creditor_id: str

    @classmethod
    def of(cls, s: Settings) -> Issuer:
        return cls(s.issuer_name, s.issuer_street, s.issuer_postcode, s.issuer_city, s.issuer_vat_id,
                   s.issuer_email, s.issuer_phone, s.issuer_iban, s.issuer_bic, s.sepa_creditor_id)


def issuing(conn: psycopg.Connection, s: Settings) -> Issuer:
    """The issuer of what is about to be issued (invoices, direct debits):
    the demo's placeholders only in the demo (its tenants in the database)."""
    from ..provisioning import demo
    require_issuer(s, demo.is_loaded(conn))
    return Issuer.of(s)


def _d(cents: int) -> Decimal:
    return decimal_eur(cents)


def build_xml(inv: dict[str, Any], issuer: Issuer, *, xrechnung: bool = False,
              mandate: dict[str, Any] | None = None) -> bytes:
    """The CII XML of an invoice or credit note (``invoices.get``)."""
    from drafthorse.models.accounting import ApplicableTradeTax
    from drafthorse.models.document import Document
    from drafthorse.models.note import IncludedNote
    from drafthorse.models.party import TaxRegistration
    from drafthorse.models.payment import PaymentMeans, PaymentTerms
    from drafthorse.models.tradelines import LineItem

    rcp = inv["recipient"]
    if xrechnung and not rcp.get("leitweg_id"):
        raise DustelError("leitweg_id", f"tenant {inv['tenant_id']} has none; XRechnung needs the buyer's "
                                        "Leitweg-ID (dustel billing profile --leitweg-id)")
    if xrechnung and not rcp.get("email"):
        raise DustelError("email", f"tenant {inv['tenant_id']} has none; XRechnung 3.0 needs the buyer's "
                                   "electronic address (BT-49): dustel tenant set --email")
    credit = inv["kind"] == "credit_note"
    say = texts.of(inv["language"])
    doc = Document()
    doc.context.guideline_parameter.id = XRECHNUNG_GUIDELINE if xrechnung else FACTURX_GUIDELINE
    doc.header.id = inv["number"]
    doc.header.type_code = "381" if credit else "380"
    doc.header.issue_date_time = inv["issued_on"]
    note = IncludedNote()
    note.content = say("xml.note", customer=rcp["customer_number"], plan=rcp["plan"])
    doc.header.notes.add(note)

    ag = doc.trade.agreement
    ag.buyer_reference = rcp.get("leitweg_id") or rcp["customer_number"]
    seller = ag.seller
    seller.name = issuer.name
    seller.address.line_one = issuer.street
    seller.address.postcode = issuer.postcode
    seller.address.city_name = issuer.city
    seller.address.country_id = "DE"
    seller.electronic_address.uri_ID = ("EM", issuer.email)
    seller.tax_registrations.add(TaxRegistration(id=("VA", issuer.vat_id)))
    seller.contact.person_name = say("xml.contact")
    seller.contact.telephone.number = issuer.phone
    seller.contact.email.address = issuer.email
    buyer = ag.buyer
    buyer.name = rcp["name"]
    buyer.address.line_one = rcp.get("street") or ""
    buyer.address.postcode = rcp.get("postcode") or ""
    buyer.address.city_name = rcp.get("city") or ""
    buyer.address.country_id = "DE"
    if rcp.get("email"):
        buyer.electronic_address.uri_ID = ("EM", rcp["email"])
    if rcp.get("vat_id"):
        buyer.tax_registrations.add(TaxRegistration(id=("VA", rcp["vat_id"])))

    st = doc.trade.settlement
    st.currency_code = "EUR"
    st.payment_reference = inv["number"]
    period_start = min(ln["period_start"] for ln in inv["lines"])
    period_end = max(ln["period_end"] for ln in inv["lines"])
    st.period.start = period_start
    st.period.end = period_end
    doc.trade.delivery.event.occurrence = inv["issued_on"]
    pm = PaymentMeans()
    terms = PaymentTerms()
    if inv["payment_means"] == "sepa_dd" and mandate is not None and not credit:
        pm.type_code = "59"
        pm.payer_account.iban = mandate["iban"]
        st.creditor_reference_id = issuer.creditor_id
        terms.debit_mandate_id = mandate["reference"]
        terms.description = say("xml.debit", due=say.date(inv["due_on"]), mandate=mandate["reference"])
    else:
        pm.type_code = "58"
        pm.payee_account.iban = issuer.iban
        pm.payee_account.account_name = issuer.name
        pm.payee_institution.bic = issuer.bic
        terms.description = (say("pay.credited") if credit else
                             say("xml.transfer", due=say.date(inv["due_on"]), number=inv["number"]))
    if not credit:
        terms.due = inv["due_on"]
    st.payment_means.add(pm)
    st.terms.add(terms)
    if credit and inv.get("corrects_number"):
        st.invoice_referenced_document.issuer_assigned_id = inv["corrects_number"]

    rate = Decimal(inv["vat_percent"]).quantize(Decimal("0.00"))
    for ln in inv["lines"]:
        li = LineItem()
        li.document.line_id = str(ln["position"])
        li.product.name = ln["description"]
        qty = Decimal(ln["quantity"])
        price = (Decimal(ln["net_cents"]) / 100 / qty).quantize(Decimal("0.0001")) if qty else Decimal("0.0000")
        li.agreement.net.amount = price
        if price < 0:
            raise DustelError("e-invoice", f"line {ln['position']} of {inv['number']} has a negative net price "
                                           "(EN 16931 BR-27: a refund is a negative quantity)")
        li.delivery.billed_quantity = (qty.quantize(Decimal("0.0000")), "C62")
        li.settlement.trade_tax.type_code = "VAT"
        li.settlement.trade_tax.category_code = "S"
        li.settlement.trade_tax.rate_applicable_percent = rate
        li.settlement.period.start = ln["period_start"]
        li.settlement.period.end = ln["period_end"]
        li.settlement.monetary_summation.total_amount = _d(ln["net_cents"])
        doc.trade.items.add(li)
    tax = ApplicableTradeTax()
    tax.calculated_amount = _d(inv["vat_cents"])
    tax.basis_amount = _d(inv["net_cents"])
    tax.type_code = "VAT"
    tax.category_code = "S"
    tax.rate_applicable_percent = rate
    st.trade_tax.add(tax)
    ms = st.monetary_summation
    ms.line_total = _d(inv["net_cents"])
    ms.charge_total = _d(0)
    ms.allowance_total = _d(0)
    ms.tax_basis_total = _d(inv["net_cents"])
    ms.tax_total = (_d(inv["vat_cents"]), "EUR")
    ms.grand_total = _d(inv["gross_cents"])
    ms.due_amount = _d(inv["gross_cents"])
    from lxml import etree
    try:
        return doc.serialize(schema="FACTUR-X_EN16931")     # validated against the schema, once, here
    except etree.XMLSyntaxError as exc:
        raise DustelError("e-invoice", f"the XML does not validate: {exc}") from None


DATA = Path(__file__).resolve().parent.parent / "data"
# DejaVu Sans 2.37 (Bitstream Vera licence, DejaVu changes public domain:
# data/DejaVu-LICENSE.txt), embedded as a subset: PDF/A needs every font
# embedded, and it prints every name a tenant may have (no Latin-1 fallback)
FONT = "DejaVu"
FONT_FILES = {"": DATA / "DejaVuSans.ttf", "B": DATA / "DejaVuSans-Bold.ttf"}
FACTURX_FILENAME = "factur-x.xml"
FACTURX_NS = "urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#"
FACTURX_PROPERTIES = (("DocumentFileName", "the name of the embedded XML invoice file"),
                      ("DocumentType", "INVOICE"), ("Version", "the version of the Factur-X standard"),
                      ("ConformanceLevel", "the Factur-X profile of the embedded XML"))


@functools.cache
def srgb_profile() -> bytes:
    """An sRGB ICC profile (made by littleCMS through Pillow): the PDF/A
    OutputIntent's colour space for the document's DeviceGray/RGB colours."""
    from PIL import ImageCms
    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def _xmp(title: str, author: str, created: dt.datetime) -> str:
    """The XMP of a PDF/A-3B Factur-X invoice: the PDF/A identification, the
    document's title and author, and the fx: properties with the extension
    schema PDF/A requires for a namespace it does not know."""
    from xml.sax.saxutils import escape

    stamp = created.isoformat(timespec="seconds")
    props = "".join(
        f'<rdf:li rdf:parseType="Resource"><pdfaProperty:name>{name}</pdfaProperty:name>'
        f"<pdfaProperty:valueType>Text</pdfaProperty:valueType><pdfaProperty:category>external"
        f"</pdfaProperty:category><pdfaProperty:description>{desc}</pdfaProperty:description></rdf:li>"
        for name, desc in FACTURX_PROPERTIES)
    return f"""<x:xmpmeta xmlns:x="adobe:ns:meta/">
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/">
<pdfaid:part>3</pdfaid:part><pdfaid:conformance>B</pdfaid:conformance></rdf:Description>
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
<dc:title><rdf:Alt><rdf:li xml:lang="x-default">{escape(title)}</rdf:li></rdf:Alt></dc:title>
<dc:creator><rdf:Seq><rdf:li>{escape(author)}</rdf:li></rdf:Seq></dc:creator></rdf:Description>
<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/">
<xmp:CreatorTool>dustel</xmp:CreatorTool><xmp:CreateDate>{stamp}</xmp:CreateDate>
<xmp:ModifyDate>{stamp}</xmp:ModifyDate><xmp:MetadataDate>{stamp}</xmp:MetadataDate></rdf:Description>
<rdf:Description rdf:about="" xmlns:pdf="http://ns.adobe.com/pdf/1.3/"><pdf:Producer>fpdf2</pdf:Producer>
</rdf:Description>
<rdf:Description rdf:about="" xmlns:pdfaExtension="http://www.aiim.org/pdfa/ns/extension/"
 xmlns:pdfaSchema="http://www.aiim.org/pdfa/ns/schema#" xmlns:pdfaProperty="http://www.aiim.org/pdfa/ns/property#">
<pdfaExtension:schemas><rdf:Bag><rdf:li rdf:parseType="Resource">
<pdfaSchema:schema>Factur-X PDFA Extension Schema</pdfaSchema:schema>
<pdfaSchema:namespaceURI>{FACTURX_NS}</pdfaSchema:namespaceURI><pdfaSchema:prefix>fx</pdfaSchema:prefix>
<pdfaSchema:property><rdf:Seq>{props}</rdf:Seq></pdfaSchema:property></rdf:li></rdf:Bag></pdfaExtension:schemas>
</rdf:Description>
<rdf:Description rdf:about="" xmlns:fx="{FACTURX_NS}">
<fx:DocumentType>INVOICE</fx:DocumentType><fx:DocumentFileName>{FACTURX_FILENAME}</fx:DocumentFileName>
<fx:Version>1.0</fx:Version><fx:ConformanceLevel>EN 16931</fx:ConformanceLevel></rdf:Description>
</rdf:RDF>
</x:xmpmeta>"""


def build_pdf(inv: dict[str, Any], issuer: Issuer, xml: bytes, *, mandate: dict[str, Any] | None = None) -> bytes:
    """The invoice as a PDF/A-3B (A4) with its EN 16931 XML ``xml`` as the
    associated file factur-x.xml (Factur-X / ZUGFeRD, profile EN 16931):
    fonts embedded, an sRGB OutputIntent, XMP with the Factur-X extension
    schema.  fpdf2 enforces PDF/A-3B while it writes (no core font, no
    document information dictionary beside the XMP)."""
    from fpdf import FPDF
    from fpdf.enums import OutputIntentSubType
    from fpdf.output import PDFICCProfile

    credit = inv["kind"] == "credit_note"
    say = texts.of(inv["language"])
    rcp = inv["recipient"]
    created = dt.datetime.combine(inv["issued_on"], dt.time(), dt.UTC)
    title = f"{say('doc.credit_note' if credit else 'doc.invoice')} {inv['number']}"
    pdf = FPDF(format="A4", enforce_compliance="PDF/A-3B")
    for style, path in FONT_FILES.items():
        pdf.add_font(FONT, style, str(path))
    pdf.set_creation_date(created)
    pdf.set_title(title)
    pdf.set_author(issuer.name)
    pdf.set_lang(texts.PDF_LANG[say.lang])
    pdf.set_xmp_metadata(_xmp(title, issuer.name, created))
    pdf.add_output_intent(OutputIntentSubType.PDFA, "sRGB IEC61966-2.1", "sRGB IEC61966-2.1", "https://www.color.org",
                          PDFICCProfile(contents=srgb_profile(), n=3, alternate="DeviceRGB"), "sRGB IEC61966-2.1")
    pdf.embed_file(bytes=xml, basename=FACTURX_FILENAME, mime_type="text/xml", modification_date=created,
                   associated_file_relationship="Alternative", desc="Factur-X XML invoice (EN 16931)",
                   compress=True, checksum=True)
    pdf.set_auto_page_break(True, margin=25)
    pdf.add_page()
    w = pdf.epw

    def text(s: str, size: float = 10, style: str = "", h: float = 5, align: str = "L", width: float = 0) -> None:
        pdf.set_font(FONT, style, size)
        pdf.cell(width or w, h, s, new_x="LMARGIN", new_y="NEXT", align=align)

    text(issuer.name, 14, "B", 7)
    text(f"{issuer.street} · {issuer.postcode} {issuer.city} · {issuer.email} · {issuer.phone}", 8, h=4)
    pdf.ln(10)
    for s in (rcp["name"], rcp.get("street") or "", f"{rcp.get('postcode') or ''} {rcp.get('city') or ''}".strip()):
        text(s)
    pdf.ln(8)
    text(title, 14, "B", 8)
    start = min(ln["period_start"] for ln in inv["lines"])
    end = max(ln["period_end"] for ln in inv["lines"])
    facts = [(say("fact.issued"), say.date(inv["issued_on"])),
             (say("fact.period"), f"{say.date(start)} - {say.date(end)}"),
             (say("fact.customer"), rcp["customer_number"]), (say("fact.plan"), rcp["plan"])]
    if rcp.get("leitweg_id"):
        facts.append((say("fact.leitweg"), rcp["leitweg_id"]))
    if rcp.get("vat_id"):
        facts.append((say("fact.vat_id"), rcp["vat_id"]))
    if credit:
        facts.append((say("fact.corrects"), inv.get("corrects_number") or ""))
        facts.append((say("fact.reason"), inv.get("reason") or ""))
    for k, val in facts:
        pdf.set_font(FONT, "", 9)
        pdf.cell(45, 5, k)
        pdf.cell(0, 5, val, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(5)
    basis = say("basis.net" if inv["prices_net"] else "basis.gross")
    cols = [(10, say("col.position")), (w - 10 - 18 - 28 - 28, say("col.description")), (18, say("col.quantity")),
            (28, say("col.unit", basis=basis)), (28, say("col.amount", basis=basis))]
    pdf.set_font(FONT, "B", 9)
    for i, (cw, head) in enumerate(cols):
        pdf.cell(cw, 6, head, border="B", align="L" if i < 2 else "R")
    pdf.ln()
    pdf.set_font(FONT, "", 9)
    for ln in inv["lines"]:            # a line's text in full, wrapped in its column (never cut off)
        rows = len(pdf.multi_cell(cols[1][0], 5, ln["description"], align="L", dry_run=True, output="LINES"))
        if pdf.will_page_break(5 * rows):
            pdf.add_page()
        top = pdf.get_y()
        pdf.cell(cols[0][0], 5, str(ln["position"]))
        pdf.multi_cell(cols[1][0], 5, ln["description"], align="L", new_x="RIGHT", new_y="TOP")
        pdf.cell(cols[2][0], 5, str(ln["quantity"]), align="R")
        pdf.cell(cols[3][0], 5, say.eur(ln["unit_cents"]), align="R")
        pdf.cell(cols[4][0], 5, say.eur(ln["amount_cents"]), align="R", new_x="LMARGIN")
        pdf.set_y(top + 5 * rows)
    pdf.ln(3)
    totals = [(say("total.net"), inv["net_cents"]), (say("total.vat", percent=inv["vat_percent"]), inv["vat_cents"]),
              (say("total.gross"), inv["gross_cents"])]
    for i, (k, cents) in enumerate(totals):
        pdf.set_font(FONT, "B" if i == 2 else "", 10)
        pdf.cell(w - 40, 6, k, align="R")
        pdf.cell(40, 6, f"{say.eur(cents)} EUR", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    if credit:
        pay = say("pay.credited")
    elif inv["payment_means"] == "sepa_dd" and mandate is not None:
        pay = say("pay.debit", due=say.date(inv["due_on"]), iban=mask_iban(mandate["iban"]),
                  mandate=mandate["reference"], creditor=issuer.creditor_id)
    else:
        pay = say("pay.transfer", due=say.date(inv["due_on"]), iban=issuer.iban, bic=issuer.bic, number=inv["number"])
    if not inv["prices_net"]:
        pay += say("pay.vat_included", vat=say.eur(inv["vat_cents"]), percent=inv["vat_percent"])
    pdf.set_font(FONT, "", 9)
    pdf.multi_cell(w, 5, pay)
    pdf.set_auto_page_break(False)          # the footer sits in the bottom margin
    pdf.set_y(-22)
    pdf.set_font(FONT, "", 7)
    pdf.multi_cell(w, 3.5, say("footer", name=issuer.name, street=issuer.street, postcode=issuer.postcode,
                               city=issuer.city, vat_id=issuer.vat_id, iban=issuer.iban, bic=issuer.bic,
                               creditor=issuer.creditor_id), align="C")
    return bytes(pdf.output())


def mask_iban(iban: str) -> str:
    return iban[:4] + "*" * (len(iban) - 8) + iban[-4:]


def facturx_pdf(inv: dict[str, Any], issuer: Issuer, *, mandate: dict[str, Any] | None = None) -> bytes:
    """The PDF/A-3B with its EN 16931 XML embedded (Factur-X / ZUGFeRD)."""
    return build_pdf(inv, issuer, build_xml(inv, issuer, mandate=mandate), mandate=mandate)
