"""The controller's Asterisk side (asyncio process, panoramisk).

Per node: panoramisk's Manager logs in and reconnects by itself; on every
login dustel rebuilds the live state from the engine (``CoreShowChannels``,
``PJSIPShowContacts``) and then applies the events queued meanwhile, in
order, one transaction each.  The reconnect delay doubles from 1 s to 10 s
while the node stays away.  An event the database refuses is logged and
skipped."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from panoramisk import Manager
from psycopg.rows import dict_row

from ..callpath.calls import Q
from ..queue import agents, service, stats
from ..wire import commands
from . import state
from .lease import CHECK_SECONDS, RETRY_SECONDS, AsyncLease, Reach

log = logging.getLogger("dustel.controller.ami")

REBUILD = object()


class _Manager(Manager):  # type: ignore[misc]
    """panoramisk's Manager reconnects on its own after every close; one
    whose lease is gone must stay closed."""
    stopped = False

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        return None if self.stopped else super().connect(*args, **kwargs)


class AMINode:
    def __init__(self, name: str, host: str, port: int, username: str, secret: str, dsn: str) -> None:
        self.name, self.dsn = name, dsn
        self.host, self.port, self.username, self.secret = host, port, username, secret
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.logins = 0
        self.logged_in = False
        self.manager = self._manager()

    def _manager(self) -> _Manager:
        m = _Manager(host=self.host, port=self.port, username=self.username, secret=self.secret,
                     events="call,system,agent", ping_delay=5, ping_interval=5, reconnect_timeout=1,
                     on_login=self._on_login, on_disconnect=self._on_disconnect,
                     log=logging.getLogger("dustel.controller.panoramisk"))
        m.register_event("*", self._on_event)
        return m

    def _on_login(self, manager: Manager) -> None:
        self.logins += 1
        self.logged_in = True
        manager.reconnect_timeout = 1
        log.info("node=%s logged in", self.name)
        self.queue.put_nowait(REBUILD)

    def _on_disconnect(self, manager: Manager, exc: Exception | None) -> None:
        self.logged_in = False
        manager.reconnect_timeout = min(manager.reconnect_timeout * 2, 10)
        log.warning("node=%s connection lost (%s); retrying in %s s", self.name, exc, manager.reconnect_timeout)

    def _on_event(self, manager: Manager, event: Mapping[str, Any]) -> None:
        self.queue.put_nowait({str(k): str(v) for k, v in dict(event).items()})

    async def apply(self, ops: list[Q]) -> bool:
        if not ops:
            return True
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(self.dsn, row_factory=dict_row,
                                                                  connect_timeout=5)
            async with self.conn.transaction():
                for q in ops:
                    await self.conn.execute(q.sql, q.params)
            return True
        except psycopg.Error as exc:
            log.warning("node=%s: database refused an event's changes (%s); skipped", self.name, exc)
            if self.conn is not None and self.conn.broken:
                self.conn = None
            return False

    async def settle(self, call_id: str) -> None:
        """Bill the call from its CDR too (see esl_node.ESLNode.settle)."""
        from ..callpath.calls import run_async, settle_from_cdr
        try:
            assert self.conn is not None
            st = await run_async(self.conn, settle_from_cdr(self.name, call_id))
        except psycopg.Error as exc:
            log.warning("node=%s: settling call=%s from its CDR failed: %s", self.name, call_id, exc)
            return
        if st.status == "settled":
            log.info("node=%s call=%s settled from the CDR: billsec=%s charged=%s", self.name, call_id,
                     st.billsec, st.charged_cents)

    async def _now(self) -> Any:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(self.dsn, row_factory=dict_row,
                                                                  connect_timeout=5)
            async with self.conn.transaction():
                return (await (await self.conn.execute(state.NOW)).fetchone())["now"]  # type: ignore[index]
        except psycopg.Error as exc:
            log.warning("node=%s: no database time for the rebuild: %s", self.name, exc)
            return None

    async def settle_lost(self, alive: list[str], before: Any) -> None:
        """Money held by calls the engine lost, settled now (see
        esl_node.ESLNode.settle_lost: the same flow, calls.settle_lost)."""
        from ..callpath.calls import run_async, settle_lost
        try:
            assert self.conn is not None
            done = await run_async(self.conn, settle_lost(self.name, alive, before))
        except psycopg.Error as exc:
            log.warning("node=%s: settling the calls lost meanwhile failed (they expire): %s", self.name, exc)
            return
        for call_id, had_cdr, st in done:
            log.info("node=%s call=%s lost with the engine: %s billsec=%s charged=%s", self.name, call_id,
                     "settled from the CDR" if had_cdr else "no CDR, released", st.billsec, st.charged_cents)

    async def is_tls_account(self, check: Q) -> bool:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(self.dsn, row_factory=dict_row,
                                                                  connect_timeout=5)
            async with self.conn.transaction():
                return await (await self.conn.execute(check.sql, check.params)).fetchone() is not None
        except psycopg.Error as exc:
            log.warning("node=%s: could not read an account's TLS mode: %s", self.name, exc)
            return False

    async def refuse_plain(self, user: str, uri: str, contacts: list[dict[str, str]] | None = None) -> None:
        """A TLS account's contact over UDP/TCP (F-03): drop it from Asterisk."""
        check = state.tls_refused(user, uri)
        if check is None or not await self.is_tls_account(check):
            return
        if contacts is None:
            contacts = await self._list({"Action": "PJSIPShowContacts"}, "ContactList")
        for c in contacts:
            if c.get("Uri") == uri and (c.get("Aor") == user or c.get("Endpoint") == user):
                await asyncio.wait_for(self.manager.send_action(commands.ast_drop_contact(c.get("ObjectName", ""))),
                                       10)
                log.warning("node=%s: refused registration user=%s contact=%s reason=tls_required", self.name,
                            user, uri)
                return
        log.debug("node=%s: user=%s contact=%s: gone already", self.name, user, uri)

    async def rebuild(self) -> None:
        before = await self._now()               # the engine's list is younger than this
        channels = await self._list({"Action": "CoreShowChannels"}, "CoreShowChannel")
        contacts = await self._list({"Action": "PJSIPShowContacts"}, "ContactList")
        await self.apply(state.ami_rebuild(self.name, channels, contacts))
        if before is not None:
            await self.settle_lost([c.get("Uniqueid", "") for c in channels], before)
        for c in contacts:
            await self.refuse_plain(c.get("Endpoint") or c.get("Aor", ""), c.get("Uri", ""), contacts)
        await self.reapply_queues()
        log.info("node=%s live state rebuilt: %s channels, %s contacts", self.name, len(channels), len(contacts))

    async def reapply_queues(self) -> None:
        """The database is the truth: tell a (restarted) Asterisk who is logged in."""
        from ..callpath.calls import run_async
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(self.dsn, row_factory=dict_row,
                                                                  connect_timeout=5)
            changes = await run_async(self.conn, agents.current())
        except psycopg.Error as exc:
            log.warning("node=%s: could not read agent logins: %s", self.name, exc)
            return
        for change in changes:
            for action in service.ast_actions(change):
                await asyncio.wait_for(self.manager.send_action(action), 10)

    async def _list(self, action: dict[str, str], item: str) -> list[dict[str, str]]:
        # panoramisk detects the event list itself; "No Contacts found" is a single Error response
        res = await asyncio.wait_for(self.manager.send_action(action), 10)
        msgs = res if isinstance(res, list) else [res]
        return [{str(k): str(v) for k, v in dict(m).items()} for m in msgs if m.get("Event") == item]

    async def run(self) -> None:
        """Follow the node while this controller holds its lease (lease.py);
        when the lease is lost, stop, and wait to get it again."""
        lease = AsyncLease(self.dsn, self.name)
        while True:
            await lease.acquire()
            log.info("node=%s: lease taken, following it", self.name)
            self.queue = asyncio.Queue()
            self.manager = self._manager()
            self.manager.connect()
            worker = asyncio.create_task(self.follow())
            reach = Reach()
            gave_up = False
            try:
                while await lease.held():
                    await asyncio.sleep(CHECK_SECONDS)
                    if self.logged_in:
                        reach.ok()
                    else:
                        reach.failed()
                    if reach.give_up():
                        gave_up = True
                        break
            finally:
                if gave_up:
                    log.warning("node=%s out of reach for %.0f s: lease given up for another controller",
                                self.name, reach.limit)
                else:
                    log.warning("node=%s: lease lost, no longer following it", self.name)
                self.manager.stopped = True
                self.manager.close()
                self.logged_in = False
                worker.cancel()
            if gave_up:
                await lease.release()
                await asyncio.sleep(2 * RETRY_SECONDS)

    async def follow(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                if item is REBUILD:
                    await self.rebuild()
                else:
                    applied = await self.apply(state.on_ami_event(self.name, item) + stats.from_ami(self.name, item))
                    if applied and item.get("Event") == "Hangup":
                        await self.settle(item.get("Uniqueid", ""))
                    elif item.get("Event") == "ContactStatus" and item.get("ContactStatus") not in ("", "Removed"):
                        # a new contact shows first as NonQualified / Created / Reachable, as qualify says
                        await self.refuse_plain(item.get("EndpointName") or item.get("AOR", ""), item.get("URI", ""))
            except (ValueError, KeyError, TimeoutError, ConnectionError) as exc:
                log.warning("node=%s: event skipped: %s: %s", self.name, type(exc).__name__, exc)
            except Exception:     # noqa: BLE001 — one bad event must not stop the node
                log.exception("node=%s: event skipped", self.name)


async def run(nodes: list[tuple[str, str, int, str, str]], dsn: str) -> None:
    await asyncio.gather(*(AMINode(n, h, p, u, s, dsn).run() for n, h, p, u, s in nodes))
