"""Admit a call (decide + reserve) and settle it, in one transaction each.

The flows are written once, sans-IO: generators that yield SQL and receive
rows, run by ``run_sync`` (psycopg, the gevent outbound-ESL process) or
``run_async`` (psycopg async, the asyncio FastAGI process).  Every money
move locks the tenant's ``tenant_money`` row first, so concurrent calls
never spend the same money twice; (node, call id) makes a retried admit or
a replayed hangup a no-op.
"""
from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from . import rating
from .policy import CallRequest, Decision, Snapshot, Tariff, decide, refuse

Rows = list[dict[str, Any]]

# Connection settings of the policy servers' pools.  The flows run the same
# few statements on every call; PostgreSQL's default would plan the
# snapshot again for every execution (a custom plan: 1 ms of the 1.5 ms the
# statement took here); a generic plan is planned once per connection and
# is the right plan for any tenant.  That plan is made with the statistics
# of its first execution: on a fresh database (calls empty) the planner chose
# sequential scans and hash joins over calls and tenant_money, which read the
# whole tables on every batch once they had grown (bench: 15 M rows read by
# 4 500 scans in one run).  Every policy statement touches a few rows by key,
# so scans, hash joins and merge joins (which read a whole index in order:
# every tenant's money row for one batch's settlement) are ruled out for
# these connections.  What is left — a full index scan of an empty table on
# the outer side of a nested loop, a table "of one row" that has grown
# since — the statements below rule out themselves: a call is looked up by
# its key in a LATERAL subquery with LIMIT 1 (never flattened into a join),
# and updated by the tuple ids of those look-ups (a TID scan).
POOL_KWARGS: dict[str, Any] = {"options": "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off "
                                          "-c enable_hashjoin=off -c enable_mergejoin=off"}


@dataclass(frozen=True)
class Q:
    sql: str
    params: dict[str, Any]
    # the flow ends after this step: the step driver (run_steps_*) sends
    # COMMIT in the same round trip (the step's rows still come back)
    last: bool = False


# A flow yields one query (and gets its rows) or a list of queries run in
# order (and gets a list of row lists).  (psycopg's pipeline mode would send
# a list in one round trip, but measured slower here: bench/policy.py.)
Flow = Generator[Any, Any, Any]

# A batch locks its tenants' money rows in id order (so batches never
# deadlock each other) and reads, in the same step, what changes with every
# call: the money, the live line and flat counters (kept by a trigger on
# calls), the version of the tenant's settings, and — only for a postpaid
# tenant with a monthly credit limit — this month's charges.
_LOCK_MANY = """
SELECT m.*,
       (SELECT CASE WHEN t.monthly_credit_limit_cents IS NOT NULL THEN
                   (SELECT coalesce(-sum(amount_cents), 0)::bigint FROM ledger l
                     WHERE l.tenant_id = t.id AND l.kind = 'charge'
                       AND l.created_at >= date_trunc('month', now() AT TIME ZONE t.timezone) AT TIME ZONE t.timezone)
               END
          FROM tenants t WHERE t.id = m.tenant_id) AS month_charges,
       (SELECT version FROM tariff_version) AS global_version,
       (SELECT jsonb_agg(to_jsonb(c)) FROM unnest(%(node)s::text[], %(call)s::text[]) AS r(node, call)
          CROSS JOIN LATERAL (SELECT * FROM calls c WHERE c.node = r.node AND c.call_id = r.call LIMIT 1) c)
       AS existing
  FROM tenant_money m
 WHERE m.tenant_id = ANY(%(ts)s) ORDER BY m.tenant_id FOR UPDATE"""
# (with it, in the same statement: the global version — tariff, plans, zone
# presets, PSAPs — and earlier admits of the same (node, call id): retries)

# What changes rarely, cached per tenant (TariffCache.configs) and read again
# when the tenant's config_version (bumped by triggers in the transaction of
# the change) or the global version (plans, zone presets, PSAPs, tariff)
# moved: the tenant's plan and options, and each account's settings; the
# row with account NULL holds what a call without an account gets.
_CONFIG_TENANTS = """
SELECT t.id AS tenant_id, m.config_version, p.payment, t.monthly_credit_limit_cents,
       p.lines_in + o.extra_line AS lines_in, p.lines_out + o.extra_line AS lines_out,
       CASE WHEN o.per_minute_billing > 0 THEN 60 ELSE 1 END AS increment,
       o.flat_de_fixed, o.flat_de_mobile, o.clip_no_screening > 0 AS clip_ns,
       t.max_call_seconds, dustel_presented_number(t.id, NULL) AS caller_id, dustel_psap_prefix(NULL) AS psap_prefix
  FROM tenants t JOIN tenant_money m ON m.tenant_id = t.id
  JOIN plans p ON p.code = t.plan
  CROSS JOIN LATERAL (
       SELECT coalesce(sum(qty) FILTER (WHERE option = 'extra_line'), 0) AS extra_line,
              coalesce(sum(qty) FILTER (WHERE option = 'per_minute_billing'), 0) AS per_minute_billing,
              coalesce(sum(qty) FILTER (WHERE option = 'flat_de_fixed'), 0) AS flat_de_fixed,
              coalesce(sum(qty) FILTER (WHERE option = 'flat_de_mobile'), 0) AS flat_de_mobile,
              coalesce(sum(qty) FILTER (WHERE option = 'clip_no_screening'), 0) AS clip_no_screening
         FROM dustel_options(t.id)) o
 WHERE t.id = ANY(%(ts)s)"""

_CONFIG_ACCOUNTS = """
SELECT a.tenant_id, a.username, coalesce(a.allowed_nets::text[], '{}') AS allowed_nets,
       dustel_presented_number(a.tenant_id, a.id) AS caller_id, a.tls_mode <> 'off' AS tls_required,
       coalesce(a.location_area_code, '') AS area_code, dustel_psap_prefix(a.location_area_code) AS psap_prefix,
       coalesce(a.max_call_seconds, t.max_call_seconds) AS max_call_seconds,
       coalesce((SELECT zones FROM zone_presets WHERE code = a.zone_preset) || a.extra_zones, '{}') AS zones,
       (SELECT coalesce(array_agg(pattern), '{}') FROM screening s WHERE s.account_id = a.id AND list = 'black')
           AS blacklist,
       (SELECT coalesce(array_agg(pattern), '{}') FROM screening s WHERE s.account_id = a.id AND list = 'white')
           AS whitelist
  FROM sip_accounts a JOIN tenants t ON t.id = a.tenant_id
 WHERE a.tenant_id = ANY(%(ts)s)"""

_EXISTING = "SELECT * FROM calls WHERE node = %(node)s AND call_id = %(call)s"

# the admitted calls of a batch and their reservations: one statement
_INSERT_RESERVE_MANY = """
INSERT INTO calls (node, call_id, tenant_id, account, direction, route, destination, zone, flat_zone,
                   cents_per_minute, increment, max_seconds, reserved_cents, reserved_free, expires_at, callee)
SELECT node, call, t, account, dir, route, dest, zone, flat, rate, inc, mx, cents, free,
       now() + make_interval(secs => ttl), callee
  FROM jsonb_to_recordset(%(rows)s::jsonb)
       AS r(node text, call text, t bigint, account text, dir text, route text, dest text, zone text, flat text,
            rate int, inc int, mx int, cents bigint, free int, ttl int, callee text)
"""
# (the reservations and lines go into the money rows by the trigger on
# calls, migration 0014)
# (the batch travels as one JSON parameter: one dump instead of sixteen arrays)

# Reservations of calls whose hangup never came are released after their
# maximum duration plus this grace; emergency calls (no limit) after 12 h.
GRACE_SECONDS = 3600
EMERGENCY_TTL = 12 * 3600


def occupies(direction: str, route: str, flat_zone: str | None) -> tuple[int, int, str | None]:
    """(inbound lines, outbound lines, flat zone) an active call holds: the
    rule of the counters' trigger (migration 0014, dustel_count_call) for
    the calls a batch admits before they are stored — every inbound call an
    inbound line; an outbound call an outbound line unless it stays inside
    the tenant; a flat call a channel of its zone.  test_money checks the
    two agree."""
    return (1 if direction == "in" else 0, 1 if direction == "out" and route != "internal" else 0, flat_zone)


@dataclass
class TenantConfig:
    """A tenant's settings as the policy reads them (``_CONFIG_TENANTS``),
    its accounts' (``_CONFIG_ACCOUNTS``: username -> row), and the versions
    they were read at."""
    version: int
    global_version: int
    tenant: dict[str, Any]
    accounts: dict[str, dict[str, Any]]


NO_ACCOUNT = {"username": "", "allowed_nets": [], "tls_required": False, "area_code": "", "zones": [],
              "blacklist": [], "whitelist": []}


def snapshot_from(cfg: TenantConfig, account: str, money: dict[str, Any], callee: str) -> Snapshot:
    """The rules' view of one request: cached settings + the locked money row."""
    t = cfg.tenant
    a = cfg.accounts.get(account) if account else {**NO_ACCOUNT, "caller_id": t["caller_id"],
                                                    "psap_prefix": t["psap_prefix"],
                                                    "max_call_seconds": t["max_call_seconds"]}
    assert a is not None
    # int(): money is integer cents; a numeric (Decimal) here would round differently
    if t["payment"] == "prepaid":
        available: int | None = int(money["balance_cents"]) - int(money["reserved_cents"])
    elif t["monthly_credit_limit_cents"] is not None:
        available = (int(t["monthly_credit_limit_cents"]) - int(money["month_charges"] or 0)
                     - int(money["reserved_cents"]))
    else:
        available = None
    return Snapshot(
        tenant_id=t["tenant_id"], account=a["username"], area_code=a["area_code"],
        psap_prefix=a["psap_prefix"], max_call_seconds=a["max_call_seconds"], lines_in=t["lines_in"],
        lines_out=t["lines_out"], active_in=int(money["active_in"]), active_out=int(money["active_out"]),
        allowed_nets=tuple(a["allowed_nets"]), caller_id=a["caller_id"], clip_no_screening=t["clip_ns"],
        zones=frozenset(a["zones"]), blacklist=tuple(a["blacklist"]), whitelist=tuple(a["whitelist"]),
        available_cents=available, increment=t["increment"],
        flats={"de_fixed": t["flat_de_fixed"], "de_mobile": t["flat_de_mobile"]},
        flats_in_use={"de_fixed": int(money["active_flat_de_fixed"]),
                      "de_mobile": int(money["active_flat_de_mobile"])},
        free_seconds=money["free_seconds"] - money["reserved_free"],
        callee_account=callee if callee in cfg.accounts and callee != a["username"] else None,
        tls_required=bool(a["tls_required"]))


def load_configs(tenants: list[int], global_version: int) -> Flow:
    """Read the settings of these tenants (one step, two statements)."""
    rows, accounts = (yield [Q(_CONFIG_TENANTS, {"ts": tenants}), Q(_CONFIG_ACCOUNTS, {"ts": tenants})])
    out = {r["tenant_id"]: TenantConfig(int(r["config_version"]), global_version, dict(r), {}) for r in rows}
    for a in accounts:
        if a["tenant_id"] in out:
            out[a["tenant_id"]].accounts[a["username"]] = dict(a)
    return out


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
    transaction: lock the tenants' money rows (in id order) and read with
    them the live counters and settings versions, the retries and the
    global version (one step); read the settings of tenants whose cached
    copy is stale (a second step, rare); decide each call in order — a call
    sees the calls admitted before it in the batch as if they were already
    stored — and store the admitted calls and reservations in one
    statement.  Returns a Decision, or an UnknownAccount for a request
    naming no account of its tenant, per request."""
    cache = tariff if isinstance(tariff, TariffCache) else None
    tenants = sorted({r.tenant_id for r in reqs})
    money_rows = (yield Q(_LOCK_MANY, {"ts": tenants, "node": [r.node for r in reqs],
                                       "call": [r.call_id for r in reqs]}))
    if not money_rows:                  # no tenant of the batch exists
        return [UnknownAccount(f"account {r.account!r} of tenant {r.tenant_id}") for r in reqs]
    gv = int(money_rows[0]["global_version"])
    if cache is not None:
        # the cached tariff is used only while it is the current one: a rate
        # change bumps the version in its own transaction, so the next call
        # after its commit is rated with it
        if cache.tariff is None or cache.tariff.version != gv:
            cache.set((yield from load_tariff()))
        tariff = cache.tariff  # type: ignore[assignment]
    assert isinstance(tariff, Tariff)
    money = {m["tenant_id"]: dict(m) for m in money_rows}
    configs = cache.configs if cache is not None else {}
    stale = [t for t in money if (c := configs.get(t)) is None or c.version != money[t]["config_version"]
             or c.global_version != gv]
    if stale:
        if cache is not None and len(configs) + len(stale) > cache.max_tenants:
            configs.clear()          # a simple bound: the active tenants come back on their next call
        configs.update((yield from load_configs(stale, gv)))
    existing = {(c["node"], c["call_id"]): c for c in money_rows[0]["existing"] or []}
    seen: dict[tuple[str, str], tuple[dict[str, Any], Decision]] = {}
    results: list[Decision | Exception] = []
    store: list[dict[str, Any]] = []
    for req in reqs:
        key = (req.node, req.call_id)
        if key in existing:
            results.append(_from_call(existing[key]) if same_call(existing[key], req) else CONFLICT)
            continue
        if key in seen:
            results.append(seen[key][1] if same_call(seen[key][0], req) else CONFLICT)
            continue
        cfg = configs.get(req.tenant_id)
        if cfg is None or req.tenant_id not in money or (req.account and req.account not in cfg.accounts):
            results.append(UnknownAccount(f"account {req.account!r} of tenant {req.tenant_id}"))
            continue
        m = money[req.tenant_id]
        d = decide(req, snapshot_from(cfg, req.account, m, req.callee), tariff)
        results.append(d)
        if not d.admit:
            continue
        seen[key] = ({"tenant_id": req.tenant_id, "direction": req.direction, "account": req.account,
                      "callee": req.callee},
                     _from_call({"route": d.route, "destination": d.destination, "max_seconds": d.max_seconds,
                                 "zone": d.zone, "cents_per_minute": d.cents_per_minute, "increment": d.increment,
                                 "flat_zone": d.flat_zone, "reserved_free": d.free_seconds,
                                 "reserved_cents": d.reserve_cents}))
        # the next request of this tenant in the batch sees this call as stored
        lines_in, lines_out, flat = occupies(req.direction, d.route, d.flat_zone)
        m["active_in"] = int(m["active_in"]) + lines_in
        m["active_out"] = int(m["active_out"]) + lines_out
        if flat:
            m[f"active_flat_{flat}"] = int(m[f"active_flat_{flat}"]) + 1
        m["reserved_cents"] = int(m["reserved_cents"]) + d.reserve_cents
        m["reserved_free"] = int(m["reserved_free"]) + d.free_seconds
        ttl = EMERGENCY_TTL if d.route == "emergency" else d.max_seconds + GRACE_SECONDS
        store.append({"node": req.node, "call": req.call_id, "t": req.tenant_id, "account": req.account,
                      "dir": req.direction, "route": d.route, "dest": d.destination, "zone": d.zone,
                      "flat": d.flat_zone, "rate": d.cents_per_minute, "inc": d.increment, "mx": d.max_seconds,
                      "cents": d.reserve_cents, "free": d.free_seconds, "ttl": ttl, "callee": req.callee})
    if store:
        yield Q(_INSERT_RESERVE_MANY, {"rows": Jsonb(store)}, last=True)
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
    (result,) = yield from settle_many([(node, call_id, billsec)])
    return result


# the money rows of the calls' tenants, locked in id order (as admission
# locks them: batches never deadlock each other), then the calls
_SETTLE_LOCK = """
SELECT m.* FROM tenant_money m
 WHERE m.tenant_id IN (SELECT c.tenant_id FROM unnest(%(node)s::text[], %(call)s::text[]) AS k(node, call)
                         CROSS JOIN LATERAL (SELECT tenant_id FROM calls c
                                              WHERE c.node = k.node AND c.call_id = k.call LIMIT 1) c)
 ORDER BY m.tenant_id FOR UPDATE"""
_SETTLE_CALLS = """
SELECT c.* FROM unnest(%(node)s::text[], %(call)s::text[]) AS k(node, call)
 CROSS JOIN LATERAL (SELECT * FROM calls c WHERE c.node = k.node AND c.call_id = k.call LIMIT 1 FOR UPDATE) c"""
# every write of a batch of settlements in one statement (one JSON parameter)
_SETTLE_WRITE = """
WITH r AS (SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
                      AS r(node text, call text, t bigint, b int, c bigint, f int)),
k AS (SELECT r.b, r.c, x.tid FROM r CROSS JOIN LATERAL (
        SELECT ctid AS tid FROM calls x WHERE x.node = r.node AND x.call_id = r.call LIMIT 1) x),
u AS (UPDATE calls c SET state = 'settled', billsec = k.b, charged_cents = k.c, settled_at = now()
        FROM k WHERE c.ctid = k.tid AND c.ctid = ANY(ARRAY(SELECT tid FROM k))),
l AS (INSERT INTO ledger (tenant_id, amount_cents, kind, ref)
      SELECT r.t, -r.c, 'charge', 'call:' || r.node || ':' || r.call FROM r WHERE r.c > 0),
s AS (SELECT t, sum(c) AS c, sum(f) AS f FROM r GROUP BY t)
UPDATE tenant_money m SET balance_cents = m.balance_cents - s.c, free_seconds = m.free_seconds - s.f
  FROM s WHERE m.tenant_id = s.t"""
# (the calls' reservations and lines go back by the trigger on calls)


def settle_many(items: list[tuple[str, str, int]]) -> Flow:
    """Settle a batch of calls — (node, call id, answered seconds) each — in
    one transaction: lock the tenants' money rows and the calls (one step),
    charge each call what it used and release the rest (its reservation;
    an expired call's was released already, so its start credit counts only
    where still left), and write everything in one statement.  A call
    settled before, or twice in the batch, changes nothing (a replay).
    Returns a Settlement per item."""
    nodes, ids = [n for n, _, _ in items], [c for _, c, _ in items]
    money_rows, locked = (yield [Q(_SETTLE_LOCK, {"node": nodes, "call": ids}),
                                 Q(_SETTLE_CALLS, {"node": nodes, "call": ids})])
    money = {m["tenant_id"]: dict(m) for m in money_rows}
    calls_by_key = {(c["node"], c["call_id"]): dict(c) for c in locked}
    out: list[Settlement] = []
    writes: list[dict[str, Any]] = []
    for node, call_id, billsec in items:
        call = calls_by_key.get((node, call_id))
        if call is None or call["tenant_id"] not in money:
            out.append(Settlement("unknown"))
            continue
        if call["state"] == "settled":
            out.append(Settlement("already", call["charged_cents"], call["billsec"]))
            continue
        billsec = max(0, billsec)
        held = call["state"] == "active"   # an expired call's reservation was released already
        m = money[call["tenant_id"]]
        cents, free = charge_for(call, billsec, None if held else int(m["free_seconds"]) - int(m["reserved_free"]))
        rf = int(call["reserved_free"]) if held else 0     # released by the trigger with the call
        m["free_seconds"] = int(m["free_seconds"]) - free
        m["reserved_free"] = int(m["reserved_free"]) - rf
        call.update(state="settled", charged_cents=cents, billsec=billsec)    # a second item: "already"
        writes.append({"node": node, "call": call_id, "t": call["tenant_id"], "b": billsec, "c": cents, "f": free})
        out.append(Settlement("settled", cents, billsec))
    if writes:
        yield Q(_SETTLE_WRITE, {"rows": Jsonb(writes)}, last=True)
    return out


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


def _legs(call_id: str) -> dict[str, str]:
    """The call ids of a call's legs: the bytewise range of the ids that
    begin with ``<call id>:leg`` (index calls_legs, migration 0017)."""
    return {"lo": call_id + LEG, "hi": call_id + LEG[:-1] + chr(ord(LEG[-1]) + 1)}


def call_limit_and_legs(node: str, call_id: str) -> Flow:
    """(time limit, legs placed so far) of an active call admitted from
    ``node``, or None: a later stage is only for a call this node runs."""
    rows = (yield Q("""SELECT c.max_seconds,
                              (SELECT count(*) FROM calls l WHERE l.node = c.node
                                  AND l.call_id ~>=~ %(lo)s AND l.call_id ~<~ %(hi)s) AS legs
                         FROM calls c WHERE c.node = %(node)s AND c.call_id = %(call)s AND c.state = 'active'""",
                    {"node": node, "call": call_id, **_legs(call_id)}))
    return (int(rows[0]["max_seconds"]), int(rows[0]["legs"])) if rows else None


def settle_legs(node: str, call_id: str, billsec: int, answered: str) -> Flow:
    """Settle every leg dustel placed for a call: the one the caller talked
    to — ``answered``, the engine's answered peer: Asterisk's
    DIALEDPEERNUMBER ``+49…@carrier``, FreeSWITCH's bridged destination
    ``+49…`` — for ``billsec``, the others (rang, never answered) for 0.
    Returns the settlements."""
    peer = answered.split("@", 1)[0]
    rows = (yield Q("""SELECT call_id, destination FROM calls
                        WHERE node = %(node)s AND call_id ~>=~ %(lo)s AND call_id ~<~ %(hi)s AND state = 'active'
                        ORDER BY call_id""",
                    {"node": node, **_legs(call_id)}))
    out = []
    for r in rows:
        talked = bool(peer) and r["destination"] == peer
        out.append((r["call_id"], (yield from settle(node, r["call_id"], billsec if talked else 0))))
    return out


def settle_from_cdr(node: str, call_id: str) -> Flow:
    """Settle a call from the controller's CDR of it (the engine's billsec):
    a settlement the policy server lost (restart, database error, missed
    hangup) still bills; a call already settled, or none, is left alone."""
    ((_, result),) = yield from settle_from_cdrs(node, [call_id])
    return result


def settle_from_cdrs(node: str, call_ids: list[str]) -> Flow:
    """``settle_from_cdr`` for a batch of hangups of one node: their CDRs read
    in one statement, the calls settled in one ``settle_many`` (with the
    step driver: three round trips for the batch).  Returns (call id,
    Settlement) per id, ``unknown`` where there is no CDR."""
    rows = (yield Q("SELECT call_id, billsec FROM cdrs WHERE node = %(node)s AND call_id = ANY(%(ids)s::text[])",
                    {"node": node, "ids": list(call_ids)}))
    billsec = {r["call_id"]: int(r["billsec"]) for r in rows}
    items = [(node, c, billsec[c]) for c in call_ids if c in billsec]
    done = dict(zip((c for _, c, _ in items), (yield from settle_many(items)) if items else [], strict=True))
    return [(c, done.get(c, Settlement("unknown"))) for c in call_ids]


# The active calls of a node whose channel the engine no longer has (its
# list read at ``before``; a call admitted after that may be missing from
# the list, so it is left alone), with the controller's CDR of each if any.
_LOST_CALLS = """
SELECT c.call_id, d.billsec AS cdr_billsec
  FROM calls c LEFT JOIN cdrs d ON d.node = c.node AND d.call_id = c.call_id
 WHERE c.node = %(node)s AND c.state = 'active' AND c.started_at < %(before)s
   AND NOT (split_part(c.call_id, %(leg)s, 1) = ANY(%(alive)s::text[]))
 ORDER BY c.call_id"""


def settle_lost(node: str, alive: list[str], before: Any) -> Flow:
    """After an engine node's state is rebuilt (a reconnect, a crash and
    restart): every reservation of a call on that node whose channel no
    longer exists is settled at once — from its CDR (the controller wrote
    one for every leg it knew: the real one, or ``LOST_WHILE_DISCONNECTED``)
    or, with no CDR, released (0 s: nothing records how long it talked).
    The legs dustel placed for a call (``<call id>:leg…``) go with it and
    are released: no record says which of them talked.  ``alive``: the
    engine's channel ids; ``before``: when the engine's list was read
    (database time).  One rule for both engines' controllers; returns
    (call id, had a CDR, Settlement) per call."""
    rows = (yield Q(_LOST_CALLS, {"node": node, "alive": list(alive), "before": before, "leg": LEG}))
    if not rows:
        return []
    done = yield from settle_many([(node, r["call_id"], int(r["cdr_billsec"] or 0)) for r in rows])
    return [(r["call_id"], r["cdr_billsec"] is not None, st) for r, st in zip(rows, done, strict=True)]


def expire() -> Flow:
    """Release the reservations of calls whose hangup never came."""
    rows = (yield Q("""
        WITH e AS (UPDATE calls SET state = 'expired' WHERE state = 'active' AND expires_at < now() RETURNING 1)
        SELECT count(*)::int AS n FROM e""", {}))          # the trigger on calls releases the reservations
    return rows[0]["n"]


# Book money movements — rows (t tenant, a cents, k kind, ref, inv invoice
# id, at time) as JSON — in one statement: the ledger rows, and each
# tenant's balance by what was booked.  A reference booked before is a no-op;
# RETURNING names the tenants whose balance moved.  The one way a movement
# reaches the ledger outside settlement (which books in its own statement).
BOOK = """
WITH r AS (SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
                      AS r(t bigint, a bigint, k text, ref text, inv bigint, at timestamptz)),
l AS (INSERT INTO ledger (tenant_id, amount_cents, kind, ref, invoice_id, created_at)
      SELECT t, a, k, ref, inv, coalesce(at, now()) FROM r
      ON CONFLICT (ref) DO NOTHING RETURNING tenant_id, amount_cents),
s AS (SELECT tenant_id, sum(amount_cents) AS a FROM l GROUP BY tenant_id)
UPDATE tenant_money m SET balance_cents = m.balance_cents + s.a FROM s WHERE m.tenant_id = s.tenant_id
RETURNING m.tenant_id"""


def book_row(tenant_id: int, cents: int, kind: str, ref: str, invoice_id: int | None = None,
             at: Any = None) -> dict[str, Any]:
    return {"t": tenant_id, "a": cents, "k": kind, "ref": ref, "inv": invoice_id,
            "at": at.isoformat() if at is not None else None}


def topup(tenant_id: int, cents: int, ref: str) -> Flow:
    """Add prepaid credit; the reference makes it idempotent."""
    done = yield Q(BOOK, {"rows": Jsonb([book_row(tenant_id, cents, "topup", ref)])})
    return bool(done)


# ---------------------------------------------------------------- tariff

_TARIFF_VERSION = "SELECT version FROM tariff_version"


def load_tariff() -> Flow:
    zones, rates, version = (yield [Q("SELECT prefix, zone FROM zone_prefixes", {}),
                                    Q("SELECT prefix, cents_per_minute FROM rates", {}), Q(_TARIFF_VERSION, {})])
    return Tariff(zones={r["prefix"]: r["zone"] for r in zones},
                  rates={r["prefix"]: r["cents_per_minute"] for r in rates}, version=version[0]["version"])


class TariffCache:
    """The tariff (zones and rates) and the tenants' settings in the
    process; ``admit_many`` checks the tariff's version against
    ``tariff_version`` (bumped by a trigger on every change of rates, zone
    prefixes, plans, zone presets or PSAPs) and each tenant's against the
    ``config_version`` of its locked money row, in the admission
    transaction itself: a change committed before a decision's lock is seen
    by that decision (a LISTEN/NOTIFY message could arrive after it)."""

    def __init__(self, max_tenants: int = 50_000) -> None:
        self.tariff: Tariff | None = None
        # and the tenants' settings (admit_many; keyed by their versions)
        self.configs: dict[int, TenantConfig] = {}
        self.max_tenants = max_tenants

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
    """Run a flow in one transaction on an async connection (dict rows).
    (Pipeline mode was measured slower here: psycopg's pipeline machinery
    costs more CPU than the round trips it saves on loopback with the two
    or three statements a flow sends; README, Benchmarks.)"""
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


# ---------------------------------------------------------------- the step driver
#
# The policy servers' batches (admit_many, settle_many, admit_leg) and the
# inbound plan (divert.routing) run with one round trip per step of the flow: each step's statements go as one
# simple-protocol string of EXECUTEs of statements prepared on the
# connection (generic plans, see POOL_KWARGS), the first step with BEGIN in
# front, the step marked ``last`` with COMMIT behind.  An admission is two
# round trips (BEGIN + lock and read; insert + COMMIT) where the extended
# protocol took four (BEGIN, lock, insert, COMMIT): on two shared cores each
# round trip waits its turn for a CPU (bench/policy.py, README).  Values are
# bound client-side by psycopg (ClientCursor: quoted literals), so no
# value is ever part of the SQL text.

_PARAM = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class Prepared:
    name: str
    statement: str              # PREPARE <name> AS <the query with $n>
    params: tuple[str, ...]     # the flow's parameter names, in $n order


IDLE = psycopg.pq.TransactionStatus.IDLE
_PREPARED: dict[str, Prepared] = {}
# the statements prepared on each connection (a prepared statement lives as
# long as its session and survives a rollback)
_PREPARED_ON: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def prepared(sql: str) -> Prepared:
    """The prepared form of a flow's query: ``%(name)s`` become ``$n``."""
    p = _PREPARED.get(sql)
    if p is None:
        names: list[str] = []

        def number(m: re.Match[str]) -> str:
            if m.group(1) not in names:
                names.append(m.group(1))
            return f"${names.index(m.group(1)) + 1}"

        name = "dustel_" + hashlib.sha1(sql.encode()).hexdigest()[:16]
        p = Prepared(name, f"PREPARE {name} AS {_PARAM.sub(number, sql).replace('%%', '%')}", tuple(names))
        _PREPARED[sql] = p
    return p


def step_sql(conn: Any, qs: list[Q], begin: bool, commit: bool) -> tuple[str, list[Any], int]:
    """One step as one string: the PREPAREs this connection still lacks,
    BEGIN, the EXECUTEs, COMMIT; its values; and how many results come
    before the step's own."""
    known = _PREPARED_ON.setdefault(conn, set())
    ps = [prepared(x.sql) for x in qs]
    parts: list[str] = []
    for p in ps:
        if p.name not in known:
            parts.append(p.statement.replace("%", "%%"))
            known.add(p.name)       # forgotten again if the step fails (_steps)
    if begin:
        parts.append("BEGIN")
    skip = len(parts)
    values: list[Any] = []
    for x, p in zip(qs, ps, strict=True):
        parts.append(f"EXECUTE {p.name}({', '.join(['%s'] * len(p.params))})" if p.params else f"EXECUTE {p.name}")
        values += [x.params[n] for n in p.params]
    if commit:
        parts.append("COMMIT")
    return "; ".join(parts), values, skip


# What a step driver sends — (SQL string, values, results to skip, results
# to read) — and what it gets back: the rows of each result read.
Send = tuple[str, list[Any], int, int]


def _steps(conn: Any, flow: Flow) -> Generator[Send, list[Rows], Any]:
    """The step drivers' logic, sans-IO: the strings to send for ``flow``
    (a step's rows go back into the flow; COMMIT alone when the flow ended
    without a ``last`` step).  When sending fails, the driver throws the
    error in here: what comes out then is what cleans up (ROLLBACK, and
    DEALLOCATE ALL — a failed string may have prepared some of its
    statements — so the next step prepares them again), and the error is
    raised when the driver sends the result back."""
    if not conn.autocommit:
        raise ValueError("the step driver needs an autocommit connection (it sends BEGIN and COMMIT)")
    begun = committed = False
    try:
        q = next(flow)
        while True:
            if q == []:
                q = flow.send([])
                continue
            if committed:
                raise RuntimeError("a flow went on after its last step")
            qs = q if isinstance(q, list) else [q]
            text, values, skip = step_sql(conn, qs, not begun, qs[-1].last)
            begun, committed = True, qs[-1].last
            rows = yield text, values, skip, len(qs)
            q = flow.send(rows if isinstance(q, list) else rows[0])
    except StopIteration as stop:
        if not committed:
            yield "COMMIT", [], 0, 0
        return stop.value
    except BaseException:
        _PREPARED_ON.pop(conn, None)
        cleanup = [] if conn.closed else ["DEALLOCATE ALL"]
        if cleanup and conn.info.transaction_status != IDLE:
            cleanup.insert(0, "ROLLBACK")
        for command in cleanup:
            try:
                yield command, [], 0, 0
            except psycopg.Error:     # the connection is gone or busy: the pool discards it
                break
        raise


def run_steps_sync(conn: psycopg.Connection[Any], flow: Flow) -> Any:
    """Run a flow in one transaction, one round trip per step (above), on
    an autocommit connection (dict rows)."""
    steps = _steps(conn, flow)
    cur = psycopg.ClientCursor(conn)
    try:
        text, values, skip, n = next(steps)
        while True:
            try:
                cur.execute(text, values)
                for _ in range(skip):
                    cur.nextset()
                rows = []
                for _ in range(n):
                    rows.append(cur.fetchall() if cur.description is not None else [])
                    cur.nextset()
            except BaseException as exc:    # noqa: BLE001 — handed to _steps, which cleans up and re-raises
                text, values, skip, n = steps.throw(exc)
                continue
            text, values, skip, n = steps.send(rows)
    except StopIteration as stop:
        return stop.value


async def run_steps_async(conn: psycopg.AsyncConnection[Any], flow: Flow) -> Any:
    """``run_steps_sync`` for an async connection."""
    steps = _steps(conn, flow)
    cur = psycopg.AsyncClientCursor(conn)
    try:
        text, values, skip, n = next(steps)
        while True:
            try:
                await cur.execute(text, values)
                for _ in range(skip):
                    cur.nextset()
                rows = []
                for _ in range(n):
                    rows.append(await cur.fetchall() if cur.description is not None else [])
                    cur.nextset()
            except BaseException as exc:    # noqa: BLE001 — handed to _steps, which cleans up and re-raises
                text, values, skip, n = steps.throw(exc)
                continue
            text, values, skip, n = steps.send(rows)
    except StopIteration as stop:
        return stop.value
