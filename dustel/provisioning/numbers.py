"""Numbers and blocks (SPEC F-02): routing targets, porting.

A row is a single number or a whole block (head number + DDI range); block
members have no rows, so a block can only be routed, ported or removed whole.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from ..errors import DustelError, NotFound
from . import tenants
from . import validate as v

BLOCK_SIZES = (10, 20, 30, 50, 70, 100, 200, 300, 500, 700, 1000)
TARGET_KINDS = ("account", "queue", "fax", "group")

# Porting state machine: (state, event) -> new state.
PORTING_TRANSITIONS: dict[tuple[str, str], str] = {
    ("requested", "confirm"): "confirmed",
    ("requested", "reject"): "rejected",
    ("confirmed", "done"): "done",
    ("confirmed", "reject"): "rejected",
}


def porting_next(state: str, event: str) -> str:
    try:
        return PORTING_TRANSITIONS[(state, event)]
    except KeyError:
        allowed = sorted(e for (s, e) in PORTING_TRANSITIONS if s == state)
        raise DustelError(
            "state", f"a {state} porting order cannot be {event}ed"
            + (f" (allowed: {', '.join(allowed)})" if allowed else " (it is closed)")) from None


def find(conn: psycopg.Connection, e164: str, *, whole: bool = True) -> dict[str, Any]:
    """The row for e164.  With ``whole``, a member of a block is refused:
    blocks are never split."""
    e164 = v.e164("number", e164)
    row = conn.execute(
        "SELECT n.*, t.name AS tenant_name FROM numbers n JOIN tenants t ON t.id = n.tenant_id"
        " WHERE n.id = dustel_number_holding(%s)", (e164,)).fetchone()
    if row is None:
        raise NotFound("number", f"{e164} is not provisioned")
    if whole and row["e164"] != e164:
        raise DustelError("number", f"{e164} belongs to block {row['e164']} ({row['block_size']} numbers);"
                          " a block is never split: act on the whole block")
    return row


def add(conn: psycopg.Connection, tenant_id: int, e164: str, *, block_size: int | None = None,
        central_ddi: str | None = None, origin: str = "new", status: str = "active") -> dict[str, Any]:
    tenants.get(conn, tenant_id, lock=True)
    e164 = v.e164("number", e164, plan=block_size is None)
    if block_size is not None and block_size not in BLOCK_SIZES:
        raise DustelError("block_size", f"must be one of {', '.join(map(str, BLOCK_SIZES))}")
    held(e164, block_size)
    if central_ddi is not None:
        if block_size is None:
            raise DustelError("central", "only a block has a central answering point")
        central_ddi = v.digits("central", central_ddi, max_len=3)
    return conn.execute(
        """INSERT INTO numbers (tenant_id, e164, block_size, central_ddi, origin, status)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING *""",
        (tenant_id, e164, block_size, central_ddi, origin, status)).fetchone()


def members(e164: str, block_size: int | None) -> list[str]:
    """The first and the last number of a block (the number itself when single)."""
    if block_size is None:
        return [e164]
    digits = 1 if block_size <= 10 else 2 if block_size <= 100 else 3      # the database's dustel_ddi_digits
    return [f"{e164}{0:0{digits}d}", f"{e164}{block_size - 1:0{digits}d}"]


def held(e164: str, block_size: int | None) -> str:
    """The kind of a number a tenant may hold (libphonenumber's reading of
    the numbering plan): German, every number of a block in the plan, not a
    mobile number (those belong to mobile networks).  Returns its kind."""
    if not e164.startswith("+49"):
        raise DustelError("number", f"{e164} is not a German number (+49…): dustel's numbers are German")
    kinds = set()
    for n in members(e164, block_size):
        v.e164("number", n)
        kinds.add(v.number_kind(n))
    if "mobile" in kinds:
        raise DustelError("number", f"{e164} is a mobile number: it belongs to a mobile network, not to a tenant "
                                    "of a fixed-network provider")
    if len(kinds) != 1:
        raise DustelError("number", f"block {e164} spans numbers of different kinds ({', '.join(sorted(kinds))})")
    return kinds.pop()


def assign(conn: psycopg.Connection, e164: str, kind: str | None, target: str | None) -> dict[str, Any]:
    """Route a number/block to an account, queue, fax box or ring group (None: unroute)."""
    row = find(conn, e164)
    if row["status"] == "ported_out":
        raise DustelError("number", f"{row['e164']} has been ported out")
    cols = {"target_kind": None, "account_id": None, "queue_id": None, "faxbox_id": None, "group_id": None}
    if kind is not None:
        if kind not in TARGET_KINDS:
            raise DustelError("target", f"must be one of {', '.join(TARGET_KINDS)}")
        if target is None:
            raise DustelError("target", f"a {kind} target needs a name")
        table, col, key, check = {
            "account": ("sip_accounts", "account_id", "username", v.username),
            "queue": ("queues", "queue_id", "name", v.slug),
            "fax": ("faxboxes", "faxbox_id", "name", v.slug),
            "group": ("ring_groups", "group_id", "name", v.slug),
        }[kind]
        key_value = check(kind, target)
        found = conn.execute(f"SELECT id FROM {table} WHERE tenant_id = %s AND {key} = %s",
                             (row["tenant_id"], key_value)).fetchone()
        if found is None:
            raise NotFound(kind, f"tenant {row['tenant_id']} has no {kind} {key_value!r}")
        cols["target_kind"] = kind
        cols[col] = found["id"]
    sets = ", ".join(f"{c} = %s" for c in cols)
    conn.execute(f"UPDATE numbers SET {sets} WHERE id = %s", (*cols.values(), row["id"]))
    return find(conn, row["e164"])


def remove(conn: psycopg.Connection, e164: str) -> None:
    row = find(conn, e164)
    if row["status"] in ("porting_in", "porting_out"):
        raise DustelError("number", f"{row['e164']} has an open porting order; close it first")
    conn.execute("DELETE FROM numbers WHERE id = %s", (row["id"],))


def list_for(conn: psycopg.Connection, tenant_id: int | None) -> list[dict[str, Any]]:
    if tenant_id is not None:
        tenants.get(conn, tenant_id)
    return conn.execute(
        """SELECT n.id, n.tenant_id, n.e164, n.block_size, n.central_ddi, n.origin, n.status,
                  n.target_kind,
                  coalesce(a.username, q.name, f.name, g.name) AS target
             FROM numbers n
             LEFT JOIN sip_accounts a ON a.id = n.account_id
             LEFT JOIN queues q ON q.id = n.queue_id
             LEFT JOIN faxboxes f ON f.id = n.faxbox_id
             LEFT JOIN ring_groups g ON g.id = n.group_id
            WHERE %s::bigint IS NULL OR n.tenant_id = %s
            ORDER BY n.e164""", (tenant_id, tenant_id)).fetchall()


# ---------------------------------------------------------------- porting

def port_in(conn: psycopg.Connection, tenant_id: int, e164: str, *, carrier: str,
            block_size: int | None = None) -> dict[str, Any]:
    """Order a port-in: the number is held (area binding and quotas apply)
    in state porting_in until the order is done."""
    carrier = v.text("carrier", carrier, max_len=64)
    num = add(conn, tenant_id, e164, block_size=block_size, origin="ported_in", status="porting_in")
    return conn.execute(
        """INSERT INTO porting_orders (tenant_id, number_id, e164, block_size, direction, carrier)
           VALUES (%s, %s, %s, %s, 'in', %s) RETURNING *""",
        (tenant_id, num["id"], num["e164"], num["block_size"], carrier)).fetchone()


def port_out(conn: psycopg.Connection, e164: str, *, carrier: str) -> dict[str, Any]:
    carrier = v.text("carrier", carrier, max_len=64)
    row = find(conn, e164)
    if row["status"] != "active":
        raise DustelError("number", f"{row['e164']} is {row['status']}, only an active number can be ported out")
    conn.execute("UPDATE numbers SET status = 'porting_out' WHERE id = %s", (row["id"],))
    return conn.execute(
        """INSERT INTO porting_orders (tenant_id, number_id, e164, block_size, direction, carrier)
           VALUES (%s, %s, %s, %s, 'out', %s) RETURNING *""",
        (row["tenant_id"], row["id"], row["e164"], row["block_size"], carrier)).fetchone()


def _order(conn: psycopg.Connection, order_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM porting_orders WHERE id = %s FOR UPDATE", (order_id,)).fetchone()
    if row is None:
        raise NotFound("order", f"no porting order {order_id}")
    return row


def port_event(conn: psycopg.Connection, order_id: int, event: str, *,
               port_date: dt.date | None = None, reason: str | None = None) -> dict[str, Any]:
    """Advance a porting order: confirm (with the date the losing carrier
    set), done, or reject."""
    order = _order(conn, order_id)
    new = porting_next(order["state"], event)
    if event == "confirm":
        if port_date is None:
            raise DustelError("date", "a confirmation needs the porting date set by the losing carrier")
        if port_date < order["requested_at"].date():
            raise DustelError("date", "the porting date cannot be before the request")
    elif port_date is not None:
        raise DustelError("date", "only a confirmation sets the porting date")
    if reason is not None:
        reason = v.text("reason", reason, max_len=200)
    conn.execute(
        """UPDATE porting_orders SET state = %s, port_date = coalesce(%s, port_date),
                  reason = coalesce(%s, reason),
                  closed_at = CASE WHEN %s IN ('done', 'rejected') THEN now() END
            WHERE id = %s""", (new, port_date, reason, new, order_id))
    nid = order["number_id"]
    if nid is not None:
        if order["direction"] == "in" and new == "done":
            conn.execute("UPDATE numbers SET status = 'active' WHERE id = %s", (nid,))
        elif order["direction"] == "in" and new == "rejected":
            conn.execute("DELETE FROM numbers WHERE id = %s", (nid,))
        elif order["direction"] == "out" and new == "done":
            conn.execute("UPDATE numbers SET status = 'ported_out' WHERE id = %s", (nid,))
        elif order["direction"] == "out" and new == "rejected":
            conn.execute("UPDATE numbers SET status = 'active' WHERE id = %s", (nid,))
    return conn.execute("SELECT * FROM porting_orders WHERE id = %s", (order_id,)).fetchone()


def orders(conn: psycopg.Connection, tenant_id: int | None) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT id, tenant_id, e164, block_size, direction, state, carrier, requested_at,
                  port_date, closed_at, reason FROM porting_orders
            WHERE %s::bigint IS NULL OR tenant_id = %s ORDER BY id""",
        (tenant_id, tenant_id)).fetchall()
