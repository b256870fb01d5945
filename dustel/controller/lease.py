"""One controller per engine node at a time (issue 27): a PostgreSQL
session-level advisory lock per node, held on a connection of its own.

Several controllers may run (``dustel controller run`` on each application
host); each tries every node's lock and follows the nodes it got.  The lock
lives as long as its connection: a controller that dies (SIGKILL, its host
gone) loses the connection, PostgreSQL frees the lock at once, and another
controller's next try — every ``RETRY_SECONDS`` — takes the node over: it
logs in to the engine and rebuilds the live state from the engine's own
lists (``settle_lost``: what ended meanwhile).  A controller checks its
lock's connection every ``CHECK_SECONDS``; when it breaks (a database
failover: the lock is gone with the old primary) it stops following the
node and tries again.  A controller that holds the lock but cannot reach the
node for ``GIVE_UP_SECONDS`` lets it go (``Reach``) and stands back for two
retries, so a controller that can reach it takes over.  CDRs are
idempotent by (node, call id), so the one
moment two controllers might both write (the old one's last event, the new
one's rebuild) doubles nothing.

One rule, two shells: ``Lease`` (sync, the gevent FreeSWITCH process) and
``AsyncLease`` (the asyncio Asterisk process)."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import psycopg

log = logging.getLogger("dustel.controller.lease")

LOCK_CLASS = 27_001          # the first key of dustel's node locks (the second: hashtext of the node name)
TRY = "SELECT pg_try_advisory_lock(%(cls)s, hashtext(%(node)s)) AS got"
ALIVE = "SELECT 1"
RETRY_SECONDS = 1.0          # a free node is taken over within about this
CHECK_SECONDS = 1.0          # a lost lock is noticed within about this
# a controller that holds a node's lock but cannot reach the node this long
# gives the lock up (another controller may reach it: a network split between
# one application host and the engine) and stands back for two retries
GIVE_UP_SECONDS = float(os.environ.get("DUSTEL_CONTROLLER_GIVE_UP") or 15.0)

# the lock's connection: short connect timeout, TCP keepalives so a vanished server is noticed while
# idle, and tcp_user_timeout while a check's bytes go unacknowledged (keepalives do not fire then:
# a check would otherwise wait for the kernel's retransmissions, about 15 min).  The server's side
# (a controller's host that vanished) is the database's tcp_keepalives_* (the postgresql role).
CONNECT: dict[str, Any] = {"autocommit": True, "connect_timeout": 3, "keepalives": 1, "keepalives_idle": 5,
                           "keepalives_interval": 2, "keepalives_count": 2, "tcp_user_timeout": 10000,
                           "application_name": "dustel-controller-lease"}


class Reach:
    """Whether this controller still reaches the node it holds the lock of:
    ``ok()`` after a session to the engine came up, ``failed()`` after each
    attempt that did not; ``give_up()`` is true once the node was out of
    reach for ``GIVE_UP_SECONDS`` (then the lease is released)."""

    def __init__(self, give_up: float | None = None) -> None:
        self.limit = GIVE_UP_SECONDS if give_up is None else give_up
        self.since: float | None = None

    def ok(self) -> None:
        self.since = None

    def failed(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def give_up(self) -> bool:
        if self.since is not None and time.monotonic() - self.since >= self.limit:
            self.since = None
            return True
        return False


def holders_sql() -> str:
    """Which backend holds which node's lock (for `dustel health`-style checks and tests)."""
    return ("SELECT a.pid, a.client_addr, l.objid FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            f"WHERE l.locktype = 'advisory' AND l.classid = {LOCK_CLASS} AND l.granted")


class Lease:
    """A node's lock on a sync connection (gevent process)."""

    def __init__(self, dsn: str, node: str) -> None:
        self.dsn, self.node = dsn, node
        self.conn: psycopg.Connection[Any] | None = None
        self.checked = 0.0

    def try_acquire(self) -> bool:
        try:
            if self.conn is None or self.conn.closed or self.conn.broken:
                self.conn = psycopg.connect(self.dsn, **CONNECT)
            row = self.conn.execute(TRY, {"cls": LOCK_CLASS, "node": self.node}).fetchone()
            return bool(row and row[0])
        except psycopg.Error as exc:
            log.warning("node=%s: lease not tried (%s)", self.node, exc)
            self.release()
            return False

    def held(self) -> bool:
        """Still ours?  (A round trip on the lock's connection, at most every CHECK_SECONDS.)"""
        if time.monotonic() - self.checked < CHECK_SECONDS:
            return self.conn is not None and not self.conn.closed
        self.checked = time.monotonic()
        try:
            assert self.conn is not None
            self.conn.execute(ALIVE)
            return True
        except (psycopg.Error, AssertionError):
            self.release()
            return False

    def release(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
        self.conn = None


class AsyncLease:
    """A node's lock on an async connection (asyncio process)."""

    def __init__(self, dsn: str, node: str) -> None:
        self.dsn, self.node = dsn, node
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def acquire(self) -> None:
        """Wait until the node's lock is ours."""
        waited = False
        while True:
            try:
                if self.conn is None or self.conn.closed or self.conn.broken:
                    self.conn = await psycopg.AsyncConnection.connect(self.dsn, **CONNECT)
                row = await (await self.conn.execute(TRY, {"cls": LOCK_CLASS, "node": self.node})).fetchone()
                if row and row[0]:
                    return
                if not waited:
                    log.info("node=%s followed by another controller; standing by", self.node)
                    waited = True
            except psycopg.Error as exc:
                log.warning("node=%s: lease not tried (%s)", self.node, exc)
                await self.release()
            await asyncio.sleep(RETRY_SECONDS)

    async def held(self) -> bool:
        try:
            assert self.conn is not None
            await asyncio.wait_for(self.conn.execute(ALIVE), CHECK_SECONDS * 3)
            return True
        except (psycopg.Error, AssertionError, TimeoutError):
            await self.release()
            return False

    async def release(self) -> None:
        if self.conn is not None:
            try:
                await self.conn.close()
            except psycopg.Error:
                pass
        self.conn = None
