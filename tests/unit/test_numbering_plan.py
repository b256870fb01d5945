"""German numbers by libphonenumber (issue 31 item 4): valid ranges,
geographic / mobile / service, the area code of a geographic number.
Before, hand-written rules took area code 9999 (stored as 09999) and any
+49 number of plausible length."""
from __future__ import annotations

import pytest

from dustel.errors import DustelError
from dustel.provisioning import numbers
from dustel.provisioning import validate as v


@pytest.mark.parametrize(("raw", "area"), [("0211", "211"), ("211", "211"), ("030", "30"), ("02151", "2151"),
                                           ("033056", "33056"), (" 089 ", "89")])
def test_area_codes_of_the_plan_are_taken(raw: str, area: str) -> None:
    assert v.area_code("area_code", raw) == area


@pytest.mark.parametrize("raw", ["9999", "09999", "021", "2", "0800", "0900", "0700", "032", "0170", "03212", "x"])
def test_area_codes_outside_the_plan_are_refused(raw: str) -> None:
    with pytest.raises(DustelError) as exc:
        v.area_code("area_code", raw)
    assert str(exc.value).startswith("area_code: must be a German area code of geographic numbers")


@pytest.mark.parametrize(("number", "kind", "area"), [
    ("+492115550100", "geographic", "211"), ("+4930123456", "geographic", "30"),
    ("+4921511234567", "geographic", "2151"), ("+4917012345678", "mobile", None),
    ("+498001234567", "service", None), ("+4932123456789", "service", None), ("+33142685300", "foreign", None)])
def test_what_a_number_is(number: str, kind: str, area: str | None) -> None:
    assert (v.number_kind(number), v.geographic_area(number)) == (kind, area)


@pytest.mark.parametrize("number", ["+4999991234567", "+49800123456", "+4913712345"])
def test_numbers_outside_the_plan_are_refused(number: str) -> None:
    with pytest.raises(DustelError) as exc:
        v.e164("to", number)
    assert str(exc.value) == f"to: {number} is not a number of its country's numbering plan (no such range or length)"


def test_what_a_tenant_may_hold() -> None:
    assert numbers.held("+492115550100", None) == "geographic"
    assert numbers.held("+4921155501", 10) == "geographic"          # +492115550100 … +492115550109
    assert numbers.held("+498001234567", None) == "service"
    for number, size, rule in (
            ("+4917012345678", None, "is a mobile number: it belongs to a mobile network"),
            ("+33142685300", None, "is not a German number (+49…)"),
            ("+4999991234", 100, "is not a number of its country's numbering plan")):
        with pytest.raises(DustelError) as exc:
            numbers.held(number, size)
        assert rule in str(exc.value), str(exc.value)
