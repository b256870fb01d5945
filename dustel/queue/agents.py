"""Agent sessions: the star codes' effect, as a sans-IO flow (``callpath.calls``
drivers: sync for the FreeSWITCH socket, async for FastAGI).

The database is the truth: a login, logout or pause is stored (with its
queue event) in the same transaction that decides it; the engine commands
the shell then sends are derived from the returned ``Change``s, and the same
changes are re-applied to an engine after it restarts (``service.reapply``).

PINs: wrong PINs are counted per agent and source (``_pin``); after
``MAX_FAILURES`` in a row that source is locked for ``LOCK_MINUTES``
(doubling per further lock) — even the right PIN is refused from it then.
The right PIN resets the count."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..callpath.calls import Flow, Q
from ..provisioning.targets import check_pin
from .codes import StarRequest

MAX_FAILURES = 5
LOCK_MINUTES = 15
RATE_PER_MINUTE = 10

log = logging.getLogger("dustel.agents")


@dataclass(frozen=True)
class Change:
    op: str                   # login | logout | pause | unpause
    tenant_id: int
    queue: str                # engine-wide queue name t<tenant>-<queue>
    domain: str
    agent_id: int
    contact_user: str | None  # the agent's phone (SIP username) …
    contact_e164: str | None  # … or external number
    level: int = 1
    position: int = 1
    last: bool = False        # logout: the agent's last queue


@dataclass(frozen=True)
class Outcome:
    ok: bool
    reason: str               # done | need_queue | need_pin | wrong_pin | locked | unknown_queue | not_an_agent
    changes: tuple[Change, ...] = ()   #  | not_a_member | not_logged_in
    agent_id: int | None = None


_AGENT = """
SELECT g.id, g.tenant_id, g.pin_hash, g.failed_pins, g.locked_until > now() AS locked, s.username AS contact_user,
       g.contact_e164, t.sip_domain
  FROM agents g JOIN tenants t ON t.id = g.tenant_id
  LEFT JOIN sip_accounts s ON s.id = g.contact_account_id
 WHERE g.tenant_id = %(t)s AND ((%(account)s <> '' AND s.username = %(account)s)
                                OR (%(caller)s <> '' AND g.contact_e164 = %(caller)s))
 ORDER BY g.id LIMIT 1
   FOR UPDATE OF g
"""

_LOGINS = """
SELECT l.queue_id, q.name, m.level, m.position, l.paused_since IS NOT NULL AS paused
  FROM agent_logins l JOIN queues q ON q.id = l.queue_id
  LEFT JOIN queue_members m ON m.queue_id = l.queue_id AND m.agent_id = l.agent_id
 WHERE l.agent_id = %(a)s AND (%(code)s::text IS NULL OR q.code = %(code)s)
 ORDER BY q.name
"""

_EVENT = "INSERT INTO queue_events (tenant_id, queue_id, at, kind, agent_id) VALUES (%(t)s, %(q)s, now(), %(k)s, %(a)s)"


def pin_source(account: str, caller: str) -> str:
    """Where PIN attempts come from: the authenticated phone account, or the
    hotline with the number the caller claims (spoofable: it locks only
    itself)."""
    return f"account:{account}" if account else f"hotline:{caller}"


def _pin(tenant_id: int, g: dict[str, Any], source: str, pin: str) -> Flow:
    """ok | wrong_pin | locked | rate_limited — and every attempt logged.

    Failures count per (agent, source): ``MAX_FAILURES`` in a row lock that
    source for ``LOCK_MINUTES``, doubling with each further lock (up to a
    day) — so a spoofed caller ID locks its own way in, never the agent's
    phone.  Independent of agents, a source gets at most
    ``RATE_PER_MINUTE`` wrong PINs a minute (no guessing across agents)."""
    rows = (yield [Q("""INSERT INTO agent_pin_locks (agent_id, source) VALUES (%(a)s, %(s)s)
                        ON CONFLICT DO NOTHING""", {"a": g["id"], "s": source}),
                   Q("""SELECT failed, locks, locked_until > now() AS locked FROM agent_pin_locks
                         WHERE agent_id = %(a)s AND source = %(s)s FOR UPDATE""", {"a": g["id"], "s": source}),
                   Q("""SELECT count(*) AS n FROM pin_attempts
                         WHERE source = %(s)s AND NOT ok AND at > now() - interval '1 minute'""", {"s": source})])
    lk, recent = rows[1][0], rows[2][0]["n"]
    if lk["locked"]:
        verdict = "locked"
    elif recent >= RATE_PER_MINUTE:
        verdict = "rate_limited"
    elif check_pin(pin, g["pin_hash"]):
        verdict = "ok"
    else:
        verdict = "wrong_pin"
    writes = [Q("""INSERT INTO pin_attempts (tenant_id, agent_id, source, ok)
                   VALUES (%(t)s, %(a)s, %(s)s, %(ok)s)""",
                {"t": tenant_id, "a": g["id"], "s": source, "ok": verdict == "ok"})]
    if verdict == "ok":
        writes.append(Q("""UPDATE agent_pin_locks SET failed = 0, locks = 0, locked_until = NULL
                            WHERE agent_id = %(a)s AND source = %(s)s""", {"a": g["id"], "s": source}))
    elif verdict == "wrong_pin":
        failed = lk["failed"] + 1
        lock = failed >= MAX_FAILURES          # the count starts again once the lock is over
        minutes = min(LOCK_MINUTES * 2 ** lk["locks"], 24 * 60)
        writes.append(Q("""UPDATE agent_pin_locks
                              SET failed = %(f)s, locks = locks + %(l)s::int,
                                  locked_until = CASE WHEN %(lock)s THEN now() + make_interval(mins => %(m)s)
                                                      ELSE locked_until END
                            WHERE agent_id = %(a)s AND source = %(s)s""",
                        {"f": 0 if lock else failed, "l": int(lock), "lock": lock, "m": minutes, "a": g["id"],
                         "s": source}))
        verdict = "locked" if lock else verdict
    yield writes
    log.info("agent pin tenant=%s agent=%s source=%s result=%s", tenant_id, g["id"], source, verdict)
    return verdict


def star(tenant_id: int, account: str, caller: str, req: StarRequest) -> Flow:
    """What the star code ``req`` dialed from ``account`` (a tenant's phone)
    or from ``caller`` (an external number) does."""
    source = pin_source(account, caller)
    rows = (yield Q(_AGENT, {"t": tenant_id, "account": account or "", "caller": caller or ""}))
    if not rows:
        return Outcome(False, "not_an_agent")
    g = rows[0]

    def change(op: str, queue: str, level: int = 1, position: int = 1, last: bool = False) -> Change:
        return Change(op, tenant_id, f"t{tenant_id}-{queue}", g["sip_domain"], g["id"], g["contact_user"],
                      g["contact_e164"], level or 1, position or 1, last)

    if req.action == "login":
        if req.queue is None:
            return Outcome(False, "need_queue", agent_id=g["id"])
        qs = (yield Q("""SELECT q.id, q.name, m.level, m.position FROM queues q
                          LEFT JOIN queue_members m ON m.queue_id = q.id AND m.agent_id = %(a)s
                         WHERE q.tenant_id = %(t)s AND q.code = %(code)s""",
                      {"t": tenant_id, "code": req.queue, "a": g["id"]}))
        if not qs:
            return Outcome(False, "unknown_queue", agent_id=g["id"])
        q = qs[0]
        if q["level"] is None:
            return Outcome(False, "not_a_member", agent_id=g["id"])
        if req.pin is None:
            return Outcome(False, "need_pin", agent_id=g["id"])
        verdict = yield from _pin(tenant_id, g, source, req.pin)
        if verdict != "ok":
            return Outcome(False, verdict, agent_id=g["id"])
        new = (yield Q("""INSERT INTO agent_logins (queue_id, agent_id, tenant_id, contact)
                          VALUES (%(q)s, %(a)s, %(t)s, %(c)s) ON CONFLICT DO NOTHING RETURNING queue_id""",
                       {"q": q["id"], "a": g["id"], "t": tenant_id,
                        "c": g["contact_user"] or g["contact_e164"] or ""}))
        if new:
            yield Q(_EVENT, {"t": tenant_id, "q": q["id"], "k": "login", "a": g["id"]})
        return Outcome(True, "done", (change("login", q["name"], q["level"], q["position"]),), g["id"])

    logins = (yield Q(_LOGINS, {"a": g["id"], "code": req.queue}))
    if not logins:
        return Outcome(False, "not_logged_in", agent_id=g["id"])
    changes = []
    if req.action == "logout":
        remaining = (yield Q("SELECT count(*) AS n FROM agent_logins WHERE agent_id = %(a)s", {"a": g["id"]}))
        left = remaining[0]["n"] - len(logins)
        for i, lg in enumerate(logins):
            yield Q("DELETE FROM agent_logins WHERE queue_id = %(q)s AND agent_id = %(a)s",
                    {"q": lg["queue_id"], "a": g["id"]})
            if lg["paused"]:
                yield Q(_EVENT, {"t": tenant_id, "q": lg["queue_id"], "k": "unpause", "a": g["id"]})
            yield Q(_EVENT, {"t": tenant_id, "q": lg["queue_id"], "k": "logout", "a": g["id"]})
            changes.append(change("logout", lg["name"], lg["level"], lg["position"],
                                  last=left == 0 and i == len(logins) - 1))
    else:
        pause = req.action == "pause"
        for lg in logins:
            if lg["paused"] == pause:
                continue
            yield Q("""UPDATE agent_logins SET paused_since = CASE WHEN %(p)s THEN now() END
                        WHERE queue_id = %(q)s AND agent_id = %(a)s""", {"p": pause, "q": lg["queue_id"],
                                                                          "a": g["id"]})
            yield Q(_EVENT, {"t": tenant_id, "q": lg["queue_id"], "k": req.action, "a": g["id"]})
            changes.append(change(req.action, lg["name"], lg["level"], lg["position"]))
    return Outcome(True, "done", tuple(changes), g["id"])


def current() -> Flow:
    """Every login as a ``Change`` (plus a pause where paused): what an engine
    must be told again after it restarted."""
    rows = (yield Q("""SELECT l.tenant_id, q.name, t.sip_domain, l.agent_id, s.username AS contact_user,
                              g.contact_e164, m.level, m.position, l.paused_since IS NOT NULL AS paused
                         FROM agent_logins l JOIN queues q ON q.id = l.queue_id JOIN tenants t ON t.id = l.tenant_id
                         JOIN agents g ON g.id = l.agent_id LEFT JOIN sip_accounts s ON s.id = g.contact_account_id
                         LEFT JOIN queue_members m ON m.queue_id = l.queue_id AND m.agent_id = l.agent_id
                        ORDER BY l.tenant_id, q.name, l.agent_id""", {}))
    out = []
    for r in rows:
        base = dict(tenant_id=r["tenant_id"], queue=f"t{r['tenant_id']}-{r['name']}", domain=r["sip_domain"],
                    agent_id=r["agent_id"], contact_user=r["contact_user"], contact_e164=r["contact_e164"],
                    level=r["level"] or 1, position=r["position"] or 1)
        out.append(Change("login", **base))
        if r["paused"]:
            out.append(Change("pause", **base))
    return out


def is_external_agent(tenant_id: int, caller: str) -> Flow:
    """Is this caller the external number of one of the tenant's agents?"""
    if not caller.startswith("+"):
        return False
    rows = (yield Q("SELECT 1 FROM agents WHERE tenant_id = %(t)s AND contact_e164 = %(c)s LIMIT 1",
                    {"t": tenant_id, "c": caller}))
    return bool(rows)


def hotline(tenant_id: int, queue: str, caller: str, pin: str) -> Flow:
    """An agent working from an external number calls the queue's hotline:
    with the right PIN it logs in — or, when already logged in, out."""
    rows = (yield Q("""SELECT q.code, EXISTS (SELECT 1 FROM agent_logins l JOIN agents g ON g.id = l.agent_id
                                               WHERE l.queue_id = q.id AND g.contact_e164 = %(c)s) AS logged_in
                         FROM queues q WHERE q.tenant_id = %(t)s AND q.name = %(q)s""",
                    {"t": tenant_id, "q": queue, "c": caller}))
    if not rows:
        return Outcome(False, "unknown_queue")
    login = yield from star(tenant_id, "", caller, StarRequest("login", rows[0]["code"], pin))
    if not login.ok or not rows[0]["logged_in"]:
        return login
    return (yield from star(tenant_id, "", caller, StarRequest("logout", rows[0]["code"])))
