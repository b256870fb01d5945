"""Customer users of the Kundencenter (F-13): roles, argon2 passwords,
login with rate limits and lockout, sessions that expire.

Plain functions over a psycopg connection (the caller's transaction), used
by the portal's routers and by ``dustel portal user …`` alike.

- Roles: ``admin`` (everything of the tenant), ``supervisor`` (queues, their
  statistics, the live view), ``agent`` (the agent's own state; the user is
  one of the tenant's queue agents).
- Passwords: the rule of every dustel password (``validate.password``),
  hashed with argon2id (``targets.hash_secret``, as the fax boxes' SMTP
  passwords); never stored or logged plain.
- Login: failures are counted per (login, client address), per login from
  everywhere, and per client address over every login, each within
  ``WINDOW_MINUTES``; over a limit that key is locked out for the window —
  even the right password is refused meanwhile.  The count, the check and
  the recording are one step under advisory locks on the login and on the
  client address (as the mail gateway's PIN lockout), so parallel attempts
  cannot all slip under a limit.  A login nobody has costs the same argon2
  time as a wrong password.
- Sessions: a random token (the cookie or ``Authorization: Bearer``); the
  database keeps only its HMAC with ``portal_secret``.  Idle expiry
  (``portal_session_minutes``, moved on by use) and an absolute end
  (``portal_session_hours``); logout and a password change end them.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass
from typing import Any

import psycopg

from ..errors import DustelError, NotFound
from ..provisioning import targets, tenants
from ..provisioning import validate as v

ROLES = ("admin", "supervisor", "agent")
WINDOW_MINUTES = 15          # failures count within this window, and a lockout lasts as long
LOCK_AFTER = 5               # wrong passwords for one login from one client address
LOGIN_LOCK_AFTER = 20        # … for one login from everywhere together
PEER_LOCK_AFTER = 50         # … from one client address over every login
_LOGIN = re.compile(r"[a-z0-9][a-z0-9._@-]{2,63}")
_LOCK_CLASS = zlib.crc32(b"dustel.portal.login") & 0x7FFFFFFF


@dataclass(frozen=True)
class Caller:
    """Who a request is: bound to one tenant, with one role."""

    user_id: int
    tenant_id: int
    login: str
    role: str
    agent_id: int | None
    token: str


def login_name(field: str, value: str) -> str:
    v_ = value.strip().lower()
    if not _LOGIN.fullmatch(v_):
        raise DustelError(field, "must be 3-64 characters a-z, 0-9, '.', '_', '@' or '-', starting with a letter or "
                                 "digit")
    return v_


def _role(role: str) -> str:
    if role not in ROLES:
        raise DustelError("role", f"must be one of {', '.join(ROLES)}")
    return role


_PUBLIC = """SELECT u.id, u.tenant_id, u.login, u.role, u.agent_id, g.name AS agent, u.created_at
               FROM portal_users u LEFT JOIN agents g ON g.id = u.agent_id"""


def add(conn: psycopg.Connection, tenant_id: int, login: str, role: str, password: str,
        agent: str | None = None) -> dict[str, Any]:
    """A customer user of the tenant; an agent user names one of its agents."""
    tenants.get(conn, tenant_id)
    login = login_name("login", login)
    role = _role(role)
    password = v.password("password", password)
    agent_id = None
    if role == "agent":
        if not agent:
            raise DustelError("agent", "an agent user is one of the tenant's agents: name it")
        row = conn.execute("SELECT id FROM agents WHERE tenant_id = %s AND name = %s",
                           (tenant_id, v.text("agent", agent, max_len=64))).fetchone()
        if row is None:
            raise NotFound("agent", f"tenant {tenant_id} has no agent {agent!r}")
        agent_id = row["id"]
    elif agent:
        raise DustelError("agent", "only an agent user names an agent")
    if conn.execute("SELECT 1 FROM portal_users WHERE login = %s", (login,)).fetchone():
        raise DustelError("login", "already taken")
    row = conn.execute("""INSERT INTO portal_users (tenant_id, login, role, agent_id, password_hash)
                          VALUES (%s, %s, %s, %s, %s) RETURNING id""",
                       (tenant_id, login, role, agent_id, targets.hash_secret(password))).fetchone()
    return get(conn, tenant_id, row["id"])


def get(conn: psycopg.Connection, tenant_id: int, user_id: int) -> dict[str, Any]:
    """One user of the tenant; another tenant's is not found."""
    row = conn.execute(_PUBLIC + " WHERE u.tenant_id = %s AND u.id = %s", (tenant_id, user_id)).fetchone()
    if row is None:
        raise NotFound("user", f"no user {user_id}")
    return row


def listing(conn: psycopg.Connection, tenant_id: int) -> list[dict[str, Any]]:
    return conn.execute(_PUBLIC + " WHERE u.tenant_id = %s ORDER BY u.login", (tenant_id,)).fetchall()


def remove(conn: psycopg.Connection, tenant_id: int, user_id: int) -> None:
    get(conn, tenant_id, user_id)
    conn.execute("DELETE FROM portal_users WHERE tenant_id = %s AND id = %s", (tenant_id, user_id))


def set_password(conn: psycopg.Connection, tenant_id: int, user_id: int, password: str) -> None:
    """A new password; the user's sessions end (every browser logs in again)."""
    get(conn, tenant_id, user_id)
    password = v.password("password", password)
    conn.execute("UPDATE portal_users SET password_hash = %s WHERE id = %s",
                 (targets.hash_secret(password), user_id))
    conn.execute("DELETE FROM portal_sessions WHERE user_id = %s", (user_id,))


# ------------------------------------------------------------------ login

@functools.cache
def _nobody() -> str:
    """A hash to compare with when the login names nobody: the same time."""
    return targets.hash_secret("nobody has this password 0")


def _locks(conn: psycopg.Connection, login: str, peer: str) -> None:
    """The login's and the client address's locks, in this order (no cycle),
    to the end of the transaction: count, compare, record as one step."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, "login:" + login))
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, "peer:" + peer))


def locked_out(conn: psycopg.Connection, login: str, peer: str) -> str | None:
    """Why this login from this address is refused now, or None."""
    row = conn.execute(
        """SELECT count(*) FILTER (WHERE login = %(l)s AND peer = %(p)s) AS pair,
                  count(*) FILTER (WHERE login = %(l)s) AS login,
                  count(*) FILTER (WHERE peer = %(p)s) AS peer
             FROM portal_login_failures
            WHERE (login = %(l)s OR peer = %(p)s) AND at > now() - make_interval(mins => %(m)s)""",
        {"l": login, "p": peer, "m": WINDOW_MINUTES}).fetchone()
    if row["pair"] >= LOCK_AFTER or row["login"] >= LOGIN_LOCK_AFTER:
        return f"too many wrong passwords for this login; try again in {WINDOW_MINUTES} minutes"
    if row["peer"] >= PEER_LOCK_AFTER:
        return f"too many wrong passwords from this address; try again in {WINDOW_MINUTES} minutes"
    return None


class LoginRefused(DustelError):
    """Wrong login or password (401), or locked out (429)."""

    def __init__(self, rule: str, locked: bool) -> None:
        super().__init__("login", rule)
        self.locked = locked


def login(conn: psycopg.Connection, login_text: str, password: str, peer: str, *, secret: str,
          idle_minutes: int, max_hours: int) -> tuple[str, dict[str, Any]]:
    """Check a login (the caller's transaction, which must commit even when
    this refuses: the failure is recorded) and open a session: (token, user)."""
    try:
        name = login_name("login", login_text)
    except DustelError:
        name = login_text.strip().lower()[:64]
    _locks(conn, name, peer)
    why = locked_out(conn, name, peer)
    if why is not None:
        raise LoginRefused(why, locked=True)
    row = conn.execute("SELECT id, tenant_id, login, role, agent_id, password_hash FROM portal_users WHERE login = %s",
                       (name,)).fetchone()
    if not targets.check_secret(password, row["password_hash"] if row else _nobody()) or row is None:
        conn.execute("INSERT INTO portal_login_failures (login, peer) VALUES (%s, %s)", (name, peer))
        raise LoginRefused("wrong login or password", locked=False)
    conn.execute("DELETE FROM portal_login_failures WHERE login = %s AND peer = %s", (name, peer))
    token = secrets.token_urlsafe(32)
    conn.execute(
        """INSERT INTO portal_sessions (token_hash, user_id, tenant_id, expires_at, ends_at, peer)
           VALUES (%s, %s, %s, now() + make_interval(mins => %s), now() + make_interval(hours => %s), %s)""",
        (token_key(secret, token), row["id"], row["tenant_id"], idle_minutes, max_hours, peer))
    conn.execute("DELETE FROM portal_sessions WHERE ends_at < now() OR expires_at < now()")
    return token, {k: row[k] for k in ("id", "tenant_id", "login", "role", "agent_id")}


def token_key(secret: str, token: str) -> bytes:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).digest()


def form_token(secret: str, token: str) -> str:
    """The token a page's forms carry (CSRF): bound to the session."""
    return hmac.new(secret.encode(), b"form:" + token.encode(), hashlib.sha256).hexdigest()


def session(conn: psycopg.Connection, token: str, *, secret: str, idle_minutes: int) -> Caller | None:
    """The caller a session token stands for, or None (unknown, expired).
    Use moves the idle expiry on (written at most once a minute)."""
    if not token or len(token) > 200:
        return None
    key = token_key(secret, token)
    row = conn.execute(
        """SELECT s.user_id, s.tenant_id, u.login, u.role, u.agent_id,
                  s.expires_at < now() + make_interval(mins => %s) - interval '1 minute' AS stale
             FROM portal_sessions s JOIN portal_users u ON u.id = s.user_id AND u.tenant_id = s.tenant_id
            WHERE s.token_hash = %s AND s.expires_at > now() AND s.ends_at > now()""",
        (idle_minutes, key)).fetchone()
    if row is None:
        return None
    if row["stale"]:
        conn.execute("""UPDATE portal_sessions SET seen_at = now(),
                               expires_at = least(ends_at, now() + make_interval(mins => %s))
                         WHERE token_hash = %s""", (idle_minutes, key))
    return Caller(row["user_id"], row["tenant_id"], row["login"], row["role"], row["agent_id"], token)


def logout(conn: psycopg.Connection, token: str, *, secret: str) -> None:
    conn.execute("DELETE FROM portal_sessions WHERE token_hash = %s", (token_key(secret, token),))


def expire(conn: psycopg.Connection) -> int:
    """Forget ended sessions and old failures (housekeeping)."""
    n = conn.execute("DELETE FROM portal_sessions WHERE ends_at < now() OR expires_at < now()").rowcount
    conn.execute("DELETE FROM portal_login_failures WHERE at < now() - make_interval(mins => %s)",
                 (WINDOW_MINUTES * 2,))
    return n
