"""Pure parts of billing (issue 26): amounts as text, both ways round; the
catalogue of the documents' words (issue 31.12)."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dustel.billing import money, texts
from dustel.commands.common import euro


@pytest.mark.parametrize("cents,plain,german,english", [
    (0, "0.00", "0,00", "0.00"), (5, "0.05", "0,05", "0.05"), (150, "1.50", "1,50", "1.50"),
    (123456, "1234.56", "1.234,56", "1,234.56"), (-5, "-0.05", "-0,05", "-0.05"), (-100, "-1.00", "-1,00", "-1.00"),
    (-150, "-1.50", "-1,50", "-1.50"), (-123456, "-1234.56", "-1.234,56", "-1,234.56"),
    (123456789, "1234567.89", "1.234.567,89", "1,234,567.89")])
def test_amounts_print_with_their_sign_and_two_places(cents: int, plain: str, german: str, english: str) -> None:
    """Issue 26.17: -150 ct printed as "-2.50" (floor division of a negative
    number).  Issue 31.10: the CLI shows money one way, German with the
    euro sign (``euro``); ``plain`` stays for machine formats."""
    assert money.eur(cents, plain=True) == plain
    assert money.eur(cents) == german
    assert euro(cents) == german + " €"
    assert money.eur(cents, lang="en") == texts.of("en").eur(cents) == english     # an English invoice's


@given(st.integers(min_value=-10**11 + 1, max_value=10**11 - 1))
def test_printed_amounts_read_back_as_the_same_cents(cents: int) -> None:
    assert Decimal(money.eur(cents, plain=True)) * 100 == cents
    assert money.signed_cents("amount", euro(cents).removesuffix(" €").replace(".", "")) == cents
    assert money.signed_cents("amount", money.eur(cents).replace(".", "")) == cents


def test_the_catalogue_says_everything_in_every_language_with_the_same_fields() -> None:
    """Issue 31.12: one catalogue for the documents' words; a text missing in
    a language, or filling other fields there, would fail only on the
    invoice that needs it."""
    for key, by_lang in texts.CATALOGUE.items():
        assert set(by_lang) == set(texts.LANGUAGES), key
        assert len(set(map(frozenset, texts.fields(key).values()))) == 1, (key, texts.fields(key))
    de, en = texts.of("de"), texts.of("en")
    assert (de.date(dt.date(2026, 12, 2)), en.date(dt.date(2026, 12, 2))) == ("02.12.2026", "2 December 2026")
    assert (de.calls(1), de.calls(2), en.calls(1), en.calls(2)) == ("1 Verbindung", "2 Verbindungen", "1 call",
                                                                    "2 calls")
    row = {"description": "one more SIP account", "description_de": "ein weiteres SIP-Konto"}
    assert (texts.name_of(row, "de"), texts.name_of(row, "en")) == ("ein weiteres SIP-Konto", "one more SIP account")
    with pytest.raises(ValueError):
        texts.of("fr")
