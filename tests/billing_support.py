"""Builders for billing tests: tenants with a past, and calls that were
rated and settled at a given time (as the policy servers leave them)."""
from __future__ import annotations

import datetime as dt
import itertools
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from dustel.billing import money

from .factories import tenant

BERLIN = ZoneInfo("Europe/Berlin")
_ids = itertools.count(1)


def at(text: str) -> dt.datetime:
    """'2026-11-30 23:30' in Berlin time."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=BERLIN)


def old_tenant(conn: psycopg.Connection, plan: str, created_on: dt.date, **kw: Any) -> dict[str, Any]:
    return tenant(conn, plan=plan, created_on=created_on, **kw)


def settled_call(conn: psycopg.Connection, tenant_id: int, zone: str, billsec: int, cents: int,
                 when: dt.datetime, destination: str = "4930123456") -> str:
    """A call settled at ``when`` with ``cents`` charged: the calls row and
    its ledger charge, as settle_many writes them."""
    call_id = f"sim-{next(_ids)}"
    with conn.transaction():
        conn.execute(
            """INSERT INTO calls (node, call_id, tenant_id, account, direction, route, destination, zone,
                                  cents_per_minute, increment, max_seconds, state, started_at, expires_at,
                                  billsec, charged_cents, settled_at)
               VALUES ('sim', %s, %s, '000387000001', 'out', 'out', %s, %s, 9, 1, 3600, 'settled',
                       %s, %s, %s, %s, %s)""",
            (call_id, tenant_id, destination, zone, when - dt.timedelta(seconds=billsec + 5),
             when + dt.timedelta(hours=1), billsec, cents, when))
        if cents:
            money.post(conn, tenant_id, -cents, "charge", f"call:sim:{call_id}", at=when)
    return call_id
