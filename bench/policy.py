"""Call-time policy benchmark (F-04): the FastAGI server (``dustel agi
serve``, its own process) driven on loopback by clients that speak AGI the
way Asterisk does — connect, send the ``agi_*`` block, answer every command
with ``200 result=1``, until the server closes.

    .venv/bin/python bench/policy.py [--seconds 4]

Prints, side by side in one run:

- paced (open-loop) runs at 100, 500 and 1 000 decisions/s (and the same
  rows for the peer below, whose "decision" and "hangup" are one SET
  VARIABLE each: what AGI alone costs on this machine): achieved
  decisions/s, p50 / p99 / max latency of the decision (admit + money
  reservation, one transaction), and of the hangup request that settles each
  call one second later (so every call is admitted and settled, as in
  production: the server sees about twice the decision rate);
- closed-loop throughput at concurrency 10 of dustel's decision, next to
  bare panoramisk with a trivial handler (one ``SET VARIABLE``) — the peer,
  on asyncio's loop as it ships, and on uvloop (which dustel's server runs on);
- the floor: bare panoramisk on uvloop plus the least a durable admission
  does — requests batched as dustel batches them, the batch's money rows
  locked and read (one round trip), written back and committed (a second),
  then the same ``SET VARIABLE``; no decision, no call row.  Its paced rows
  and closed-loop figure show what the database transaction alone costs
  on this machine, beside the peer that does none;
- reserve+settle pairs/s under contention: 10 clients placing and hanging up
  calls of one single prepaid tenant (every pair locks the same balance row),
  through AGI, and through the server's batches alone (the money path);
- inbound decisions (issue 13) at concurrency 10, beside the plain outbound
  admit: a call to an account without a diversion, and to an account with a
  group call whose external target is an outbound leg decided and reserved
  in the same request (divert plan + a second admission).

Targets (DESIGN.md): p99 under 2 ms at 1 000 decisions/s; dustel's
closed-loop figure at least half of bare panoramisk's.  The floor's rows
say how much of either the database transaction alone leaves.

The benchmark database gets 2 000 prepaid tenants with one account each
(bulk COPY, triggers off) and its ``starter`` plan's line limits raised so
that no call is refused for lines: every measured decision reserves money.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._db import fresh_database  # noqa: E402
from dustel.config import LISTEN_BACKLOG  # noqa: E402  (all three servers queue bursts alike)

TENANTS = 2000
ROOT = Path(__file__).resolve().parents[1]


def populate(url: str) -> None:
    with psycopg.connect(url) as c:
        c.execute("UPDATE plans SET lines_in = 100000, lines_out = 100000 WHERE code = 'starter'")
        c.execute("INSERT INTO rates (prefix, cents_per_minute) VALUES ('49', 1), ('4917', 9), ('', 30)")
        c.execute("SET session_replication_role = replica")
        with c.cursor().copy("COPY tenants (id, name, customer_type, plan, sip_domain, number_quota)"
                             " FROM STDIN") as cp:
            for t in range(1, TENANTS + 1):
                cp.write_row((t, f"Bench {t}", "private", "starter", f"t{t}.sip.dustel.de", 10))
        with c.cursor().copy("COPY tenant_money (tenant_id, balance_cents) FROM STDIN") as cp:
            for t in range(1, TENANTS + 1):
                cp.write_row((t, 10_000_000))
        with c.cursor().copy("COPY sip_accounts (tenant_id, username, ha1, location_area_code) FROM STDIN") as cp:
            for t in range(1, TENANTS + 1):
                user = f"000387{t:06d}"
                cp.write_row((t, user, hashlib.md5(f"{user}:t{t}.sip.dustel.de:pw".encode()).hexdigest(), "211"))
        # half the tenants: a group call of the account with an external number (issue 13)
        with c.cursor().copy("COPY diversions (account_id, tenant_id, kind, timeout_seconds) FROM STDIN") as cp:
            for t in range(1, TENANTS // 2 + 1):
                cp.write_row((t, t, "group", 20))
        with c.cursor().copy("COPY diversion_targets (account_id, tenant_id, position, external_e164) FROM STDIN") \
                as cp:
            for t in range(1, TENANTS // 2 + 1):
                cp.write_row((t, t, 1, "+4917012345678"))
        c.execute("SELECT setval('tenants_id_seq', %s)", (TENANTS,))
        c.commit()
        c.execute("ANALYZE")


# ------------------------------------------------------------------ client

_UID = iter(range(10**9))


def agi_block(route: str, args: list[str], uniqueid: str, callee: str = "01701234567") -> bytes:
    lines = [
        "agi_network: yes", f"agi_network_script: {route}", f"agi_request: agi://127.0.0.1/{route}",
        "agi_channel: PJSIP/u1-00000001", "agi_language: de", "agi_type: PJSIP", f"agi_uniqueid: {uniqueid}",
        "agi_version: 22.10.1", "agi_callerid: u1", "agi_calleridname: Bench", "agi_callingpres: 0",
        "agi_callingani2: 0", "agi_callington: 0", "agi_callingtns: 0", "agi_dnid: " + callee,
        "agi_rdnis: unknown", "agi_context: dustel-outbound", "agi_extension: " + callee, "agi_priority: 1",
        "agi_enhanced: 0.0", "agi_accountcode: ", "agi_threadid: 140000000000000",
    ]
    lines += [f"agi_arg_{i}: {a}" for i, a in enumerate(args, 1)]
    return ("\n".join(lines) + "\n\n").encode()


async def agi_request(port: int, block: bytes) -> tuple[float, list[bytes]]:
    """One FastAGI session as Asterisk runs it; (seconds, commands received)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(block)
    commands = []
    while True:
        line = await reader.readline()
        if not line:
            break
        commands.append(line)
        writer.write(b"200 result=1\n")
    writer.close()
    return time.perf_counter() - t0, commands


def admit_args(tenant: int) -> list[str]:
    return [str(tenant), f"000387{tenant:06d}", "192.0.2.10:5060"]


async def one_call(port: int, tenant: int, hold: float, lat: list[float], settle_lat: list[float],
                   refused: list[int]) -> None:
    uid = f"bench-{os.getpid()}-{next(_UID)}"
    secs, cmds = await agi_request(port, agi_block("outbound", admit_args(tenant), uid))
    lat.append(secs)
    if not any(b"admit" in c for c in cmds):
        refused.append(1)
        return
    await asyncio.sleep(hold)
    secs, _ = await agi_request(port, agi_block("hangup", ["1"], uid))
    settle_lat.append(secs)


async def pace(rate: int, seconds: float, call: Callable[[int], Any]) -> tuple[list[Any], float]:
    """Start ``call(tenant)`` ``rate`` times a second for ``seconds`` (open
    loop: a slow answer never delays the next start); (results, the
    achieved rate of starts)."""
    n = int(rate * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks = []
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(call(1 + i % TENANTS)))
    sent_for = loop.time() - start
    return await asyncio.gather(*tasks, return_exceptions=True), n / max(sent_for, 1e-9)


async def paced(port: int, rate: int, seconds: float) -> dict[str, float]:
    lat: list[float] = []
    settle_lat: list[float] = []
    refused: list[int] = []
    results, achieved = await pace(rate, seconds,
                                   lambda t: one_call(port, t, 1.0, lat, settle_lat, refused))
    failed = [r for r in results if isinstance(r, BaseException)]
    return {"offered": rate, "achieved": achieved, "n": len(results), "refused": len(refused) + len(failed),
            **pct("decision", lat), **pct("settle", settle_lat)}


def pct(name: str, xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    if not xs:
        return {}
    return {f"{name}_p50_ms": 1000 * xs[len(xs) // 2], f"{name}_p99_ms": 1000 * xs[int(len(xs) * 0.99) - 1],
            f"{name}_max_ms": 1000 * xs[-1]}


async def closed_loop(port: int, concurrency: int, seconds: float, route: str, settle: bool) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            tenant = 1 + (w * 997 + i) % TENANTS
            i += 1
            uid = f"cl-{os.getpid()}-{next(_UID)}"
            await agi_request(port, agi_block(route, admit_args(tenant), uid))
            done += 1
            if settle:
                await agi_request(port, agi_block("hangup", ["1"], uid))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done / (time.perf_counter() - t0)


async def latency_loop(port: int, concurrency: int, seconds: float, route: str,
                       args: Callable[[int], list[str]], callee: str, tenants: range) -> dict[str, float]:
    """Closed loop: requests/s and latency of one kind of decision."""
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            tenant = tenants[(w * 997 + i) % len(tenants)]
            i += 1
            secs, _ = await agi_request(port, agi_block(route, args(tenant), f"lat-{os.getpid()}-{next(_UID)}",
                                                        callee))
            lat.append(secs)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {"rate": len(lat) / (time.perf_counter() - t0), **pct("x", sorted(lat))}


def inbound_args(tenant: int) -> list[str]:
    return [str(tenant), "account", f"000387{tenant:06d}"]


async def contention(port: int, clients: int, seconds: float) -> tuple[float, int]:
    pairs = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal pairs
        while time.perf_counter() < stop:
            uid = f"ct-{os.getpid()}-{next(_UID)}"
            _, cmds = await agi_request(port, agi_block("outbound", admit_args(1), uid))
            if any(b"admit" in c for c in cmds):
                await agi_request(port, agi_block("hangup", ["7"], uid))
                pairs += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return pairs / (time.perf_counter() - t0), pairs


def money_path(url: str, clients: int, seconds: float) -> tuple[float, int, tuple[int, int]]:
    """Reserve+settle pairs on tenant 2's balance through the FastAGI
    server's own admission and settlement batches (fastagi.Context, its
    pool and the step driver, on uvloop), without the AGI sessions around
    them: what the money path itself sustains.  (pairs/s, pairs, the
    tenant's balance and reservation afterwards)"""
    import uvloop
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    from dustel.agi import fastagi
    from dustel.callpath import calls
    from dustel.callpath.policy import CallRequest

    async def main() -> tuple[float, int]:
        async with AsyncConnectionPool(url, min_size=2, max_size=8, open=False,
                                       kwargs={"row_factory": dict_row, "autocommit": True,
                                               **calls.POOL_KWARGS}) as pool:
            ctx = fastagi.Context(pool, "bench")
            pairs = 0
            stop = time.perf_counter() + seconds

            async def client(w: int) -> None:
                nonlocal pairs
                i = 0
                while time.perf_counter() < stop:
                    i += 1
                    req = CallRequest(direction="out", tenant_id=2, account="000387000002", caller="u",
                                      callee="01701234567", node="bench", call_id=f"mp-{w}-{i}")
                    d = await ctx.admit(req)
                    if d.admit:
                        await ctx.settle("bench", req.call_id, 7)
                        pairs += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(client(w) for w in range(clients)))
            ctx.close()
            return pairs / (time.perf_counter() - t0), pairs

    rate, pairs = uvloop.run(main())
    with psycopg.connect(url) as c:
        m = c.execute("SELECT balance_cents, reserved_cents FROM tenant_money WHERE tenant_id = 2").fetchone()
    return rate, pairs, (m[0], m[1])


# ------------------------------------------------------------------ servers

async def serve_agi(port: int, handler: Callable[[Any], Awaitable[None]]) -> None:
    """A bare panoramisk Application answering both bench routes (the
    decision and the hangup) with ``handler``, listening with dustel's
    backlog (so every server queues bursts alike); prints ``ready``."""
    from panoramisk.fast_agi import Application

    app = Application(loop=asyncio.get_running_loop())
    app.add_route("outbound", handler)
    app.add_route("hangup", handler)
    server = await asyncio.start_server(app.handler, "127.0.0.1", port, backlog=LISTEN_BACKLOG)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def peer_server(port: int, loop: str) -> None:
    """Bare panoramisk: its own Application and handler, a trivial route
    (the same for the hangup request of the paced rows); on asyncio's own
    loop (the peer as it ships) or on uvloop (the loop dustel's server runs
    on)."""
    async def trivial(request) -> None:  # type: ignore[no-untyped-def]
        await request.send_command('SET VARIABLE DUSTEL_ACTION "admit"')

    async def main() -> None:
        await serve_agi(port, trivial)

    if loop == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


def floor_server(port: int) -> None:
    """The floor (see the module's docstring): one connection, one batch at
    a time; the tenant ids are integers (``int()`` of the first argument),
    so the SQL text is built from digits and commas only."""
    import uvloop

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"], autocommit=True)
        pending: list[tuple[int, asyncio.Future[None]]] = []
        wake = asyncio.Event()

        async def worker() -> None:
            nonlocal pending
            while True:
                await wake.wait()
                batch, pending = pending, []
                wake.clear()
                ids = ",".join(str(t) for t in sorted({t for t, _ in batch}))
                cur = await conn.execute(f"BEGIN; SELECT * FROM tenant_money WHERE tenant_id IN ({ids}) "
                                         "ORDER BY tenant_id FOR UPDATE")
                cur.nextset()
                await cur.fetchall()
                await conn.execute(f"UPDATE tenant_money SET reserved_cents = reserved_cents "
                                   f"WHERE tenant_id IN ({ids}); COMMIT")
                for _, fut in batch:
                    fut.set_result(None)

        async def admit(request) -> None:  # type: ignore[no-untyped-def]
            fut = asyncio.get_running_loop().create_future()
            pending.append((int(request.headers.get("agi_arg_1", "1")), fut))
            wake.set()
            await fut
            await request.send_command('SET VARIABLE DUSTEL_ACTION "admit"')

        task = asyncio.create_task(worker())
        try:
            await serve_agi(port, admit)
        finally:
            task.cancel()

    uvloop.run(main())


def free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(cmd: list[str], env: dict[str, str], ready: str,
          watch: Callable[[str], None] | None = None) -> subprocess.Popen[str]:
    """Start a server and wait for its ``ready`` line; its output is drained
    from then on (a full pipe would block it), each line given to ``watch``."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    for line in p.stdout:
        if ready in line:
            break
    else:
        raise SystemExit("server did not start")
    import threading

    def drain() -> None:
        for line in p.stdout:  # type: ignore[union-attr]
            if watch is not None:
                watch(line)
    threading.Thread(target=drain, daemon=True).start()
    return p


def db_floor(url: str, n: int = 300) -> tuple[float, float]:
    """What one round trip and one durable write transaction cost on this
    machine: the floor under every reservation (ms, median)."""
    with psycopg.connect(url, autocommit=True) as c:
        rt, tx = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            c.execute("SELECT 1").fetchall()
            rt.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with c.transaction():
                c.execute("UPDATE tenant_money SET reserved_cents = reserved_cents WHERE tenant_id = 1")
            tx.append(time.perf_counter() - t0)
    return 1000 * sorted(rt)[n // 2], 1000 * sorted(tx)[n // 2]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--peer":
        peer_server(int(sys.argv[2]), sys.argv[3])
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--floor":
        floor_server(int(sys.argv[2]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    url = fresh_database("dustel_bench_policy")
    populate(url)
    port, peer_port, uv_port, floor_port = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": url, "DUSTEL_AGI_PORT": str(port)}
    dustel = start([str(ROOT / ".venv/bin/dustel"), "agi", "serve"], env, "fastagi listening")
    peer = start([sys.executable, __file__, "--peer", str(peer_port), "asyncio"], env, "ready")
    peer_uv = start([sys.executable, __file__, "--peer", str(uv_port), "uvloop"], env, "ready")
    floor = start([sys.executable, __file__, "--floor", str(floor_port)], env, "ready")
    try:
        asyncio.run(asyncio.sleep(0.5))
        print(f"FastAGI policy benchmark: {TENANTS} prepaid tenants, {args.seconds:.0f} s per step, "
              f"{os.cpu_count()} cores (server, clients and PostgreSQL share them)\n")
        rt, tx = db_floor(url)
        print(f"database floor: one round trip {rt:.2f} ms, one durable one-row write transaction {tx:.2f} ms\n")
        print("paced (open loop): every call admitted (decision = admit + reservation), "
              "settled by its hangup request 1 s later")
        print(f"{'offered/s':>10} {'achieved/s':>11} {'calls':>6} {'refused':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'max ms':>7} | {'settle p50':>10} {'p99 ms':>7}")
        for who, p in (("", port), ("peer: bare panoramisk, trivial handler", peer_port),
                       ("floor: bare panoramisk on uvloop + the batch's money rows locked, read, written, committed",
                        floor_port)):
            if who:
                print(who)
            for rate in (100, 500, 1000):
                r = asyncio.run(paced(p, rate, args.seconds))
                print(f"{r['offered']:>10} {r['achieved']:>11.0f} {r['n']:>6} {r['refused']:>8} "
                      f"{r['decision_p50_ms']:>7.2f} {r['decision_p99_ms']:>7.2f} {r['decision_max_ms']:>7.1f} | "
                      f"{r.get('settle_p50_ms', 0):>10.2f} {r.get('settle_p99_ms', 0):>7.2f}")
        ours = asyncio.run(closed_loop(port, 10, args.seconds, "outbound", settle=False))
        theirs = asyncio.run(closed_loop(peer_port, 10, args.seconds, "outbound", settle=False))
        theirs_uv = asyncio.run(closed_loop(uv_port, 10, args.seconds, "outbound", settle=False))
        floor_rate = asyncio.run(closed_loop(floor_port, 10, args.seconds, "outbound", settle=False))
        print("\nclosed loop, concurrency 10, requests/s:")
        print(f"  dustel decision + reservation   {ours:8.0f}   (its server runs on uvloop)")
        print(f"  bare panoramisk, trivial handler {theirs:7.0f}   (dustel = {ours / theirs:.0%} of the peer)")
        print(f"  the same peer on uvloop          {theirs_uv:7.0f}   (dustel = {ours / theirs_uv:.0%} of it)")
        print(f"  the floor (peer on uvloop + the locking read and write, no decision) {floor_rate:7.0f}   "
              f"(= {floor_rate / theirs:.0%} of the peer; dustel = {ours / floor_rate:.0%} of the floor)")
        rate, pairs = asyncio.run(contention(port, 10, args.seconds))
        print(f"\nreserve+settle under contention (10 clients, one tenant's balance): {rate:.0f} pairs/s "
              f"({pairs} pairs)")
        with psycopg.connect(url) as c:
            m = c.execute("SELECT balance_cents, reserved_cents FROM tenant_money WHERE tenant_id = 1").fetchone()
            left = c.execute("SELECT count(*) FROM calls WHERE state = 'active'").fetchone()[0]
        print(f"  tenant 1 afterwards: balance {m[0]} ct, reserved {m[1]} ct; calls still active: {left}")
        rate, pairs, m = money_path(url, 10, args.seconds)
        print(f"  the money path alone (10 clients through the server's admission and settlement batches, "
              f"no AGI): {rate:.0f} pairs/s ({pairs} pairs); balance {m[0]} ct, reserved {m[1]} ct")
        print("\ndecisions by kind, closed loop, concurrency 10 (issue 13: the inbound plan beside the plain admit):")
        print(f"  {'kind':<56} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}")
        half = TENANTS // 2
        for label, route, fn, callee, ts in (
                ("outbound admit (plain)", "outbound", admit_args, "01701234567", range(1, TENANTS + 1)),
                ("inbound to an account, no diversion", "inbound", inbound_args, "+492111234567",
                 range(half + 1, TENANTS + 1)),
                ("inbound, group call with an external leg (2 admissions)", "inbound", inbound_args,
                 "+492111234567", range(1, half + 1))):
            r = asyncio.run(latency_loop(port, 10, args.seconds, route, fn, callee, ts))
            print(f"  {label:<56} {r['rate']:>7.0f} {r['x_p50_ms']:>7.2f} {r['x_p99_ms']:>7.2f}")
    finally:
        for p in (dustel, peer, peer_uv, floor):
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
