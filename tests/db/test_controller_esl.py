"""The controller's FreeSWITCH side — the real gevent process — against the
Event Socket emulator, on a real database: live state, one CDR per leg,
registrations, reconnect and rebuild, malformed events."""
from __future__ import annotations

import socket
import time
from typing import Any

import psycopg
import pytest

from tests.db.conftest import Controller
from tests.esl_emulator import DISCONNECT, FreeSwitchEmulator, Replayer, event_frame, load, wait_for
from tests.factories import account, tenant


@pytest.fixture
def org(conn: psycopg.Connection) -> dict[str, Any]:
    t = tenant(conn)
    return {"t": t, "u": account(conn, t["id"]), "v": account(conn, t["id"])}


def cdrs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM cdrs ORDER BY started_at, call_id").fetchall()


def live(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM live_channels ORDER BY created_at").fetchall()


def out_vars(org: dict[str, Any], user: str | None = None) -> dict[str, str]:
    return {"dustel_tenant": str(org["t"]["id"]), "user_name": user or org["u"]}


def test_a_call_gives_live_state_then_exactly_one_cdr(fs: FreeSwitchEmulator, controller: Controller,
                                                      conn: psycopg.Connection, org: dict[str, Any]) -> None:
    t0 = time.time() - 100
    uuid = fs.call(org["u"], "01701234567", out_vars(org), t0=t0)
    row = wait_for(lambda: live(conn), what="live channel")[0]
    assert (row["tenant_id"], row["direction"], row["account"], row["callee"]) == \
        (org["t"]["id"], "out", org["u"], "01701234567")
    fs.answer(uuid, at=t0 + 10)
    wait_for(lambda: live(conn)[0]["answered_at"] is not None, what="answer")
    per_tenant = conn.execute("SELECT * FROM live_calls_per_tenant").fetchall()
    assert [(r["tenant_id"], r["direction"], r["calls"]) for r in per_tenant] == [(org["t"]["id"], "out", 1)]
    hup = fs.hangup(uuid, at=t0 + 75)
    c = wait_for(lambda: cdrs(conn), what="cdr")[0]
    assert (c["node"], c["call_id"], c["engine"], c["tenant_id"], c["account"], c["direction"]) == \
        ("fs1", uuid, "freeswitch", org["t"]["id"], org["u"], "out")
    assert (c["billsec"], c["hangup_cause"], c["caller"], c["callee"]) == (65, "NORMAL_CLEARING", org["u"],
                                                                          "01701234567")
    assert abs(c["started_at"].timestamp() - t0) < 0.01 and abs(c["ended_at"].timestamp() - (t0 + 75)) < 0.01
    assert live(conn) == []
    # the same hangup replayed, and a late answer for the dead leg: nothing changes
    fs.emit(hup)
    fs.emit({"Event-Name": "CHANNEL_ANSWER", "Unique-ID": uuid, "Caller-Channel-Answered-Time": "1"})
    marker = fs.call("x", "y", {})
    wait_for(lambda: any(r["call_id"] == marker for r in live(conn)), what="later event applied")
    assert len(cdrs(conn)) == 1 and [r["call_id"] for r in live(conn)] == [marker]


def test_registrations_follow_the_engine(fs: FreeSwitchEmulator, controller: Controller, conn: psycopg.Connection,
                                         org: dict[str, Any]) -> None:
    fs.register(org["u"], org["t"]["sip_domain"])
    fs.register(org["v"], org["t"]["sip_domain"], ip="192.0.2.21")
    wait_for(lambda: len(conn.execute("SELECT * FROM online_accounts").fetchall()) == 2, what="registrations")
    r = conn.execute("SELECT * FROM registrations WHERE username = %s", (org["u"],)).fetchone()
    assert r["tenant_id"] == org["t"]["id"] and r["source"] == "192.0.2.20:5060" and r["contact"].startswith("sip:")
    fs.unregister(org["v"])
    wait_for(lambda: [x["username"] for x in conn.execute("SELECT * FROM online_accounts").fetchall()] == [org["u"]],
             what="unregistration")


def test_a_tls_account_registering_over_udp_is_dropped(fs: FreeSwitchEmulator, controller: Controller,
                                                       conn: psycopg.Connection, org: dict[str, Any]) -> None:
    """Issue 16.3: no engine can tie one account to one transport, so the
    controller drops a TLS account's binding made over UDP at once (by its
    Call-ID, not the user's other bindings) and never stores it; over TLS it
    stays.  A plain binding made while the controller was away goes at the
    rebuild."""
    conn.execute("UPDATE sip_accounts SET tls_mode = 'tls_only' WHERE username = %s", (org["u"],))
    over_tls = fs.register(org["u"], org["t"]["sip_domain"], transport="tls")
    over_udp = fs.register(org["u"], org["t"]["sip_domain"], ip="192.0.2.66")
    fs.register(org["v"], org["t"]["sip_domain"], ip="192.0.2.21")      # not a TLS account: UDP is fine
    wait_for(lambda: over_udp in fs.flushed, what="the plain binding flushed")
    wait_for(lambda: len(conn.execute("SELECT * FROM registrations").fetchall()) == 2, what="two bindings stored")
    rows = conn.execute("SELECT username, contact FROM registrations ORDER BY username").fetchall()
    assert sorted((r["username"], r["contact"]) for r in rows) == sorted(
        [(org["u"], f"sip:{org['u']}@192.0.2.20:5060;transport=tls"), (org["v"], f"sip:{org['v']}@192.0.2.21:5060")])
    assert [r["token"] for r in fs.registrations if r["reg_user"] == org["u"]] == [over_tls]
    assert fs.flushed == [over_udp]

    fs.stop(keep_channels=True)
    late = fs.register(org["u"], org["t"]["sip_domain"], ip="192.0.2.67")
    fs.start()
    wait_for(lambda: late in fs.flushed, what="the plain binding made meanwhile flushed at the rebuild")
    assert [r["token"] for r in fs.registrations if r["reg_user"] == org["u"]] == [over_tls]


def test_engine_restart_mid_traffic_rebuilds_without_lost_or_doubled_cdrs(
        fs: FreeSwitchEmulator, controller: Controller, conn: psycopg.Connection, org: dict[str, Any]) -> None:
    calls = [fs.call(org["u"], f"0211{i}", out_vars(org)) for i in range(4)]
    for u in calls:
        fs.answer(u)
    wait_for(lambda: len(live(conn)) == 4, what="4 live calls")
    fs.hangup(calls[0])
    wait_for(lambda: len(cdrs(conn)) == 1, what="first cdr")

    # the socket drops, calls go on; one ends and one starts while nobody listens
    fs.stop(keep_channels=True)
    ended_unseen = calls[1]
    fs.channels.pop(ended_unseen)
    started_unseen = fs.call(org["v"], "02119", out_vars(org, org["v"]))
    fs.register(org["u"], org["t"]["sip_domain"])
    fs.start()
    wait_for(lambda: fs.subscribed() == 1, what="reconnect")
    wait_for(lambda: {r["call_id"] for r in live(conn)} == {calls[2], calls[3], started_unseen}, what="rebuild")
    lost = wait_for(lambda: [c for c in cdrs(conn) if c["call_id"] == ended_unseen], what="lost cdr")[0]
    assert lost["hangup_cause"] == "LOST_WHILE_DISCONNECTED" and lost["tenant_id"] == org["t"]["id"]
    row = [r for r in live(conn) if r["call_id"] == started_unseen][0]
    assert row["tenant_id"] == org["t"]["id"]                  # fetched with uuid_getvar
    assert conn.execute("SELECT count(*) AS n FROM registrations").fetchone()["n"] == 1

    # the engine itself restarts: its calls are gone
    fs.stop()
    fs.start()
    wait_for(lambda: fs.subscribed() == 1, what="reconnect after restart")
    wait_for(lambda: live(conn) == [], what="all closed")
    fs.hangup(fs.call(org["u"], "0211", out_vars(org)))
    wait_for(lambda: len(cdrs(conn)) == 6, what="six cdrs")
    all_cdrs = cdrs(conn)
    assert len({c["call_id"] for c in all_cdrs}) == 6
    assert sorted(c["hangup_cause"] for c in all_cdrs) == ["LOST_WHILE_DISCONNECTED"] * 4 + ["NORMAL_CLEARING"] * 2
    assert fs.commands.count("event plain " + fs.commands[1].split(" ", 2)[2]) == 3   # one subscription each time


def test_malformed_events_are_skipped(fs: FreeSwitchEmulator, controller: Controller, conn: psycopg.Connection,
                                      org: dict[str, Any]) -> None:
    good = fs.call(org["u"], "0211", out_vars(org))
    wait_for(lambda: live(conn), what="first call")
    fs.send_raw(b"Content-Length: 12x\nContent-Type: text/event-plain\n\n")                 # bad length
    fs.send_raw(event_frame({"Event-Name": "CHANNEL_CREATE", "Unique-ID": "u-bad"}).replace(b"u-bad", b"%FF%FE"))
    fs.send_raw(b"Content-Length: 4\nContent-Type: text/event-xml\n\n<a/>")                  # unknown type
    fs.send_raw(event_frame({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": good,
                             "variable_dustel_tenant": "99999999999999999999", "variable_billsec": "x"}))
    second = fs.call(org["u"], "0212", out_vars(org))
    wait_for(lambda: {r["call_id"] for r in live(conn)} == {second}, what="later events applied")
    assert [c["billsec"] for c in cdrs(conn)] == [0]
    assert controller.proc.poll() is None
    assert any("malformed" in line for line in controller.log)


# ----------------------------------------------- byte-faithful emulator

def converse(port: int, commands: list[bytes]) -> bytes:
    """Send each command after reading everything the emulator sent before it
    (until it pauses for 0.2 s or closes)."""
    out = b""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(0.2)
        for cmd in [None, *commands]:
            if cmd is not None:
                s.sendall(cmd)
            while True:
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    return out
                out += chunk
    return out


def test_emulator_answers_byte_for_byte_like_the_recordings(fs: FreeSwitchEmulator) -> None:
    steps = load("01-inbound-auth-ok-and-bad")
    first_session = b"".join(d for direction, d in steps[:7] if direction == "fs->client")
    assert converse(fs.port, [b"auth ClueCon\n\n", b"exit\n\n"]) == first_session
    bad = b"".join(d for direction, d in steps[7:] if direction == "fs->client")
    assert converse(fs.port, [b"auth wrong-password\n\n"]) == bad
    rec = load("02-api-commands")
    for cmd in (b"api show channels as json\n\n", b"api reloadxml\n\n", b"api sofia profile internal rescan\n\n",
                b"api no_such_command\n\n", b"api uuid_kill 00000000-0000-0000-0000-000000000000\n\n",
                b"bgapi status\nJob-UUID: 7f4db78a-17d7-11ee-9ad6-000000000001\n\n",
                b"event plain BACKGROUND_JOB\n\n"):
        i = rec.index(("client->fs", cmd))
        expected = rec[i + 1][1]
        got = converse(fs.port, [b"auth ClueCon\n\n", cmd])
        assert got.startswith(b"Content-Type: auth/request\n\nContent-Type: command/reply\nReply-Text: +OK accepted"
                              b"\n\n")
        assert got.split(b"+OK accepted\n\n", 1)[1].startswith(expected), cmd
    assert DISCONNECT in first_session


def test_dustel_reader_reads_the_recorded_api_session() -> None:
    """The controller's greenswitch session (dustel reader) against a replay of
    real FreeSWITCH: every api reply, bgapi Job-UUID and the BACKGROUND_JOB."""
    import gevent

    from dustel.wire.esl_reader import DustelInbound
    rep = Replayer("02-api-commands")
    port = rep.serve()
    esl = DustelInbound("127.0.0.1", port, "ClueCon")
    esl.connect()
    jobs: list[Any] = []
    esl.register_handle("BACKGROUND_JOB", jobs.append)
    sent = [d.decode()[:-2] for direction, d in load("02-api-commands")[1:] if direction == "client->fs"]
    replies = {}
    for cmd in sent[1:-1]:
        replies[cmd] = esl.send(cmd).data
    while not jobs:
        gevent.sleep(0.01)
    esl.stop()
    rep.done.wait(5)
    assert rep.mismatch == []
    assert replies["api show channels as json"] == '{"row_count": 0}\n'
    assert replies["api no_such_command"].startswith("-ERR no_such_command")
    assert replies["api global_getvar domain"] == "127.0.0.1"
    assert replies["bgapi status\nJob-UUID: 7f4db78a-17d7-11ee-9ad6-000000000001"] == \
        "+OK Job-UUID: 7f4db78a-17d7-11ee-9ad6-000000000001"
    assert jobs[0].data.name == "BACKGROUND_JOB" and jobs[0].data.body.startswith("-ERR")


def test_wrong_password_is_refused_cleanly() -> None:
    from greenswitch.esl import NotConnectedError

    from dustel.wire.esl_reader import DustelInbound
    rep = Replayer("01-inbound-auth-ok-and-bad")
    port = rep.serve()
    ok = DustelInbound("127.0.0.1", port, "ClueCon")
    ok.connect()
    ok.stop()
    bad = DustelInbound("127.0.0.1", port, "wrong-password")
    with pytest.raises((ValueError, NotConnectedError)):
        bad.connect()
    bad.sock.close()
    rep.done.wait(5)
    assert rep.mismatch == []


def test_a_database_error_during_connect_never_ends_the_follower(fs: FreeSwitchEmulator) -> None:
    """Issue 15.11: a database error while (re)connecting killed the node's
    follower for good.  With the database unreachable the follower keeps
    trying (issue 27: it follows a node only while it holds the node's lease,
    a lock in that database — it stands by, and never dies)."""
    c = Controller("postgresql://nobody@127.0.0.1:1/nowhere?connect_timeout=1", fs.port)
    try:
        wait_for(lambda: sum("lease not tried" in line for line in c.log) >= 2, 60, "the lease tried again")
        assert c.proc.poll() is None and fs.subscribed() == 0        # standing by, alive
    finally:
        c.stop()


def test_a_controller_that_cannot_reach_its_node_gives_the_lease_up(db_url: str) -> None:
    """Issue 27: a controller holding a node's lease but cut off from the
    engine (a network split between its host and the node) kept the lease,
    so a controller that could reach the node never took it over.  Out of
    reach for GIVE_UP seconds, it releases the lease and stands back."""
    import socket

    from dustel.controller.lease import Lease
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()                                          # nothing listens: the engine is out of reach
    c = Controller(db_url, port, give_up=1.0)
    other = Lease(db_url, "fs1")
    try:
        wait_for(lambda: any("lease given up for another controller" in line for line in c.log), 60,
                 "the lease given up")
        assert wait_for(other.try_acquire, 30, "the other controller taking the lease")
        assert c.proc.poll() is None                      # it stands by, alive
    finally:
        other.release()
        c.stop()


def test_an_asterisk_controller_that_cannot_reach_its_node_gives_the_lease_up(db_url: str) -> None:
    """The same rule in the Asterisk controller (asyncio, panoramisk): no
    AMI login for GIVE_UP seconds, the lease is released."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import threading

    from dustel.controller.lease import Lease
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    env = {**os.environ, "DUSTEL_CONTROLLER_NODES": json.dumps([["ast1", "127.0.0.1", port, "dustel", "x"]]),
           "DUSTEL_CONTROLLER_DSN": db_url, "DUSTEL_CONTROLLER_GIVE_UP": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dustel.controller.ami_main"], env=env, stderr=subprocess.PIPE,
                            text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()   # type: ignore[arg-type]
    other = Lease(db_url, "ast1")
    try:
        wait_for(lambda: any("lease given up for another controller" in line for line in list(log)), 60,
                 "the lease given up")
        assert wait_for(other.try_acquire, 30, "the other controller taking the lease")
        assert proc.poll() is None
    finally:
        other.release()
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_a_silent_connection_is_dropped_and_rebuilt(db_url: str, fs: FreeSwitchEmulator) -> None:
    """Issue 15.11: a half-open connection (no HEARTBEAT, nothing at all)
    was followed for ever.  The watchdog reconnects and rebuilds."""
    c = Controller(db_url, fs.port, watchdog=1.0)
    try:
        fs.wait_sessions_closed(2, timeout=60)
        wait_for(lambda: any("no HEARTBEAT" in line for line in c.log), what="the watchdog's log line")
        wait_for(lambda: sum("live state rebuilt" in line for line in c.log) >= 2, what="a second rebuild")
    finally:
        c.stop()


def test_a_lost_settlement_is_billed_from_the_controllers_cdr(fs: FreeSwitchEmulator, controller: Controller,
                                                             conn: psycopg.Connection, org: dict[str, Any]) -> None:
    """Issue 15.8: a call whose settlement was lost (policy server restarted,
    hangup missed) expired unbilled.  The controller settles it from the
    engine's hangup (its CDR); a replayed hangup charges nothing more."""
    from dustel.callpath import calls
    from dustel.callpath.policy import CallRequest
    conn.execute("INSERT INTO rates (prefix, cents_per_minute) VALUES ('49', 1), ('4917', 9)")
    calls.run_sync(conn, calls.topup(org["t"]["id"], 1000, "bank:cdr"))
    t0 = time.time() - 100
    uuid = fs.call(org["u"], "01701234567", out_vars(org), t0=t0)
    d = calls.run_sync(conn, calls.admit(CallRequest(direction="out", tenant_id=org["t"]["id"], account=org["u"],
                                                     caller="", callee="01701234567", node="fs1", call_id=uuid),
                                         calls.run_sync(conn, calls.load_tariff())))
    assert d.admit
    fs.answer(uuid, at=t0 + 10)
    hup = fs.hangup(uuid, at=t0 + 70)
    wait_for(lambda: conn.execute("SELECT 1 FROM cdrs WHERE call_id = %s", (uuid,)).fetchone(), what="the CDR")
    row = wait_for(lambda: (r := conn.execute("SELECT * FROM calls WHERE call_id = %s", (uuid,)).fetchone())
                   and r["state"] == "settled" and r, what="settled from the CDR")
    assert (row["billsec"], row["charged_cents"]) == (60, 9)
    m = conn.execute("SELECT * FROM tenant_money WHERE tenant_id = %s", (org["t"]["id"],)).fetchone()
    assert (m["balance_cents"], m["reserved_cents"]) == (991, 0)
    fs.emit(hup)                                                     # replayed: nothing more
    marker = fs.call("x", "y", {})
    fs.hangup(marker)
    wait_for(lambda: conn.execute("SELECT 1 FROM cdrs WHERE call_id = %s", (marker,)).fetchone(), what="marker")
    assert conn.execute("SELECT balance_cents FROM tenant_money WHERE tenant_id = %s",
                        (org["t"]["id"],)).fetchone()["balance_cents"] == 991
    assert any("settled from the CDR" in line for line in controller.log)


def test_sofia_expire_ends_the_registration(fs: FreeSwitchEmulator, controller: Controller,
                                            conn: psycopg.Connection, org: dict[str, Any]) -> None:
    """Issue 15.19: ``sofia::expire`` names the user in the header ``user``
    (mod_sofia sofia_reg.c) and was ignored: the registration stayed."""
    fs.register(org["u"], org["t"]["sip_domain"])
    wait_for(lambda: conn.execute("SELECT 1 FROM registrations WHERE username = %s", (org["u"],)).fetchone(),
             what="registered")
    fs.emit({"Event-Name": "CUSTOM", "Event-Subclass": "sofia::expire", "profile-name": "internal",
             "user": org["u"], "host": org["t"]["sip_domain"], "contact": f"sip:{org['u']}@192.0.2.20:5060",
             "expires": "0"})
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM registrations").fetchone()["n"] == 0,
             what="the expired registration removed")


def test_an_engine_crash_settles_the_reservations_of_its_lost_calls_at_once(
        fs: FreeSwitchEmulator, controller: Controller, conn: psycopg.Connection, org: dict[str, Any]) -> None:
    """Issue 32.4: FreeSWITCH killed with calls up and restarted: the
    controller wrote their CDRs (LOST_WHILE_DISCONNECTED) but their
    reservations stayed active for 5 h, holding the tenant's credit, and
    ``billing reconcile`` listed every one.  At the rebuild each lost call
    is settled from its CDR; one the controller never saw (no CDR) and the
    legs dustel placed for a lost call are released; a call the engine still
    has keeps its reservation."""
    from dustel.billing import reconcile
    from dustel.callpath import calls
    from dustel.callpath.policy import CallRequest
    conn.execute("INSERT INTO rates (prefix, cents_per_minute) VALUES ('49', 1), ('4917', 9)")
    conn.execute("UPDATE plans SET lines_in = 10, lines_out = 10")          # five calls at once
    conn.execute("UPDATE tenants SET monthly_credit_limit_cents = 100000 WHERE id = %s", (org["t"]["id"],))
    calls.run_sync(conn, calls.topup(org["t"]["id"], 5000, "bank:crash"))
    tariff = calls.run_sync(conn, calls.load_tariff())
    t0 = time.time() - 100

    def admit(call_id: str) -> None:
        d = calls.run_sync(conn, calls.admit(CallRequest(direction="out", tenant_id=org["t"]["id"], account=org["u"],
                                                         caller="", callee="01701234567", node="fs1",
                                                         call_id=call_id), tariff))
        assert d.admit

    up = [fs.call(org["u"], "01701234567", out_vars(org), t0=t0) for _ in range(3)]
    for u in up:
        admit(u)
        fs.answer(u, at=t0 + 10)
    unseen = "0dd5e1a0-dead-4000-8000-000000000001"          # admitted, its channel never reached the controller
    admit(unseen)
    leg = calls.run_sync(conn, calls.admit_leg(CallRequest(direction="out", tenant_id=org["t"]["id"], account=org["u"],
                                                           caller="", callee="01701234567", node="fs1",
                                                           call_id=up[0]), "01701234567", tariff))[0]
    wait_for(lambda: len([r for r in live(conn) if r["answered_at"]]) == 3, what="three answered calls")
    held = conn.execute("SELECT reserved_cents FROM tenant_money WHERE tenant_id = %s",
                        (org["t"]["id"],)).fetchone()["reserved_cents"]
    assert held > 0

    fs.stop(keep_channels=True)          # the engine dies; when it is back only up[2] is still there
    for u in up[:2]:
        fs.channels.pop(u)
    fs.start()
    wait_for(lambda: fs.subscribed() == 1, what="reconnect")
    rows = wait_for(lambda: (r := {c["call_id"]: c for c in conn.execute("SELECT * FROM calls").fetchall()})
                    and all(r[c]["state"] == "settled" for c in (up[0], up[1], unseen, leg.call_id)) and r,
                    what="the lost calls settled at the rebuild", timeout=10)
    lost = {c["call_id"]: c for c in cdrs(conn)}
    for u in up[:2]:
        assert lost[u]["hangup_cause"] == "LOST_WHILE_DISCONNECTED"
        assert rows[u]["billsec"] == lost[u]["billsec"] >= 90 and rows[u]["charged_cents"] > 0
    assert (rows[unseen]["billsec"], rows[unseen]["charged_cents"]) == (0, 0)
    assert (rows[leg.call_id]["billsec"], rows[leg.call_id]["charged_cents"]) == (0, 0)
    assert rows[up[2]]["state"] == "active"
    m = conn.execute("SELECT * FROM tenant_money WHERE tenant_id = %s", (org["t"]["id"],)).fetchone()
    assert m["reserved_cents"] == rows[up[2]]["reserved_cents"] > 0
    assert calls.run_sync(conn, reconcile.reconcile()) == []
    assert any("lost with the engine: settled from the CDR" in line for line in controller.log)


def test_one_controller_follows_a_node_and_another_takes_it_over_when_it_dies(
        db_url: str, fs: FreeSwitchEmulator) -> None:
    """Issue 27: several controllers, each node followed by exactly one (a
    PostgreSQL advisory lock per node on the follower's own connection).
    The second stands by; SIGKILL the first and its connection — and so the
    lock — is gone: the second takes the node over and rebuilds."""
    first = Controller(db_url, fs.port)
    try:
        wait_for(lambda: fs.subscribed() == 1, what="the first controller following fs1")
        second = Controller(db_url, fs.port)
        try:
            wait_for(lambda: any("standing by" in line for line in second.log), what="the second standing by")
            assert fs.subscribed() == 1                          # exactly one follows the node
            first.proc.kill()
            first.stop()                                         # reaps it, closes its pipe
            wait_for(lambda: any("live state rebuilt" in line for line in second.log), 30,
                     "the second taking fs1 over")
            assert fs.subscribed() == 1                          # the second's, the first's gone with it
        finally:
            second.stop()
    finally:
        if first.proc.returncode is None:
            first.stop()
