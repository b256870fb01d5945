"""Forwarding and group call at call time (F-05): which legs of an inbound
call to an account ring when, for how long, and what follows a no-answer.

One pure decision (``plan``) for both engines, from the called account's
diversion, its schedule in the tenant's time zone, and the time; the live
registration state is the engine's own at dial time (Asterisk: the
contacts ``PJSIP_DIAL_CONTACTS`` finds, ``DIALSTATUS=CHANUNAVAIL``;
FreeSWITCH: ``user/`` → ``USER_NOT_REGISTERED``), never a stale table:
the plan says *what to do* when a stage ends unanswered or unavailable,
the engine says which it was (``OUTCOMES``).

Rules: at most 10 targets, at most 2 external; a target's own diversion
is never read (no forwarding behind forwarding), the account never rings
itself as a target (no loop), a target is never listed twice, and an
external target that is the called number or another number of the tenant
is never dialled (it would come back in through the carrier: a loop; the
database refuses such targets when they are set, this holds for what
predates that rule).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..provisioning import schedule as sched
from .calls import Flow, Q

RING_SECONDS = 60          # an undiverted account, and a stage with no time of its own, rings this long
MAX_TARGETS = 10
MAX_EXTERNAL = 2


@dataclass(frozen=True)
class Diversion:
    kind: str                          # forward | group
    mode: str | None                   # forward: immediate | no_answer | unregistered
    timeout: int | None                # no_answer: the account rings this long; group: all ring this long
    targets: tuple[str, ...]           # SIP usernames of the tenant, or +E.164
    schedule: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Stage:
    accounts: tuple[str, ...]          # every registered contact of each rings
    externals: tuple[str, ...]         # +E.164: each an outbound leg of the tenant
    seconds: int
    after: str = ""                    # '' the first stage; else the outcome class of the stage before
                                       # that starts this one: 'unanswered' | 'unavailable'


# the outcome of a stage, as each engine reports it
OUTCOMES: Mapping[str, Mapping[str, str]] = {
    "asterisk": {"ANSWER": "answered", "NOANSWER": "no_answer", "CHANUNAVAIL": "unavailable", "BUSY": "busy",
                 "CONGESTION": "failed", "CANCEL": "caller_gone"},
    "freeswitch": {"SUCCESS": "answered", "NO_ANSWER": "no_answer", "USER_NOT_REGISTERED": "unavailable",
                   "SUBSCRIBER_ABSENT": "unavailable", "USER_BUSY": "busy", "CALL_REJECTED": "busy",
                   "NORMAL_TEMPORARY_FAILURE": "failed", "ORIGINATOR_CANCEL": "caller_gone"},
}
# which outcomes of the stage before start a stage
GOES_ON: Mapping[str, frozenset[str]] = {
    "unanswered": frozenset({"no_answer", "unavailable", "busy", "failed"}),
    "unavailable": frozenset({"unavailable"}),
}


def goes_on(after: str, outcome: str) -> bool:
    return outcome in GOES_ON.get(after, frozenset())


def is_external(target: str) -> bool:
    return target.startswith("+")


def clean_targets(account: str, targets: Iterable[str], called: str = "") -> tuple[str, ...]:
    """Targets in order: never the account itself, never the called number,
    never twice, at most 10, at most 2 external (the first two listed)."""
    out: list[str] = []
    external = 0
    for t in targets:
        if not t or t == account or t == called or t in out:
            continue
        if is_external(t):
            if external >= MAX_EXTERNAL:
                continue
            external += 1
        out.append(t)
        if len(out) == MAX_TARGETS:
            break
    return tuple(out)


def _stage(targets: Iterable[str], seconds: int, after: str = "") -> Stage:
    ts = tuple(targets)
    return Stage(accounts=tuple(t for t in ts if not is_external(t)),
                 externals=tuple(t for t in ts if is_external(t)), seconds=seconds, after=after)


def plan(account: str, diversion: Diversion | None, now: dt.datetime, tz: str = "Europe/Berlin",
         called: str = "") -> tuple[Stage, ...]:
    """The stages of an inbound call to ``account`` (on number ``called``)."""
    plain = (_stage([account], RING_SECONDS),)
    if diversion is None or not sched.active(dict(diversion.schedule) if diversion.schedule else None, now, tz):
        return plain
    targets = clean_targets(account, diversion.targets, called)
    if not targets:
        return plain
    if diversion.kind == "group":
        return (_stage((account, *targets), diversion.timeout or RING_SECONDS),)
    if diversion.mode == "immediate":
        return (_stage(targets, RING_SECONDS),)
    if diversion.mode == "no_answer":
        return (_stage([account], diversion.timeout or RING_SECONDS),
                _stage(targets, RING_SECONDS, after="unanswered"))
    if diversion.mode == "unregistered":
        return (_stage([account], RING_SECONDS), _stage(targets, RING_SECONDS, after="unavailable"))
    return plain


def group_plan(members: Iterable[str], ring_seconds: int, fallback: str | None) -> tuple[Stage, ...]:
    """A number routed to a ring group: every member rings for the group's
    ring time, then — when nobody answered — its fallback."""
    ring = _stage(tuple(dict.fromkeys(m for m in members if m))[:MAX_TARGETS], ring_seconds)
    if not fallback or fallback in ring.accounts:
        return (ring,)
    return ring, _stage([fallback], RING_SECONDS, after="unanswered")


# ------------------------------------------------------------------ loading

_DIVERSION = """
SELECT d.kind, d.mode, d.timeout_seconds, d.schedule, t.timezone,
       coalesce(array_agg(coalesce(ta.username, dt.external_e164) ORDER BY dt.position)
                FILTER (WHERE dt.position IS NOT NULL), '{}') AS targets
  FROM sip_accounts a
  JOIN tenants t ON t.id = a.tenant_id
  JOIN diversions d ON d.account_id = a.id
  LEFT JOIN diversion_targets dt ON dt.account_id = d.account_id
        AND dustel_own_number(a.tenant_id, dt.external_e164) IS NULL   -- never the tenant's own number (a loop)
  LEFT JOIN sip_accounts ta ON ta.id = dt.target_account_id
 WHERE a.tenant_id = %(t)s AND a.username = %(u)s
 GROUP BY d.account_id, d.kind, d.mode, d.timeout_seconds, d.schedule, t.timezone
"""


_GROUP = """
SELECT g.ring_seconds,
       coalesce(f.username, CASE WHEN dustel_own_number(g.tenant_id, g.fallback_e164) IS NULL
                                 THEN g.fallback_e164 END) AS fallback,   -- never an own number (a loop)
       coalesce((SELECT array_agg(a.username ORDER BY a.id) FROM ring_group_members m
                   JOIN sip_accounts a ON a.id = m.account_id WHERE m.group_id = g.id), '{}') AS members
  FROM ring_groups g LEFT JOIN sip_accounts f ON f.id = g.fallback_account_id
 WHERE g.tenant_id = %(t)s AND g.name = %(g)s
"""


# ------------------------------------------------------------------ sound logo

LOGO_KINDS = ("account", "group", "queue")     # a fax machine hears no sound logo

_LOGO = """
SELECT class, name FROM media_files
 WHERE tenant_id = %(t)s AND kind = 'logo' AND class IN (%(number)s, 'tenant')
 ORDER BY class = 'tenant', uploaded_at DESC LIMIT 1
"""


# ------------------------------------------------------------------ one read per call / stage

@dataclass(frozen=True)
class Routing:
    """What an inbound call does, read in one round trip: the stages (a call
    to an account or ring group), the account its external legs are decided
    with (None: the tenant's main account), and the sound logo."""
    stages: tuple[Stage, ...]
    leg_account: str | None
    logo: tuple[str, str] | None


def routing(tenant_id: int, kind: str, target: str, called: str, now: dt.datetime) -> Flow:
    """Read per call, and again when stage 1 ends unanswered: a change made
    through the CLI applies to the next call and to the next stage."""
    number = called.lstrip("+") if called.lstrip("+").isdigit() else ""
    logo_q = Q(_LOGO, {"t": tenant_id, "number": number}, last=True)   # one step: with BEGIN and COMMIT
    if kind == "group":
        rows, logos = (yield [Q(_GROUP, {"t": tenant_id, "g": target}), logo_q])
        stages = group_plan(rows[0]["members"], rows[0]["ring_seconds"], rows[0]["fallback"]) if rows else ()
        account = None
    elif kind == "account":
        rows, logos = (yield [Q(_DIVERSION, {"t": tenant_id, "u": target}), logo_q])
        r = rows[0] if rows else None
        diversion = Diversion(kind=r["kind"], mode=r["mode"], timeout=r["timeout_seconds"],
                              targets=tuple(r["targets"]), schedule=r["schedule"]) if r else None
        stages, account = plan(target, diversion, now, r["timezone"] if r else "Europe/Berlin",
                               "+" + number if number else ""), target
    else:
        logos = (yield logo_q)
        stages, account = (), None
    logo = (logos[0]["class"], logos[0]["name"]) if logos and kind in LOGO_KINDS else None
    return Routing(stages, account, logo)
