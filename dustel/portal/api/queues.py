"""Queues for supervisors: statistics (CSV/JSON, ``dustel queue stats``'s
report), the live view (a snapshot, and the same pushed as Server-Sent
Events); for agents: their own state (log in with the PIN, pause, unpause,
log out — the star codes' own flow, pushed to the engines like them)."""
from __future__ import annotations

import asyncio
import json

from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ...callpath.calls import run_sync
from ...errors import DustelError, NotFound
from ...queue import agents, service, stats
from ...queue.codes import StarRequest
from .. import live, users
from ..web import portal_of, role, router, supervisor

api = router(tags=["queues"])
agent_only = role("agent")
KEEPALIVE_SECONDS = 15.0


@api.get("/queues")
def queue_list(request: Request, caller: users.Caller = Depends(supervisor)):
    with portal_of(request).tx() as conn:
        return conn.execute("""SELECT name, code, strategy, max_wait_seconds, max_callers, wrapup_seconds, moh_class,
                                      service_level_seconds FROM queues WHERE tenant_id = %s ORDER BY name""",
                            (caller.tenant_id,)).fetchall()


@api.get("/queues/{name}/stats")
def queue_stats(name: str, request: Request, start: str, end: str, by: str = "day", format: str = "json",
                caller: users.Caller = Depends(supervisor)):
    """``start``/``end`` (exclusive): ISO, the tenant's time zone unless an
    offset is given; ``by`` hour, day or agent; ``format`` json, csv or csv-de."""
    if format not in ("json", "csv", "csv-de"):
        raise DustelError("format", "must be json, csv or csv-de")
    with portal_of(request).tx() as conn:
        q = conn.execute("""SELECT t.timezone FROM queues q JOIN tenants t ON t.id = q.tenant_id
                             WHERE q.tenant_id = %s AND q.name = %s""", (caller.tenant_id, name)).fetchone()
        if q is None:
            raise NotFound("queue", f"no queue {name!r}")
        tz = q["timezone"]
        _, rows = stats.report(conn, caller.tenant_id, name, stats.moment("start", start, tz),
                               stats.moment("end", end, tz), by)
    if format == "json":
        return Response(stats.to_json(rows), media_type="application/json")
    return Response(stats.to_csv(rows, by, format), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}-{by}.csv"'})


@api.get("/queues/live")
def queue_live(request: Request, caller: users.Caller = Depends(supervisor)):
    with portal_of(request).tx() as conn:
        return live.snapshot(conn, caller.tenant_id)


def _read(request: Request, tenant_id: int) -> str:
    with portal_of(request).tx() as conn:
        return json.dumps(live.snapshot(conn, tenant_id), ensure_ascii=False, default=str)


@api.get("/queues/live/events")
async def queue_live_events(request: Request, caller: users.Caller = Depends(supervisor)):
    """The live view as Server-Sent Events: a ``snapshot`` event on connect
    and whenever something of the tenant's queues happened."""
    hub: live.Hub = request.app.state.hub
    wake = hub.subscribe(caller.tenant_id)

    async def events():
        try:
            last = None
            while True:
                wake.clear()
                data = await run_in_threadpool(_read, request, caller.tenant_id)
                if data != last:
                    yield f"event: snapshot\ndata: {data}\n\n"
                    last = data
                try:
                    await asyncio.wait_for(wake.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    if await request.is_disconnected():
                        return
                    wake.set()          # the day may have turned: read again after a quiet spell
        finally:
            hub.unsubscribe(caller.tenant_id, wake)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# ------------------------------------------------------------------ the agent's own state

def agent_state(conn, caller: users.Caller) -> dict:
    g = conn.execute("""SELECT g.id, g.name, s.username AS phone, g.contact_e164 FROM agents g
                          LEFT JOIN sip_accounts s ON s.id = g.contact_account_id
                         WHERE g.tenant_id = %s AND g.id = %s""", (caller.tenant_id, caller.agent_id)).fetchone()
    if g is None:
        raise NotFound("agent", "no agent")
    g["logins"] = conn.execute("""SELECT q.name AS queue, q.code, l.since, l.paused_since FROM agent_logins l
                                    JOIN queues q ON q.id = l.queue_id WHERE l.agent_id = %s ORDER BY q.name""",
                               (caller.agent_id,)).fetchall()
    g["member_of"] = conn.execute("""SELECT q.name AS queue, q.code FROM queue_members m JOIN queues q
                                       ON q.id = m.queue_id WHERE m.agent_id = %s ORDER BY q.name""",
                                  (caller.agent_id,)).fetchall()
    return g


@api.get("/agent")
def agent_show(request: Request, caller: users.Caller = Depends(agent_only)):
    with portal_of(request).tx() as conn:
        return agent_state(conn, caller)


class AgentIn(BaseModel):
    queue: str | None = None        # the queue's code (login: required; else: all the agent's queues)
    pin: str | None = None          # login only


REASONS = {"need_queue": ("queue", "name the queue (its code) to log in to"),
           "need_pin": ("pin", "the agent PIN is required to log in"),
           "wrong_pin": ("pin", "wrong PIN"), "locked": ("pin", "too many wrong PINs: locked for a while"),
           "rate_limited": ("pin", "too many wrong PINs a minute from here: wait a minute"),
           "unknown_queue": ("queue", "no such queue"), "not_a_member": ("queue", "not a member of this queue"),
           "not_logged_in": ("queue", "not logged in there"), "not_an_agent": ("agent", "no phone or number")}


@api.post("/agent/{action}")
def agent_act(action: str, body: AgentIn, request: Request, caller: users.Caller = Depends(agent_only)):
    """Log in (queue code + PIN), log out, pause or unpause — stored as the
    star codes store it, then sent to every engine node."""
    if action not in ("login", "logout", "pause", "unpause"):
        raise NotFound("action", f"no agent action {action!r} (login, logout, pause, unpause)")
    portal = portal_of(request)
    wrong: tuple[str, str] | None = None
    with portal.tx() as conn:
        me = agent_state(conn, caller)
        out = run_sync(conn, agents.star(caller.tenant_id, me["phone"] or "", me["contact_e164"] or "",
                                         StarRequest(action, body.queue, body.pin if action == "login" else None)))
        if out.agent_id is not None and out.agent_id != caller.agent_id:
            raise DustelError("agent", "your phone is another agent's contact; ask your admin")
        if not out.ok:
            wrong = REASONS.get(out.reason, ("agent", out.reason))
            if out.reason == "unknown_queue":
                raise NotFound(*wrong)
            if out.reason not in ("wrong_pin", "locked", "rate_limited"):
                raise DustelError(*wrong)
        state = agent_state(conn, caller)
    if wrong is not None:               # a wrong PIN is counted (committed), then refused
        raise DustelError(*wrong)
    state["engines"] = service.push(portal.settings, list(out.changes)) or "ok"
    return state
