"""Rating (F-09): pure integer arithmetic on cents and seconds.

Prices are integer cents per minute; a call is billed in increments of
1 s (per second) or 60 s (per started minute); the amount is rounded up
to the cent.  Longest-prefix match for zones and rates."""
from __future__ import annotations

from collections.abc import Mapping


def billed_seconds(seconds: int, increment: int) -> int:
    if seconds <= 0:
        return 0
    return -(-seconds // increment) * increment


def cost_cents(seconds: int, cents_per_minute: int, increment: int) -> int:
    """What ``seconds`` of talk cost: ceil(billed_seconds * price / 60)."""
    return -(-billed_seconds(seconds, increment) * cents_per_minute // 60)


def affordable_seconds(cents: int, cents_per_minute: int, increment: int) -> int:
    """The longest call whose cost does not exceed ``cents``."""
    if cents_per_minute <= 0:
        raise ValueError("free calls have no money limit")
    if cents <= 0:
        return 0
    seconds = cents * 60 // cents_per_minute
    return seconds // increment * increment


def longest_match(table: Mapping[str, object], digits: str) -> str | None:
    """The longest key of ``table`` that ``digits`` starts with ('' is the default)."""
    for n in range(len(digits), -1, -1):
        if digits[:n] in table:
            return digits[:n]
    return None
