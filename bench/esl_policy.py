"""Call-time policy benchmark, FreeSWITCH side (issue 10): ``dustel esl
serve`` (its own gevent process, greenswitch) driven on loopback by
clients that play FreeSWITCH's side of ``socket … async full`` the way the
recordings show it (``../shared/esl-transcripts/05``, ``08``): the server
sends ``connect`` and gets the channel data, ``myevents``, ``linger``, then
``sendmsg`` executes; an admitted outbound call ends in ``bridge`` — the
far end answers at once (CHANNEL_ANSWER, CHANNEL_BRIDGE), the call talks
``--hold`` seconds, the caller hangs up (CHANNEL_HANGUP, the linger notice,
CHANNEL_UNBRIDGE, the bridge's EXECUTE_COMPLETE, CHANNEL_HANGUP_COMPLETE
with billsec) and the server settles and closes.

    .venv/bin/python bench/esl_policy.py [--seconds 4]

Prints, side by side in one run, the same paced rows as ``bench/policy.py``
(``offered/s achieved/s calls refused p50 ms p99 ms max ms | settle …``):
the decision is the time from the connection to the ``bridge`` that puts
the call through; the settlement the time from HANGUP_COMPLETE to the
server's log line of the settlement (millisecond timestamps) — beside a bare greenswitch outbound server whose
handler does ``connect``, ``myevents`` and one ``set`` (the peer; its
"decision" is that ``set``).  Events and channel data are built from the
recorded ones (the emulator's templates, ``tests/esl_emulator.py``).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._db import fresh_database  # noqa: E402
from bench.policy import TENANTS, free_port, pace, pct, populate, start  # noqa: E402
from dustel.wire import esl as P  # noqa: E402
from tests.esl_emulator import _CHANNEL, _EVENTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_SEQ = iter(range(10**9))


def channel(uuid: str, tenant: int, dest: str) -> dict[str, str]:
    h = {k: v for k, v in _CHANNEL.items() if not k.startswith("variable_dustel")}
    for k in ("Unique-ID", "Channel-Call-UUID", "Caller-Unique-ID", "variable_uuid", "variable_call_uuid"):
        h[k] = uuid
    for k in ("Channel-Destination-Number", "Caller-Destination-Number"):
        h[k] = dest
    h.update({"variable_dustel_tenant": str(tenant), "variable_dustel_domain": f"t{tenant}.sip.dustel.de",
              "variable_user_name": f"000387{tenant:06d}", "variable_sip_network_ip": "192.0.2.10",
              "variable_domain_name": f"t{tenant}.sip.dustel.de", "FreeSWITCH-Switchname": "bench"})
    return h


# The client plays FreeSWITCH and must not be the bottleneck: most of a
# call's ~80 header values are the same in every call, so their encoding is
# remembered, and a call's header lines are made once, not per event
# (encoding every value of every event kept one core busy at 300 calls/s,
# and the server's figures above that were the client's).
_quote = functools.lru_cache(maxsize=65536)(P.url_encode)


def event(lines: dict[str, str], name: str, **extra: str) -> bytes:
    """The channel's event ``name``: ``lines`` are the channel's header
    lines (``P.header_lines`` of ``channel()``), as ``P.encode_plain`` of
    the same headers would write them."""
    tpl = _EVENTS.get(name, _EVENTS["CHANNEL_STATE"])
    h = {k: tpl[k] for k in ("Event-Calling-Function", "Event-Calling-Line-Number", "Answer-State", "Channel-State")
         if k in tpl}
    h.update({"Event-Name": name, "Event-Sequence": str(next(_SEQ)), **extra})
    body = P.plain_block({**lines, **P.header_lines(h, _quote)}.values())
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body


def reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


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


async def fs_call(port: int, tenant: int, hold: float, dest: str = "01701234567") -> dict[str, float | bool]:
    """One call handed to the socket, as FreeSWITCH plays it."""
    uuid = f"be{os.getpid():06d}-0000-4000-8000-{next(_SEQ):012d}"
    base = channel(uuid, tenant, dest)
    lines = P.header_lines(base, _quote)
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: dict[str, float | bool] = {"refused": False}
    events = False
    try:
        while True:
            cmd = await read_command(reader)
            if cmd is None:
                break
            name, headers = cmd
            if name == "connect":
                writer.write(P.encode_plain({**base, "Content-Type": "command/reply", "Reply-Text": "+OK\n",
                                             "Socket-Mode": "async", "Control": "full"}, quote=_quote))
            elif name == "myevents":
                events = True
                writer.write(reply("+OK Events Enabled"))
            elif name == "linger":
                writer.write(reply("+OK will linger"))
            elif name == "exit":
                writer.write(reply("+OK bye"))
                break
            elif name == "sendmsg":
                writer.write(reply("+OK"))
                app, arg = headers.get("execute-app-name", ""), headers.get("execute-app-arg", "")
                app_h = {"Application": app, "Application-Data": arg, "Application-UUID": uuid}
                if events:
                    writer.write(event(lines, "CHANNEL_EXECUTE", **app_h))
                if app in ("bridge", "set") and "decision_ms" not in out and (app == "bridge" or port_is_peer):
                    out["decision_ms"] = 1000 * (time.perf_counter() - t0)
                if app == "bridge":
                    writer.write(event(lines, "CHANNEL_ANSWER", **{"Answer-State": "answered"}))
                    writer.write(event(lines, "CHANNEL_BRIDGE", **{"Other-Leg-Destination-Number": dest}))
                    await writer.drain()
                    await asyncio.sleep(hold)
                    gone = {"Answer-State": "hangup", "Hangup-Cause": "NORMAL_CLEARING"}
                    writer.write(event(lines, "CHANNEL_HANGUP", **gone))
                    writer.write(b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: " + uuid.encode()
                                 + b"\nContent-Disposition: linger\nLinger-Time: -1\nContent-Length: 0\n\n")
                    writer.write(event(lines, "CHANNEL_UNBRIDGE", **gone))
                    writer.write(event(lines, "CHANNEL_EXECUTE_COMPLETE", **app_h, **gone))
                    writer.write(event(lines, "CHANNEL_HANGUP_COMPLETE", **gone, variable_billsec=str(int(hold)),
                                       variable_duration=str(int(hold))))
                    HANGUPS[uuid] = time.time()
                    await writer.drain()
                    break          # FreeSWITCH closes the lingering socket after the channel is gone
                if app in ("respond", "hangup"):
                    out["refused"] = app == "respond"
                    gone = {"Answer-State": "hangup", "Hangup-Cause": "CALL_REJECTED"}
                    writer.write(event(lines, "CHANNEL_HANGUP", **gone))
                    writer.write(event(lines, "CHANNEL_HANGUP_COMPLETE", **gone, variable_billsec="0"))
                elif events:
                    writer.write(event(lines, "CHANNEL_EXECUTE_COMPLETE", **app_h))
            await writer.drain()
    finally:
        writer.close()
    return out


port_is_peer = False
HANGUPS: dict[str, float] = {}    # uuid -> when HANGUP_COMPLETE was sent (wall clock)
SETTLED: dict[str, float] = {}    # uuid -> when the server logged the settlement (its log line's time)


def watch(line: str) -> None:
    """The server's log: ``… hangup call=<uuid> … status=settled`` lines, with
    their timestamps (milliseconds), are the settlement's end."""
    import datetime as dt
    if " hangup call=" in line:
        stamp, _, rest = line.partition(" dustel.esl ")
        uuid = rest.split("call=", 1)[1].split()[0]
        SETTLED[uuid] = dt.datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S,%f").timestamp()


async def paced(port: int, rate: int, seconds: float, hold: float) -> dict[str, float]:
    results, achieved = await pace(rate, seconds, lambda t: fs_call(port, t, hold))
    ok = [r for r in results if isinstance(r, dict)]
    lat = [r["decision_ms"] / 1000 for r in ok if "decision_ms" in r]
    deadline = time.time() + 30
    while time.time() < deadline and any(u not in SETTLED for u in HANGUPS):
        await asyncio.sleep(0.05)         # the last settlements' log lines
    settle = [max(0.0, SETTLED[u] - t) for u, t in HANGUPS.items() if u in SETTLED]
    HANGUPS.clear()
    return {"offered": rate, "achieved": achieved, "n": len(results),
            "refused": sum(1 for r in ok if r.get("refused")) + (len(results) - len(ok)),
            **pct("decision", lat), **pct("settle", settle)}


def peer_server(port: int) -> None:
    """Bare greenswitch: its OutboundESLServer, a handler that connects,
    subscribes and executes one ``set`` (no database)."""
    from gevent import monkey
    monkey.patch_all()
    from greenswitch.esl import OutboundESLServer

    class Trivial:
        def __init__(self, session):  # type: ignore[no-untyped-def]
            self.session = session

        def run(self) -> None:
            self.session.connect()
            self.session.myevents()
            self.session.call_command("set", "dustel_action=admit")
            self.session.stop()

    server = OutboundESLServer(bind_address="127.0.0.1", bind_port=port, application=Trivial, max_connections=5000)
    print("ready", flush=True)
    server.listen()


def row(r: dict[str, float]) -> str:
    return (f"{r['offered']:>10} {r['achieved']:>11.0f} {r['n']:>6} {r['refused']:>8} "
            f"{r.get('decision_p50_ms', 0):>7.2f} {r.get('decision_p99_ms', 0):>7.2f} "
            f"{r.get('decision_max_ms', 0):>7.1f} | {r.get('settle_p50_ms', 0):>10.2f} "
            f"{r.get('settle_p99_ms', 0):>7.2f}")


def main() -> None:
    global port_is_peer
    if len(sys.argv) == 3 and sys.argv[1] == "--peer":
        peer_server(int(sys.argv[2]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--hold", type=float, default=1.0)
    args = ap.parse_args()
    url = fresh_database("dustel_bench_esl")
    populate(url)
    port, peer_port = free_port(), free_port()
    env = {**os.environ, "DUSTEL_ESL_DSN": url, "DUSTEL_ESL_NODES": json.dumps({"127.0.0.1": ""})}
    dustel = start([sys.executable, "-m", "dustel.agi.esl_main", "--port", str(port)], env, "listening on", watch)
    peer = start([sys.executable, __file__, "--peer", str(peer_port)], env, "ready")
    try:
        print(f"FreeSWITCH policy benchmark (outbound Event Socket): {TENANTS} prepaid tenants, {args.seconds:.0f} s "
              f"per step, calls talk {args.hold:g} s, {os.cpu_count()} cores (server, clients and PostgreSQL "
              "share them)\n")
        head = (f"{'offered/s':>10} {'achieved/s':>11} {'calls':>6} {'refused':>8} {'p50 ms':>7} {'p99 ms':>7} "
                f"{'max ms':>7} | {'settle p50':>10} {'p99 ms':>7}")
        print("dustel esl serve: decision = connect … bridge (admit + reservation); settle = HANGUP_COMPLETE … settled")
        print(head)
        for rate in (100, 500, 1000):
            print(row(asyncio.run(paced(port, rate, args.seconds, args.hold))), flush=True)
        port_is_peer = True
        print("\nbare greenswitch outbound server, trivial handler (connect, myevents, one set): decision = … set")
        print(head)
        for rate in (100, 500, 1000):
            print(row(asyncio.run(paced(peer_port, rate, args.seconds, args.hold))), flush=True)
    finally:
        for p in (dustel, peer):
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
