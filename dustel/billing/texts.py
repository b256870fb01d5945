"""The words of billing documents, in each language an invoice can have:
the one catalogue of the invoices' line texts (``invoices.drafts``, credit
notes), the PDF's headings and payment texts and the e-invoice XML's notes
and payment terms (``einvoice``).

A tenant chooses its language (``tenants.language``: German unless set to
English); every invoice and credit note stores the language it was issued
in (``invoices.language``) — its line texts are stored words, its headings
are rendered from here in that language, so an issued document reads the
same for ever (GoBD).  The German texts are the ones invoices had before
the catalogue: an old invoice renders as it was issued.

Option and zone names live in the database beside their rows
(``plan_options``/``zones``: ``description`` English, ``description_de``
German, migration 0024); ``name_of`` is the one place that knows which.
"""
from __future__ import annotations

import datetime as dt
import string
from dataclasses import dataclass
from typing import Any

from . import money

LANGUAGES = ("de", "en")       # the database's domain dustel_language says the same (migration 0024)
DEFAULT = "de"
PDF_LANG = {"de": "de-DE", "en": "en-GB"}
_MONTHS_EN = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December")

# key: {language: text}; {name} fields are filled by Texts.__call__
CATALOGUE: dict[str, dict[str, str]] = {
    # invoice lines (stored with the invoice)
    "line.usage": {"de": "Verbindungen: {zone} ({calls}, {minutes})",
                   "en": "Calls: {zone} ({calls}, {minutes})"},
    "calls.one": {"de": "1 Verbindung", "en": "1 call"},
    "calls.many": {"de": "{n} Verbindungen", "en": "{n} calls"},
    "line.corrections": {"de": "Korrektur früher berechneter Verbindungsentgelte (Abgleich mit den "
                               "Verbindungsdaten der Vermittlungstechnik)",
                         "en": "Corrections of call charges billed before (reconciled with the engines' records)"},
    "line.base_fee": {"de": "Grundgebühr {plan}, {month}", "en": "Base fee {plan}, {month}"},
    "line.option": {"de": "{option}, {month}", "en": "{option}, {month}"},
    "line.numbers_small": {"de": "Rufnummern (einzeln und Blöcke bis {size}), {month}",
                           "en": "Numbers (single and blocks up to {size}), {month}"},
    "line.numbers_any": {"de": "Rufnummern (einzeln und Blöcke jeder Größe), {month}",
                         "en": "Numbers (single and blocks of any size), {month}"},
    "line.numbers_large": {"de": "Rufnummern in Blöcken über {size}, {month}",
                           "en": "Numbers in blocks over {size}, {month}"},
    "line.credit": {"de": "Gutschrift zu Rechnung {number}: {reason}",
                    "en": "Credit for invoice {number}: {reason}"},
    # the documents
    "doc.invoice": {"de": "Rechnung", "en": "Invoice"},
    "doc.credit_note": {"de": "Gutschrift", "en": "Credit note"},
    "fact.issued": {"de": "Rechnungsdatum", "en": "Date of issue"},
    "fact.period": {"de": "Leistungszeitraum", "en": "Service period"},
    "fact.customer": {"de": "Kundennummer", "en": "Customer number"},
    "fact.plan": {"de": "Tarif", "en": "Plan"},
    "fact.leitweg": {"de": "Leitweg-ID", "en": "Leitweg-ID"},
    "fact.vat_id": {"de": "USt-IdNr. Kunde", "en": "Customer's VAT ID"},
    "fact.corrects": {"de": "Korrektur zu Rechnung", "en": "Corrects invoice"},
    "fact.reason": {"de": "Grund", "en": "Reason"},
    "col.position": {"de": "Pos.", "en": "Item"},
    "col.description": {"de": "Leistung", "en": "Description"},
    "col.quantity": {"de": "Menge", "en": "Qty"},
    "col.unit": {"de": "Einzel {basis}", "en": "Unit {basis}"},
    "col.amount": {"de": "Betrag {basis}", "en": "Amount {basis}"},
    "basis.net": {"de": "netto", "en": "net"},
    "basis.gross": {"de": "brutto", "en": "gross"},
    "total.net": {"de": "Summe netto", "en": "Total net"},
    "total.vat": {"de": "USt {percent} %", "en": "VAT {percent} %"},
    "total.gross": {"de": "Gesamtbetrag", "en": "Total"},
    "pay.credited": {"de": "Der Betrag wird Ihrem Kundenkonto gutgeschrieben.",
                     "en": "The amount is credited to your customer account."},
    "pay.debit": {"de": "Wir ziehen den Betrag am oder nach dem {due} per SEPA-Lastschrift von {iban} ein. "
                        "Mandatsreferenz {mandate}, Gläubiger-ID {creditor}.",
                  "en": "We collect the amount by SEPA direct debit from {iban} on or after {due}. "
                        "Mandate reference {mandate}, creditor ID {creditor}."},
    "pay.transfer": {"de": "Bitte überweisen Sie den Betrag bis zum {due} auf IBAN {iban} (BIC {bic}), "
                           "Verwendungszweck {number}.",
                     "en": "Please transfer the amount by {due} to IBAN {iban} (BIC {bic}), reference {number}."},
    "pay.vat_included": {"de": " Im Gesamtbetrag sind {vat} EUR Umsatzsteuer ({percent} %) enthalten.",
                         "en": " The total includes {vat} EUR VAT ({percent} %)."},
    "footer": {"de": "{name}, {street}, {postcode} {city} · USt-IdNr. {vat_id} · IBAN {iban} · BIC {bic} · "
                     "Gläubiger-ID {creditor}",
               "en": "{name}, {street}, {postcode} {city} · VAT ID {vat_id} · IBAN {iban} · BIC {bic} · "
                     "Creditor ID {creditor}"},
    # the e-invoice XML
    "xml.note": {"de": "Kundennummer {customer}, Tarif {plan}", "en": "Customer number {customer}, plan {plan}"},
    "xml.contact": {"de": "Kundenservice", "en": "Customer service"},
    "xml.debit": {"de": "Der Betrag wird am oder nach dem {due} per SEPA-Lastschrift eingezogen (Mandat {mandate}).",
                  "en": "The amount is collected by SEPA direct debit on or after {due} (mandate {mandate})."},
    "xml.transfer": {"de": "Zahlbar bis {due} ohne Abzug, Verwendungszweck {number}.",
                     "en": "Payable by {due} without deduction, reference {number}."},
}


@dataclass(frozen=True)
class Texts:
    """The catalogue in one language: ``t("line.base_fee", plan=…)``, and
    how that language writes a date and an amount."""
    lang: str

    def __call__(self, key: str, **fields: Any) -> str:
        return CATALOGUE[key][self.lang].format(**fields)

    def date(self, d: dt.date) -> str:
        return f"{d:%d.%m.%Y}" if self.lang == "de" else f"{d.day} {_MONTHS_EN[d.month - 1]} {d.year}"

    def eur(self, cents: int) -> str:
        return money.eur(cents, lang=self.lang)

    def calls(self, n: int) -> str:
        return self("calls.one") if n == 1 else self("calls.many", n=n)


def of(lang: str) -> Texts:
    if lang not in LANGUAGES:
        raise ValueError(f"no texts in {lang!r}")
    return Texts(lang)


def name_of(row: dict[str, Any], lang: str) -> str:
    """An option's or a zone's name in ``lang``, from its row's
    ``description`` (English) and ``description_de`` (German)."""
    return row["description_de" if lang == "de" else "description"]


def fields(key: str) -> dict[str, set[str]]:
    """The {fields} each language's text of ``key`` names (tests: every
    language fills the same ones)."""
    return {lang: {f for _, f, _, _ in string.Formatter().parse(text) if f}
            for lang, text in CATALOGUE[key].items()}
