"""Time-controlled forwarding / group call (F-05, business flex).

A schedule says *when the diversion is active*: rules of weekdays and a
time window, evaluated in the tenant's time zone; on a public holiday
(explicit dates or a German state's holidays from the ``holidays``
package) only rules for ``hol`` apply.  Pure functions, no I/O.
"""
from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from functools import lru_cache
from typing import Any

import holidays as holidays_lib

from ..errors import DustelError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
STATES = ("BB", "BE", "BW", "BY", "HB", "HE", "HH", "MV", "NI", "NW", "RP", "SH", "SL", "SN", "ST", "TH")
_RULE = re.compile(r"(?P<days>[a-z,-]+)\s+(?P<start>[0-9]{2}:[0-9]{2})-(?P<end>[0-9]{2}:[0-9]{2})")


def _minutes(field: str, hhmm: str) -> int:
    h, m = int(hhmm[:2]), int(hhmm[3:])
    if m > 59 or h > 24 or (h == 24 and m):
        raise DustelError(field, f"{hhmm} is not a time of day (00:00-24:00)")
    return h * 60 + m


def parse_rule(text: str) -> dict[str, Any]:
    """'mon-fri 08:00-18:00', 'sat,sun 00:00-24:00', 'hol 00:00-24:00'."""
    m = _RULE.fullmatch(text.strip().lower())
    if not m:
        raise DustelError("when", "must look like 'mon-fri 08:00-18:00' (days: mon..sun, hol)")
    days: set[str] = set()
    for part in m["days"].split(","):
        if "-" in part:
            a, _, b = part.partition("-")
            if a not in DAYS or b not in DAYS:
                raise DustelError("when", f"unknown day range {part!r}")
            i, j = DAYS.index(a), DAYS.index(b)
            days.update(DAYS[i:j + 1] if i <= j else DAYS[i:] + DAYS[:j + 1])
        elif part in DAYS or part == "hol":
            days.add(part)
        else:
            raise DustelError("when", f"unknown day {part!r} (mon..sun, hol)")
    start, end = _minutes("when", m["start"]), _minutes("when", m["end"])
    if start >= end:
        raise DustelError("when", "the window must end after it starts (use two rules across midnight)")
    order = {d: i for i, d in enumerate((*DAYS, "hol"))}
    return {"days": sorted(days, key=order.__getitem__), "start": start, "end": end}


def build(rules: list[str], *, region: str | None = None, dates: list[str] | None = None) -> dict[str, Any]:
    if not rules:
        raise DustelError("when", "a schedule needs at least one rule")
    if region is not None and region.upper() not in STATES:
        raise DustelError("holidays", f"must be a German state code ({', '.join(STATES)})")
    parsed_dates = []
    for d in dates or []:
        try:
            parsed_dates.append(dt.date.fromisoformat(d).isoformat())
        except ValueError:
            raise DustelError("holiday_date", f"{d!r} is not a date YYYY-MM-DD") from None
    return {"rules": [parse_rule(r) for r in rules],
            "holiday_region": region.upper() if region else None,
            "holiday_dates": sorted(set(parsed_dates))}


@lru_cache(maxsize=64)
def _region_holidays(region: str, year: int) -> frozenset[dt.date]:
    return frozenset(holidays_lib.country_holidays("DE", subdiv=region, years=year).keys())


def is_holiday(schedule: dict[str, Any], day: dt.date) -> bool:
    if day.isoformat() in schedule.get("holiday_dates", []):
        return True
    region = schedule.get("holiday_region")
    return bool(region) and day in _region_holidays(region, day.year)


def active(schedule: dict[str, Any] | None, when: dt.datetime, tz: str) -> bool:
    """Is the diversion active at ``when`` (aware) in time zone ``tz``?
    No schedule means always active."""
    if not schedule:
        return True
    local = when.astimezone(zoneinfo.ZoneInfo(tz))
    day = "hol" if is_holiday(schedule, local.date()) else DAYS[local.weekday()]
    minute = local.hour * 60 + local.minute
    return any(day in r["days"] and r["start"] <= minute < r["end"] for r in schedule["rules"])


def describe(schedule: dict[str, Any] | None) -> list[str]:
    if not schedule:
        return []
    out = [f"{','.join(r['days'])} {r['start'] // 60:02d}:{r['start'] % 60:02d}-"
           f"{r['end'] // 60:02d}:{r['end'] % 60:02d}" for r in schedule["rules"]]
    if schedule.get("holiday_region"):
        out.append(f"holidays of DE-{schedule['holiday_region']}")
    out += [f"holiday {d}" for d in schedule.get("holiday_dates", [])]
    return out
