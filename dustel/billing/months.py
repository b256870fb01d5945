"""Calendar months, as billing counts them (invoices, cancellations)."""
from __future__ import annotations

import datetime as dt

from ..errors import DustelError


def month_of(text: str, field: str = "month") -> dt.date:
    """'YYYY-MM' → its first day; anything else is refused naming the field."""
    try:
        d = dt.datetime.strptime(text.strip(), "%Y-%m").date()
    except ValueError:
        raise DustelError(field, "must be YYYY-MM, such as 2026-11") from None
    return d


def next_month(d: dt.date) -> dt.date:
    """The first day of the month after the one holding ``d``."""
    return dt.date(d.year + (d.month == 12), d.month % 12 + 1, 1)


def last_day(d: dt.date) -> dt.date:
    """The last day of the month holding ``d``."""
    return next_month(d) - dt.timedelta(days=1)


def first_billed(setting: str) -> dt.date | None:
    """The ``billing_first_month`` setting (YYYY-MM): the first month dustel
    invoices — the months before were billed by whatever billed before it."""
    return month_of(setting, "billing_first_month") if setting else None
