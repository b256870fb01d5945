"""Pure parts of billing (issue 26): amounts as text, both ways round."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dustel.billing import money
from dustel.commands.common import euro


@pytest.mark.parametrize("cents,plain,german", [
    (0, "0.00", "0,00"), (5, "0.05", "0,05"), (150, "1.50", "1,50"), (123456, "1234.56", "1.234,56"),
    (-5, "-0.05", "-0,05"), (-100, "-1.00", "-1,00"), (-150, "-1.50", "-1,50"), (-123456, "-1234.56", "-1.234,56")])
def test_amounts_print_with_their_sign_and_two_places(cents: int, plain: str, german: str) -> None:
    """Issue 26.17: -150 ct printed as "-2.50" (floor division of a negative
    number).  Issue 31.10: the CLI shows money one way, German with the
    euro sign (``euro``); ``plain`` stays for machine formats."""
    assert money.eur(cents, plain=True) == plain
    assert money.eur(cents) == german
    assert euro(cents) == german + " €"


@given(st.integers(min_value=-10**11 + 1, max_value=10**11 - 1))
def test_printed_amounts_read_back_as_the_same_cents(cents: int) -> None:
    assert Decimal(money.eur(cents, plain=True)) * 100 == cents
    assert money.signed_cents("amount", euro(cents).removesuffix(" €").replace(".", "")) == cents
    assert money.signed_cents("amount", money.eur(cents).replace(".", "")) == cents
