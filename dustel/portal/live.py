"""The supervisors' live queue view (F-13): waiting callers and their wait,
agents' states, today's service level — pushed, never polled.

How the portal learns of a change: the controller stores every engine
queue event in ``queue_events`` (``stats.from_fs`` / ``stats.from_ami``),
the star codes store logins and pauses in ``agent_logins``; a statement
trigger on both (migration 0025) sends ``NOTIFY dustel_queue, '<tenant>'``
in the same transaction.  One ``Hub`` per portal process LISTENs on one
connection and wakes the tenant's open views (Server-Sent Events), each of
which reads its snapshot again.  No engine is asked anything; a view only
reads the database when something of its tenant happened (and once on
connect).  The page counts the waits up itself between pushes.

Definitions (the statistics' own, ``queue/stats.py``): a caller waits from
its ``offered`` event until an ``answered``, ``abandoned``, ``timeout`` or
``closed`` one of the same call; the service level is ``stats.report``'s
for today (the tenant's day) so far."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from ..queue import stats
from . import itemised

log = logging.getLogger("dustel.portal.live")
CHANNEL = "dustel_queue"

_WAITING = """
SELECT q.name AS queue, o.call_id, o.at AS since,
       (SELECT lc.caller FROM live_channels lc WHERE lc.call_id = o.call_id AND lc.tenant_id = q.tenant_id
         ORDER BY lc.created_at LIMIT 1) AS caller
  FROM queues q JOIN queue_events o ON o.queue_id = q.id
 WHERE q.tenant_id = %(t)s AND o.kind = 'offered' AND o.call_id <> ''
   AND o.at >= now() - make_interval(secs => q.max_wait_seconds + 300)
   AND NOT EXISTS (SELECT 1 FROM queue_events x WHERE x.queue_id = o.queue_id AND x.call_id = o.call_id
                      AND x.kind IN ('answered', 'abandoned', 'timeout', 'closed'))
 ORDER BY o.at, o.id
"""

_AGENTS = """
SELECT g.id, g.name, l.since, l.paused_since, q.name AS queue
  FROM agents g LEFT JOIN agent_logins l ON l.agent_id = g.id LEFT JOIN queues q ON q.id = l.queue_id
 WHERE g.tenant_id = %(t)s ORDER BY g.name, g.id, q.name
"""

# the last call event of each agent today: answered without completed = talking now
_TALKING = """
SELECT DISTINCT ON (e.agent_id) e.agent_id, e.kind, e.at
  FROM queue_events e JOIN queues q ON q.id = e.queue_id
 WHERE q.tenant_id = %(t)s AND e.agent_id IS NOT NULL AND e.kind IN ('answered', 'completed')
   AND e.at >= %(day)s
 ORDER BY e.agent_id, e.at DESC, e.id DESC
"""


def today(tz: str, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The tenant's day now: [its start, the next day's start)."""
    zone = ZoneInfo(tz)
    local = (now or dt.datetime.now(dt.UTC)).astimezone(zone).date()
    return (dt.datetime.combine(local, dt.time(), zone),
            dt.datetime.combine(local + dt.timedelta(days=1), dt.time(), zone))


def snapshot(conn: psycopg.Connection, tenant_id: int) -> dict[str, Any]:
    """What the tenant's supervisor sees now (the caller's transaction)."""
    tz = conn.execute("SELECT timezone FROM tenants WHERE id = %s", (tenant_id,)).fetchone()["timezone"]
    start, end = today(tz)
    full = itemised.show_full(conn, tenant_id)
    queues = []
    for q in conn.execute("SELECT name, service_level_seconds FROM queues WHERE tenant_id = %s ORDER BY name",
                          (tenant_id,)).fetchall():
        _, rows = stats.report(conn, tenant_id, q["name"], start, end, "day")
        r = rows[0]
        queues.append({"queue": q["name"], "service_level_seconds": q["service_level_seconds"],
                       "offered": r["offered"], "answered": r["answered"], "abandoned": r["abandoned"],
                       "service_level_pct": None if r["service_level_pct"] is None else float(r["service_level_pct"]),
                       "wait_avg_s": None if r["wait_avg_s"] is None else float(r["wait_avg_s"]), "waiting": []})
    by_name = {q["queue"]: q for q in queues}
    for w in conn.execute(_WAITING, {"t": tenant_id}).fetchall():
        caller = w["caller"] or ""
        by_name[w["queue"]]["waiting"].append({"call_id": w["call_id"], "since": w["since"].isoformat(),
                                               "caller": caller if full else itemised.mask(caller)})
    talking = {r["agent_id"]: r["kind"] == "answered" for r in conn.execute(_TALKING, {"t": tenant_id, "day": start})}
    agents: dict[int, dict[str, Any]] = {}
    for a in conn.execute(_AGENTS, {"t": tenant_id}).fetchall():
        g = agents.setdefault(a["id"], {"agent": a["name"], "queues": [], "paused": False, "since": None})
        if a["queue"] is not None:
            g["queues"].append(a["queue"])
            g["paused"] = g["paused"] or a["paused_since"] is not None
            g["since"] = min(filter(None, [g["since"], a["since"].isoformat()]))
    for agent_id, g in agents.items():
        g["state"] = ("logged_out" if not g["queues"] else "on_call" if talking.get(agent_id)
                      else "paused" if g["paused"] else "available")
    return {"tenant_id": tenant_id, "timezone": tz, "day": start.date().isoformat(), "queues": queues,
            "agents": list(agents.values())}


class Hub:
    """One LISTEN connection per portal process; per tenant, the open views'
    wake-up events.  Reconnects with backoff when the database goes away
    (every view is then woken once: it reads its snapshot again)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.views: dict[int, set[asyncio.Event]] = {}
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def subscribe(self, tenant_id: int) -> asyncio.Event:
        ev = asyncio.Event()
        self.views.setdefault(tenant_id, set()).add(ev)
        return ev

    def unsubscribe(self, tenant_id: int, ev: asyncio.Event) -> None:
        views = self.views.get(tenant_id)
        if views is not None:
            views.discard(ev)
            if not views:
                del self.views[tenant_id]

    def wake(self, tenant_id: int | None) -> None:
        for t, views in self.views.items():
            if tenant_id is None or t == tenant_id:
                for ev in views:
                    ev.set()

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    delay = 0.2
                    self.wake(None)                 # whatever happened while not listening
                    async for note in conn.notifies():
                        if note.payload.isdigit():
                            self.wake(int(note.payload))
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning("live view: notifications lost (%s); listening again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
