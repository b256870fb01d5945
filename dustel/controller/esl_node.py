"""The controller's FreeSWITCH side (gevent process; start it through
``dustel controller run`` or ``python -m dustel.controller.esl_main``).

Per node: connect to the inbound Event Socket, authenticate, subscribe to
channel, registration and queue events, rebuild the live state from the
engine's own lists while events queue up, then apply every event in its own
transaction.  When the engine goes away: reconnect with exponential backoff
(0.2 s doubling to 10 s) and rebuild again.  A malformed event, or one the
database refuses, is logged and skipped."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import psycopg
from greenswitch.esl import NotConnectedError, OutboundSessionHasGoneAway
from psycopg.rows import dict_row

from ..callpath.calls import Q
from ..queue import agents, service, stats
from ..wire import commands
from ..wire import esl as P
from ..wire.esl_reader import DustelInbound, ESLMessage
from . import state
from .lease import RETRY_SECONDS, Lease, Reach

log = logging.getLogger("dustel.controller.esl")

SUBSCRIBE = ("CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_BRIDGE CHANNEL_HANGUP_COMPLETE HEARTBEAT "
             "CUSTOM sofia::register sofia::unregister sofia::expire callcenter::info")

# other parts hook in here: event name -> handler(node, event) -> ops
EXTRA_HANDLERS: dict[str, Callable[[str, P.Event], list[Q]]] = {"callcenter::info": stats.from_fs}


# FreeSWITCH sends HEARTBEAT every 20 s (switch.conf event-heartbeat-interval):
# nothing at all for this long means a half-open connection
WATCHDOG_SECONDS = 65.0


class ESLNode:
    def __init__(self, name: str, host: str, port: int, password: str, dsn: str,
                 watchdog: float = WATCHDOG_SECONDS) -> None:
        self.name, self.host, self.port, self.password, self.dsn = name, host, port, password, dsn
        self.conn: psycopg.Connection[Any] | None = None
        self.connected = gevent.event.Event()
        self.stats = {"events": 0, "skipped": 0, "connects": 0}
        self.watchdog = watchdog
        self.last_seen = time.monotonic()
        self.esl: DustelInbound | None = None
        # hangups waiting to be settled from their CDRs, by a greenlet of their own in batches
        self._settling: list[str] = []
        self._settle_wake = gevent.event.Event()
        self._settler: gevent.Greenlet | None = None
        self.settle_conn: psycopg.Connection[Any] | None = None

    # ---------------------------------------------------------------- database
    def apply(self, ops: list[Q]) -> bool:
        if not ops:
            return True
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.dsn, row_factory=dict_row, connect_timeout=5)
            with self.conn.transaction():
                for q in ops:
                    self.conn.execute(q.sql, q.params)
            return True
        except psycopg.Error as exc:
            log.warning("node=%s: database refused an event's changes (%s); skipped", self.name, exc)
            self.stats["skipped"] += 1
            if self.conn is not None and self.conn.broken:
                self.conn = None
            return False

    def on_event(self, msg: ESLMessage) -> None:
        ev = msg.data
        self.last_seen = time.monotonic()
        if not isinstance(ev, P.Event):
            return
        self.stats["events"] += 1
        try:
            ops = state.on_fs_event(self.name, ev)
            handler = EXTRA_HANDLERS.get(ev.name)
            if handler is not None:
                ops += handler(self.name, ev)
        except (ValueError, KeyError) as exc:
            log.warning("node=%s: bad %s event skipped: %s", self.name, ev.name, exc)
            self.stats["skipped"] += 1
            return
        if self.apply(ops) and ev.name == "CHANNEL_HANGUP_COMPLETE":
            self.settle(ev.get("Unique-ID"))
        elif ev.name == "sofia::register":
            check = state.tls_refused(ev.get("username") or ev.get("from-user"), ev.get("contact"))
            if check is not None and self.esl is not None and self.query(check):
                # a command from the event greenlet would wait on itself: its own greenlet
                gevent.spawn(self.refuse_plain, self.esl, ev)

    def query(self, q: Q) -> dict[str, Any] | None:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.dsn, row_factory=dict_row, connect_timeout=5)
            with self.conn.transaction():
                return self.conn.execute(q.sql, q.params).fetchone()
        except psycopg.Error as exc:
            log.warning("node=%s: query failed: %s", self.name, exc)
            if self.conn is not None and self.conn.broken:
                self.conn = None
            return None

    def refuse_plain(self, esl: DustelInbound, ev: P.Event) -> None:
        """A TLS account's binding over UDP/TCP (F-03): drop it from the profile."""
        user = ev.get("username") or ev.get("from-user")
        try:
            cmd = commands.fs_drop_registration(ev.get("profile-name"), ev.get("call-id"), user,
                                                ev.get("realm") or ev.get("from-host"))
            esl.send(cmd.decode()[:-2])
        except (ValueError, OSError, NotConnectedError) as exc:
            log.warning("node=%s: could not drop user=%s's plain registration: %s", self.name, user, exc)
            return
        log.warning("node=%s: refused registration user=%s contact=%s reason=tls_required", self.name, user,
                    ev.get("contact"))

    def settle(self, call_id: str) -> None:
        """Bill the call from its CDR too: a settlement the policy server
        lost still happens (a replay or the policy's own one is a no-op) —
        and a call FreeSWITCH ran from a fetched dialplan (issue 32.7) is
        settled here only.  Hangups are settled in batches by a greenlet of
        their own (``calls.settle_from_cdrs``, the step driver on a
        connection of its own), as the policy servers batch theirs: one
        transaction per hangup, after the CDR's, held the money of a busy
        node's calls behind its event queue (bench: 300 fetched calls a
        second, 866 reservations still held seconds after)."""
        self._settling.append(call_id)
        self._settle_wake.set()
        if self._settler is None or self._settler.dead:
            self._settler = gevent.spawn(self._settle_loop)

    def _settle_loop(self, max_batch: int = 64) -> None:
        while True:
            self._settle_wake.wait()
            batch, self._settling = self._settling[:max_batch], self._settling[max_batch:]
            if not self._settling:
                self._settle_wake.clear()
            if batch:
                self._settle_batch(batch)

    def _settle_batch(self, call_ids: list[str]) -> None:
        from ..callpath.calls import POOL_KWARGS, run_steps_sync, settle_from_cdrs
        try:
            if self.settle_conn is None or self.settle_conn.closed:
                self.settle_conn = psycopg.connect(self.dsn, row_factory=dict_row, connect_timeout=5, autocommit=True,
                                                   **POOL_KWARGS)
            done = run_steps_sync(self.settle_conn, settle_from_cdrs(self.name, call_ids))
        except psycopg.Error as exc:
            log.warning("node=%s: settling %s calls from their CDRs failed (they expire, or the next rebuild "
                        "settles them): %s", self.name, len(call_ids), exc)
            if self.settle_conn is not None and self.settle_conn.broken:
                self.settle_conn = None
            return
        for call_id, st in done:
            if st.status == "settled":
                log.info("node=%s call=%s settled from the CDR: billsec=%s charged=%s", self.name, call_id,
                         st.billsec, st.charged_cents)
            else:
                log.debug("node=%s call=%s: %s", self.name, call_id, st.status)

    def settle_lost(self, alive: list[str], before: Any) -> None:
        """Money held by calls the engine lost (a crash, a restart) is
        settled from their CDRs now, not at their expiry (calls.settle_lost)."""
        from ..callpath.calls import run_sync, settle_lost
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.dsn, row_factory=dict_row, connect_timeout=5)
            done = run_sync(self.conn, settle_lost(self.name, alive, before))
        except psycopg.Error as exc:
            log.warning("node=%s: settling the calls lost meanwhile failed (they expire): %s", self.name, exc)
            if self.conn is not None and self.conn.broken:
                self.conn = None
            return
        for call_id, had_cdr, st in done:
            log.info("node=%s call=%s lost with the engine: %s billsec=%s charged=%s", self.name, call_id,
                     "settled from the CDR" if had_cdr else "no CDR, released", st.billsec, st.charged_cents)

    # ------------------------------------------------------------- connection
    def run_forever(self) -> None:
        """Follow the node for ever: every failure — the engine, the network,
        the database — is logged and retried with backoff; nothing ends this
        node's follower while the process lives."""
        backoff = 0.2
        lease = Lease(self.dsn, self.name)
        reach = Reach()
        waiting = False
        while True:
            if not lease.try_acquire():          # another controller follows the node (lease.py)
                if not waiting:
                    log.info("node=%s followed by another controller; standing by", self.name)
                    waiting = True
                gevent.sleep(RETRY_SECONDS)
                continue
            waiting = False
            try:
                self.session(lease)
                backoff = 0.2
            except (OSError, NotConnectedError, OutboundSessionHasGoneAway, ValueError) as exc:
                log.warning("node=%s %s:%s: %s", self.name, self.host, self.port, exc or type(exc).__name__)
            except Exception:      # noqa: BLE001 — e.g. the database down during a rebuild
                log.exception("node=%s: follower failed; reconnecting", self.name)
            if self.connected.is_set():
                reach.ok()
            else:
                reach.failed()
            self.connected.clear()
            if reach.give_up():
                log.warning("node=%s out of reach for %.0f s: lease given up for another controller", self.name,
                            reach.limit)
                lease.release()
                gevent.sleep(2 * RETRY_SECONDS)
                continue
            gevent.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    def session(self, lease: Lease | None = None) -> None:
        esl = DustelInbound(self.host, self.port, self.password, timeout=5)
        esl.connect()
        self.esl = esl
        self.stats["connects"] += 1
        try:
            esl._process_esl_event_queue = False      # events wait until the state is rebuilt
            esl.register_handle("*", self.on_event)
            for name in ("CHANNEL_HANGUP_COMPLETE", "HEARTBEAT"):
                esl.register_handle(name, self.on_event)
            reply = esl.send("event plain " + SUBSCRIBE)
            if not reply.data.startswith("+OK"):
                raise ValueError(f"subscription refused: {reply.data}")
            self.rebuild(esl)
            esl._process_esl_event_queue = True
            self.connected.set()
            log.info("node=%s connected to %s:%s; live state rebuilt", self.name, self.host, self.port)
            self.last_seen = time.monotonic()
            while esl.connected:
                gevent.sleep(0.1)
                if time.monotonic() - self.last_seen > self.watchdog:
                    log.warning("node=%s: nothing heard for %.0f s (no HEARTBEAT): reconnecting", self.name,
                                self.watchdog)
                    break
                if lease is not None and not lease.held():
                    log.warning("node=%s: lease lost, no longer following it", self.name)
                    break
        finally:
            try:
                esl.stop()
            except (OSError, NotConnectedError, OutboundSessionHasGoneAway):
                pass

    def rebuild(self, esl: DustelInbound) -> None:
        before = self.query(Q(state.NOW, {}))      # the engine's list is younger than this
        channels = esl.send("api show channels as json").data
        registrations = esl.send("api show registrations as json").data
        tenants: dict[str, int | None] = {}
        for row in state.fs_rows(channels):
            uuid = row.get("uuid", "")
            try:
                raw = esl.send("api uuid_getvar " + P.token(uuid, "uuid") + " dustel_tenant").data.strip()
            except ValueError:
                continue
            tenants[uuid] = int(raw) if raw.isdigit() and len(raw) < 19 else None
        self.apply(state.fs_rebuild(self.name, channels, registrations, tenants))
        if before is not None:
            self.settle_lost([row.get("uuid", "") for row in state.fs_rows(channels)], before["now"])
        for row in state.fs_rows(registrations):     # TLS accounts' bindings made over UDP/TCP meanwhile
            check = state.tls_refused(row.get("reg_user", ""), row.get("url", ""))
            if check is not None and self.query(check):
                self.refuse_plain(esl, P.Event({"profile-name": "internal", "call-id": row.get("token", ""),
                                                "username": row.get("reg_user", ""), "realm": row.get("realm", ""),
                                                "contact": row.get("url", "")}))
        self.reapply_queues(esl)

    def reapply_queues(self, esl: DustelInbound) -> None:
        """The database is the truth: tell a (restarted) engine who is logged in."""
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.dsn, row_factory=dict_row, connect_timeout=5)
            with self.conn.transaction():
                from ..callpath.calls import run_sync
                changes = run_sync(self.conn, agents.current())
        except psycopg.Error as exc:
            log.warning("node=%s: could not read agent logins: %s", self.name, exc)
            self.conn = None
            return
        for change in changes:
            for cmd in service.fs_commands(change):
                esl.send(cmd.decode()[:-2])


def run(nodes: list[tuple[str, str, int, str]], dsn: str, watchdog: float = WATCHDOG_SECONDS) -> None:
    workers = [gevent.spawn(ESLNode(n, h, p, pw, dsn, watchdog).run_forever) for n, h, p, pw in nodes]
    gevent.joinall(workers)
