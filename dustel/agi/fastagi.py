"""FastAGI front end (Asterisk): thin shell around the decision core.

One handler per route, named after it, registered in ROUTES.  A handler
reads what Asterisk sent (agi_* headers and arguments: no extra round
trips), runs the admit/settle flow on the database, and answers with SET
VARIABLE; the rendered dialplan does the Dial / Hangup.  Any failure is
logged and the call refused with cause 41 (temporary failure) — except
emergency calls, which never come here.

panoramisk's ``Application.handler`` loops forever on a client that closes
before the blank line and decodes with strict UTF-8; ``DustelAGI.handler``
reads the request with limits and a timeout instead and decodes only whole
frames.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import psycopg
from panoramisk.fast_agi import Application, Request
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from ..callpath import calls, divert
from ..callpath import variables as V
from ..callpath.policy import INTERNAL_ERROR, CallRequest, Decision, clean_caller
from ..config import LISTEN_BACKLOG
from ..provisioning import media
from ..queue import agents, codes, hours, service, stats
from .aio import Context, expire_loop, open_pool

log = logging.getLogger("dustel.agi")

MAX_REQUEST_BYTES = 16384
NODE = "dustel_node"     # the node a request came from, added after parsing (no agi_ prefix: never from the wire)
REQUEST_TIMEOUT = 5.0


def parse_request(raw: bytes) -> dict[str, str]:
    """AGI request headers from the whole frame (bytes up to the blank line)."""
    text = raw.decode("utf-8", errors="replace")
    headers: dict[str, str] = {}
    for line in text.split("\n"):
        key, sep, value = line.rstrip("\r").partition(": ")
        if sep and key.startswith("agi_"):
            headers[key] = value
    return headers


_MSET_VALUE = re.compile(r"[A-Za-z0-9_+@/.:*#=&-]*")


def mset_command(values: dict[str, str]) -> str:
    """All decision variables in one AGI command (``EXEC MSet``): one round
    trip instead of one per variable.  MSet splits on commas and honours
    quotes and backslashes, so values are restricted to a safe alphabet —
    every value here is a number, a reason code or a dial string built from
    validated usernames and E.164 numbers; anything else is refused."""
    parts = []
    for name, value in values.items():
        if not _MSET_VALUE.fullmatch(value):
            raise ValueError(f"{name}: unsafe characters in {value[:40]!r}")
        parts.append(f"{name}={value}")
    return f'EXEC MSet "{",".join(parts)}"'


async def _set(request: Request, values: dict[str, str]) -> None:
    await request.send_command(mset_command(values))


def dial_string(d: Decision) -> str:
    if d.route in ("internal", "inbound"):
        return f"PJSIP/{d.destination}"
    return f"PJSIP/{d.destination}@carrier"


async def _apply(request: Request, d: Decision, extra: dict[str, str] | None = None) -> None:
    if d.admit:
        await _set(request, {V.ACTION: "admit", V.DIAL: dial_string(d), V.MAX_SECONDS: str(d.max_seconds),
                             V.CALLER_ID: d.caller_id, V.REASON: d.reason, **(extra or {})})
    else:
        await _set(request, refusal(d))


def refusal(d: Decision) -> dict[str, str]:
    return {V.ACTION: "refuse", V.CAUSE: str(d.q850), V.SIP_CODE: str(d.sip_code), V.REASON: d.reason}


def _arg(h: dict[str, str], n: int) -> str:
    return h.get(f"agi_arg_{n}", "").strip()


def _caller(h: dict[str, str]) -> str:
    return clean_caller(h.get("agi_callerid", ""))


async def outbound(request: Request, ctx: Context) -> None:
    """agi://…/outbound,<tenant>,<account>,<remote addr>,<secure: 1 over TLS>"""
    h = request.headers
    remote = _arg(h, 3)
    source_ip = remote.rsplit(":", 1)[0].strip("[]") if remote else None
    req = CallRequest(direction="out", tenant_id=int(_arg(h, 1)), account=_arg(h, 2), caller=_caller(h),
                      callee=h.get("agi_extension", ""), source_ip=source_ip, engine="asterisk", node=h[NODE],
                      call_id=h.get("agi_uniqueid", ""), secure=_arg(h, 4) == "1")
    d = await ctx.admit(req)
    log.info("outbound call=%s tenant=%s account=%s callee=%s admit=%s reason=%s max=%s", req.call_id,
             req.tenant_id, req.account, req.callee, d.admit, d.reason, d.max_seconds)
    await _answer(request, ctx, req, d)


async def inbound(request: Request, ctx: Context) -> None:
    """agi://…/inbound,<tenant>,<target kind>,<target>"""
    h = request.headers
    kind, target = _arg(h, 2), _arg(h, 3)
    req = CallRequest(direction="in", tenant_id=int(_arg(h, 1)), account=target if kind == "account" else "",
                      caller=_caller(h), callee=h.get("agi_extension", ""), engine="asterisk", node=h[NODE],
                      call_id=h.get("agi_uniqueid", ""))
    if kind == "queue" and await ctx.run(agents.is_external_agent(req.tenant_id, req.caller)):
        await agent_hotline(request, ctx, req.tenant_id, hours.queue_of(target, req.tenant_id), req.caller)
        return
    d = await ctx.admit(req)
    extra: dict[str, str] = {}
    try:
        if d.admit and kind == "queue":
            queue = hours.queue_of(target, req.tenant_id)
            qs = await ctx.run(hours.state(req.tenant_id, queue, req.now))
            extra = {V.QUEUE_OPEN: "1" if qs.open else "0", V.CLOSED_ANNOUNCE: qs.closed_announce,
                     V.CLOSED_DIAL: closed_dial(qs.closed_target), V.QUEUE_MAX_WAIT: str(qs.max_wait_seconds)}
            if not qs.open:     # no engine event will tell the statistics
                await ctx.run(calls.execute(stats.not_queued(req.node, req.tenant_id, queue, req.call_id, req.now)))
            if not qs.open and qs.closed_target.startswith("+"):
                extra.update(await closed_leg(ctx, req, qs.closed_target))
        if d.admit and kind in divert.LOGO_KINDS:
            r = await ctx.run_steps(divert.routing(req.tenant_id, kind, target, req.callee, req.now))
            if kind in ("account", "group"):
                more, _ = await stage_vars(ctx, req, d.max_seconds, r.stages[0] if r.stages else None, 1,
                                           r.leg_account, 0)
                extra.update({V.EXT_CALLER_ID: "", **more})
            # Asterisk's Playback takes the file without its extension (it picks the format)
            extra[V.LOGO] = media.file_path(ctx.logo_dir, req.tenant_id, "logo", *r.logo, 8000, ext=False) \
                if r.logo else ""
    except (ValueError, psycopg.Error):
        await _release(ctx, req, d)
        raise
    log.info("inbound call=%s tenant=%s target=%s:%s caller=%s admit=%s reason=%s%s", req.call_id, req.tenant_id,
             kind, target, req.caller, d.admit, d.reason,
             f" queue_open={extra[V.QUEUE_OPEN]}" if V.QUEUE_OPEN in extra else "")
    await _answer(request, ctx, req, d, extra)


async def _answer(request: Request, ctx: Context, req: CallRequest, d: Decision,
                  extra: dict[str, str] | None = None) -> None:
    """Send the decision; when that fails for an admitted call (a value the
    dialplan cannot take), the call is refused — and its line and money
    given back at once instead of when the reservation expires."""
    try:
        await _apply(request, d, extra)
    except ValueError:
        await _release(ctx, req, d)
        raise


async def _release(ctx: Context, req: CallRequest, d: Decision) -> None:
    if d.admit:
        s = await ctx.run(calls.settle(req.node, req.call_id, 0))
        await ctx.run(calls.settle_legs(req.node, req.call_id, 0, ""))
        log.warning("call=%s admitted but not executable: released (%s)", req.call_id, s.status)


async def stage_vars(ctx: Context, req: CallRequest, limit: int, stage: divert.Stage | None, n: int,
                     account: str | None, placed: int) -> tuple[dict[str, str], int]:
    """Stage ``n`` as dialplan variables.  Each external target is an
    outbound leg of the tenant, decided and reserved when its stage starts,
    with the forwarding ``account``'s settings (a group's: the main
    account's) as ``<id>:leg``, ``<id>:leg2`` — a refused one is left out
    (logged).  Returns the variables and the legs placed so far."""
    out: dict[str, str] = {}
    externals = []
    for e164 in stage.externals if stage else ():
        leg, ld = await ctx.run_admission(calls.admit_leg(req, e164, ctx.tariffs, account=account,
                                                          suffix=calls.leg_suffix(placed)))
        log.info("leg call=%s tenant=%s callee=%s admit=%s reason=%s max=%s", leg.call_id, req.tenant_id, e164,
                 ld.admit, ld.reason, ld.max_seconds)
        if ld.admit:
            placed += 1
            externals.append(dial_string(ld))
            limit = min(limit, ld.max_seconds) if limit else ld.max_seconds
            out[V.EXT_CALLER_ID] = ld.caller_id
    prefix = f"{V.STAGE}{n}_"
    out.update({prefix + "ACCOUNTS": "&".join(stage.accounts) if stage else "",
                prefix + "EXTERNAL": "&".join(externals),
                prefix + "SECONDS": str(stage.seconds if stage else 0), prefix + "MAX": str(limit)})
    if placed:
        out[V.LEG] = "1"
    return out, placed


_FAX_FILE = re.compile(r"[0-9]{1,20}\.[0-9]{1,10}\.tif")


async def fax(request: Request, ctx: Context) -> None:
    """agi://…/fax,<tenant>,<fax box>,<file>,<FAXOPT(status)>,<pages>,<rate>,<station>,<statusstr>:
    ReceiveFAX ended (the hangup handler of the fax call): the TIFF becomes
    a PDF mailed to the fax box through the outbox (fax.inbound)."""
    from ..fax import inbound as fax_in
    h = request.headers
    name = _arg(h, 3)
    if not _FAX_FILE.fullmatch(name) or name != h.get("agi_uniqueid", "") + ".tif":
        raise ValueError(f"fax file: {name[:40]!r} is not this call's")
    pages = _arg(h, 5)
    rate = _arg(h, 6)
    r = fax_in.Received(node=h[NODE], call_id=h.get("agi_uniqueid", ""), tenant_id=int(_arg(h, 1)),
                        faxbox=_arg(h, 2), caller=_caller(h), success=_arg(h, 4) == "SUCCESS",
                        pages=int(pages) if pages.isdigit() else 0, result=_arg(h, 8),
                        bit_rate=int(rate) if rate.isdigit() else None, remote_station=_arg(h, 7))
    path = f"{ctx.fax_read_dir}/{name}"
    result = await asyncio.to_thread(_record_fax, ctx.dsn, r, path)
    log.info("fax call=%s tenant=%s box=%s status=%s pages=%s", r.call_id, r.tenant_id, r.faxbox,
             result["status"], result["pages"])


def _record_fax(dsn: str, r: Any, path: str) -> dict[str, object]:
    from ..fax import inbound as fax_in
    try:
        with open(path, "rb") as f:
            tiff: bytes | None = f.read()
    except OSError:
        tiff = None            # nothing arrived: the mail says so
    with psycopg.connect(dsn, row_factory=dict_row, connect_timeout=5) as conn, conn.transaction():
        return fax_in.received(conn, r, tiff)


async def fax_out(request: Request, ctx: Context) -> None:
    """agi://…/fax_out,<tenant>,<job>: the dialling half of a fax job's call.
    An outbound leg of the tenant (zones, rate, money, a line: calls.admit_leg
    as ``<id>:leg``, settled by the hangup handler), presenting the job's
    number — one of the tenant's own, checked when it was queued."""
    h = request.headers
    tenant, job_id = int(_arg(h, 1)), int(_arg(h, 2))
    from ..fax.outbound import sending_job
    job = await ctx.run(sending_job(tenant, job_id))
    if job is None:
        raise ValueError(f"fax job {job_id} of tenant {tenant} is not being sent")
    base = CallRequest(direction="out", tenant_id=tenant, account="", caller=job["from_number"],
                       callee=job["to_number"], engine="asterisk", node=h[NODE], call_id=h.get("agi_uniqueid", ""))
    leg, d = await _leg(ctx, base, job["to_number"])
    if d.admit:
        d = replace(d, caller_id=job["from_number"])
    await _answer(request, ctx, leg, d, {V.LEG: "1"} if d.admit else None)


async def fax_result(request: Request, ctx: Context) -> None:
    """agi://…/fax_result,<job>,<FAX|DIAL|REFUSED>,<status>[,<pages>,<text>]"""
    from ..fax import outbound as fax_out_mod
    h = request.headers
    pages = _arg(h, 4)
    state = await asyncio.to_thread(_fax_result_sync, ctx.dsn, int(_arg(h, 1)), _arg(h, 2), _arg(h, 3),
                                    int(pages) if pages.isdigit() else 0, _arg(h, 5), fax_out_mod)
    log.info("fax job=%s %s %s -> %s", _arg(h, 1), _arg(h, 2), _arg(h, 3), state)


def _fax_result_sync(dsn: str, job: int, kind: str, status: str, pages: int, text: str, mod: Any) -> str:
    with psycopg.connect(dsn, row_factory=dict_row, connect_timeout=5) as conn, conn.transaction():
        return str(mod.result(conn, job, kind, status, pages, text))


async def next_stage(request: Request, ctx: Context) -> None:
    """agi://…/next_stage,<tenant>,<target kind>,<target>,<DIALSTATUS of stage 1>:
    stage 1 ended unanswered; the plan is read again — a change made while
    the call rang applies to its next leg — and stage 2 runs when the plan
    has one that this outcome starts (divert.goes_on)."""
    h = request.headers
    kind, target, status = _arg(h, 2), _arg(h, 3), _arg(h, 4)
    req = CallRequest(direction="in", tenant_id=int(_arg(h, 1)), account=target if kind == "account" else "",
                      caller=_caller(h), callee=h.get("agi_extension", ""), engine="asterisk", node=h[NODE],
                      call_id=h.get("agi_uniqueid", ""))
    r = await ctx.run_steps(divert.routing(req.tenant_id, kind, target, req.callee, dt.datetime.now(dt.UTC)))
    outcome = divert.OUTCOMES["asterisk"].get(status, "failed")
    call = await ctx.run(calls.call_limit_and_legs(req.node, req.call_id))
    go = call is not None and len(r.stages) > 1 and divert.goes_on(r.stages[1].after, outcome)
    values = {V.STAGE + "2_GO": "1" if go else "0"}
    if go and call is not None:
        more, _ = await stage_vars(ctx, req, call[0], r.stages[1], 2, r.leg_account, call[1])
        values.update(more)
    log.info("next stage call=%s tenant=%s target=%s:%s after=%s go=%s", req.call_id, req.tenant_id, kind, target,
             status, go)
    await _set(request, values)


async def queue_result(request: Request, ctx: Context) -> None:
    """agi://…/queue_result,<tenant>,<queue>,<QUEUESTATUS>,<seconds in Queue()>"""
    h = request.headers
    tenant, target, status, waited = int(_arg(h, 1)), _arg(h, 2), _arg(h, 3), _arg(h, 4)
    ops = stats.queue_result(h[NODE], tenant, hours.queue_of(target, tenant), h.get("agi_uniqueid", ""), status,
                             int(waited) if waited.isascii() and waited.isdigit() else 0,
                             dt.datetime.now(dt.UTC))
    await ctx.run(calls.execute(ops))
    log.info("queue result call=%s tenant=%s queue=%s status=%s waited=%s", h.get("agi_uniqueid"), tenant, target,
             status, waited)


async def agent_leg(request: Request, ctx: Context) -> None:
    """agi://…/agent_leg,<tenant>,<number>: app_queue rings an agent on an
    external number — an outbound leg of the tenant (``<uniqueid>:leg``,
    settled by the hangup handler)."""
    h = request.headers
    base = CallRequest(direction="out", tenant_id=int(_arg(h, 1)), account="", caller=_caller(h),
                       callee=_arg(h, 2), engine="asterisk", node=h[NODE], call_id=h.get("agi_uniqueid", ""))
    leg, d = await _leg(ctx, base, _arg(h, 2))
    await _answer(request, ctx, leg, d, {V.LEG: "1"})


async def _leg(ctx: Context, req: CallRequest, callee: str) -> tuple[CallRequest, Decision]:
    leg, d = await ctx.run_admission(calls.admit_leg(req, callee, ctx.tariffs),
                                     again=lambda: calls.admit_leg(req, callee, ctx.tariffs))
    log.info("leg call=%s tenant=%s callee=%s admit=%s reason=%s max=%s", leg.call_id, leg.tenant_id, callee,
             d.admit, d.reason, d.max_seconds)
    return leg, d


async def closed_leg(ctx: Context, req: CallRequest, target: str) -> dict[str, str]:
    """A closed queue's external target is an outbound call of the tenant:
    the same decision (zones, rate, money, a line), its own reservation
    (call id ``<id>:leg``, settled by the hangup handler)."""
    _, d = await _leg(ctx, req, target)
    if not d.admit:
        return {V.CLOSED_DIAL: ""}
    return {V.CLOSED_DIAL: dial_string(d), V.CLOSED_MAX: str(d.max_seconds), V.CLOSED_CALLER_ID: d.caller_id,
            V.LEG: "1"}


def closed_dial(target: str) -> str:
    if not target:
        return ""
    return f"PJSIP/{target}@carrier" if target.startswith("+") else f"PJSIP/{target}"


async def hangup(request: Request, ctx: Context) -> None:
    """agi://…/hangup,<answered seconds>[,1: and the legs it placed[,<answered peer>]]: settle the call."""
    h = request.headers
    raw = _arg(h, 1)
    billsec = int(raw) if raw.isascii() and raw.isdigit() else 0
    uid = h.get("agi_uniqueid", "")
    s = await ctx.settle(h[NODE], uid, billsec)
    log.info("hangup call=%s billsec=%s status=%s charged=%s", uid, billsec, s.status, s.charged_cents)
    if _arg(h, 2) != "1":
        return
    # the legs dustel placed for this call: the one answered (DIALEDPEERNUMBER) talked ANSWEREDTIME
    peer = _arg(h, 3)
    if not peer:     # the agent's leg (a Local channel): the one leg, for ANSWEREDTIME
        legs = [(uid + calls.LEG, await ctx.settle(h[NODE], uid + calls.LEG, billsec))]
    else:
        legs = await ctx.run(calls.settle_legs(h[NODE], uid, billsec, peer))
    for cid, leg in legs:
        if leg.status == "settled":
            log.info("hangup call=%s billsec=%s status=%s charged=%s", cid, leg.billsec, leg.status,
                     leg.charged_cents)


TONE_OK = "!880/150,!0/100,!880/150"           # confirmation: two short high beeps
TONE_ERROR = "!425/400,!0/200,!425/400,!0/200,!425/400"   # refusal: three long low tones
PROMPT_TIMEOUT_MS = 6000


async def _digits(request: Request) -> str | None:
    """Prompt (a beep) and read up to 8 digits ending with #; None on timeout/hangup."""
    res = await request.send_command(f"GET DATA beep {PROMPT_TIMEOUT_MS} {codes.MAX_DIGITS}")
    value = res.get("result", ("", ""))[0] if isinstance(res, dict) and "error" not in res else ""
    return value if value.isascii() and value.isdigit() else None


async def _tone(request: Request, ok: bool) -> None:
    await request.send_command(f'EXEC Playtones "{TONE_OK if ok else TONE_ERROR}"')
    await request.send_command("EXEC Wait 1")


async def agent(request: Request, ctx: Context) -> None:
    """agi://…/agent,<tenant>,<account>: the agent star codes (*51–*54).
    Missing queue or PIN is prompted (one try each); every change is
    stored first, then applied with app_queue applications, then confirmed
    with a tone; a refusal plays the error tone and changes nothing."""
    h = request.headers
    tenant, account, dialed = int(_arg(h, 1)), _arg(h, 2), h.get("agi_extension", "")
    try:
        req = codes.parse(dialed, ctx.star_codes)
    except ValueError as exc:
        log.info("agent tenant=%s account=%s refused: %s", tenant, account, exc)
        await _tone(request, False)
        return
    await request.send_command("ANSWER")
    out = await ctx.run(agents.star(tenant, account, "", req))
    for _ in range(2):
        if out.reason not in ("need_queue", "need_pin"):
            break
        entered = await _digits(request)
        if entered is None:
            break
        req = replace(req, queue=entered) if out.reason == "need_queue" else replace(req, pin=entered)
        out = await ctx.run(agents.star(tenant, account, "", req))
    for change in out.changes:
        for app, arg in service.ast_apps(change):
            await request.send_command(f'EXEC {app} "{arg}"')
    log.info("agent tenant=%s account=%s action=%s queue=%s ok=%s reason=%s agent=%s", tenant, account,
             req.action, req.queue, out.ok, out.reason, out.agent_id)
    await _tone(request, out.ok)


async def agent_hotline(request: Request, ctx: Context, tenant: int, queue: str, caller: str) -> None:
    """An agent's external number called its queue's hotline: PIN prompt,
    then login (or logout when logged in), a tone, and the call ends."""
    await request.send_command("ANSWER")
    pin = await _digits(request)
    out = agents.Outcome(False, "no_pin")
    if pin is not None:
        out = await ctx.run(agents.hotline(tenant, queue, caller, pin))
        for change in out.changes:
            for app, arg in service.ast_apps(change):
                await request.send_command(f'EXEC {app} "{arg}"')
    log.info("agent hotline tenant=%s queue=%s caller=%s ok=%s reason=%s changes=%s", tenant, queue, caller,
             out.ok, out.reason, ",".join(c.op for c in out.changes))
    await _tone(request, out.ok)
    await _set(request, {V.ACTION: "agent", V.CAUSE: "16", V.REASON: out.reason})


Handler = Callable[[Request, Context], Awaitable[None]]
ROUTES: dict[str, Handler] = {V.ROUTE_OUTBOUND: outbound, V.ROUTE_INBOUND: inbound, V.ROUTE_HANGUP: hangup,
                              V.ROUTE_AGENT: agent, V.ROUTE_QUEUE_RESULT: queue_result,
                              V.ROUTE_AGENT_LEG: agent_leg, V.ROUTE_NEXT_STAGE: next_stage, V.ROUTE_FAX: fax,
                              V.ROUTE_FAX_OUT: fax_out, V.ROUTE_FAX_RESULT: fax_result}
REFUSE_ON_ERROR = {V.ROUTE_OUTBOUND, V.ROUTE_INBOUND, V.ROUTE_AGENT_LEG, V.ROUTE_FAX_OUT}


def node_of(names: tuple[str, ...], query: str) -> str | None:
    """The node a request comes from: the one configured at its source
    address; where several share it, the one the request names
    (``?node=<name>``: the dialplan's ``${SYSTEMNAME}``) — believed only for
    a node at that address.  None: refused."""
    named = parse_qs(query).get("node", [""])[0]
    if named:
        return named if named in names else None
    return names[0] if len(names) == 1 else None


class DustelAGI(Application):
    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.ctx = ctx
        for path, handler in ROUTES.items():
            self.add_route(path, self._bind(path, handler))

    def _bind(self, path: str, handler: Handler) -> Callable[[Request], Awaitable[None]]:
        async def route(request: Request) -> None:
            try:
                await handler(request, self.ctx)
            except (ValueError, KeyError, calls.UnknownAccount, psycopg.Error, PoolTimeout) as exc:
                log.warning("route=%s refused: %s: %s", path, type(exc).__name__, exc)
                if path in REFUSE_ON_ERROR:
                    await _set(request, refusal(INTERNAL_ERROR))
        route.__name__ = handler.__name__
        return route

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\n\n"), REQUEST_TIMEOUT)
            except asyncio.LimitOverrunError:
                log.warning("agi request over %s bytes dropped", MAX_REQUEST_BYTES)
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                log.warning("agi request incomplete, dropped")
                return
            peer = writer.get_extra_info("peername")
            headers = parse_request(raw)
            script, _, query = headers.get("agi_network_script", "").partition("?")
            node = node_of(self.ctx.node_sets.get(peer[0] if peer else "", ()), query)
            if node is None:
                log.warning("agi request from %s refused: not a configured engine node", peer)
                return
            headers[NODE] = node
            route = self._route.get(script)
            if route is None:
                log.warning("agi request for unknown route %r", script)
                return
            try:
                await route(Request(app=self, headers=headers, reader=reader, writer=writer))
            except (ConnectionError, asyncio.IncompleteReadError):
                log.warning("agi connection lost during route=%s", script)
        finally:
            writer.close()


async def serve(dsn: str, host: str, port: int, node: str, *, ready: asyncio.Event | None = None,
                min_conn: int = 2, max_conn: int = 8, nodes: Mapping[str, str] | None = None,
                star_codes: Mapping[str, str] | None = None, logo_dir: str | None = None,
                fax_read_dir: str | None = None) -> None:
    """Run the FastAGI server until cancelled; expire stale reservations every minute."""
    loop = asyncio.get_running_loop()
    async with open_pool(dsn, min_conn, max_conn) as pool:
        ctx = Context(pool, node, nodes=nodes)
        if star_codes:
            ctx.star_codes = dict(star_codes)
        if logo_dir:
            ctx.logo_dir = logo_dir
        if fax_read_dir:
            ctx.fax_read_dir = fax_read_dir
        ctx.dsn = dsn
        app = DustelAGI(ctx, loop)
        server = await asyncio.start_server(app.handler, host, port, limit=MAX_REQUEST_BYTES,
                                            backlog=LISTEN_BACKLOG)
        log.info("fastagi listening on %s:%s nodes=%s", host, port,
                 ",".join(f"{'+'.join(n)}@{ip}" for ip, n in sorted(ctx.node_sets.items())))
        if ready is not None:
            ready.set()

        task = asyncio.create_task(expire_loop(ctx))
        try:
            async with server:
                await server.serve_forever()
        finally:
            task.cancel()
            ctx.close()
