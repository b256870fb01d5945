"""Per-account call features: forwarding and group call (F-05), limits,
destination release, black/whitelists (F-04 data), speed dials (F-03)."""
from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..errors import DustelError, NotFound
from . import accounts, schedule, tenants
from . import validate as v

FORWARD_MODES = ("immediate", "no_answer", "unregistered")
MAX_TARGETS = 10
MAX_EXTERNAL = 2
_USERNAME = re.compile(r"000387[0-9]{6}")


def parse_targets(raw: list[str], field: str = "targets") -> list[tuple[str | None, str | None]]:
    """Targets as (username, None) for internal or (None, e164) for external.
    Internal targets are SIP usernames, never numbers.  Count rules are
    checked here for a clear message and again by the database."""
    if not raw:
        raise DustelError("targets", "at least one target")
    out: list[tuple[str | None, str | None]] = []
    for item in raw:
        item = item.strip()
        if _USERNAME.fullmatch(item):
            out.append((item, None))
        else:
            out.append((None, v.e164(field, item)))
    if len(out) > MAX_TARGETS:
        raise DustelError("targets", f"at most {MAX_TARGETS} targets (F-05), got {len(out)}")
    if sum(1 for _, e in out if e) > MAX_EXTERNAL:
        raise DustelError("targets", f"at most {MAX_EXTERNAL} external numbers (F-05)")
    if len(set(out)) != len(out):
        raise DustelError("targets", "a target is listed twice")
    return out


def set_diversion(conn: psycopg.Connection, username: str, *, kind: str, targets: list[str],
                  mode: str | None = None, timeout: int | None = None,
                  when: list[str] | None = None, holiday_region: str | None = None,
                  holiday_dates: list[str] | None = None) -> dict[str, Any]:
    """Replace the account's forwarding (kind 'forward') or group call
    (kind 'group') in one go."""
    acc = accounts.get(conn, username)
    parsed = parse_targets(targets)
    if (acc["username"], None) in parsed:
        raise DustelError("targets", "an account cannot forward to itself")
    if kind == "forward":
        if mode not in FORWARD_MODES:
            raise DustelError("mode", f"must be one of {', '.join(m.replace('_', '-') for m in FORWARD_MODES)}")
        if mode == "no_answer":
            timeout = 20 if timeout is None else timeout
        elif timeout is not None:
            raise DustelError("timeout", "only forwarding on no answer has a timeout")
    else:
        mode = None
        timeout = 30 if timeout is None else timeout
    if timeout is not None and not 5 <= timeout <= 120:
        raise DustelError("timeout", "must be 5 to 120 seconds")
    sched = None
    if when or holiday_region or holiday_dates:
        sched = schedule.build(when or [], region=holiday_region, dates=holiday_dates)
    existing = conn.execute("SELECT kind FROM diversions WHERE account_id = %s FOR UPDATE",
                            (acc["id"],)).fetchone()
    if existing and existing["kind"] != kind:
        other = "a forwarding" if existing["kind"] == "forward" else "a group call"
        raise DustelError("account", f"{username} has {other}; clear it first (no mixes of the two)")
    conn.execute("DELETE FROM diversions WHERE account_id = %s", (acc["id"],))
    conn.execute(
        """INSERT INTO diversions (account_id, tenant_id, kind, mode, timeout_seconds, schedule)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (acc["id"], acc["tenant_id"], kind, mode, timeout, Jsonb(sched) if sched else None))
    for pos, (user, ext) in enumerate(parsed, start=1):
        target_id = None
        if user is not None:
            row = conn.execute("SELECT id FROM sip_accounts WHERE tenant_id = %s AND username = %s",
                               (acc["tenant_id"], user)).fetchone()
            if row is None:
                raise NotFound("targets", f"{user} is not a SIP account of this tenant")
            target_id = row["id"]
        conn.execute(
            """INSERT INTO diversion_targets (account_id, tenant_id, position, target_account_id, external_e164)
               VALUES (%s, %s, %s, %s, %s)""", (acc["id"], acc["tenant_id"], pos, target_id, ext))
    return show_diversion(conn, username)


def clear_diversion(conn: psycopg.Connection, username: str, kind: str) -> None:
    acc = accounts.get(conn, username)
    conn.execute("DELETE FROM diversions WHERE account_id = %s AND kind = %s", (acc["id"], kind))


def show_diversion(conn: psycopg.Connection, username: str) -> dict[str, Any]:
    acc = accounts.get(conn, username)
    d = conn.execute("SELECT kind, mode, timeout_seconds, schedule FROM diversions WHERE account_id = %s",
                     (acc["id"],)).fetchone()
    out: dict[str, Any] = {"account": acc["username"], "kind": None, "mode": None,
                           "timeout_seconds": None, "targets": [], "schedule": []}
    if d:
        out.update(kind=d["kind"], mode=d["mode"], timeout_seconds=d["timeout_seconds"],
                   schedule=schedule.describe(d["schedule"]))
        out["targets"] = [r["target"] for r in conn.execute(
            """SELECT coalesce(a.username, t.external_e164) AS target FROM diversion_targets t
                 LEFT JOIN sip_accounts a ON a.id = t.target_account_id
                WHERE t.account_id = %s ORDER BY t.position""", (acc["id"],))]
    return out


# ---------------------------------------------------------------- limits

def credit_limit_arg(text: str | None) -> tuple[int | None, bool]:
    """A credit limit as the operator or customer writes it: EUR (``50``,
    ``49.90``), or ``none`` to remove it -> (cents or None, remove)."""
    if text is None:
        return None, False
    if text.strip().lower() == "none":
        return None, True
    return v.money_cents("credit_limit", text), False


def set_limits(conn: psycopg.Connection, tenant_id: int, *, credit_limit_cents: int | None = None,
               max_call_seconds: int | None = None, account: str | None = None,
               remove_credit_limit: bool = False) -> dict[str, Any]:
    """Credit limit per billing month (tenant) and time limit per call
    (tenant default, or one account's override)."""
    tenants.get(conn, tenant_id, lock=True)
    if max_call_seconds is not None and not 1 <= max_call_seconds <= 86400:
        raise DustelError("max_call_seconds", "must be 1 to 86400")
    if account is not None:
        acc = accounts.get(conn, account, tenant_id=tenant_id)
        if credit_limit_cents is not None or remove_credit_limit:
            raise DustelError("credit_limit", "is per tenant, not per account")
        conn.execute("UPDATE sip_accounts SET max_call_seconds = %s WHERE id = %s",
                     (max_call_seconds, acc["id"]))
    else:
        tenants.set_fields(conn, tenant_id, monthly_credit_limit_cents=credit_limit_cents,
                           max_call_seconds=max_call_seconds)
        if remove_credit_limit:
            conn.execute("UPDATE tenants SET monthly_credit_limit_cents = NULL WHERE id = %s", (tenant_id,))
    return show_limits(conn, tenant_id)


def show_limits(conn: psycopg.Connection, tenant_id: int) -> dict[str, Any]:
    out = dict(tenants.limits(conn, tenant_id))
    out["accounts"] = conn.execute(
        "SELECT username, max_call_seconds FROM sip_accounts WHERE tenant_id = %s"
        " AND max_call_seconds IS NOT NULL ORDER BY username", (tenant_id,)).fetchall()
    return out


# ---------------------------------------------------------------- zones

def set_zones(conn: psycopg.Connection, username: str, *, preset: str | None,
              allow: list[str] | None = None) -> dict[str, Any]:
    acc = accounts.get(conn, username)
    if preset is not None:
        if not conn.execute("SELECT 1 FROM zone_presets WHERE code = %s", (preset,)).fetchone():
            codes = [r["code"] for r in conn.execute("SELECT code FROM zone_presets ORDER BY code")]
            raise DustelError("preset", f"must be one of {', '.join(codes)}")
        conn.execute("UPDATE sip_accounts SET zone_preset = %s WHERE id = %s", (preset, acc["id"]))
    if allow is not None:
        known = {r["code"] for r in conn.execute("SELECT code FROM zones")}
        bad = [z for z in allow if z not in known]
        if bad:
            raise DustelError("allow", f"unknown zone {bad[0]!r} (known: {', '.join(sorted(known))})")
        conn.execute("UPDATE sip_accounts SET extra_zones = %s WHERE id = %s", (sorted(set(allow)), acc["id"]))
    return show_zones(conn, username)


def show_zones(conn: psycopg.Connection, username: str) -> dict[str, Any]:
    acc = accounts.get(conn, username)
    preset = conn.execute("SELECT zones FROM zone_presets WHERE code = %s", (acc["zone_preset"],)).fetchone()
    return {"account": acc["username"], "preset": acc["zone_preset"], "extra": acc["extra_zones"],
            "zones": sorted(set(preset["zones"]) | set(acc["extra_zones"]))}


# ---------------------------------------------------------------- lists

def list_add(conn: psycopg.Connection, username: str, which: str, pattern: str) -> None:
    acc = accounts.get(conn, username)
    conn.execute("INSERT INTO screening (account_id, list, pattern) VALUES (%s, %s, %s)",
                 (acc["id"], which, v.screening_pattern("pattern", pattern)))


def list_remove(conn: psycopg.Connection, username: str, which: str, pattern: str) -> None:
    acc = accounts.get(conn, username)
    cur = conn.execute("DELETE FROM screening WHERE account_id = %s AND list = %s AND pattern = %s",
                       (acc["id"], which, v.screening_pattern("pattern", pattern)))
    if cur.rowcount == 0:
        raise NotFound("pattern", f"not on the {which}list of {username}")


def list_show(conn: psycopg.Connection, username: str, which: str) -> list[str]:
    acc = accounts.get(conn, username)
    return [r["pattern"] for r in conn.execute(
        "SELECT pattern FROM screening WHERE account_id = %s AND list = %s ORDER BY pattern",
        (acc["id"], which))]


# ---------------------------------------------------------------- speed dials

def speed_dial_set(conn: psycopg.Connection, tenant_id: int, code: str, target: str) -> None:
    tenants.get(conn, tenant_id)
    code = v.digits("code", code, max_len=3)
    t = target.strip()
    if not (_USERNAME.fullmatch(t) or t in ("110", "112")):
        t = v.e164("target", t)
    elif _USERNAME.fullmatch(t) and conn.execute("SELECT 1 FROM sip_accounts WHERE tenant_id = %s AND username = %s",
                                                 (tenant_id, t)).fetchone() is None:
        raise NotFound("target", f"{t} is not a SIP account of tenant {tenant_id}")
    conn.execute(
        """INSERT INTO speed_dials (tenant_id, code, target) VALUES (%s, %s, %s)
           ON CONFLICT (tenant_id, code) DO UPDATE SET target = EXCLUDED.target""", (tenant_id, code, t))


def speed_dial_remove(conn: psycopg.Connection, tenant_id: int, code: str) -> None:
    cur = conn.execute("DELETE FROM speed_dials WHERE tenant_id = %s AND code = %s",
                       (tenant_id, v.digits("code", code, max_len=3)))
    if cur.rowcount == 0:
        raise NotFound("code", f"tenant {tenant_id} has no speed dial {code}")


def speed_dial_list(conn: psycopg.Connection, tenant_id: int) -> list[dict[str, Any]]:
    tenants.get(conn, tenant_id)
    return conn.execute("SELECT code, target FROM speed_dials WHERE tenant_id = %s ORDER BY code",
                        (tenant_id,)).fetchall()
