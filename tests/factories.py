"""Small builders for test data through the real domain functions."""
from __future__ import annotations

from typing import Any

import psycopg

from dustel.provisioning import accounts, tenants

PASSWORD = "Secr3t-Passw0rd"

AREA = {"0211": ("Düsseldorf", "40213"), "0221": ("Köln", "50667"), "030": ("Berlin", "10117"),
        "089": ("München", "80331")}


def tenant(conn: psycopg.Connection, plan: str = "business_flex", customer_type: str | None = None,
           area: str = "0211", options: dict[str, int] | None = None, **kw: Any) -> dict[str, Any]:
    ctype = customer_type or ("business" if plan == "business_flex" else "private")
    with conn.transaction():
        t = tenants.add(conn, name=kw.pop("name", f"Test {plan}"), customer_type=ctype, plan=plan, **kw)
        city, pc = AREA[area]
        tenants.add_address(conn, t["id"], kind="seat", street="Teststraße 1", postcode=pc,
                            city=city, area_code=area)
        for opt, qty in (options or {}).items():
            tenants.set_option(conn, t["id"], opt, qty)
    return t


def account(conn: psycopg.Connection, tenant_id: int, **kw: Any) -> str:
    with conn.transaction():
        return accounts.add(conn, tenant_id, password=kw.pop("password", PASSWORD), **kw)["username"]
