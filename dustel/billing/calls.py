"""Admit a call (decide + reserve) and settle it, in one transaction each.

The flows are written once, sans-IO: generators that yield SQL and receive
rows, run by ``run_sync`` (psycopg, the gevent outbound-ESL process) or
``run_async`` (psycopg async, the asyncio FastAGI process).  Every money
move locks the tenant's ``tenant_money`` row first, so concurrent calls
never spend the same money twice; (node, call id) makes a retried admit or
a replayed hangup a no-op.
"""
from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import psycopg

from ..agi.policy import CallRequest, Decision, Snapshot, Tariff, decide
from . import rating

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Q:
    sql: str
    params: dict[str, Any]


Flow = Generator[Q, Rows, Any]

_LOCK = "SELECT * FROM tenant_money WHERE tenant_id = %(t)s FOR UPDATE"

_SNAPSHOT = """
SELECT t.id AS tenant_id, p.payment, t.monthly_credit_limit_cents,
       p.lines_in + dustel_option_qty(t.id, 'extra_line') AS lines_in,
       p.lines_out + dustel_option_qty(t.id, 'extra_line') AS lines_out,
       CASE WHEN dustel_option_qty(t.id, 'per_minute_billing') > 0 THEN 60 ELSE 1 END AS increment,
       dustel_option_qty(t.id, 'flat_de_fixed') AS flat_de_fixed,
       dustel_option_qty(t.id, 'flat_de_mobile') AS flat_de_mobile,
       dustel_option_qty(t.id, 'clip_no_screening') > 0 AS clip_ns,
       coalesce(a.username, '') AS username, coalesce(a.allowed_nets::text[], '{}') AS allowed_nets,
       coalesce(a.caller_id, '') AS caller_id,
       coalesce(a.location_area_code, '') AS area_code, dustel_psap_prefix(a.location_area_code) AS psap_prefix,
       coalesce(a.max_call_seconds, t.max_call_seconds) AS max_call_seconds,
       coalesce((SELECT zones FROM zone_presets WHERE code = a.zone_preset) || a.extra_zones, '{}') AS zones,
       (SELECT coalesce(array_agg(pattern), '{}') FROM screening s WHERE s.account_id = a.id AND list = 'black')
           AS blacklist,
       (SELECT coalesce(array_agg(pattern), '{}') FROM screening s WHERE s.account_id = a.id AND list = 'white')
           AS whitelist,
       (SELECT count(*) FROM calls c WHERE c.tenant_id = t.id AND c.state = 'active' AND c.direction = 'in')
           AS active_in,
       (SELECT count(*) FROM calls c WHERE c.tenant_id = t.id AND c.state = 'active' AND c.direction = 'out'
           AND c.route <> 'internal') AS active_out,
       (SELECT count(*) FROM calls c WHERE c.tenant_id = t.id AND c.state = 'active'
           AND c.flat_zone = 'de_fixed') AS flat_de_fixed_used,
       (SELECT count(*) FROM calls c WHERE c.tenant_id = t.id AND c.state = 'active'
           AND c.flat_zone = 'de_mobile') AS flat_de_mobile_used,
       (SELECT coalesce(-sum(amount_cents), 0)::bigint FROM ledger l WHERE l.tenant_id = t.id AND l.kind = 'charge'
           AND l.created_at >= date_trunc('month', now() AT TIME ZONE t.timezone) AT TIME ZONE t.timezone)
           AS month_charges,
       (SELECT username FROM sip_accounts b WHERE b.tenant_id = t.id AND b.username = %(callee)s) AS callee_account
  FROM tenants t JOIN plans p ON p.code = t.plan
  LEFT JOIN sip_accounts a ON a.tenant_id = t.id AND a.username = %(account)s
 WHERE t.id = %(t)s
"""

_EXISTING = "SELECT * FROM calls WHERE node = %(node)s AND call_id = %(call)s"

_INSERT = """
INSERT INTO calls (node, call_id, tenant_id, account, direction, route, destination, zone, flat_zone,
                   cents_per_minute, increment, max_seconds, reserved_cents, reserved_free, expires_at)
VALUES (%(node)s, %(call)s, %(t)s, %(account)s, %(dir)s, %(route)s, %(dest)s, %(zone)s, %(flat)s,
        %(rate)s, %(inc)s, %(max)s, %(cents)s, %(free)s, now() + make_interval(secs => %(ttl)s))
"""

_RESERVE = """
UPDATE tenant_money SET reserved_cents = reserved_cents + %(cents)s, reserved_free = reserved_free + %(free)s
 WHERE tenant_id = %(t)s
"""

# Reservations of calls whose hangup never came are released after their
# maximum duration plus this grace; emergency calls (no limit) after 12 h.
GRACE_SECONDS = 3600
EMERGENCY_TTL = 12 * 3600


def snapshot_from(row: dict[str, Any], money: dict[str, Any]) -> Snapshot:
    # int(): money is integer cents; a numeric (Decimal) here would round differently
    if row["payment"] == "prepaid":
        available: int | None = int(money["balance_cents"]) - int(money["reserved_cents"])
    elif row["monthly_credit_limit_cents"] is not None:
        available = (int(row["monthly_credit_limit_cents"]) - int(row["month_charges"])
                     - int(money["reserved_cents"]))
    else:
        available = None
    return Snapshot(
        tenant_id=row["tenant_id"], account=row["username"], area_code=row["area_code"],
        psap_prefix=row["psap_prefix"], max_call_seconds=row["max_call_seconds"], lines_in=row["lines_in"],
        lines_out=row["lines_out"], active_in=row["active_in"], active_out=row["active_out"],
        allowed_nets=tuple(row["allowed_nets"]), caller_id=row["caller_id"], clip_no_screening=row["clip_ns"],
        zones=frozenset(row["zones"]), blacklist=tuple(row["blacklist"]), whitelist=tuple(row["whitelist"]),
        available_cents=available, increment=row["increment"],
        flats={"de_fixed": row["flat_de_fixed"], "de_mobile": row["flat_de_mobile"]},
        flats_in_use={"de_fixed": row["flat_de_fixed_used"], "de_mobile": row["flat_de_mobile_used"]},
        free_seconds=money["free_seconds"] - money["reserved_free"],
        callee_account=row["callee_account"] if row["callee_account"] not in (None, row["username"]) else None)


def _from_call(c: dict[str, Any]) -> Decision:
    """The decision an earlier, identical admit took (a retried request)."""
    return Decision(admit=True, reason="retry", route=c["route"], destination=c["destination"],
                    max_seconds=c["max_seconds"], zone=c["zone"], cents_per_minute=c["cents_per_minute"],
                    increment=c["increment"], flat_zone=c["flat_zone"], free_seconds=c["reserved_free"],
                    reserve_cents=c["reserved_cents"])


class UnknownAccount(Exception):
    pass


def admit(req: CallRequest, tariff: Tariff) -> Flow:
    """Decide and, when admitted, reserve: one transaction (the driver's)."""
    money = (yield Q(_LOCK, {"t": req.tenant_id}))
    if not money:
        raise UnknownAccount(f"tenant {req.tenant_id}")
    existing = (yield Q(_EXISTING, {"node": req.node, "call": req.call_id}))
    if existing:
        return _from_call(existing[0])
    rows = (yield Q(_SNAPSHOT, {"t": req.tenant_id, "account": req.account, "callee": req.callee}))
    if not rows or (req.account and rows[0]["username"] != req.account):
        raise UnknownAccount(f"account {req.account!r} of tenant {req.tenant_id}")
    snap = snapshot_from(rows[0], money[0])
    d = decide(req, snap, tariff)
    if d.admit:
        ttl = EMERGENCY_TTL if d.route == "emergency" else d.max_seconds + GRACE_SECONDS
        yield Q(_INSERT, {"node": req.node, "call": req.call_id, "t": req.tenant_id, "account": req.account,
                          "dir": req.direction, "route": d.route, "dest": d.destination, "zone": d.zone,
                          "flat": d.flat_zone, "rate": d.cents_per_minute, "inc": d.increment,
                          "max": d.max_seconds, "cents": d.reserve_cents, "free": d.free_seconds, "ttl": ttl})
        if d.reserve_cents or d.free_seconds:
            yield Q(_RESERVE, {"t": req.tenant_id, "cents": d.reserve_cents, "free": d.free_seconds})
    return d


@dataclass(frozen=True)
class Settlement:
    status: str           # settled | already | unknown
    charged_cents: int = 0
    billsec: int = 0


def charge_for(call: dict[str, Any], billsec: int) -> tuple[int, int]:
    """(cents, free seconds used) for a call that talked ``billsec``."""
    if call["max_seconds"]:
        billsec = min(billsec, call["max_seconds"])
    if call["route"] != "external" or call["flat_zone"] or not call["cents_per_minute"]:
        return 0, 0
    free = min(billsec, call["reserved_free"])
    return rating.cost_cents(billsec - free, call["cents_per_minute"], call["increment"]), free


def settle(node: str, call_id: str, billsec: int) -> Flow:
    """Charge what the call used and release the rest; a replay changes nothing."""
    found = (yield Q("SELECT tenant_id FROM calls WHERE node = %(node)s AND call_id = %(call)s",
                     {"node": node, "call": call_id}))
    if not found:
        return Settlement("unknown")
    tid = found[0]["tenant_id"]
    yield Q(_LOCK, {"t": tid})
    call = (yield Q(_EXISTING + " FOR UPDATE", {"node": node, "call": call_id}))[0]
    if call["state"] == "settled":
        return Settlement("already", call["charged_cents"], call["billsec"])
    billsec = max(0, billsec)
    cents, free = charge_for(call, billsec)
    held = call["state"] == "active"   # an expired call's reservation was released already
    yield Q("""UPDATE calls SET state = 'settled', billsec = %(b)s, charged_cents = %(c)s, settled_at = now()
                WHERE node = %(node)s AND call_id = %(call)s""",
            {"b": billsec, "c": cents, "node": node, "call": call_id})
    yield Q("""UPDATE tenant_money SET balance_cents = balance_cents - %(c)s,
                      reserved_cents = reserved_cents - %(rc)s, reserved_free = reserved_free - %(rf)s,
                      free_seconds = free_seconds - %(f)s
                WHERE tenant_id = %(t)s""",
            {"c": cents, "rc": call["reserved_cents"] if held else 0,
             "rf": call["reserved_free"] if held else 0, "f": free, "t": tid})
    if cents:
        yield Q("""INSERT INTO ledger (tenant_id, amount_cents, kind, ref)
                   VALUES (%(t)s, %(a)s, 'charge', %(ref)s)""",
                {"t": tid, "a": -cents, "ref": f"call:{node}:{call_id}"})
    return Settlement("settled", cents, billsec)


def expire() -> Flow:
    """Release the reservations of calls whose hangup never came."""
    rows = (yield Q("""
        WITH e AS (UPDATE calls SET state = 'expired' WHERE state = 'active' AND expires_at < now()
                   RETURNING tenant_id, reserved_cents, reserved_free),
             s AS (SELECT tenant_id, sum(reserved_cents) AS c, sum(reserved_free) AS f, count(*) AS n
                     FROM e GROUP BY tenant_id),
             u AS (UPDATE tenant_money m SET reserved_cents = m.reserved_cents - s.c,
                          reserved_free = m.reserved_free - s.f
                     FROM s WHERE m.tenant_id = s.tenant_id RETURNING s.n)
        SELECT coalesce(sum(n), 0)::int AS n FROM u""", {}))
    return rows[0]["n"]


def topup(tenant_id: int, cents: int, ref: str) -> Flow:
    """Add prepaid credit; the reference makes it idempotent."""
    yield Q(_LOCK, {"t": tenant_id})
    done = (yield Q("""INSERT INTO ledger (tenant_id, amount_cents, kind, ref) VALUES (%(t)s, %(a)s, 'topup', %(r)s)
                       ON CONFLICT (ref) DO NOTHING RETURNING id""", {"t": tenant_id, "a": cents, "r": ref}))
    if done:
        yield Q("UPDATE tenant_money SET balance_cents = balance_cents + %(a)s WHERE tenant_id = %(t)s",
                {"a": cents, "t": tenant_id})
    return bool(done)


# ---------------------------------------------------------------- tariff

def load_tariff() -> Flow:
    zones = (yield Q("SELECT prefix, zone FROM zone_prefixes", {}))
    rates = (yield Q("SELECT prefix, cents_per_minute FROM rates", {}))
    return Tariff(zones={r["prefix"]: r["zone"] for r in zones},
                  rates={r["prefix"]: r["cents_per_minute"] for r in rates})


class TariffCache:
    """The tariff changes rarely: reload it at most every ``ttl`` seconds."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self.tariff: Tariff | None = None
        self.loaded = 0.0

    def stale(self) -> bool:
        return self.tariff is None or time.monotonic() - self.loaded > self.ttl

    def set(self, tariff: Tariff) -> Tariff:
        self.tariff, self.loaded = tariff, time.monotonic()
        return tariff


# ---------------------------------------------------------------- drivers

def run_sync(conn: psycopg.Connection[Any], flow: Flow) -> Any:
    """Run a flow in one transaction on a sync connection (dict rows)."""
    with conn.transaction():
        try:
            q = next(flow)
            while True:
                cur = conn.execute(q.sql, q.params)
                q = flow.send([] if cur.description is None else cur.fetchall())
        except StopIteration as stop:
            return stop.value


async def run_async(conn: psycopg.AsyncConnection[Any], flow: Flow) -> Any:
    async with conn.transaction():
        try:
            q = next(flow)
            while True:
                cur = await conn.execute(q.sql, q.params)
                q = flow.send([] if cur.description is None else await cur.fetchall())
        except StopIteration as stop:
            return stop.value
