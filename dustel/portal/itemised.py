"""The itemised call list of a tenant (F-13): newest first, page by page
(a keyset cursor: every page is one index range scan of
``calls_tenant_started``, however deep), the other party's last three
digits masked unless the tenant chose full numbers."""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
from typing import Any

import psycopg

from ..errors import DustelError

MASK_DIGITS = 3
MAX_PAGE = 500

_COLUMNS = """started_at, direction, account, destination, callee, zone, billsec, charged_cents, state,
              node, call_id"""
_FIRST = f"""SELECT {_COLUMNS} FROM calls WHERE tenant_id = %(t)s
              ORDER BY started_at DESC, node DESC, call_id DESC LIMIT %(n)s"""
_AFTER = f"""SELECT {_COLUMNS} FROM calls WHERE tenant_id = %(t)s
               AND (started_at, node, call_id) < (%(at)s, %(node)s, %(call)s)
              ORDER BY started_at DESC, node DESC, call_id DESC LIMIT %(n)s"""
_DIGIT = re.compile(r"[0-9]")


def mask(number: str, digits: int = MASK_DIGITS) -> str:
    """``+49211123456`` -> ``+49211123xxx``: the last ``digits`` digits
    replaced (a number of fewer than twice as many digits is shown as is:
    110, 112, a speed dial)."""
    found = [m.start() for m in _DIGIT.finditer(number)]
    if len(found) < 2 * digits:
        return number
    chars = list(number)
    for i in found[-digits:]:
        chars[i] = "x"
    return "".join(chars)


def show_full(conn: psycopg.Connection, tenant_id: int) -> bool:
    row = conn.execute("SELECT show_full_numbers FROM portal_settings WHERE tenant_id = %s", (tenant_id,)).fetchone()
    return bool(row and row["show_full_numbers"])


def set_show_full(conn: psycopg.Connection, tenant_id: int, full: bool) -> None:
    conn.execute("""INSERT INTO portal_settings (tenant_id, show_full_numbers) VALUES (%s, %s)
                    ON CONFLICT (tenant_id) DO UPDATE SET show_full_numbers = EXCLUDED.show_full_numbers""",
                 (tenant_id, full))


def cursor_of(row: dict[str, Any]) -> str:
    raw = json.dumps([row["started_at"].isoformat(), row["node"], row["call_id"]])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[dt.datetime, str, str]:
    try:
        at, node, call = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return dt.datetime.fromisoformat(at), str(node), str(call)
    except (ValueError, TypeError):
        raise DustelError("before", "not a cursor of this list (use the 'next' of a page)") from None


def page(conn: psycopg.Connection, tenant_id: int, before: str | None = None, limit: int = 50) -> dict[str, Any]:
    """One page of the tenant's calls and the cursor of the next one."""
    if not 1 <= limit <= MAX_PAGE:
        raise DustelError("limit", f"must be 1 to {MAX_PAGE}")
    full = show_full(conn, tenant_id)
    if before:
        at, node, call = _decode(before)
        rows = conn.execute(_AFTER, {"t": tenant_id, "n": limit, "at": at, "node": node, "call": call}).fetchall()
    else:
        rows = conn.execute(_FIRST, {"t": tenant_id, "n": limit}).fetchall()
    out = []
    for r in rows:
        item = {k: r[k] for k in ("started_at", "direction", "account", "zone", "billsec", "charged_cents", "state")}
        item["destination"] = r["destination"] if full else mask(r["destination"])
        item["callee"] = r["callee"] if full else mask(r["callee"])
        out.append(item)
    return {"calls": out, "masked": not full, "next": cursor_of(rows[-1]) if len(rows) == limit else None}
