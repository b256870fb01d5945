"""Dialplan fetch server (FreeSWITCH, ``mod_xml_curl``): the decision core over HTTP.

With ``fs_decision = fetch`` FreeSWITCH asks for the dialplan of every call
it routes (``xml_curl.conf.xml``: binding ``dialplan``, ``POST /dialplan``,
recording 12) and runs the document it gets: no thread, socket or event
stream per call in the engine.  Run as ``dustel xmlcurl serve``, which execs
``python -m dustel.agi.xmlcurl`` with the DSN and the engine nodes in its
environment (never argv): an asyncio process on uvloop — the FastAGI
server's machinery (``aio``: the pool, batched admission) — with uvicorn's
HTTP/1.1 on httptools (keep-alive, pipelining, a malformed request answered
400, no proxy headers: the client address is the TCP peer's).  It never
imports gevent; the decision is ``callpath``'s, the applications
``agi.freeswitch``'s, as on the outbound socket.

An answer is one of recording 12's three: a ``dialplan`` document with the
decision's applications (the time limit armed for the answer, the bridge),
the same with a refusal (``respond`` with the refusal table's code), or
``not found`` for what one document cannot carry (``fetched_channel``,
``carriers_call``: what keeps the socket's round trips) —
FreeSWITCH then routes the call with its static dialplan, which is also what
it does when this server is down, slow (12b: after the binding's timeout) or
answers anything but 200: the rendered dialplan's socket, then the refusal.
The call is settled by the controller from the hangup events it follows
anyway (``calls.settle_from_cdr`` on CHANNEL_HANGUP_COMPLETE): this server
keeps nothing per call.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import psycopg
import uvicorn
from psycopg_pool import PoolTimeout

from ..callpath import calls, divert
from ..callpath import variables as V
from ..callpath.policy import INTERNAL_ERROR, Decision
from ..config import LISTEN_BACKLOG
from ..provisioning import media
from ..render import context
from ..wire import fetch
from . import freeswitch as fs
from .aio import Context, expire_loop, open_pool
from .workers import Service, parser, this_process

log = logging.getLogger("dustel.xmlcurl")

PATH = V.FETCH_PATH
MAX_BODY = 65536          # a request is ~6 KB (recording 12: 158 fields)

ASGI = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
                Awaitable[None]]


async def carriers_call(ctx: Context, form: Mapping[str, str], dest: str) \
        -> tuple[Mapping[str, str], list[fs.Action], divert.Stage, str] | None:
    """A carrier's call to a number whose call the fetched dialplan runs by
    itself — an account or a ring group whose plan, read now, is one stage
    of accounts — as (channel, the number extension's prelude, the stage,
    the sound logo); None: the static dialplan (its socket) routes it."""
    found = await ctx.run_steps(context.fs_routed(dest))
    if found is None or found[0]["kind"] not in ("account", "group"):
        return None
    n, ddi = found
    r = await ctx.run_steps(divert.routing(n["tenant_id"], n["kind"], n["target"], dest, dt.datetime.now(dt.UTC)))
    stage = fs.single_stage(r.stages)
    if stage is None:
        return None
    prelude = context.fs_number_actions(n, ddi)
    logo = media.file_path(ctx.logo_dir, n["tenant_id"], "logo", *r.logo, 48000) if r.logo else ""
    return fs.number_channel(form, prelude, dest), prelude, stage, logo


async def answer(ctx: Context, form: Mapping[str, str], node: str) -> bytes:
    """The document for one fetch: ``node`` is the engine node it came from
    ('' : the request's own switch name, a one-box demo)."""
    call_id = form.get("Unique-ID") or ""
    d: Decision = INTERNAL_ERROR
    data: Mapping[str, str] | None = None
    try:
        data = fs.fetched_channel(form)
        stage, logo = None, ""
        if data is not None:
            prelude = fs.phone_prelude(data)
        elif (dest := fs.fetched_number(form)) is not None and (got := await carriers_call(ctx, form, dest)):
            data, prelude, stage, logo = got
        else:
            return fetch.NOT_FOUND
        req = replace(fs.request_from(data), node=node or fs.node_of(data))
        d = await ctx.admit(req)
        acts = fs.fetch_actions(d, data, prelude, stage, logo)
    except (ValueError, calls.UnknownAccount, psycopg.Error, PoolTimeout) as exc:
        log.warning("fetch call=%s refused: %s: %s", call_id, type(exc).__name__, exc)
        if d.admit:      # admitted, but nothing can be executed: its line and money back at once
            await ctx.settle(req.node, req.call_id, 0)
        d, acts = INTERNAL_ERROR, fs.actions(INTERNAL_ERROR, {})
        data = data if data is not None else form
    log.info("fetch call=%s tenant=%s account=%s callee=%s admit=%s reason=%s max=%s", call_id,
             data.get("variable_dustel_tenant"), data.get("variable_user_name") or data.get("variable_dustel_target"),
             data.get("Caller-Destination-Number"), d.admit, d.reason, d.max_seconds)
    context_name = data.get("Caller-Context") or form.get("Hunt-Context") or ""
    dest = fs.fetched_number(form) if context_name == "public" else data.get("Caller-Destination-Number")
    return fetch.document(context_name, f"dustel-{call_id}", dest or "", acts)


async def _respond(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, body: bytes = b"",
                   content_type: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def application(ctx: Context) -> ASGI:
    """The ASGI application: ``POST /dialplan`` from a configured engine node
    (``config.node_sources``, as the other policy servers); anything else 403
    / 404 / 413.  A request that fails unexpectedly is answered 500:
    FreeSWITCH then uses its static dialplan (the safe path)."""
    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                  send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        peer = scope.get("client") or ("", 0)
        node = ctx.nodes.get(peer[0])
        if node is None:
            log.warning("fetch from %s refused: not a configured engine node", peer[0])
            await _respond(send, 403)
            return
        if scope["method"] != "POST" or scope["path"] != PATH:
            await _respond(send, 404)
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > MAX_BODY:
                log.warning("fetch from %s over %s bytes refused", peer[0], MAX_BODY)
                await _respond(send, 413)
                return
            if not msg.get("more_body"):
                break
        try:
            doc = await answer(ctx, fetch.Form(body), node)
        except Exception:      # noqa: BLE001 — the server outlives any request; FreeSWITCH falls back
            log.exception("fetch failed")
            await _respond(send, 500)
            return
        await _respond(send, 200, doc, b"text/xml")
    return app


def listen_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The listening socket, with the policy servers' backlog (``LISTEN_BACKLOG``:
    a burst the kernel queues instead of dropping SYNs); with ``reuse_port``
    every worker process listens on the same port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


async def serve(dsn: str, host: str, port: int, nodes: Mapping[str, str], *, worker: int | None = None,
                min_conn: int = 2, max_conn: int = 8, logo_dir: str = "") -> None:
    """Serve until SIGTERM / SIGINT (uvicorn's graceful shutdown).  ``nodes``:
    source address -> node name of the FreeSWITCH nodes that may fetch ('':
    the request's switch name); ``worker``: one of several processes on the
    port (the first sweeps the expired reservations)."""
    async with open_pool(dsn, min_conn, max_conn) as pool:
        ctx = Context(pool, "", nodes=nodes)
        ctx.logo_dir = logo_dir or ctx.logo_dir       # settings.logo_dir: where the engine reads sound logos
        sock = listen_socket(host, port, reuse_port=worker is not None)
        config = uvicorn.Config(application(ctx), http="httptools", lifespan="off", access_log=False,
                                log_config=None, proxy_headers=False, server_header=False, date_header=False,
                                timeout_keep_alive=5, backlog=LISTEN_BACKLOG)
        server = uvicorn.Server(config)
        log.info("dialplan fetch listening on %s:%s%s worker=%s nodes=%s", host, sock.getsockname()[1], PATH,
                 worker or 0, ",".join(f"{n or '(switch name)'}@{ip}" for ip, n in sorted(ctx.nodes.items())))
        expire = asyncio.create_task(expire_loop(ctx)) if not worker else None
        try:
            await server.serve(sockets=[sock])
        finally:
            if expire is not None:
                expire.cancel()
            ctx.close()
            sock.close()


SERVICE = Service("dustel xmlcurl serve", "dustel.agi.xmlcurl", "dialplan fetch", "DUSTEL_XMLCURL", 8096,
                  "xmlcurl_workers")


def main(argv: list[str] | None = None) -> None:
    import os
    import sys

    import uvloop

    from .. import logs
    ap = parser(SERVICE)
    args = ap.parse_args(argv)
    logs.service(sys.stderr)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)       # dustel's own lines are the log
    mine = this_process(SERVICE, ap, args, list(argv if argv is not None else sys.argv[1:]))
    if mine is None:
        return
    dsn, nodes = mine
    uvloop.run(serve(dsn, args.host, args.port, nodes, worker=args.worker,
                     logo_dir=os.environ.get("DUSTEL_LOGO_DIR", "")))


if __name__ == "__main__":
    main()
