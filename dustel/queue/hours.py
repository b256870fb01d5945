"""Opening hours of a queue: open or closed now, and where a closed queue
sends its callers.  The rules and holidays are the ones of time-controlled
forwarding (``provisioning.schedule``): "when active" means "open"."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..callpath.calls import Flow, Q
from ..provisioning import schedule


@dataclass(frozen=True)
class QueueState:
    open: bool
    closed_announce: str = ""     # sound to play when closed ('' none)
    closed_target: str = ""       # E.164 number or SIP username ('' hang up after the announcement)
    max_wait_seconds: int = 300   # a caller leaves the queue after this (timed out)
    max_callers: int = 10
    waiting: int = 0              # callers waiting now (FreeSWITCH: queue_waiting; Asterisk counts itself)

    @property
    def full(self) -> bool:
        return self.waiting >= self.max_callers


def state(tenant_id: int, queue: str, now: dt.datetime) -> Flow:
    rows = (yield Q("""SELECT q.opening_hours, q.closed_announce,
                              -- never one of the tenant's own numbers (out through the carrier and back
                              -- in: a loop; refused when set, this holds for rows from before that rule)
                              CASE WHEN dustel_own_number(q.tenant_id, q.closed_target) IS NULL
                                   THEN q.closed_target END AS closed_target, q.max_wait_seconds,
                              q.max_callers, t.timezone,
                              (SELECT count(*) FROM queue_waiting w WHERE w.queue_id = q.id
                                  AND w.since > now() - make_interval(secs => q.max_wait_seconds)) AS waiting
                         FROM queues q JOIN tenants t ON t.id = q.tenant_id
                        WHERE q.tenant_id = %(t)s AND q.name = %(q)s""", {"t": tenant_id, "q": queue}))
    if not rows:
        return QueueState(True)
    r = rows[0]
    is_open = r["opening_hours"] is None or schedule.active(r["opening_hours"], now, r["timezone"])
    return QueueState(is_open, r["closed_announce"] or "", r["closed_target"] or "", r["max_wait_seconds"],
                      r["max_callers"], int(r["waiting"]))


def waiting(node: str, call_id: str, tenant_id: int, queue: str, joined: bool) -> Flow:
    """A caller joins (``joined``) or leaves a queue's waiting callers."""
    if joined:
        yield Q("""INSERT INTO queue_waiting (node, call_id, tenant_id, queue_id)
                   SELECT %(n)s, %(c)s, q.tenant_id, q.id FROM queues q WHERE q.tenant_id = %(t)s AND q.name = %(q)s
                   ON CONFLICT DO NOTHING""", {"n": node, "c": call_id, "t": tenant_id, "q": queue})
    else:
        yield Q("DELETE FROM queue_waiting WHERE node = %(n)s AND call_id = %(c)s", {"n": node, "c": call_id})
    return joined


def queue_of(engine_name: str, tenant_id: int) -> str:
    """t<tenant>-<queue> -> <queue>."""
    prefix = f"t{tenant_id}-"
    return engine_name[len(prefix):] if engine_name.startswith(prefix) else engine_name
