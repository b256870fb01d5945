"""The inbound plan (issue 13, SPEC F-05): modes × schedule in/out (DST days,
a holiday of NW) × internal/external targets, and the rules that hold for
every diversion (never more than 10 legs / 2 external, never a loop)."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dustel.callpath import divert
from dustel.callpath.divert import Diversion, Stage
from dustel.provisioning import schedule

UTC = dt.UTC
MON_10 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=UTC)        # Monday 10:00 in Berlin
OFFICE = schedule.build(["mon-fri 08:00-18:00"], region="NW")


def fwd(mode: str, targets: tuple[str, ...], timeout: int | None = None, sched: dict | None = None) -> Diversion:
    return Diversion(kind="forward", mode=mode, timeout=timeout, targets=targets, schedule=sched)


def starts(engine: str, after: str) -> list[str]:
    """The engine's status words that start a stage ``after``."""
    return sorted(k for k, v in divert.OUTCOMES[engine].items() if divert.goes_on(after, v))


def test_no_diversion_rings_the_account() -> None:
    assert divert.plan("a", None, MON_10) == (Stage(("a",), (), 60),)


def test_immediate_rings_only_the_targets() -> None:
    assert divert.plan("a", fwd("immediate", ("b", "+4917012345678")), MON_10) == \
        (Stage(("b",), ("+4917012345678",), 60),)


def test_no_answer_rings_the_account_then_the_targets_when_unanswered() -> None:
    stages = divert.plan("a", fwd("no_answer", ("b", "c"), timeout=15), MON_10)
    assert stages == (Stage(("a",), (), 15), Stage(("b", "c"), (), 60, after="unanswered"))
    assert starts("asterisk", "unanswered") == ["BUSY", "CHANUNAVAIL", "CONGESTION", "NOANSWER"]
    assert starts("freeswitch", "unanswered") == ["CALL_REJECTED", "NORMAL_TEMPORARY_FAILURE", "NO_ANSWER",
                                                  "SUBSCRIBER_ABSENT", "USER_BUSY", "USER_NOT_REGISTERED"]
    assert not divert.goes_on("unanswered", "answered") and not divert.goes_on("unanswered", "caller_gone")


def test_unregistered_goes_on_only_when_the_account_is_unavailable() -> None:
    stages = divert.plan("a", fwd("unregistered", ("+4930123456",)), MON_10)
    assert stages == (Stage(("a",), (), 60), Stage((), ("+4930123456",), 60, after="unavailable"))
    assert starts("asterisk", "unavailable") == ["CHANUNAVAIL"]
    assert starts("freeswitch", "unavailable") == ["SUBSCRIBER_ABSENT", "USER_NOT_REGISTERED"]
    assert not divert.goes_on("unavailable", "no_answer")


def test_the_called_number_is_never_an_external_leg() -> None:
    """Issue 26 item 19: forwarding to the number being called goes out
    through the carrier and comes back in: a loop."""
    assert divert.plan("a", fwd("immediate", ("+492115550100",)), MON_10, called="+492115550100") == \
        (Stage(("a",), (), 60),)
    assert divert.plan("a", fwd("unregistered", ("+492115550100", "+4930123456")), MON_10,
                       called="+492115550100") == \
        (Stage(("a",), (), 60), Stage((), ("+4930123456",), 60, after="unavailable"))


def test_group_call_rings_the_account_and_all_targets_together() -> None:
    g = Diversion(kind="group", mode=None, timeout=25, targets=("b", "+4917012345678"))
    assert divert.plan("a", g, MON_10) == (Stage(("a", "b"), ("+4917012345678",), 25),)


@pytest.mark.parametrize(("when", "active"), [
    (dt.datetime(2026, 11, 30, 9, 0, tzinfo=UTC), True),      # Monday 10:00 CET
    (dt.datetime(2026, 11, 30, 17, 30, tzinfo=UTC), False),   # Monday 18:30 CET
    (dt.datetime(2026, 11, 29, 9, 0, tzinfo=UTC), False),     # Sunday
    (dt.datetime(2026, 12, 25, 9, 0, tzinfo=UTC), False),     # Christmas (a Friday), a holiday in NW
    (dt.datetime(2027, 11, 1, 9, 0, tzinfo=UTC), False),      # All Saints' Day 2027 (a Monday), NW holiday
    (dt.datetime(2026, 6, 4, 8, 0, tzinfo=UTC), False),       # Corpus Christi (Thursday), NW holiday
    (dt.datetime(2026, 3, 30, 6, 30, tzinfo=UTC), True),      # Monday after the spring DST change: 08:30 CEST
    (dt.datetime(2026, 3, 27, 6, 30, tzinfo=UTC), False),     # the Friday before: 07:30 CET
    (dt.datetime(2026, 10, 26, 16, 59, tzinfo=UTC), True),    # Monday after the autumn change: 17:59 CET
    (dt.datetime(2026, 10, 23, 16, 30, tzinfo=UTC), False),   # the Friday before: 18:30 CEST
])
def test_a_schedule_diverts_only_inside_its_hours(when: dt.datetime, active: bool) -> None:
    stages = divert.plan("a", fwd("immediate", ("b",), sched=OFFICE), when)
    assert stages == ((Stage(("b",), (), 60),) if active else (Stage(("a",), (), 60),))


def test_a_schedule_in_another_time_zone() -> None:
    # 09:00 UTC on a Monday is 04:00 in New York: outside office hours there
    assert divert.plan("a", fwd("immediate", ("b",), sched=OFFICE), MON_10, tz="America/New_York") == \
        (Stage(("a",), (), 60),)


def test_the_account_itself_and_duplicates_are_dropped() -> None:
    assert divert.plan("a", fwd("immediate", ("a", "b", "b")), MON_10) == (Stage(("b",), (), 60),)
    # nothing left to divert to: the account rings
    assert divert.plan("a", fwd("immediate", ("a",)), MON_10) == (Stage(("a",), (), 60),)


def test_at_most_two_external_and_ten_targets() -> None:
    many = tuple(f"u{i}" for i in range(12)) + ("+491", "+492", "+493")
    (stage,) = divert.plan("a", fwd("immediate", ("+491", "+492", "+493", *many)), MON_10)
    assert stage.externals == ("+491", "+492") and len(stage.accounts) + len(stage.externals) == 10


targets = st.lists(st.one_of(st.sampled_from(["a", "b", "c", "d"]), st.from_regex(r"u[0-9]{1,2}", fullmatch=True),
                             st.from_regex(r"\+49[1-9][0-9]{5,8}", fullmatch=True)), max_size=30)
diversions = st.builds(
    Diversion, kind=st.sampled_from(["forward", "group"]),
    mode=st.sampled_from(["immediate", "no_answer", "unregistered"]),
    timeout=st.one_of(st.none(), st.integers(5, 120)), targets=targets.map(tuple),
    schedule=st.sampled_from([None, OFFICE, schedule.build(["sat,sun 00:00-24:00"])]))


@given(diversions, st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2028, 12, 31),
                                timezones=st.just(UTC)))
def test_never_more_legs_than_the_rules_allow_and_never_a_loop(d: Diversion, now: dt.datetime) -> None:
    stages = divert.plan("a", d, now)
    # the shape follows from the rule alone: diverted only inside the schedule and with a target left
    # that is not the account itself; then one stage (immediate, group) or two (no answer, unregistered)
    active = schedule.active(dict(d.schedule) if d.schedule else None, now, "Europe/Berlin")
    left = {t for t in d.targets if t != "a"}
    expected_after = ("",) if not (active and left) or d.kind == "group" or d.mode == "immediate" else \
        ("", {"no_answer": "unanswered", "unregistered": "unavailable"}[str(d.mode)])
    assert tuple(s.after for s in stages) == expected_after
    assert ("a" in stages[0].accounts) == (not (active and left) or d.kind == "group" or d.mode != "immediate")
    diverted = [t for s in stages for t in (*s.accounts, *s.externals) if t != "a"]
    assert len(diverted) <= divert.MAX_TARGETS and len(set(diverted)) == len(diverted)
    assert sum(len(s.externals) for s in stages) <= divert.MAX_EXTERNAL
    assert all(t in d.targets for t in diverted)                       # nothing but the configured targets
    # the account rings at most once, and never in a stage after the first (no loop back to it)
    assert sum(s.accounts.count("a") for s in stages) <= 1 and all("a" not in s.accounts for s in stages[1:])
    assert all(s.seconds > 0 for s in stages)


def test_a_ring_group_rings_its_members_then_its_fallback() -> None:
    assert divert.group_plan(["a", "b", "a"], 20, None) == (Stage(("a", "b"), (), 20),)
    assert divert.group_plan(["a", "b"], 20, "c") == (Stage(("a", "b"), (), 20),
                                                      Stage(("c",), (), 60, after="unanswered"))
    assert divert.group_plan(["a"], 15, "+4930123456") == (Stage(("a",), (), 15),
                                                           Stage((), ("+4930123456",), 60, after="unanswered"))
    # a fallback that is a member already rang
    assert divert.group_plan(["a", "b"], 20, "b") == (Stage(("a", "b"), (), 20),)
