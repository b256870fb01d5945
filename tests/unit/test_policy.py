"""The call-time decision core, rule by rule and in combination."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dustel.callpath import rating
from dustel.callpath.policy import CallRequest, Snapshot, Tariff, decide, emergency_number, matches, normalize

TARIFF = Tariff(
    zones={"49": "de_fixed", "4915": "de_mobile", "4916": "de_mobile", "4917": "de_mobile",
           "49137": "de_masscall", "49900": "de_premium", "49180": "de_service", "33": "eu_fixed",
           "336": "eu_mobile", "": "world"},
    rates={"49": 1, "4915": 9, "4916": 9, "4917": 9, "49137": 50, "49900": 199, "49180": 14, "33": 2,
           "336": 12, "1": 3, "44": 0})
SNAP = Snapshot(tenant_id=1, account="000387100001", area_code="211", psap_prefix="021111",
                max_call_seconds=3600, caller_id="+492111234567",
                zones=frozenset({"de_fixed", "de_mobile", "de_masscall"}), available_cents=1000)


def out(callee: str, **kw: object) -> CallRequest:
    return CallRequest(direction="out", tenant_id=1, account="000387100001", caller=kw.pop("caller", "000387100001"),
                       callee=callee, source_ip=kw.pop("source_ip", "192.0.2.10"), **kw)  # type: ignore[arg-type]


def snap(**kw: object) -> Snapshot:
    return dataclasses.replace(SNAP, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("dialed,expected", [
    ("110", "110"), ("112", "112"), ("0112", "112"), ("00112", "112"), ("+49112", "112"), ("0049110", "110"),
    ("112#", "112"), ("1120", None), ("113", None), ("+44112", None), ("", None)])
def test_emergency_number(dialed: str, expected: str | None) -> None:
    assert emergency_number(dialed) == expected


@pytest.mark.parametrize("dialed,expected", [
    ("+4930123456", "+4930123456"), ("004930123456", "+4930123456"), ("030123456", "+4930123456"),
    ("123456", "+49211123456"), ("0033142685300", "+33142685300"), ("abc", None), ("0", None),
    ("+49 30;ls", None), ("٠٣٠١٢٣٤٥٦", None)])
def test_normalize(dialed: str, expected: str | None) -> None:
    assert normalize(dialed, "211") == expected


def test_emergency_ignores_every_other_rule() -> None:
    worst = snap(available_cents=0, zones=frozenset(), active_out=9, lines_out=2, allowed_nets=("10.0.0.0/8",),
                 max_call_seconds=1)
    for dialed in ("110", "112", "0112", "+49112"):
        d = decide(out(dialed, source_ip="203.0.113.9"), worst, TARIFF)
        assert d.admit and d.route == "emergency" and d.reason == "emergency"
        assert d.destination == "021111" + dialed[-3:]
        assert d.max_seconds == 0 and d.reserve_cents == 0     # no limit, no money
    # the PSAP follows the account's location
    assert decide(out("112"), snap(psap_prefix="03011"), TARIFF).destination == "03011112"


def test_ip_restriction() -> None:
    s = snap(allowed_nets=("192.0.2.0/24", "2001:db8::/32"))
    assert decide(out("030123456", source_ip="192.0.2.77"), s, TARIFF).admit
    assert decide(out("030123456", source_ip="2001:db8::5"), s, TARIFF).admit
    for ip in ("198.51.100.1", None, "not-an-ip"):
        d = decide(out("030123456", source_ip=ip), s, TARIFF)
        assert (d.admit, d.reason, d.sip_code) == (False, "ip_not_allowed", 403)
    assert decide(out("030123456", source_ip=None), snap(), TARIFF).admit    # no list: anywhere


def test_line_limit_out_counts_live_calls() -> None:
    assert decide(out("030123456"), snap(active_out=1, lines_out=2), TARIFF).admit
    d = decide(out("030123456"), snap(active_out=2, lines_out=2), TARIFF)
    assert (d.admit, d.reason, d.sip_code, d.q850) == (False, "line_limit", 503, 34)
    assert decide(out("030123456"), snap(active_out=2, lines_out=3), TARIFF).admit
    # internal calls use no trunk line
    assert decide(out("000387100002"), snap(active_out=2, callee_account="000387100002"), TARIFF).route == "internal"


@pytest.mark.parametrize("dialed,zone,allowed", [
    ("030123456", "de_fixed", True), ("01701234567", "de_mobile", True), ("013712345", "de_masscall", True),
    ("0900123456", "de_premium", False), ("0180123456", "de_service", False), ("0033142685300", "eu_fixed", False),
    ("0033612345678", "eu_mobile", False), ("0012125550100", "world", False)])
def test_zones(dialed: str, zone: str, allowed: bool) -> None:
    d = decide(out(dialed), SNAP, TARIFF)
    assert d.zone == zone and d.admit == allowed
    if not allowed:
        assert (d.reason, d.sip_code) == ("zone_blocked", 403)
    # a release adds exactly that zone
    assert decide(out(dialed), snap(zones=SNAP.zones | {zone}), TARIFF).admit


def test_germany_without_0137() -> None:
    d = decide(out("013712345"), snap(zones=frozenset({"de_fixed", "de_mobile"})), TARIFF)
    assert (d.admit, d.reason) == (False, "zone_blocked")


def test_credit_limits_duration_per_second_and_per_minute() -> None:
    # 10.00 EUR at 9 ct/min per second: 1000*60//9 = 6666 s, capped by the 3600 s time limit
    assert decide(out("01701234567"), SNAP, TARIFF).max_seconds == 3600
    d = decide(out("01701234567"), snap(available_cents=100), TARIFF)
    assert d.max_seconds == 666 and d.reserve_cents == rating.cost_cents(666, 9, 1) == 100
    m = decide(out("01701234567"), snap(available_cents=100, increment=60), TARIFF)
    assert m.max_seconds == 660 and m.reserve_cents == 99
    none = decide(out("01701234567"), snap(available_cents=0), TARIFF)
    assert (none.admit, none.reason, none.sip_code) == (False, "insufficient_credit", 402)
    # 5 ct buy 33 s per second, but not one whole minute at 9 ct
    assert decide(out("01701234567"), snap(available_cents=5), TARIFF).max_seconds == 33
    assert not decide(out("01701234567"), snap(available_cents=5, increment=60), TARIFF).admit
    # no cap (postpaid without credit limit): only the time limit
    assert decide(out("01701234567"), snap(available_cents=None), TARIFF).max_seconds == 3600
    # a free destination: time limit only, nothing reserved
    assert decide(out("0044201234567"), snap(zones=frozenset({"eu_fixed", "world"}), available_cents=0),
                  TARIFF).admit


def test_time_limit() -> None:
    assert decide(out("030123456"), snap(max_call_seconds=90), TARIFF).max_seconds == 90
    assert decide(out("000387100002"), snap(max_call_seconds=90, callee_account="000387100002"),
                  TARIFF).max_seconds == 90


def test_flatrate_channels_then_money() -> None:
    s = snap(flats={"de_fixed": 2}, available_cents=0)
    for in_use in (0, 1):
        d = decide(out("030123456"), dataclasses.replace(s, flats_in_use={"de_fixed": in_use}), TARIFF)
        assert d.admit and d.flat_zone == "de_fixed" and d.reserve_cents == 0 and d.max_seconds == 3600
    third = decide(out("030123456"), dataclasses.replace(s, flats_in_use={"de_fixed": 2}), TARIFF)
    assert (third.admit, third.reason) == (False, "insufficient_credit")       # rated, and no money
    # a DE-fixed flat does not cover mobile
    assert decide(out("01701234567"), s, TARIFF).reason == "insufficient_credit"


def test_start_credit_is_used_first_for_de_fixed() -> None:
    s = snap(free_seconds=1800, available_cents=0)
    d = decide(out("030123456"), s, TARIFF)
    assert d.admit and d.max_seconds == 1800 and d.free_seconds == 1800 and d.reserve_cents == 0
    d = decide(out("030123456"), snap(free_seconds=60, available_cents=2), TARIFF)
    assert d.max_seconds == 60 + 120 and d.reserve_cents == 2
    assert not decide(out("01701234567"), s, TARIFF).admit                      # not for mobile


def test_caller_id_presentation() -> None:
    assert decide(out("030123456"), SNAP, TARIFF).caller_id == "+492111234567"
    spoof = CallRequest(direction="out", tenant_id=1, account="a", caller="+4940999999", callee="030123456")
    assert decide(spoof, SNAP, TARIFF).caller_id == "+492111234567"
    assert decide(spoof, snap(clip_no_screening=True), TARIFF).caller_id == "+4940999999"


def test_everything_wrong_at_once_reports_the_first_rule() -> None:
    bad = snap(allowed_nets=("10.0.0.0/8",), active_out=5, zones=frozenset(), available_cents=0)
    assert decide(out("0900123", source_ip="192.0.2.1"), bad, TARIFF).reason == "ip_not_allowed"
    assert decide(out("0900123", source_ip="10.1.1.1"), bad, TARIFF).reason == "line_limit"
    assert decide(out("0900123", source_ip="10.1.1.1"), dataclasses.replace(bad, active_out=0),
                  TARIFF).reason == "zone_blocked"
    assert decide(out("112", source_ip="192.0.2.1"), bad, TARIFF).admit


def inbound(caller: str) -> CallRequest:
    return CallRequest(direction="in", tenant_id=1, account="000387100001", caller=caller, callee="+492111234567")


@pytest.mark.parametrize("pattern,caller,hit", [
    ("+4930123", "+4930123", True), ("+4930*", "+4930999", True), ("+4930*", "+4940999", False),
    ("anonymous", "", True), ("anonymous", "Anonymous", True), ("anonymous", "+4930", False),
    ("+4930*", "anonymous", False)])
def test_patterns(pattern: str, caller: str, hit: bool) -> None:
    assert matches(pattern, caller) is hit


def test_inbound_lists_and_lines() -> None:
    assert decide(inbound("+4930123"), SNAP, TARIFF).admit
    d = decide(inbound("+4930123"), snap(blacklist=("+4930*",)), TARIFF)
    assert (d.admit, d.reason, d.sip_code) == (False, "blacklisted", 603)
    assert decide(inbound("anonymous"), snap(blacklist=("anonymous",)), TARIFF).reason == "blacklisted"
    w = snap(whitelist=("+4930*",))
    assert decide(inbound("+4930123"), w, TARIFF).admit
    assert decide(inbound("+4940123"), w, TARIFF).reason == "not_whitelisted"
    assert decide(inbound(""), w, TARIFF).reason == "anonymous_rejected"
    assert decide(inbound(""), snap(whitelist=("+4930*", "anonymous")), TARIFF).admit
    busy = decide(inbound("+4930123"), snap(active_in=2), TARIFF)
    assert (busy.admit, busy.reason, busy.sip_code, busy.q850) == (False, "line_limit_in", 486, 17)


@given(cents=st.integers(0, 10**7), rate=st.integers(1, 500), inc=st.sampled_from([1, 60]),
       limit=st.integers(1, 86400), free=st.integers(0, 3600))
def test_reservation_never_exceeds_money(cents: int, rate: int, inc: int, limit: int, free: int) -> None:
    tariff = Tariff(zones={"": "de_fixed"}, rates={"": rate})
    s = snap(available_cents=cents, increment=inc, max_call_seconds=limit, free_seconds=free,
             zones=frozenset({"de_fixed"}))
    d = decide(out("030123456"), s, tariff)
    if d.admit:
        assert d.reserve_cents <= cents
        assert d.max_seconds <= limit
        assert rating.cost_cents(d.max_seconds - d.free_seconds, rate, inc) == d.reserve_cents
        # one more increment would cost more than the money (or pass the time limit)
        longer = d.max_seconds + inc - d.free_seconds
        assert d.max_seconds == limit or rating.cost_cents(longer, rate, inc) > cents
    else:
        assert d.reason == "insufficient_credit" and free == 0


def test_german_short_codes_and_service_ranges() -> None:
    """Issue 15.17: 115 / 116xxx / 118xx became Düsseldorf subscriber numbers."""
    from dustel.callpath.policy import normalize
    assert normalize("115", "211") == "+49115"
    assert normalize("116117", "211") == "+49116117"
    assert normalize("11833", "211") == "+4911833" and normalize("118811", "211") == "+49118811"
    assert normalize("1155", "211") == "+492111155"          # no short code: a local number
    assert normalize("5551234", "211") == "+492115551234"


def test_screening_compares_callers_in_e164() -> None:
    """Issue 15.19: black/whitelists compared the raw caller string, so
    ``0211…`` or ``49211…`` slipped past ``+49211*``."""
    w = snap(blacklist=("+49211*",))
    for form in ("+492111234", "00492111234", "02111234", "492111234"):
        assert decide(inbound(form), w, TARIFF).reason == "blacklisted", form
    assert decide(inbound("0301234"), w, TARIFF).admit


def test_a_leg_dustel_places_is_an_outbound_call_without_a_device() -> None:
    """Issue 15.15: a closed queue's external target went out with no rate,
    no line, no reservation and the original caller's number.  As a leg it
    is decided like any outbound call — only the device's IP rule does not
    apply — and presents the tenant's number (the caller only with CLIP no
    screening)."""
    s = snap(allowed_nets=("192.0.2.0/24",), caller_id="+492111234567", available_cents=100)
    leg = out("+4921155501", caller="+4930555", source_ip=None, leg=True)
    d = decide(leg, s, TARIFF)
    assert d.admit and d.caller_id == "+492111234567" and d.reserve_cents > 0
    assert decide(out("+4921155501", caller="+4930555", source_ip=None), s, TARIFF).reason == "ip_not_allowed"
    assert decide(leg, snap(caller_id="+492111234567", clip_no_screening=True), TARIFF).caller_id == "+4930555"
    assert decide(leg, snap(active_out=2), TARIFF).reason == "line_limit"
    assert decide(out("0900123456", leg=True), s, TARIFF).reason == "zone_blocked"


def test_tls_accounts_call_only_over_tls_but_emergency_always() -> None:
    """Issue 16.3: ``tls_only``/``tls_srtp`` accounts called over UDP/TCP."""
    s = snap(tls_required=True)
    d = decide(out("0211123456"), s, TARIFF)
    assert (d.admit, d.reason, d.sip_code) == (False, "tls_required", 403)
    assert decide(out("0211123456", secure=True), s, TARIFF).admit
    assert decide(out("112"), s, TARIFF).reason == "emergency"
    assert decide(out("0211123456"), snap(), TARIFF).admit                 # a plain account: any transport
