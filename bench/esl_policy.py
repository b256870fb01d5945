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
                                         [--server-root DIR] [--only dustel|peer|fetch]

The dialplan fetch (issue 32.7) beside them: ``dustel xmlcurl serve`` asked
as mod_xml_curl asks (recording 12's request with the call's values, a
phone's outbound call: one connection and one POST per call, the decision
the answered document); after ``--hold`` seconds the call's
CHANNEL_HANGUP_COMPLETE goes to the real controller through the emulated
inbound Event Socket, and the controller settles it from its CDR — so the
fetch path's settlement is the controller's CPU, printed beside the
server's (the controller follows every call on either path; on the socket
path its settlement from the CDR is a no-op after the server's own).

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
from tests.esl_emulator import (  # noqa: E402
    REAL_CHANNEL,
    REAL_OTHER_LEG,
    SOCKET_APP,
    FreeSwitchEmulator,
    Subscription,
    fetch_request,
    real_event_base,
)

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


# ------------------------------------------------------------------ the dialplan fetch (mod_xml_curl)

UUID_SLOT = "f" * 36          # a template's call id, replaced by the call's (same length: Content-Length holds)
_FETCH_SEQ = iter(range(10**9))


@functools.cache
def fetch_template(port: int, tenant: int) -> bytes:
    """Recording 12's request for a call from tenant ``tenant``'s phone (its
    context, account, domain, the directory's tenant), encoded once."""
    user, domain = f"000387{tenant:06d}", f"t{tenant}.sip.dustel.de"
    values = {"hostname": "bench", "FreeSWITCH-Switchname": "bench", "Caller-Context": f"t{tenant}",
              "Hunt-Context": f"t{tenant}", "Caller-Destination-Number": "01701234567",
              "Hunt-Destination-Number": "01701234567", "Caller-Caller-ID-Number": user, "Hunt-Caller-ID-Number": user,
              **{k: UUID_SLOT for k in ("Unique-ID", "Channel-Call-UUID", "Caller-Unique-ID", "Hunt-Unique-ID")}}
    variables = {"uuid": UUID_SLOT, "call_uuid": UUID_SLOT, "user_name": user, "domain_name": domain,
                 "dustel_tenant": str(tenant), "sip_network_ip": "192.0.2.10", "sip_via_protocol": "udp"}
    return fetch_request("127.0.0.1", port, "/dialplan", values, variables)


async def fetch_call(port: int, tenant: int, hold: float, engine: FreeSwitchEmulator) -> dict[str, Any]:
    """One call's fetch as mod_xml_curl makes it (a connection of its own,
    the POST, the whole answer, close), then — admitted — its talk and the
    hangup the controller follows."""
    uuid = f"fe{os.getpid():06d}-0000-4000-8000-{next(_FETCH_SEQ):012d}"
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: dict[str, Any] = {"refused": False, "ended": False}
    try:
        writer.write(fetch_template(port, tenant).replace(UUID_SLOT.encode(), uuid.encode()))
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        body = await reader.readexactly(length)
    finally:
        writer.close()
    out["decision_s"] = time.perf_counter() - t0
    if not head.startswith(b"HTTP/1.1 200") or b'application="bridge"' not in body:
        out["refused"] = True
        return out
    await asyncio.sleep(hold)
    user = f"000387{tenant:06d}"
    engine.emit({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": uuid, "Call-Direction": "inbound",
                 "Caller-Caller-ID-Number": user, "Caller-Destination-Number": "01701234567",
                 "Channel-Name": f"sofia/internal/{user}", "variable_dustel_tenant": str(tenant),
                 "variable_user_name": user, "variable_billsec": str(int(hold)), "Hangup-Cause": "NORMAL_CLEARING"})
    out["ended"] = True
    out["settle_s"] = 0.0          # the controller's: not observed per call here (its CPU is)
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

async def paced(port: int, pid: int, rate: int, seconds: float, hold: float, engine: Any = None,
                also: int = 0) -> dict[str, float]:
    """One step; with ``engine`` the calls are fetched (``fetch_call``) and
    ``also`` is the controller's pid, its CPU per call printed beside."""
    cpu0, also0 = cpu_seconds(pid), cpu_seconds(also) if also else 0.0
    results, achieved = await pace(rate, seconds, (lambda t: fs_call(port, t, hold)) if engine is None else
                                   (lambda t: fetch_call(port, t, hold, engine)))
    cpu = cpu_seconds(pid) - cpu0
    if also:
        await asyncio.sleep(1.0)        # the last hangups' settlements
    also_cpu = (cpu_seconds(also) - also0) if also else 0.0
    ok = [r for r in results if isinstance(r, dict)]
    through = [r for r in ok if r["ended"] and "settle_s" in r and not r["refused"]]
    return {"offered": rate, "achieved": achieved, "n": len(results), "failed": len(results) - len(through),
            **pct("decision", [r["decision_s"] for r in ok if "decision_s" in r]),
            **pct("settle", [r["settle_s"] for r in through]),
            "cpu_ms": 1000 * cpu / max(len(results), 1), "also_ms": 1000 * also_cpu / max(len(results), 1)}


HEAD = (f"{'offered/s':>10} {'achieved/s':>11} {'calls':>6} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} | {'settle p50':>10} {'p99 ms':>7} | {'CPU ms/call':>11} {'controller':>10}")


def row(r: dict[str, float]) -> str:
    return (f"{r['offered']:>10} {r['achieved']:>11.0f} {r['n']:>6} {r['failed']:>7} "
            f"{r.get('decision_p50_ms', 0):>8.1f} {r.get('decision_p99_ms', 0):>8.1f} "
            f"{r.get('decision_max_ms', 0):>8.1f} | {r.get('settle_p50_ms', 0):>10.1f} "
            f"{r.get('settle_p99_ms', 0):>7.1f} | {r['cpu_ms']:>11.2f} {r['also_ms']:>10.2f}")


RATES = (50, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000)


def ladder(label: str, port: int, pid: int, seconds: float, hold: float, rates: tuple[int, ...],
           engine: Any = None, also: int = 0) -> None:
    """Rising paced steps until the p99 passes 1 s or calls fail; then the
    highest rate that held (p99 < 1 s, every call through)."""
    asyncio.run(paced(port, pid, 50, 2, hold, engine, also))  # warm-up, not shown: pools, caches, statements
    time.sleep(hold + 0.5)
    print(f"\n{label}\n{HEAD}", flush=True)
    best, cpu = 0, []
    for rate in rates:
        r = asyncio.run(paced(port, pid, rate, seconds, hold, engine, also))
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
    ap.add_argument("--only", choices=("dustel", "peer", "fetch"))
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    args = ap.parse_args()
    rates = tuple(int(r) for r in args.rates.split(","))
    print(f"FreeSWITCH policy benchmark (outbound Event Socket, recording 10b's event mix): {TENANTS} prepaid "
          f"tenants, {args.seconds:g} s per step, calls talk {args.hold:g} s, {os.cpu_count()} cores (servers, "
          "clients and PostgreSQL share them); decision = connect … bridge, settle = HANGUP_COMPLETE … exit")
    if args.only in (None, "fetch"):
        fetch_ladder(args, rates)
    if args.only in (None, "dustel"):
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
    if args.only in (None, "peer"):
        peer_port = free_port()
        peer = start([sys.executable, __file__, "--peer", str(peer_port)], dict(os.environ), "ready")
        try:
            ladder("bare greenswitch outbound server (myevents, linger, bridge; no database)", peer_port, peer.pid,
                   args.seconds, args.hold, rates)
        finally:
            peer.terminate()
            peer.wait(10)


def fetch_ladder(args: argparse.Namespace, rates: tuple[int, ...]) -> None:
    """The dialplan fetch server, with the controller settling from the
    hangups of the emulated engine it follows."""
    url = fresh_database("dustel_bench_fetch")
    populate(url)
    port = free_port()
    engine = FreeSwitchEmulator()
    engine.start()
    env = {**os.environ, "DUSTEL_XMLCURL_DSN": url, "DUSTEL_XMLCURL_NODES": json.dumps({"127.0.0.1": ""}),
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dustel.agi.xmlcurl", "--port", str(port)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    listening: list[str] = []
    server = start(cmd, env, "listening on", lambda line: listening.append(line) if "listening on" in line else 0)
    ctl = start([sys.executable, "-m", "dustel.controller.esl_main"],
                {**os.environ, "DUSTEL_CONTROLLER_DSN": url, "PYTHONPATH": str(ROOT),
                 "DUSTEL_CONTROLLER_NODES": json.dumps([["bench", "127.0.0.1", engine.port, "ClueCon"]])},
                "live state rebuilt")
    try:
        deadline = time.time() + 30
        while len(listening) + 1 < max(1, args.workers) and time.time() < deadline:
            time.sleep(0.05)
        ladder(f"dustel xmlcurl serve (dialplan fetch{f', {args.workers} workers' if args.workers else ''}; "
               "settled by the controller from its CDR: its CPU per call in the last column)", port, server.pid,
               args.seconds, args.hold, rates, engine=engine, also=ctl.pid)
        import psycopg
        ended = time.monotonic()
        with psycopg.connect(url, autocommit=True) as c:
            while True:          # the controller works through the hangups queued behind the load
                time.sleep(0.5)
                active = c.execute("SELECT count(*) FROM calls WHERE state = 'active'").fetchone()
                if not active or not active[0] or time.monotonic() - ended > 120:
                    break
            done = c.execute("SELECT count(*) FROM calls WHERE state = 'settled'").fetchone()
        print(f"=> after the ladder: {done[0] if done else 0} calls settled by the controller, "
              f"{active[0] if active else 0} still held {time.monotonic() - ended:.1f} s after the last step",
              flush=True)
    finally:
        for p in (server, ctl):
            p.terminate()
            p.wait(10)
        engine.stop()


if __name__ == "__main__":
    main()
