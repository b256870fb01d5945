"""Routing targets other than accounts: fax boxes, ring groups, and the
queue/agent records the ACD (dustel.queue) works on."""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..errors import DustelError, NotFound
from . import tenants
from . import validate as v

_SOUND = re.compile(r"[a-z0-9][a-z0-9_-]*(?:/[a-z0-9][a-z0-9_-]*)*")
STRATEGIES = ("ring_all", "longest_idle", "round_robin", "fewest_calls", "random")


def hash_pin(pin: str) -> str:
    """PBKDF2-SHA256 with a random salt: PINs are short, so never stored plain."""
    salt = os.urandom(16)
    dk = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, 20_000)
    return f"pbkdf2$20000${salt.hex()}${dk.hex()}"


def check_pin(pin: str, stored: str) -> bool:
    try:
        _, rounds, salt, digest = stored.split("$")
    except ValueError:
        return False
    dk = hashlib.pbkdf2_hmac("sha256", pin.encode(), bytes.fromhex(salt), int(rounds))
    return hmac.compare_digest(dk.hex(), digest)


def hash_secret(secret: str) -> str:
    """A password (SMTP submission) as argon2id: never stored plain."""
    from argon2 import PasswordHasher
    return PasswordHasher().hash(secret)


def check_secret(secret: str, stored: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError
    try:
        return PasswordHasher().verify(stored, secret)
    except (VerificationError, InvalidHashError):
        return False


def faxbox_add(conn: psycopg.Connection, tenant_id: int, name: str, email: str,
               pin: str | None = None) -> dict[str, Any]:
    tenants.get(conn, tenant_id)
    pin_hash = hash_pin(v.digits("pin", pin, min_len=4, max_len=8)) if pin else None
    return conn.execute(
        "INSERT INTO faxboxes (tenant_id, name, email, pin_hash) VALUES (%s, %s, %s, %s)"
        " RETURNING id, tenant_id, name, email",
        (tenant_id, v.slug("name", name), v.email("email", email), pin_hash)).fetchone()


def faxbox_set(conn: psycopg.Connection, tenant_id: int, name: str, *, email: str | None = None,
               pin: str | None = None, clear_pin: bool = False, smtp_password: str | None = None,
               clear_smtp_password: bool = False) -> dict[str, Any]:
    """Change a fax box's address, PIN (``clear_pin``: no e-mail to fax by
    PIN) or submission password (SMTP AUTH as ``<tenant>/<box>``)."""
    cols: dict[str, Any] = {}
    if email is not None:
        cols["email"] = v.email("email", email)
    if pin is not None:
        cols["pin_hash"] = hash_pin(v.digits("pin", pin, min_len=4, max_len=8))
    if clear_pin:
        cols["pin_hash"] = None
    if smtp_password is not None:
        cols["smtp_password_hash"] = hash_secret(v.password("smtp_password", smtp_password))
    if clear_smtp_password:
        cols["smtp_password_hash"] = None
    if not cols:
        raise DustelError("faxbox", "nothing to change (--email, --pin, --no-pin, --smtp-password or "
                                    "--no-smtp-password)")
    sets = ", ".join(f"{k} = %s" for k in cols)
    row = conn.execute(f"UPDATE faxboxes SET {sets} WHERE tenant_id = %s AND name = %s "
                       "RETURNING id, name, email, smtp_password_hash IS NOT NULL AS smtp_login",
                       (*cols.values(), tenant_id, v.slug("name", name))).fetchone()
    if row is None:
        raise NotFound("faxbox", f"tenant {tenant_id} has no fax box {name!r}")
    return row


def faxbox_remove(conn: psycopg.Connection, tenant_id: int, name: str) -> None:
    name = v.slug("name", name)            # as add took it: a name is found however it was typed
    box = conn.execute("SELECT id FROM faxboxes WHERE tenant_id = %s AND name = %s", (tenant_id, name)).fetchone()
    if box is None:
        raise NotFound("faxbox", f"tenant {tenant_id} has no fax box {name!r}")
    used = conn.execute("SELECT e164 FROM numbers WHERE faxbox_id = %s ORDER BY e164 LIMIT 1", (box["id"],)).fetchone()
    if used:
        raise DustelError("faxbox", f"number {used['e164']} is routed to it; route the number elsewhere first")
    conn.execute("DELETE FROM faxboxes WHERE id = %s", (box["id"],))


def ring_group_add(conn: psycopg.Connection, tenant_id: int, name: str, members: list[str],
                   ring_seconds: int = 30, fallback: str | None = None) -> dict[str, Any]:
    """A ring group: its members ring together for ``ring_seconds``, then
    its fallback (an account of the tenant, or an external number) rings."""
    tenants.get(conn, tenant_id)
    if not members:
        raise DustelError("member", "a ring group needs at least one account")
    if len(members) > 10:
        raise DustelError("member", "at most 10 accounts")
    if not 5 <= ring_seconds <= 300:
        raise DustelError("ring_seconds", "must be 5 to 300 seconds")
    fb_account, fb_e164 = None, None
    if fallback:
        from .features import parse_targets
        ((fb_user, fb_e164),) = parse_targets([fallback], "fallback")
        if fb_user is not None:
            acc = conn.execute("SELECT id FROM sip_accounts WHERE tenant_id = %s AND username = %s",
                               (tenant_id, fb_user)).fetchone()
            if acc is None:
                raise NotFound("fallback", f"{fb_user} is not a SIP account of tenant {tenant_id}")
            fb_account = acc["id"]
    g = conn.execute("""INSERT INTO ring_groups (tenant_id, name, ring_seconds, fallback_account_id, fallback_e164)
                        VALUES (%s, %s, %s, %s, %s) RETURNING *""",
                     (tenant_id, v.slug("name", name), ring_seconds, fb_account, fb_e164)).fetchone()
    for m in members:
        acc = conn.execute("SELECT id FROM sip_accounts WHERE tenant_id = %s AND username = %s",
                           (tenant_id, v.username("member", m))).fetchone()
        if acc is None:
            raise NotFound("member", f"{m} is not a SIP account of tenant {tenant_id}")
        conn.execute("INSERT INTO ring_group_members (group_id, tenant_id, account_id) VALUES (%s, %s, %s)",
                     (g["id"], tenant_id, acc["id"]))
    return g


def moh_class(conn: psycopg.Connection, tenant_id: int, moh: str) -> str:
    """A hold music class a queue of the tenant may play: 'default' or one of
    the tenant's (``dustel moh upload``) — one rule for queue add and set."""
    cls = v.slug("moh", moh)
    if cls != "default" and conn.execute("SELECT 1 FROM moh_classes WHERE tenant_id = %s AND name = %s",
                                         (tenant_id, cls)).fetchone() is None:
        raise NotFound("moh", f"tenant {tenant_id} has no hold music class {cls!r} (dustel moh upload)")
    return cls


def queue_set_moh(conn: psycopg.Connection, tenant_id: int, name: str, moh: str) -> dict[str, Any]:
    """The hold music a queue's callers hear."""
    cls = moh_class(conn, tenant_id, moh)
    row = conn.execute("UPDATE queues SET moh_class = %s WHERE tenant_id = %s AND name = %s RETURNING name, moh_class",
                       (cls, tenant_id, v.slug("queue", name))).fetchone()
    if row is None:
        raise NotFound("queue", f"tenant {tenant_id} has no queue {name!r}")
    return row


def queue_add(conn: psycopg.Connection, tenant_id: int, name: str, code: str, *,
              strategy: str = "ring_all", max_wait: int = 300, max_callers: int = 10,
              wrapup: int = 10, moh: str = "default") -> dict[str, Any]:
    tenants.get(conn, tenant_id)
    if strategy not in STRATEGIES:
        raise DustelError("strategy", f"must be one of {', '.join(STRATEGIES)}")
    return conn.execute(
        """INSERT INTO queues (tenant_id, name, code, strategy, max_wait_seconds, max_callers,
                               wrapup_seconds, moh_class)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING *""",
        (tenant_id, v.slug("name", name), v.digits("code", code, max_len=6), strategy,
         max_wait, max_callers, wrapup, moh_class(conn, tenant_id, moh))).fetchone()


def queue_hours(conn: psycopg.Connection, tenant_id: int, name: str, rules: list[str], *,
                region: str | None = None, closed_announce: str | None = None,
                closed_target: str | None = None) -> dict[str, Any]:
    """Opening hours (no rules: always open), the announcement a closed queue
    plays and where it then sends the caller (a number or one of the
    tenant's SIP accounts; none: hang up)."""
    from . import schedule
    hours = schedule.build(rules, region=region) if rules else None
    if closed_announce and (len(closed_announce) > 80 or not _SOUND.fullmatch(closed_announce)):
        raise DustelError("closed_announce", "must be a sound name: parts of a-z, 0-9, '_', '-' separated by '/', "
                                             "like dustel/closed")
    if closed_target:
        if closed_target.startswith("+"):
            closed_target = v.e164("closed_target", closed_target)
        elif conn.execute("SELECT 1 FROM sip_accounts WHERE tenant_id = %s AND username = %s",
                          (tenant_id, closed_target)).fetchone() is None:
            raise DustelError("closed_target", "must be an E.164 number (+49…) or a SIP account of the tenant")
    row = conn.execute(
        """UPDATE queues SET opening_hours = %s, closed_announce = %s, closed_target = %s
            WHERE tenant_id = %s AND name = %s RETURNING *""",
        (Jsonb(hours) if hours else None, closed_announce or None, closed_target or None, tenant_id,
         v.slug("queue", name))).fetchone()
    if row is None:
        raise NotFound("queue", f"tenant {tenant_id} has no queue {name!r}")
    return row


def agent_add(conn: psycopg.Connection, tenant_id: int, name: str, pin: str, *,
              account: str | None = None, external: str | None = None,
              queues: list[str] | None = None) -> dict[str, Any]:
    tenants.get(conn, tenant_id)
    name = v.text("name", name, max_len=64)
    pin = v.digits("pin", pin, min_len=4, max_len=8)
    if account and external:
        raise DustelError("contact", "an agent has one contact: an account or an external number")
    acc_id = None
    if account:
        acc = conn.execute("SELECT id FROM sip_accounts WHERE tenant_id = %s AND username = %s",
                           (tenant_id, v.username("account", account))).fetchone()
        if acc is None:
            raise NotFound("account", f"{account} is not a SIP account of tenant {tenant_id}")
        acc_id = acc["id"]
    ext = v.e164("external", external) if external else None
    a = conn.execute(
        """INSERT INTO agents (tenant_id, name, pin_hash, contact_account_id, contact_e164)
           VALUES (%s, %s, %s, %s, %s) RETURNING id, tenant_id, name""",
        (tenant_id, name, hash_pin(pin), acc_id, ext)).fetchone()
    for qn in queues or []:
        q = conn.execute("SELECT id FROM queues WHERE tenant_id = %s AND name = %s",
                         (tenant_id, v.slug("queue", qn))).fetchone()
        if q is None:
            raise NotFound("queue", f"tenant {tenant_id} has no queue {qn!r}")
        conn.execute("INSERT INTO queue_members (queue_id, agent_id, tenant_id) VALUES (%s, %s, %s)",
                     (q["id"], a["id"], tenant_id))
    return a
