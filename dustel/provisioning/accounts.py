"""SIP accounts (SPEC F-03): username 000387 + 6 digits, password kept only
as the SIP digest HA1 for the tenant's realm."""
from __future__ import annotations

import hashlib
from typing import Any

import psycopg

from ..errors import DustelError, NotFound
from . import tenants
from . import validate as v

TLS_MODES = ("off", "tls_srtp", "tls_only")
T38_MODES = ("off", "enable", "passthrough")
PUBLIC_COLUMNS = """a.id, a.tenant_id, a.username, a.display_name, a.tls_mode, a.t38,
                    a.allowed_nets::text[] AS allowed_nets, a.caller_id, a.location_area_code,
                    a.max_call_seconds, a.zone_preset, a.extra_zones"""


def ha1(username: str, realm: str, password: str) -> str:
    """RFC 2617 HA1 = MD5(username:realm:password), what SIP digest needs."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).hexdigest()  # noqa: S324


def get(conn: psycopg.Connection, username: str, *, tenant_id: int | None = None) -> dict[str, Any]:
    username = v.username("username", username)
    row = conn.execute(
        f"SELECT {PUBLIC_COLUMNS}, t.sip_domain FROM sip_accounts a JOIN tenants t ON t.id = a.tenant_id"
        " WHERE a.username = %s AND (%s::bigint IS NULL OR a.tenant_id = %s)",
        (username, tenant_id, tenant_id),
    ).fetchone()
    if row is None:
        raise NotFound("account", f"no SIP account {username}")
    return row


def _modes(tls_mode: str | None, t38: str | None) -> None:
    if tls_mode is not None and tls_mode not in TLS_MODES:
        raise DustelError("tls", f"must be one of {', '.join(TLS_MODES)}")
    if t38 is not None and t38 not in T38_MODES:
        raise DustelError("t38", f"must be one of {', '.join(T38_MODES)}")


def add(conn: psycopg.Connection, tenant_id: int, *, password: str, username: str | None = None,
        display_name: str = "", tls_mode: str = "off", t38: str = "off",
        allowed_nets: list[str] | None = None, caller_id: str | None = None,
        location: str | None = None) -> dict[str, Any]:
    te = tenants.get(conn, tenant_id)
    password = v.password("password", password)
    _modes(tls_mode, t38)
    display_name = v.text("display_name", display_name, max_len=64, min_len=0)
    nets = v.networks("allowed_ip", allowed_nets or [])
    caller_id = v.e164("caller_id", caller_id) if caller_id is not None else None
    if username is not None:
        username = v.username("username", username)
    else:
        username = _next_free_username(conn)
    if location is not None:
        location = v.area_code("location", location)
    else:
        first = conn.execute("SELECT area_code FROM addresses WHERE tenant_id = %s ORDER BY id LIMIT 1",
                             (tenant_id,)).fetchone()
        location = first["area_code"] if first else None
    conn.execute(
        """INSERT INTO sip_accounts (tenant_id, username, ha1, display_name, tls_mode, t38,
                                     allowed_nets, caller_id, location_area_code)
           VALUES (%s, %s, %s, %s, %s, %s, %s::cidr[], %s, %s)""",
        (tenant_id, username, ha1(username, te["sip_domain"], password), display_name, tls_mode,
         t38, nets, caller_id, location),
    )
    return get(conn, username)


def _next_free_username(conn: psycopg.Connection) -> str:
    for _ in range(1000):
        n = conn.execute("SELECT nextval('sip_username_seq') AS n").fetchone()["n"]
        name = f"000387{n:06d}"
        if not conn.execute("SELECT 1 FROM sip_accounts WHERE username = %s", (name,)).fetchone():
            return name
    raise DustelError("username", "no free username left in the sequence")


def set_fields(conn: psycopg.Connection, username: str, *, display_name: str | None = None,
               tls_mode: str | None = None, t38: str | None = None,
               allowed_nets: list[str] | None = None, caller_id: str | None = None,
               location: str | None = None, max_call_seconds: int | None = None) -> dict[str, Any]:
    acc = get(conn, username)
    _modes(tls_mode, t38)
    cols: dict[str, Any] = {}
    if display_name is not None:
        cols["display_name"] = v.text("display_name", display_name, max_len=64, min_len=0)
    if tls_mode is not None:
        cols["tls_mode"] = tls_mode
    if t38 is not None:
        cols["t38"] = t38
    if allowed_nets is not None:
        cols["allowed_nets"] = v.networks("allowed_ip", allowed_nets)
    if caller_id is not None:
        cols["caller_id"] = v.e164("caller_id", caller_id) if caller_id else None
    if location is not None:
        cols["location_area_code"] = v.area_code("location", location)
    if max_call_seconds is not None:
        if not 1 <= max_call_seconds <= 86400:
            raise DustelError("max_call_seconds", "must be 1 to 86400")
        cols["max_call_seconds"] = max_call_seconds
    if cols:
        sets = ", ".join(f"{c} = %s" + ("::cidr[]" if c == "allowed_nets" else "") for c in cols)
        conn.execute(f"UPDATE sip_accounts SET {sets} WHERE id = %s", (*cols.values(), acc["id"]))
    return get(conn, username)


def set_password(conn: psycopg.Connection, username: str, password: str) -> None:
    acc = get(conn, username)
    password = v.password("password", password)
    conn.execute("UPDATE sip_accounts SET ha1 = %s WHERE id = %s",
                 (ha1(acc["username"], acc["sip_domain"], password), acc["id"]))


def list_for(conn: psycopg.Connection, tenant_id: int | None) -> list[dict[str, Any]]:
    if tenant_id is not None:
        tenants.get(conn, tenant_id)
    return conn.execute(
        f"SELECT {PUBLIC_COLUMNS} FROM sip_accounts a"
        " WHERE %s::bigint IS NULL OR a.tenant_id = %s ORDER BY a.username",
        (tenant_id, tenant_id),
    ).fetchall()


def remove(conn: psycopg.Connection, username: str) -> None:
    acc = get(conn, username)
    used = conn.execute("SELECT e164 FROM numbers WHERE account_id = %s LIMIT 1", (acc["id"],)).fetchone()
    if used:
        raise DustelError("account", f"number {used['e164']} routes to {username}; route it elsewhere first")
    conn.execute("DELETE FROM sip_accounts WHERE id = %s", (acc["id"],))
