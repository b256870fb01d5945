"""Call-time policy benchmark, FreeSWITCH side (issues 10, 32): ``dustel esl
serve`` driven on loopback by clients that play FreeSWITCH's side of
``socket … async full`` with the real engine's event mix — recording
``10b`` of ``../shared/esl-transcripts``: a sofia channel of the rendered
config, its channel data (6.4 KB) after ``connect``, and for the call's
applications the events real FreeSWITCH sends (``set``: EXECUTE and
EXECUTE_COMPLETE; ``bridge``: EXECUTE, PROGRESS, ANSWER, BRIDGE, then after
``--hold`` seconds the caller's HANGUP, the linger notice, UNBRIDGE, the
bridge's EXECUTE_COMPLETE, UNPARK, the socket application's
EXECUTE_COMPLETE, two CHANNEL_STATE, HANGUP_COMPLETE: 5.5–11 KB an event).
What a server subscribes to (``myevents``, ``nixevent``, ``filter``) is
applied as mod_event_socket.c applies it (the emulator's
``Subscription``), so a server that asks for less gets less.  When the
server sends ``exit`` (after its settlement), FreeSWITCH answers and
closes, as it does for a lingering socket (recording 05).

    .venv/bin/python bench/esl_policy.py [--seconds 4] [--hold 1] [--workers N]
                                         [--server-root DIR] [--only dustel|peer]

Prints, per server, paced steps of rising rate until the decision's p99
passes 1 s (or calls fail): achieved calls/s, p50 / p99 / max of the
decision (the connection to the ``bridge``: admission and reservation),
p50 / p99 of the settlement (HANGUP_COMPLETE to the server's ``exit``,
which it sends once the call is settled), and the server's CPU per call
(user + system of the server's processes from ``/proc``, over the step,
divided by its calls).  Then the highest rate whose p99 stayed under 1 s
with every call through.  Servers: dustel (``--workers``: its worker
processes; ``--server-root``: run the server of another checkout, e.g. a
clone of an older commit, against the same client and database) and the
bare greenswitch peer — greenswitch's own OutboundESLServer with a handler
that subscribes (``myevents``, ``linger``) and bridges, nothing else.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._db import fresh_database  # noqa: E402
from bench.policy import TENANTS, free_port, pace, pct, populate, start  # noqa: E402
from dustel.wire import esl as P  # noqa: E402
from tests.esl_emulator import REAL_CHANNEL, REAL_OTHER_LEG, SOCKET_APP, Subscription, real_event_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_SEQ = iter(range(10**9))
CALLEE = "+4930555123"

# The client plays FreeSWITCH and must not be the bottleneck: every recorded
# header is encoded once (the template lines below); a call encodes only
# its own values (``url_encode`` memoised: most repeat from call to call).
_quote = functools.lru_cache(maxsize=65536)(P.url_encode)
IDENTITY = ("Unique-ID", "Channel-Call-UUID", "Caller-Unique-ID", "variable_uuid", "variable_call_uuid")


@functools.cache
def template(name: str, detail: str) -> tuple[dict[str, str], bool]:
    """Recording 10b's event ``name`` as encoded lines; does it carry variables?"""
    base = real_event_base(name, detail)
    return P.header_lines(base, _quote), any(k.startswith("variable_") for k in base)


CHANNEL_LINES = P.header_lines({k: v for k, v in REAL_CHANNEL.items() if not k.startswith("variable_dustel")}, _quote)
OTHER_LEG_LINES = P.header_lines({**REAL_OTHER_LEG, "Other-Leg-Destination-Number": CALLEE}, _quote)


class Call:
    """One channel handed to the socket: its header lines, its subscription."""

    def __init__(self, tenant: int) -> None:
        self.uuid = f"be{os.getpid():06d}-0000-4000-8000-{next(_SEQ):012d}"
        values = {k: self.uuid for k in IDENTITY}
        values.update({"Channel-Destination-Number": "01701234567", "Caller-Destination-Number": "01701234567",
                       "FreeSWITCH-Switchname": "bench"})
        self.variables = P.header_lines({
            "variable_dustel_tenant": str(tenant), "variable_dustel_domain": f"t{tenant}.sip.dustel.de",
            "variable_user_name": f"000387{tenant:06d}", "variable_sip_network_ip": "192.0.2.10",
            "variable_domain_name": f"t{tenant}.sip.dustel.de"}, _quote)
        self.own = P.header_lines(values, _quote)
        self.sub = Subscription(self.uuid)
        self.later: dict[str, str] = {}          # lines every later event carries (the other leg)

    def channel_data(self) -> bytes:
        lines = {**CHANNEL_LINES, **{k: v for k, v in self.own.items() if k in CHANNEL_LINES}, **self.variables,
                 **P.header_lines({"Content-Type": "command/reply", "Reply-Text": "+OK\n", "Socket-Mode": "async",
                                   "Control": "full"}, _quote)}
        return P.plain_block(lines.values())

    def event(self, name: str, detail: str = "", **extra: str) -> bytes | None:
        """The frame of event ``name``, or None when the subscription keeps it away."""
        if not passes(self.sub, name, extra.get("Application", "")):
            return None
        lines, has_vars = template(name, detail or extra.get("Application", ""))
        body = dict(lines)
        body.update((k, v) for k, v in self.own.items() if k in lines)
        if has_vars:
            body.update(self.variables)
            body.update(self.later)
        body.update(P.header_lines({"Event-Sequence": str(next(_SEQ)), **extra}, _quote))
        data = P.plain_block(body.values())
        return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(data) + data


def passes(sub: Subscription, name: str, app: str) -> bool:
    """The subscription's verdict, memoised per subscription state (every
    call of a server subscribes alike; the client must stay cheap)."""
    return _passes(frozenset(sub.types), tuple(sub.filters), sub.myevents, name, app)


@functools.cache
def _passes(types: frozenset[str], filters: tuple[tuple[str, str], ...], myevents: bool, name: str, app: str) -> bool:
    sub = Subscription("u", set(types), list(filters), myevents)
    headers = {"Event-Name": name, "Unique-ID": "u", **({"Application": app} if app else {})}
    if any(n.lower() not in ("event-name", "unique-id", "application") for n, _ in filters):
        headers.update(real_event_base(name, app))     # a filter on another header: the recorded value
    return sub.passes(headers)


def reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


NOTICE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"


async def read_command(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]] | None:
    try:
        raw = await reader.readuntil(b"\n\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = raw.decode().strip("\n").split("\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0].strip(), headers


async def fs_call(port: int, tenant: int, hold: float) -> dict[str, Any]:
    """One call handed to the socket, as FreeSWITCH plays it."""
    c = Call(tenant)
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: dict[str, Any] = {"refused": False, "ended": False}
    hungup_at = 0.0

    def emit(name: str, detail: str = "", **extra: str) -> None:
        frame = c.event(name, detail, **extra)
        if frame is not None:
            writer.write(frame)

    def hangup(cause: str, app_h: dict[str, str] | None, billsec: int) -> None:
        gone = {"Answer-State": "hangup", "Hangup-Cause": cause}
        emit("CHANNEL_HANGUP", **gone)
        writer.write(b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: " + c.uuid.encode()
                     + b"\nContent-Disposition: linger\nChannel-Name: sofia/internal/bench\nLinger-Time: -1\n"
                       b"Content-Length: 0\n\n")
        if app_h is not None:
            emit("CHANNEL_UNBRIDGE", **gone)
            emit("CHANNEL_EXECUTE_COMPLETE", **app_h, **gone)
        emit("CHANNEL_UNPARK", **gone)
        emit("CHANNEL_EXECUTE_COMPLETE", **SOCKET_APP, **gone)
        emit("CHANNEL_STATE", "CS_HANGUP", **gone, **{"Channel-State": "CS_HANGUP"})
        emit("CHANNEL_STATE", "CS_REPORTING", **gone, **{"Channel-State": "CS_REPORTING"})
        emit("CHANNEL_HANGUP_COMPLETE", **gone, **{"Channel-State": "CS_REPORTING"}, variable_billsec=str(billsec),
             variable_duration=str(billsec))

    try:
        while True:
            cmd = await read_command(reader)
            if cmd is None:
                break
            name, headers = cmd
            answer = c.sub.command(name)
            if answer is not None:
                writer.write(reply(answer))
            elif name == "connect":
                writer.write(c.channel_data())
            elif name == "linger":
                writer.write(reply("+OK will linger"))
            elif name == "exit":
                writer.write(reply("+OK bye") + b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: "
                             + c.uuid.encode() + b"\nContent-Disposition: disconnect\nContent-Length: %d\n\n"
                             % len(NOTICE) + NOTICE)
                if hungup_at:
                    out["settle_s"] = time.perf_counter() - hungup_at
                await writer.drain()
                break
            elif name == "sendmsg":
                if hungup_at:
                    writer.write(reply("-ERR Channel hungup"))
                    continue
                writer.write(reply("+OK"))
                app, arg = headers.get("execute-app-name", ""), headers.get("execute-app-arg", "")
                app_h = {"Application": app, "Application-Data": arg, "Application-UUID": c.uuid}
                emit("CHANNEL_EXECUTE", **app_h)
                if app == "bridge":
                    out["decision_s"] = time.perf_counter() - t0
                    emit("CHANNEL_PROGRESS")
                    emit("CHANNEL_ANSWER", **{"Answer-State": "answered"})
                    c.later = OTHER_LEG_LINES
                    emit("CHANNEL_BRIDGE", **{"Answer-State": "answered"})
                    await writer.drain()
                    await asyncio.sleep(hold)
                    done = {**app_h, "variable_originate_disposition": "SUCCESS", "variable_DIALSTATUS": "SUCCESS"}
                    hangup("NORMAL_CLEARING", done, int(hold))
                    hungup_at = time.perf_counter()
                    out["ended"] = True
                elif app in ("respond", "hangup"):
                    out["refused"] = app == "respond"
                    out["decision_s"] = time.perf_counter() - t0
                    hangup("CALL_REJECTED", None, 0)
                    hungup_at = time.perf_counter()
                    out["ended"] = True
                else:
                    emit("CHANNEL_EXECUTE_COMPLETE", **app_h)
            await writer.drain()
    finally:
        writer.close()
    return out


# ------------------------------------------------------------------ the servers' CPU

def _tree(root: int) -> list[int]:
    """``root`` and its descendants (a server's worker processes)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(root: int) -> float:
    """User + system CPU of ``root``'s process tree so far (/proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])       # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


# ------------------------------------------------------------------ steps

async def paced(port: int, pid: int, rate: int, seconds: float, hold: float) -> dict[str, float]:
    cpu0 = cpu_seconds(pid)
    results, achieved = await pace(rate, seconds, lambda t: fs_call(port, t, hold))
    cpu = cpu_seconds(pid) - cpu0
    ok = [r for r in results if isinstance(r, dict)]
    through = [r for r in ok if r["ended"] and "settle_s" in r and not r["refused"]]
    return {"offered": rate, "achieved": achieved, "n": len(results), "failed": len(results) - len(through),
            **pct("decision", [r["decision_s"] for r in ok if "decision_s" in r]),
            **pct("settle", [r["settle_s"] for r in through]),
            "cpu_ms": 1000 * cpu / max(len(results), 1)}


HEAD = (f"{'offered/s':>10} {'achieved/s':>11} {'calls':>6} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} | {'settle p50':>10} {'p99 ms':>7} | {'CPU ms/call':>11}")


def row(r: dict[str, float]) -> str:
    return (f"{r['offered']:>10} {r['achieved']:>11.0f} {r['n']:>6} {r['failed']:>7} "
            f"{r.get('decision_p50_ms', 0):>8.1f} {r.get('decision_p99_ms', 0):>8.1f} "
            f"{r.get('decision_max_ms', 0):>8.1f} | {r.get('settle_p50_ms', 0):>10.1f} "
            f"{r.get('settle_p99_ms', 0):>7.1f} | {r['cpu_ms']:>11.2f}")


RATES = (50, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000)


def ladder(label: str, port: int, pid: int, seconds: float, hold: float, rates: tuple[int, ...]) -> None:
    """Rising paced steps until the p99 passes 1 s or calls fail; then the
    highest rate that held (p99 < 1 s, every call through)."""
    asyncio.run(paced(port, pid, 50, 2, hold))       # warm-up, not shown: pools, caches, prepared statements
    time.sleep(hold + 0.5)
    print(f"\n{label}\n{HEAD}", flush=True)
    best, cpu = 0, []
    for rate in rates:
        r = asyncio.run(paced(port, pid, rate, seconds, hold))
        print(row(r), flush=True)
        good = r["failed"] == 0 and r.get("decision_p99_ms", 1e9) < 1000
        if good:
            best = rate
            cpu.append(r["cpu_ms"])
        else:
            break
        time.sleep(max(1.0, hold + 0.5))       # the last calls' settlements
    print(f"=> {best} calls/s with p99 < 1 s; server CPU {min(cpu) if cpu else 0:.2f}–"
          f"{max(cpu) if cpu else 0:.2f} ms per call over those steps", flush=True)


def peer_server(port: int) -> None:
    """Bare greenswitch: its OutboundESLServer and a handler that subscribes
    (``myevents``, ``linger``), bridges, and waits for the hangup — what the
    issue's trivial peer did; no database, no decision."""
    from gevent import monkey
    monkey.patch_all()
    import gevent.event
    from greenswitch.esl import OutboundESLServer, OutboundSessionHasGoneAway

    class Trivial:
        def __init__(self, session):  # type: ignore[no-untyped-def]
            self.session = session
            self.done = gevent.event.Event()
            session.register_handle("CHANNEL_HANGUP_COMPLETE", lambda event: self.done.set())
            session.register_handle("DISCONNECT", lambda event: self.done.set())

        def run(self) -> None:
            try:
                self.session.myevents()
                self.session.linger()
                self.session.call_command("bridge", f"sofia/gateway/carrier/{CALLEE}")
            except OutboundSessionHasGoneAway:
                return
            self.done.wait()

    server = OutboundESLServer(bind_address="127.0.0.1", bind_port=port, application=Trivial, max_connections=20000)
    print("ready", flush=True)
    server.listen()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--peer":
        peer_server(int(sys.argv[2]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--hold", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=0, help="dustel's worker processes (0: its default)")
    ap.add_argument("--server-root", default=str(ROOT), help="the checkout whose dustel server runs")
    ap.add_argument("--only", choices=("dustel", "peer"))
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    args = ap.parse_args()
    rates = tuple(int(r) for r in args.rates.split(","))
    print(f"FreeSWITCH policy benchmark (outbound Event Socket, recording 10b's event mix): {TENANTS} prepaid "
          f"tenants, {args.seconds:g} s per step, calls talk {args.hold:g} s, {os.cpu_count()} cores (servers, "
          "clients and PostgreSQL share them); decision = connect … bridge, settle = HANGUP_COMPLETE … exit")
    if args.only != "peer":
        url = fresh_database("dustel_bench_esl")
        populate(url)
        port = free_port()
        root = Path(args.server_root).resolve()
        env = {**os.environ, "DUSTEL_ESL_DSN": url, "DUSTEL_ESL_NODES": json.dumps({"127.0.0.1": ""}),
               "PYTHONPATH": str(root)}
        cmd = [sys.executable, "-m", "dustel.agi.esl_main", "--port", str(port)]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        listening = []
        dustel = start(cmd, env, "listening on", lambda line: listening.append(line) if "listening on" in line else 0)
        try:
            deadline = time.time() + 30
            while len(listening) + 1 < max(1, args.workers) and time.time() < deadline:
                time.sleep(0.05)          # every worker listening (each logs its line)
            what = "this checkout" if root == ROOT else str(root)
            ladder(f"dustel esl serve ({what}{f', {args.workers} workers' if args.workers else ''})", port,
                   dustel.pid, args.seconds, args.hold, rates)
        finally:
            dustel.terminate()
            dustel.wait(10)
    if args.only != "dustel":
        peer_port = free_port()
        peer = start([sys.executable, __file__, "--peer", str(peer_port)], dict(os.environ), "ready")
        try:
            ladder("bare greenswitch outbound server (myevents, linger, bridge; no database)", peer_port, peer.pid,
                   args.seconds, args.hold, rates)
        finally:
            peer.terminate()
            peer.wait(10)


if __name__ == "__main__":
    main()
