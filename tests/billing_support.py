"""Builders for billing tests: tenants with a past, and calls that were
rated and settled at a given time (as the policy servers leave them)."""
from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from dustel.billing import money

from .factories import tenant

BERLIN = ZoneInfo("Europe/Berlin")
# a provider's own issuer (not the demo's placeholders, which invoice run and
# sepa export refuse outside the demo): a valid IBAN and creditor id
ISSUER = {"issuer_iban": "DE02120300000000202051", "issuer_bic": "BYLADEM1001",
          "sepa_creditor_id": "DE98ZZZ00001234567", "issuer_vat_id": "DE123456788"}


def issuer_config(state_dir: str | Path) -> Path:
    """The provider's issuer in the CLI's config file (``Cli.state_dir``)."""
    path = Path(state_dir) / "dustel.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in ISSUER.items()))
    return path
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
