"""Admit a call (decide + reserve) and settle it, in one transaction each.

The flows are written once, sans-IO: generators that yield SQL and receive
rows, run by ``run_sync`` (psycopg, the gevent outbound-ESL process) or
``run_async`` (psycopg async, the asyncio FastAGI process).  Every money
move locks the tenant's ``tenant_money`` row first, so concurrent calls
never spend the same money twice; (node, call id) makes a retried admit or
a replayed hangup a no-op.
"""
from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import psycopg

from ..agi.policy import CallRequest, Decision, Snapshot, Tariff, decide, refuse
from . import rating

Rows = list[dict[str, Any]]

# Connection settings of the policy servers' pools.  The flows run the same
# few statements on every call; PostgreSQL's default would plan the
# snapshot again for every execution (a custom plan: 1 ms of the 1.5 ms the
# statement took here); a generic plan is planned once per connection and
# is the right plan for any tenant.
POOL_KWARGS: dict[str, Any] = {"options": "-c plan_cache_mode=force_generic_plan"}


@dataclass(frozen=True)
class Q:
    sql: str
    params: dict[str, Any]


# A flow yields one query (and gets its rows) or a list of queries run in
# order (and gets a list of row lists).  (psycopg's pipeline mode would send
# a list in one round trip, but measured slower here: bench/policy.py.)
Flow = Generator[Any, Any, Any]

_LOCK = "SELECT * FROM tenant_money WHERE tenant_id = %(t)s FOR UPDATE"
# a batch locks its tenants in id order, so batches never deadlock each other
_LOCK_MANY = "SELECT * FROM tenant_money WHERE tenant_id = ANY(%(ts)s) ORDER BY tenant_id FOR UPDATE"

# One row per request of a batch (r.i: its position): the settings the
# rules read, the tenant's active calls (counted by ``usage``), and the row
# of an earlier admit of the same call (a retry).
_SNAPSHOT_MANY = """
SELECT r.i, t.id AS tenant_id, p.payment, t.monthly_credit_limit_cents,
       p.lines_in + o.extra_line AS lines_in, p.lines_out + o.extra_line AS lines_out,
       CASE WHEN o.per_minute_billing > 0 THEN 60 ELSE 1 END AS increment,
       o.flat_de_fixed, o.flat_de_mobile, o.clip_no_screening > 0 AS clip_ns,
       coalesce(a.username, '') AS username, coalesce(a.allowed_nets::text[], '{}') AS allowed_nets,
       dustel_presented_number(t.id, a.id) AS caller_id, coalesce(a.tls_mode, 'off') <> 'off' AS tls_required,
       coalesce(a.location_area_code, '') AS area_code, dustel_psap_prefix(a.location_area_code) AS psap_prefix,
       coalesce(a.max_call_seconds, t.max_call_seconds) AS max_call_seconds,
       coalesce((SELECT zones FROM zone_presets WHERE code = a.zone_preset) || a.extra_zones, '{}') AS zones,
       (SELECT coalesce(array_agg(pattern), '{}') FROM screening s WHERE s.account_id = a.id AND list = 'black')
           AS blacklist,
       (SELECT coalesce(array_agg(pattern), '{}') FROM screening s WHERE s.account_id = a.id AND list = 'white')
           AS whitelist,
       (SELECT coalesce(array_agg(c.direction || ':' || c.route || ':' || coalesce(c.flat_zone, '')), '{}')
          FROM calls c WHERE c.tenant_id = t.id AND c.state = 'active') AS active,
       (SELECT coalesce(-sum(amount_cents), 0)::bigint FROM ledger l WHERE l.tenant_id = t.id AND l.kind = 'charge'
           AND l.created_at >= date_trunc('month', now() AT TIME ZONE t.timezone) AT TIME ZONE t.timezone)
           AS month_charges,
       (SELECT username FROM sip_accounts b WHERE b.tenant_id = t.id AND b.username = r.callee) AS callee_account,
       (SELECT to_jsonb(c) FROM calls c WHERE c.node = r.node AND c.call_id = r.call) AS existing
  FROM unnest(%(t)s::bigint[], %(account)s::text[], %(callee)s::text[], %(node)s::text[], %(call)s::text[])
       WITH ORDINALITY AS r(t, account, callee, node, call, i)
  JOIN tenants t ON t.id = r.t
  JOIN plans p ON p.code = t.plan
  CROSS JOIN LATERAL (
       SELECT coalesce(sum(qty) FILTER (WHERE option = 'extra_line'), 0) AS extra_line,
              coalesce(sum(qty) FILTER (WHERE option = 'per_minute_billing'), 0) AS per_minute_billing,
              coalesce(sum(qty) FILTER (WHERE option = 'flat_de_fixed'), 0) AS flat_de_fixed,
              coalesce(sum(qty) FILTER (WHERE option = 'flat_de_mobile'), 0) AS flat_de_mobile,
              coalesce(sum(qty) FILTER (WHERE option = 'clip_no_screening'), 0) AS clip_no_screening
         FROM dustel_options(t.id)) o
  LEFT JOIN sip_accounts a ON a.tenant_id = t.id AND a.username = r.account
"""

_EXISTING = "SELECT * FROM calls WHERE node = %(node)s AND call_id = %(call)s"

# the admitted calls of a batch and their reservations: one statement
_INSERT_RESERVE_MANY = """
WITH c AS (
    INSERT INTO calls (node, call_id, tenant_id, account, direction, route, destination, zone, flat_zone,
                       cents_per_minute, increment, max_seconds, reserved_cents, reserved_free, expires_at, callee)
    SELECT node, call, t, account, dir, route, dest, zone, flat, rate, inc, mx, cents, free,
           now() + make_interval(secs => ttl), callee
      FROM unnest(%(node)s::text[], %(call)s::text[], %(t)s::bigint[], %(account)s::text[], %(dir)s::text[],
                  %(route)s::text[], %(dest)s::text[], %(zone)s::text[], %(flat)s::text[], %(rate)s::int[],
                  %(inc)s::int[], %(max)s::int[], %(cents)s::bigint[], %(free)s::int[], %(ttl)s::int[],
                  %(callee)s::text[])
           AS r(node, call, t, account, dir, route, dest, zone, flat, rate, inc, mx, cents, free, ttl, callee)
    RETURNING tenant_id, reserved_cents, reserved_free),
s AS (SELECT tenant_id, sum(reserved_cents) AS c, sum(reserved_free) AS f FROM c GROUP BY tenant_id)
UPDATE tenant_money m SET reserved_cents = m.reserved_cents + s.c, reserved_free = m.reserved_free + s.f
  FROM s WHERE m.tenant_id = s.tenant_id
"""

# Reservations of calls whose hangup never came are released after their
# maximum duration plus this grace; emergency calls (no limit) after 12 h.
GRACE_SECONDS = 3600
EMERGENCY_TTL = 12 * 3600


@dataclass(frozen=True)
class Usage:
    """What a tenant's active calls occupy: lines in and out, flat channels."""
    lines_in: int
    lines_out: int
    flats: dict[str, int]


def usage(active: list[str]) -> Usage:
    """The one definition of what counts: every inbound call takes an inbound
    line; an outbound call takes an outbound line unless it stays inside the
    tenant (internal); a flat-rate call holds a channel of its zone."""
    lines_in = lines_out = 0
    flats: dict[str, int] = {}
    for a in active:
        direction, route, flat = a.split(":")
        if direction == "in":
            lines_in += 1
        elif route != "internal":
            lines_out += 1
        if flat:
            flats[flat] = flats.get(flat, 0) + 1
    return Usage(lines_in, lines_out, flats)


def snapshot_from(row: dict[str, Any], money: dict[str, Any]) -> Snapshot:
    # int(): money is integer cents; a numeric (Decimal) here would round differently
    if row["payment"] == "prepaid":
        available: int | None = int(money["balance_cents"]) - int(money["reserved_cents"])
    elif row["monthly_credit_limit_cents"] is not None:
        available = (int(row["monthly_credit_limit_cents"]) - int(row["month_charges"])
                     - int(money["reserved_cents"]))
    else:
        available = None
    u = usage(row["active"])
    return Snapshot(
        tenant_id=row["tenant_id"], account=row["username"], area_code=row["area_code"],
        psap_prefix=row["psap_prefix"], max_call_seconds=row["max_call_seconds"], lines_in=row["lines_in"],
        lines_out=row["lines_out"], active_in=u.lines_in, active_out=u.lines_out,
        allowed_nets=tuple(row["allowed_nets"]), caller_id=row["caller_id"], clip_no_screening=row["clip_ns"],
        zones=frozenset(row["zones"]), blacklist=tuple(row["blacklist"]), whitelist=tuple(row["whitelist"]),
        available_cents=available, increment=row["increment"],
        flats={"de_fixed": row["flat_de_fixed"], "de_mobile": row["flat_de_mobile"]},
        flats_in_use={"de_fixed": u.flats.get("de_fixed", 0), "de_mobile": u.flats.get("de_mobile", 0)},
        free_seconds=money["free_seconds"] - money["reserved_free"],
        callee_account=row["callee_account"] if row["callee_account"] not in (None, row["username"]) else None,
        tls_required=bool(row["tls_required"]))


def _from_call(c: dict[str, Any]) -> Decision:
    """The decision an earlier, identical admit took (a retried request)."""
    return Decision(admit=True, reason="retry", route=c["route"], destination=c["destination"],
                    max_seconds=c["max_seconds"], zone=c["zone"], cents_per_minute=c["cents_per_minute"],
                    increment=c["increment"], flat_zone=c["flat_zone"], free_seconds=c["reserved_free"],
                    reserve_cents=c["reserved_cents"])


class UnknownAccount(Exception):
    pass


# A request that reuses the (node, call id) of an admitted call for another
# tenant, direction, account or number (two engines under one node name, a
# transferred leg re-entering the dialplan) never inherits its decision.
CONFLICT = refuse("call_conflict")


def same_call(call: dict[str, Any], req: CallRequest) -> bool:
    """Is ``req`` a retry of the admitted ``call`` (a row or its key fields)?"""
    return (call["tenant_id"] == req.tenant_id and call["direction"] == req.direction
            and call["account"] == req.account and call.get("callee", "") == req.callee)


def admit(req: CallRequest, tariff: Tariff | TariffCache) -> Flow:
    """Decide and, when admitted, reserve: one transaction (the driver's)."""
    (result,) = yield from admit_many([req], tariff)
    if isinstance(result, Exception):
        raise result
    return result


def admit_many(reqs: list[CallRequest], tariff: Tariff | TariffCache) -> Flow:
    """Decide a batch of calls and reserve for the admitted ones, in one
    transaction: lock the tenants' money rows (in id order), read every
    snapshot in one query, decide each call in order — a call sees the
    calls admitted before it in the batch as if they were already stored —
    and store the admitted calls and reservations in one statement.
    Returns a Decision, or an UnknownAccount for a request naming no
    account of its tenant, per request."""
    cols = {"t": [r.tenant_id for r in reqs], "account": [r.account for r in reqs],
            "callee": [r.callee for r in reqs], "node": [r.node for r in reqs], "call": [r.call_id for r in reqs]}
    money_rows, rows, version = (yield [Q(_LOCK_MANY, {"ts": sorted(set(cols["t"]))}), Q(_SNAPSHOT_MANY, cols),
                                        Q(_TARIFF_VERSION, {})])
    if isinstance(tariff, TariffCache):
        # the cached tariff is used only while it is the current one: a rate
        # change bumps the version in its own transaction, so the next call
        # after its commit is rated with it
        if tariff.tariff is None or tariff.tariff.version != version[0]["version"]:
            tariff.set((yield from load_tariff()))
        tariff = tariff.tariff  # type: ignore[assignment]
    money = {m["tenant_id"]: dict(m) for m in money_rows}
    by_i = {row["i"]: row for row in rows}
    active: dict[int, list[str]] = {}
    seen: dict[tuple[str, str], tuple[dict[str, Any], Decision]] = {}
    results: list[Decision | Exception] = []
    store: dict[str, list[Any]] = {k: [] for k in ("node", "call", "t", "account", "dir", "route", "dest", "zone",
                                                   "flat", "rate", "inc", "max", "cents", "free", "ttl", "callee")}
    for i, req in enumerate(reqs, 1):
        row = by_i.get(i)
        key = (req.node, req.call_id)
        if row is not None and row["existing"]:
            results.append(_from_call(row["existing"]) if same_call(row["existing"], req) else CONFLICT)
            continue
        if key in seen:
            results.append(seen[key][1] if same_call(seen[key][0], req) else CONFLICT)
            continue
        if row is None or req.tenant_id not in money or (req.account and row["username"] != req.account):
            results.append(UnknownAccount(f"account {req.account!r} of tenant {req.tenant_id}"))
            continue
        row = {**row, "active": active.setdefault(req.tenant_id, list(row["active"]))}
        d = decide(req, snapshot_from(row, money[req.tenant_id]), tariff)
        results.append(d)
        if not d.admit:
            continue
        seen[key] = ({"tenant_id": req.tenant_id, "direction": req.direction, "account": req.account,
                      "callee": req.callee},
                     _from_call({"route": d.route, "destination": d.destination, "max_seconds": d.max_seconds,
                                 "zone": d.zone, "cents_per_minute": d.cents_per_minute, "increment": d.increment,
                                 "flat_zone": d.flat_zone, "reserved_free": d.free_seconds,
                                 "reserved_cents": d.reserve_cents}))
        active[req.tenant_id].append(f"{req.direction}:{d.route}:{d.flat_zone or ''}")
        m = money[req.tenant_id]
        m["reserved_cents"] = int(m["reserved_cents"]) + d.reserve_cents
        m["reserved_free"] = int(m["reserved_free"]) + d.free_seconds
        ttl = EMERGENCY_TTL if d.route == "emergency" else d.max_seconds + GRACE_SECONDS
        for k, v in (("node", req.node), ("call", req.call_id), ("t", req.tenant_id), ("account", req.account),
                     ("dir", req.direction), ("route", d.route), ("dest", d.destination), ("zone", d.zone),
                     ("flat", d.flat_zone), ("rate", d.cents_per_minute), ("inc", d.increment),
                     ("max", d.max_seconds), ("cents", d.reserve_cents), ("free", d.free_seconds), ("ttl", ttl),
                     ("callee", req.callee)):
            store[k].append(v)
    if store["call"]:
        yield Q(_INSERT_RESERVE_MANY, store)
    return results


@dataclass(frozen=True)
class Settlement:
    status: str           # settled | already | unknown
    charged_cents: int = 0
    billsec: int = 0


def charge_for(call: dict[str, Any], billsec: int, free_left: int | None = None) -> tuple[int, int]:
    """(cents, free seconds used) for a call that talked ``billsec``.
    ``free_left``: for a call whose reservation expired (its free seconds
    went back to the pool), the start credit that is still there."""
    if call["max_seconds"]:
        billsec = min(billsec, call["max_seconds"])
    if call["route"] != "external" or call["flat_zone"] or not call["cents_per_minute"]:
        return 0, 0
    free = min(billsec, call["reserved_free"])
    if free_left is not None:
        free = max(0, min(free, free_left))
    return rating.cost_cents(billsec - free, call["cents_per_minute"], call["increment"]), free


def settle(node: str, call_id: str, billsec: int) -> Flow:
    """Charge what the call used and release the rest; a replay changes nothing."""
    # the tenant's money row first (as every money move), found through the call
    money, locked = (yield [Q("""SELECT * FROM tenant_money
                                  WHERE tenant_id = (SELECT tenant_id FROM calls
                                                      WHERE node = %(node)s AND call_id = %(call)s)
                                    FOR UPDATE""", {"node": node, "call": call_id}),
                            Q(_EXISTING + " FOR UPDATE", {"node": node, "call": call_id})])
    if not locked or not money:
        return Settlement("unknown")
    call = locked[0]
    tid = call["tenant_id"]
    if call["state"] == "settled":
        return Settlement("already", call["charged_cents"], call["billsec"])
    billsec = max(0, billsec)
    held = call["state"] == "active"   # an expired call's reservation was released already
    m = money[0]
    cents, free = charge_for(call, billsec, None if held else int(m["free_seconds"]) - int(m["reserved_free"]))
    writes = [
        Q("""UPDATE calls SET state = 'settled', billsec = %(b)s, charged_cents = %(c)s, settled_at = now()
              WHERE node = %(node)s AND call_id = %(call)s""",
          {"b": billsec, "c": cents, "node": node, "call": call_id}),
        Q("""UPDATE tenant_money SET balance_cents = balance_cents - %(c)s,
                    reserved_cents = reserved_cents - %(rc)s, reserved_free = reserved_free - %(rf)s,
                    free_seconds = free_seconds - %(f)s
              WHERE tenant_id = %(t)s""",
          {"c": cents, "rc": call["reserved_cents"] if held else 0,
           "rf": call["reserved_free"] if held else 0, "f": free, "t": tid})]
    if cents:
        writes.append(Q("""INSERT INTO ledger (tenant_id, amount_cents, kind, ref)
                           VALUES (%(t)s, %(a)s, 'charge', %(ref)s)""",
                        {"t": tid, "a": -cents, "ref": f"call:{node}:{call_id}"}))
    yield writes
    return Settlement("settled", cents, billsec)


LEG = ":leg"     # the call id of a leg dustel places for a call: <call id>:leg


def admit_leg(req: CallRequest, callee: str, tariff: Tariff | TariffCache, account: str | None = None,
              suffix: str = LEG) -> Flow:
    """A leg dustel places for call ``req`` of its tenant to ``callee`` (a
    closed queue's target, an agent's external number, a forwarding's
    external target): admitted like any outbound call — zones, rate, money,
    a line — with the settings of ``account`` (the forwarding account), or
    of the tenant's main account (its oldest), and the original caller, as
    ``<call id><suffix>``.  Returns (the leg's request, its decision)."""
    rows = (yield Q("""SELECT username FROM sip_accounts WHERE tenant_id = %(t)s
                        ORDER BY (username = %(a)s) DESC, id LIMIT 1""", {"t": req.tenant_id, "a": account or ""}))
    if account is not None and rows and rows[0]["username"] != account:
        rows = []
    leg = CallRequest(direction="out", tenant_id=req.tenant_id, account=rows[0]["username"] if rows else "",
                      caller=req.caller, callee=callee, engine=req.engine, node=req.node,
                      call_id=req.call_id + suffix, leg=True)
    if not rows:
        return leg, refuse("no_account")
    return leg, (yield from admit(leg, tariff))


def leg_suffix(i: int) -> str:
    """The call id suffix of the i-th leg (0-based) dustel places for a call."""
    return LEG if i == 0 else f"{LEG}{i + 1}"


def _legs_like(call_id: str) -> str:
    return call_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + LEG + "%"


def call_limit_and_legs(node: str, call_id: str) -> Flow:
    """(time limit, legs placed so far) of an active call admitted from
    ``node``, or None: a later stage is only for a call this node runs."""
    rows = (yield Q("""SELECT c.max_seconds,
                              (SELECT count(*) FROM calls l WHERE l.node = c.node AND l.call_id LIKE %(like)s) AS legs
                         FROM calls c WHERE c.node = %(node)s AND c.call_id = %(call)s AND c.state = 'active'""",
                    {"node": node, "call": call_id, "like": _legs_like(call_id)}))
    return (int(rows[0]["max_seconds"]), int(rows[0]["legs"])) if rows else None


def settle_legs(node: str, call_id: str, billsec: int, answered: str) -> Flow:
    """Settle every leg dustel placed for a call: the one the caller talked
    to — ``answered``, the engine's answered peer: Asterisk's
    DIALEDPEERNUMBER ``+49…@carrier``, FreeSWITCH's bridged destination
    ``+49…`` — for ``billsec``, the others (rang, never answered) for 0.
    Returns the settlements."""
    peer = answered.split("@", 1)[0]
    rows = (yield Q("""SELECT call_id, destination FROM calls
                        WHERE node = %(node)s AND call_id LIKE %(like)s AND state = 'active' ORDER BY call_id""",
                    {"node": node, "like": _legs_like(call_id)}))
    out = []
    for r in rows:
        talked = bool(peer) and r["destination"] == peer
        out.append((r["call_id"], (yield from settle(node, r["call_id"], billsec if talked else 0))))
    return out


def settle_from_cdr(node: str, call_id: str) -> Flow:
    """Settle a call from the controller's CDR of it (the engine's billsec):
    a settlement the policy server lost (restart, database error, missed
    hangup) still bills; a call already settled, or none, is left alone."""
    rows = (yield Q("SELECT billsec FROM cdrs WHERE node = %(node)s AND call_id = %(call)s",
                    {"node": node, "call": call_id}))
    if not rows:
        return Settlement("unknown")
    return (yield from settle(node, call_id, int(rows[0]["billsec"])))


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

_TARIFF_VERSION = "SELECT version FROM tariff_version"


def load_tariff() -> Flow:
    zones, rates, version = (yield [Q("SELECT prefix, zone FROM zone_prefixes", {}),
                                    Q("SELECT prefix, cents_per_minute FROM rates", {}), Q(_TARIFF_VERSION, {})])
    return Tariff(zones={r["prefix"]: r["zone"] for r in zones},
                  rates={r["prefix"]: r["cents_per_minute"] for r in rates}, version=version[0]["version"])


class TariffCache:
    """The tariff (zones and rates) in the process; ``admit_many`` checks its
    version against ``tariff_version`` (bumped by a trigger on every change
    of rates or zone prefixes) in the admission transaction itself."""

    def __init__(self) -> None:
        self.tariff: Tariff | None = None

    def set(self, tariff: Tariff) -> Tariff:
        self.tariff = tariff
        return tariff


def execute(ops: list[Q]) -> Flow:
    """Run statements whose rows nobody reads, in order (one transaction)."""
    if ops:
        yield ops
    return len(ops)


# ---------------------------------------------------------------- drivers

def run_sync(conn: psycopg.Connection[Any], flow: Flow) -> Any:
    """Run a flow in one transaction on a sync connection (dict rows)."""
    with conn.transaction():
        try:
            q = next(flow)
            while True:
                rows = []
                for x in (q if isinstance(q, list) else [q]):
                    cur = conn.execute(x.sql, x.params)
                    rows.append(cur.fetchall() if cur.description is not None else [])
                q = flow.send(rows if isinstance(q, list) else rows[0])
        except StopIteration as stop:
            return stop.value


async def run_async(conn: psycopg.AsyncConnection[Any], flow: Flow) -> Any:
    async with conn.transaction():
        try:
            q = next(flow)
            while True:
                rows = []
                for x in (q if isinstance(q, list) else [q]):
                    cur = await conn.execute(x.sql, x.params)
                    rows.append(await cur.fetchall() if cur.description is not None else [])
                q = flow.send(rows if isinstance(q, list) else rows[0])
        except StopIteration as stop:
            return stop.value
