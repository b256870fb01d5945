"""The FreeSWITCH path of the call-time policy: ``dustel esl serve`` (the real
gevent process, greenswitch) against the Event Socket emulator opening
outbound connections the way FreeSWITCH does, on a real database."""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dustel.callpath import calls
from dustel.provisioning import numbers, targets
from dustel.wire import esl as P
from tests.db.conftest import RATES
from tests.esl_emulator import OutboundCall, Replayer, load, parse_command, read_command, wait_for
from tests.factories import account, tenant
from tests.net import connect_burst
from tests.processes import ServerProcess, served_cmdline


class Server(ServerProcess):
    """``python -m dustel.agi.esl_main`` as ``dustel esl serve`` execs it."""

    def __init__(self, db_url: str, nodes: dict[str, str] | None = None,
                 extra_env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 open_files: int | None = None) -> None:
        env = {**os.environ, "DUSTEL_ESL_DSN": db_url, "DUSTEL_ESL_NODES": json.dumps(nodes or {}), **(extra_env or {})}

        def limit_files() -> None:     # (in the child) as systemd starts a service: a low soft limit
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        super().__init__([sys.executable, "-m", "dustel.agi.esl_main", "--port", "0", *args], env, "esl server",
                         preexec_fn=limit_files)


@pytest.fixture
def server(db_url: str) -> Iterator[Server]:
    s = Server(db_url)
    yield s
    s.stop()
    assert s.proc.returncode is not None


def outbound(server: Server, p: dict[str, Any], dest: str, **kw: Any) -> OutboundCall:
    variables = {"dustel_tenant": str(p["tenant"]["id"]), "dustel_domain": p["tenant"]["sip_domain"],
                 "user_name": p["user"], "sip_network_ip": kw.pop("ip", "192.0.2.10"),
                 "domain_name": p["tenant"]["sip_domain"]}
    variables.update(kw.pop("variables", {}))
    call = OutboundCall(server.port, dest, variables, **kw)
    call.start()
    return call.wait()


def money(conn: psycopg.Connection, tid: int) -> dict[str, Any]:
    return conn.execute("SELECT * FROM tenant_money WHERE tenant_id = %s", (tid,)).fetchone()


def call_row(conn: psycopg.Connection, call_id: str) -> dict[str, Any]:
    return conn.execute("SELECT * FROM calls WHERE node = 'vm' AND call_id = %s", (call_id,)).fetchone()


def test_admitted_call_is_limited_bridged_and_settled(server: Server, conn: psycopg.Connection,
                                                      prepaid: dict[str, Any]) -> None:
    c = outbound(server, prepaid, "01701234567", callee=("answer", 2000))
    assert c.commands[:2] == ["connect", "myevents"] and c.commands[4:6] == ["filter Application bridge", "linger"]
    assert c.executed == [
        ("set", "socket_resume=false"),                 # the plan taken: it no longer resumes to the refusal
        ("set", "dustel_action=admit"), ("set", "dustel_reason=ok"),
        ("set", "effective_caller_id_number=+492111234567"),
        ("set", "execute_on_answer=sched_hangup +666 ALLOTTED_TIMEOUT"),
        ("set", "hangup_after_bridge=true"),
        ("bridge", "sofia/gateway/carrier/+491701234567"),
        ("sched_hangup", "+666 ALLOTTED_TIMEOUT"),      # fired by FreeSWITCH on answer
    ]
    assert (c.hangup_cause, c.billsec) == ("ALLOTTED_TIMEOUT", 666)
    row = wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] == "settled" and r, what="settlement")
    assert (row["billsec"], row["charged_cents"]) == (666, 100)      # 666 s at 9 ct/min, per second
    m = money(conn, prepaid["tenant"]["id"])
    assert (m["balance_cents"], m["reserved_cents"]) == (0, 0)
    assert c.closed_by_client and c.commands[-1] == "exit"


def test_a_call_subscribes_only_to_the_events_its_decision_waits_for(server: Server, conn: psycopg.Connection,
                                                                     prepaid: dict[str, Any]) -> None:
    """Issue 32.2: ``myevents`` alone brought every event of the channel (14
    for a bridged call, ~100 KB: recording 10b).  The server takes out the
    event types it never reads (``nixevent``) and filters the rest (ORed,
    recording 10): a bridged call brings the bridge's EXECUTE_COMPLETE and
    HANGUP_COMPLETE; that the caller hung up is the linger notice."""
    c = outbound(server, prepaid, "01701234567", callee=("answer", 20))
    assert c.commands[1:6] == [
        "myevents",
        "nixevent CHANNEL_ANSWER CHANNEL_APPLICATION CHANNEL_BRIDGE CHANNEL_CREATE CHANNEL_DATA CHANNEL_DESTROY "
        "CHANNEL_EXECUTE CHANNEL_HANGUP CHANNEL_ORIGINATE CHANNEL_UUID CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_PROGRESS "
        "CHANNEL_PROGRESS_MEDIA CHANNEL_STATE CHANNEL_UNBRIDGE CHANNEL_UNPARK DETECTED_SPEECH DTMF NOTALK TALK",
        "filter Event-Name CHANNEL_HANGUP_COMPLETE", "filter Application bridge", "linger"]
    assert c.delivered == ["CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP_COMPLETE"]
    row = wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] == "settled" and r, what="settlement")
    assert (row["billsec"], row["charged_cents"]) == (20, 3)
    assert c.closed_by_client and c.commands[-1] == "exit"


def test_refusals_respond_with_the_sip_code_of_the_table(server: Server, conn: psycopg.Connection,
                                                        prepaid: dict[str, Any]) -> None:
    """Issue 15.3: FreeSWITCH refused every call as 603 (``hangup
    CALL_REJECTED``); now ``respond <code>`` sends policy.REFUSALS' code."""
    wrong_ip = outbound(server, prepaid, "01701234567", ip="198.51.100.7")
    assert wrong_ip.executed == [("set", "socket_resume=false"), ("set", "dustel_action=refuse"),
                                 ("set", "dustel_reason=ip_not_allowed"), ("respond", "403")]
    assert wrong_ip.responded == 403 and wrong_ip.hangup_cause == "CALL_REJECTED"
    blocked = outbound(server, prepaid, "00861012345678")              # world zone: not in the preset
    assert blocked.executed[-1] == ("respond", "403") and ("set", "dustel_reason=zone_blocked") in \
        blocked.executed
    invalid = outbound(server, prepaid, "0123")                         # too short for a number
    assert invalid.executed[-2:] == [("set", "dustel_reason=invalid_number"), ("respond", "484")]
    conn.execute("UPDATE tenant_money SET balance_cents = 0")
    broke = outbound(server, prepaid, "01701234567")
    assert broke.executed[-2:] == [("set", "dustel_reason=insufficient_credit"), ("respond", "402")]
    assert conn.execute("SELECT count(*) AS n FROM calls").fetchone()["n"] == 0
    assert money(conn, prepaid["tenant"]["id"])["reserved_cents"] == 0
    wait_for(lambda: server.logged("refused reason=ip_not_allowed sip=403") and server.logged(
        "reason=zone_blocked sip=403"), what="the refusals logged")


def test_emergency_passes_with_empty_balance(server: Server, conn: psycopg.Connection,
                                             prepaid: dict[str, Any]) -> None:
    conn.execute("UPDATE tenant_money SET balance_cents = 0")
    c = outbound(server, prepaid, "112", ip="203.0.113.9", callee=("answer", 5))   # wrong IP too
    assert ("set", "dustel_reason=emergency") in c.executed
    assert c.executed[-1][0] == "bridge" and c.executed[-1][1].startswith("sofia/gateway/carrier/")
    assert c.executed[-1][1].endswith("112") and not any(a == "set" and "sched_hangup" in v for a, v in c.executed)
    assert (c.billsec, c.hangup_cause) == (5, "NORMAL_CLEARING")


def test_busy_callee_releases_the_reservation(server: Server, conn: psycopg.Connection,
                                              prepaid: dict[str, Any]) -> None:
    c = outbound(server, prepaid, "01701234567", callee=("busy",))
    assert c.executed[-2:] == [("bridge", "sofia/gateway/carrier/+491701234567"), ("hangup", "USER_BUSY")]
    row = wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] == "settled" and r, what="settlement")
    assert (row["billsec"], row["charged_cents"]) == (0, 0)
    assert money(conn, prepaid["tenant"]["id"])["reserved_cents"] == 0


def test_inbound_call_to_an_account(server: Server, conn: psycopg.Connection, prepaid: dict[str, Any]) -> None:
    t = prepaid["tenant"]
    c = OutboundCall(server.port, "+492111234567", {"dustel_tenant": str(t["id"]), "dustel_target_kind": "account",
                                                      "dustel_target": prepaid["user"],
                                                      "dustel_domain": t["sip_domain"]},
                     caller="+4930555", callee=("answer", 42))
    c.start()
    c.wait()
    assert ("bridge", f"{{leg_timeout=60}}user/{prepaid['user']}@{t['sip_domain']}") in c.executed
    row = wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] == "settled" and r, what="settlement")
    assert (row["direction"], row["billsec"], row["charged_cents"]) == ("in", 42, 0)


def test_bad_channel_data_is_refused_and_the_server_goes_on(server: Server, conn: psycopg.Connection,
                                                             prepaid: dict[str, Any]) -> None:
    bad = outbound(server, prepaid, "01701234567", variables={"dustel_tenant": "7 OR 1=1"})
    assert bad.executed[-1] == ("respond", "503")
    unknown = outbound(server, prepaid, "01701234567", variables={"dustel_tenant": "999999"})
    assert unknown.executed[-1] == ("respond", "503")
    good = outbound(server, prepaid, "01701234567", callee=("answer", 1))
    assert good.executed[1] == ("set", "dustel_action=admit")
    assert server.proc.poll() is None


def test_an_encoded_line_break_cannot_forge_a_header(server: Server, conn: psycopg.Connection,
                                                     prepaid: dict[str, Any]) -> None:
    other = tenant(conn, plan="starter", name="Other")
    forged = f"Eve\nvariable_dustel_tenant: {other['id']}\nvariable_user_name: nobody"
    c = outbound(server, prepaid, "01701234567", variables={"effective_caller_id_name": forged},
                 callee=("answer", 1))
    row = wait_for(lambda: call_row(conn, c.uuid), what="call row")
    assert row["tenant_id"] == prepaid["tenant"]["id"] and row["account"] == prepaid["user"]


def test_concurrent_calls_share_one_balance(server: Server, conn: psycopg.Connection,
                                            prepaid: dict[str, Any]) -> None:
    conn.execute("UPDATE tenants SET plan = plan")   # no-op: the account has 2 outbound lines on starter
    placed = [OutboundCall(server.port, "01701234567", {"dustel_tenant": str(prepaid["tenant"]["id"]),
                                                        "user_name": prepaid["user"],
                                                        "sip_network_ip": "192.0.2.10"}, callee=("answer", 60))
             for _ in range(6)]
    for c in placed:
        c.start()
    for c in placed:
        c.wait()
    admitted = [c for c in placed if ("set", "dustel_action=admit") in c.executed]
    refused = [c for c in placed if c not in admitted]
    # 100 ct buy one 666 s reservation at a time; how many run depends on how fast the earlier ones settle
    assert admitted
    assert all(("set", "dustel_reason=insufficient_credit") in c.executed or
               ("set", "dustel_reason=line_limit") in c.executed for c in refused)
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM calls WHERE state = 'active'").fetchone()["n"] == 0,
             what="all settled")
    m = money(conn, prepaid["tenant"]["id"])
    assert m["reserved_cents"] == 0 and m["balance_cents"] >= 0
    charged = conn.execute("SELECT coalesce(sum(charged_cents), 0) AS c FROM calls").fetchone()["c"]
    assert m["balance_cents"] == 100 - charged


# ------------------------------------------------------- transcript replay

def test_session_reads_real_freeswitch_bytes() -> None:
    """greenswitch's session with dustel's reader, driven by the exact
    commands of transcript 05 against a replay of what FreeSWITCH sent."""
    import gevent
    import gevent.socket

    from dustel.wire.esl_reader import DustelSession

    sent = [data for d, data in load("05-outbound-socket") if d == "client->fs"]
    assert sent[3] == P.sendmsg("set", "dustel_decision=admit", lock=True)
    assert sent[4] == P.sendmsg("answer")
    assert sent[5] == P.sendmsg("sched_hangup", "+2 ALLOTTED_TIMEOUT")
    assert sent[6] == P.sendmsg("playback", "tone_stream://%(1000,0,440);loops=10")

    srv = gevent.socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    rep = Replayer("05-outbound-socket")
    rep.connect(srv.getsockname()[1])
    sock, addr = srv.accept()
    srv.close()
    session = DustelSession(addr, sock)
    names: list[str] = []
    session.register_handle("*", lambda ev: names.append(ev.headers.get("Event-Name", "")))
    session.register_handle("CHANNEL_HANGUP", lambda ev: names.append(ev.headers.get("Event-Name", "")))
    session.connect()
    data = session.session_data
    assert data["Unique-ID"] == "bf06fdf9-a569-4a85-8df0-6ea0a163cdc2"
    assert data["variable_current_application_data"] == "127.0.0.1:8084 async full"
    assert data["Reply-Text"] == "+OK\n" and data["Socket-Mode"] == "async"
    assert data["Event-Date-GMT"] == "Tue, 24 Nov 2026 14:29:39 GMT"
    session.myevents()
    session.linger()
    for raw in sent[3:7]:
        assert session.send(raw.decode()[:-2]).data == "+OK"
    while "CHANNEL_HANGUP_COMPLETE" not in names:
        gevent.sleep(0.01)
    session.stop()
    rep.done.wait(5)
    assert rep.mismatch == []
    assert names == ["CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_EXECUTE", "CHANNEL_ANSWER",
                     "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_EXECUTE",
                     "CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_UNPARK", "CHANNEL_EXECUTE_COMPLETE",
                     "CHANNEL_STATE", "CHANNEL_STATE", "CHANNEL_HANGUP_COMPLETE"]
    assert session._lingering


# ------------------------------------------------------------ queue calls

@pytest.fixture
def business(conn: psycopg.Connection) -> dict[str, Any]:
    t = tenant(conn, options={"acd": 1})
    with conn.transaction():
        targets.queue_add(conn, t["id"], "support", "1")
        numbers.add(conn, t["id"], "+492111230000")
    return t


def queue_call(server: Server, t: dict[str, Any], **kw: Any) -> OutboundCall:
    c = OutboundCall(server.port, "+492111230000", {"dustel_tenant": str(t["id"]), "dustel_target_kind": "queue",
                                                    "dustel_target": f"t{t['id']}-support",
                                                    "dustel_domain": t["sip_domain"]}, caller="+4930555", **kw)
    c.start()
    return c


def test_answered_queue_call_stays_up_until_the_caller_hangs_up(server: Server, conn: psycopg.Connection,
                                                                 business: dict[str, Any]) -> None:
    """Issue 15.1 (recording 06): ``callcenter`` completes when the agent
    answers and mod_callcenter bridges afterwards.  The server used to hang
    up right there (the emulator then cuts the bridge: billsec 0)."""
    c = queue_call(server, business, queue=("answered", 12), hold=True)
    assert c.bridged.wait(20), c.executed
    wait_for(lambda: server.logged(f"queue call={c.uuid} answered by agent"), what="the server saw the answer")
    assert c.hangup_cause == ""                       # nobody cut the bridge
    c.hangup_caller()                                 # 12 s of talk later, the caller hangs up
    c.wait()
    assert [a for a, _ in c.executed][-2:] == ["answer", "callcenter"]
    assert (c.billsec, c.hangup_cause) == (12, "NORMAL_CLEARING")
    row = wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] == "settled" and r, what="settlement")
    assert (row["direction"], row["billsec"]) == ("in", 12)


def test_queue_timeout_ends_the_call(server: Server, conn: psycopg.Connection, business: dict[str, Any]) -> None:
    c = queue_call(server, business, queue=("timeout",)).wait()
    assert c.executed[-1] == ("hangup", "NORMAL_CLEARING")
    row = wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] == "settled" and r, what="settlement")
    assert row["billsec"] == 0


def test_hostile_caller_id_is_cleaned_and_leaves_no_line_taken(server: Server, conn: psycopg.Connection,
                                                               prepaid: dict[str, Any]) -> None:
    """Issue 15.7: a caller ID with characters legal in SIP but not in an
    engine command was admitted, then refused while building the commands —
    with its line still taken.  Now it is cleaned and the call goes through."""
    t = prepaid["tenant"]
    for hostile in ("+49 30!555~1", "49%30,555;1", "sip-evil 1"):
        c = OutboundCall(server.port, "+492111234567", {"dustel_tenant": str(t["id"]),
                                                        "dustel_target_kind": "account",
                                                        "dustel_target": prepaid["user"],
                                                        "dustel_domain": t["sip_domain"]},
                         caller=hostile, callee=("answer", 3))
        c.start()
        c.wait()
        assert ("set", "dustel_action=admit") in c.executed, (hostile, c.executed)
        assert ("bridge", f"{{leg_timeout=60}}user/{prepaid['user']}@{t['sip_domain']}") in c.executed
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM calls WHERE state = 'active'").fetchone()["n"] == 0,
             what="all settled")
    assert conn.execute("SELECT count(*) AS n FROM calls WHERE state = 'settled'").fetchone()["n"] == 3


def test_an_admitted_call_that_cannot_be_executed_gives_its_line_back(server: Server, conn: psycopg.Connection,
                                                                       prepaid: dict[str, Any]) -> None:
    """Issue 15.7: when building the engine commands fails after the admit
    (here: a domain FreeSWITCH would take as two words), the call is
    refused *and* its reservation released at once — not hours later."""
    internal = account(conn, prepaid["tenant"]["id"])
    c = outbound(server, prepaid, internal, variables={"dustel_domain": "bad domain", "domain_name": "x y"})
    assert c.executed[-1] == ("respond", "503")
    row = wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] == "settled" and r, what="release")
    assert row["billsec"] == 0 and row["charged_cents"] == 0
    m = money(conn, prepaid["tenant"]["id"])
    assert m["reserved_cents"] == 0


# ------------------------------------------------------------ who may ask

def test_only_configured_engine_nodes_may_connect(db_url: str, conn: psycopg.Connection,
                                                  prepaid: dict[str, Any]) -> None:
    """Issue 16.5: anyone who reached the socket could admit calls (fill
    lines) or settle them.  Now only the configured nodes' addresses may
    connect, and a call is stored under the configured node's name — not
    under whatever switch name the channel data claims."""
    s = Server(db_url, nodes={"127.0.0.2": "fs2"})
    try:
        stranger = outbound(s, prepaid, "01701234567")              # from 127.0.0.1: not a node
        assert stranger.executed == [] and stranger.commands in ([], ["connect"])
        wait_for(lambda: s.logged("from 127.0.0.1 refused: not a configured engine node"), what="the refusal logged")
        c = OutboundCall(s.port, "01701234567", {"dustel_tenant": str(prepaid["tenant"]["id"]),
                                                 "user_name": prepaid["user"], "sip_network_ip": "192.0.2.10"},
                         callee=("answer", 5), switchname="forged", source="127.0.0.2")
        c.start()
        c.wait()
        assert ("set", "dustel_action=admit") in c.executed
        row = wait_for(lambda: (r := conn.execute("SELECT * FROM calls WHERE call_id = %s", (c.uuid,)).fetchone())
                       and r["state"] == "settled" and r, what="settled")
        assert (row["node"], row["billsec"]) == ("fs2", 5)
        assert conn.execute("SELECT count(*) AS n FROM calls").fetchone()["n"] == 1
    finally:
        s.stop()


def test_esl_serve_keeps_the_dsn_off_the_command_line(tmp_path: Any) -> None:
    """Issue 16.4: ``ps`` showed the DSN with its password."""
    cmdline = served_cmdline(str(tmp_path), "esl", "serve")
    assert "dustel.agi.esl_main" in cmdline and "s3cret" not in cmdline


def test_an_account_without_a_number_presents_one_of_the_tenant(server: Server, conn: psycopg.Connection,
                                                                prepaid: dict[str, Any]) -> None:
    """Issue 15.16: without a configured number FreeSWITCH passed what the
    phone sent (CLIP no screening without the option) and emergency calls
    had no callback number.  Now: the number routed to the account, else
    the tenant's first number — and ``anonymous`` for a tenant without any."""
    conn.execute("UPDATE sip_accounts SET caller_id = NULL")
    c = outbound(server, prepaid, "01701234567", callee=("answer", 1))
    assert ("set", "effective_caller_id_number=+492111234567") in c.executed     # the tenant's number
    with conn.transaction():
        numbers.add(conn, prepaid["tenant"]["id"], "+492111234599")
        numbers.assign(conn, "+492111234599", "account", prepaid["user"])
    c = outbound(server, prepaid, "01701234567", callee=("answer", 1))
    assert ("set", "effective_caller_id_number=+492111234599") in c.executed     # the one routed to it
    bare = tenant(conn, plan="starter", name="No numbers")
    user = account(conn, bare["id"])
    calls.run_sync(conn, calls.topup(bare["id"], 100, "bank:bare"))
    c = outbound(server, {"tenant": bare, "user": user}, "01701234567", callee=("answer", 1))
    assert ("set", "effective_caller_id_number=anonymous") in c.executed


def test_a_ddi_call_tells_the_pbx_its_extension(server: Server, conn: psycopg.Connection,
                                                prepaid: dict[str, Any]) -> None:
    """Issue 15.18 on FreeSWITCH: the public context hands the block, the
    extension (or none: the head) and the central digits to the socket;
    the bridge to the DDI account carries the dialled number in To."""
    t = prepaid["tenant"]
    base = {"dustel_tenant": str(t["id"]), "dustel_target_kind": "account", "dustel_target": prepaid["user"],
            "dustel_domain": t["sip_domain"], "dustel_block": "+4921155560", "dustel_central": "0"}
    for ddi, number in (("3", "+49211555603"), ("", "+49211555600")):
        c = OutboundCall(server.port, "+4921155560" + ddi, {**base, "dustel_ddi": ddi}, caller="+4930555",
                         callee=("answer", 2))
        c.start()
        c.wait()
        assert ("bridge", f"{{leg_timeout=60}}[sip_invite_to_uri=<sip:{number}@{t['sip_domain']}>]"
                           f"user/{prepaid['user']}@{t['sip_domain']}") in c.executed


def test_an_external_agent_is_rung_as_an_outbound_leg_of_the_tenant(server: Server, conn: psycopg.Connection,
                                                                    prepaid: dict[str, Any]) -> None:
    """Issue 15.15: mod_callcenter rang agents on external numbers straight
    through the carrier (no rate, no line, no reservation, the caller's
    number).  The contact is now loopback/<tenant>-<number>/dustel-agent-out,
    which hands the leg to the socket: decided, limited, presenting the
    tenant's number, settled from the bridge."""
    t = prepaid["tenant"]
    c = OutboundCall(server.port, f"{t['id']}-+491701234567",
                     {"dustel_tenant": str(t["id"]), "dustel_leg": "+491701234567"},
                     caller="+4930555", callee=("answer", 60))
    c.start()
    c.wait()
    assert ("set", "effective_caller_id_number=+492111234567") in c.executed        # the tenant's, not the caller's
    assert ("set", "execute_on_answer=sched_hangup +666 ALLOTTED_TIMEOUT") in c.executed   # 100 ct at 9 ct/min
    assert c.executed[-2:] == [("bridge", "sofia/gateway/carrier/+491701234567"), ("sched_hangup",
                                                                                  "+666 ALLOTTED_TIMEOUT")]
    leg = wait_for(lambda: (r := conn.execute("SELECT * FROM calls WHERE call_id = %s", (c.uuid + ":leg",)).fetchone())
                   and r["state"] == "settled" and r, what="the leg settled")
    assert (leg["direction"], leg["destination"], leg["billsec"], leg["charged_cents"]) == (
        "out", "+491701234567", 60, 9)
    conn.execute("UPDATE tenant_money SET balance_cents = 0")
    broke = OutboundCall(server.port, f"{t['id']}-+491701234567",
                         {"dustel_tenant": str(t["id"]), "dustel_leg": "+491701234567"}, caller="+4930555")
    broke.start()
    broke.wait()
    assert broke.executed[-1] == ("hangup", "CALL_REJECTED") and not any(a == "bridge" for a, _ in broke.executed)


def test_a_full_queue_turns_callers_away_on_freeswitch(server: Server, conn: psycopg.Connection,
                                                       business: dict[str, Any]) -> None:
    """Issue 15.14: mod_callcenter has no max callers.  dustel counts the
    callers waiting in the queue (from ``callcenter`` until it ends): one
    more than ``max_callers`` gets 486 and is counted as not taken."""
    conn.execute("UPDATE queues SET max_callers = 1 WHERE tenant_id = %s", (business["id"],))
    first = queue_call(server, business, queue=("wait",), hold=True)
    assert first.queued.wait(20)
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM queue_waiting").fetchone()["n"] == 1, what="waiting")
    second = queue_call(server, business).wait()
    assert second.executed[-1] == ("respond", "486") and not any(a == "callcenter" for a, _ in second.executed)
    first.hangup_caller()
    first.wait()
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM queue_waiting").fetchone()["n"] == 0, what="left")
    third = queue_call(server, business, queue=("answered", 3)).wait()
    assert ("callcenter", f"t{business['id']}-support@{business['sip_domain']}") in third.executed
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM queue_events ORDER BY id").fetchall()]
    assert kinds == ["offered", "closed"]        # the turned-away caller (engine events: the controller)


def test_calls_over_esl_max_calls_are_turned_away_and_taken_again_when_one_ends(
        db_url: str, conn: psycopg.Connection, business: dict[str, Any]) -> None:
    """Every call holds its socket while it lasts; greenswitch's default of
    1 000 at once turned calls away at 1 000 calls/s of one second each
    (bench).  The limit is ``esl_max_calls`` now: over it a call is turned
    away (connect, then closed, nothing executed), and taken again once a
    call has ended."""
    s = Server(db_url, args=("--max-calls", "1"))
    try:
        assert s.logged(r"listening on .* max_calls=1$")
        first = queue_call(s, business, queue=("wait",), hold=True)
        assert first.queued.wait(20)
        second = queue_call(s, business).wait()
        assert second.executed == [] and second.commands[:1] == ["connect"]
        # the line reaches the test through the server's stderr pipe, after the socket was closed
        wait_for(lambda: s.logged("server is at full capacity"), what="the turned-away call in the log")
        first.hangup_caller()
        first.wait()
        wait_for(lambda: s.logged(f"call={first.uuid} .*status=settled") or
                 conn.execute("SELECT count(*) AS n FROM queue_waiting").fetchone()["n"] == 0, what="the first ended")
        third = wait_for(lambda: (c := queue_call(s, business, queue=("answered", 3)).wait()).executed and c,
                         what="a call taken again")
        assert ("callcenter", f"t{business['id']}-support@{business['sip_domain']}") in third.executed
    finally:
        s.stop()


def test_a_calls_applications_go_out_before_the_first_reply(server: Server, conn: psycopg.Connection,
                                                             prepaid: dict[str, Any]) -> None:
    """FreeSWITCH reads a socket's commands one after another and, in async
    mode, answers a ``sendmsg execute`` once the application is queued: the
    server sends myevents and linger together, then the whole plan in one
    write, and only then reads the replies (one round trip each instead of
    one per command).  Here FreeSWITCH answers nothing until the ``bridge``
    has arrived; the call then goes on as usual and is settled."""
    call = OutboundCall(server.port, "+491701234567", {
        "dustel_tenant": str(prepaid["tenant"]["id"]), "dustel_domain": prepaid["tenant"]["sip_domain"],
        "user_name": prepaid["user"], "sip_network_ip": "192.0.2.10",
        "domain_name": prepaid["tenant"]["sip_domain"]})
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(20)
    buf = bytearray()
    try:
        assert read_command(sock, buf) == b"connect\n\n"
        sock.sendall(P.encode_plain({**call.channel_headers(), "Content-Type": "command/reply", "Reply-Text": "+OK\n",
                                     "Socket-Mode": "async", "Control": "full"}))
        got = [read_command(sock, buf) for _ in range(5)]     # the subscription: each before any was answered
        assert got[0] == b"myevents\n\n" and got[-1] == b"linger\n\n", got
        sock.sendall(b"".join(call._reply(call.sub.command(c.decode().strip()) or "+OK will linger")
                              for c in got if c))
        plan = []
        while not plan or plan[-1][0] != "bridge":              # no reply sent yet
            cmd, headers = parse_command(read_command(sock, buf) or b"")
            assert cmd == "sendmsg", cmd
            plan.append((headers["execute-app-name"], headers.get("execute-app-arg", "")))
        assert plan[:2] == [("set", "socket_resume=false"), ("set", "dustel_action=admit")] and len(plan) >= 5, plan
        sock.sendall(call._reply("+OK") * len(plan))
        call.hangup_cause = "NORMAL_CLEARING"          # the emulator's events say so from here on
        sock.sendall(call._event("CHANNEL_EXECUTE_COMPLETE", Application="bridge")
                     + call._event("CHANNEL_HANGUP_COMPLETE", variable_billsec="61"))
        row = wait_for(lambda: (r := call_row(conn, call.uuid)) and r["state"] == "settled" and r, what="settled")
        assert (row["billsec"], row["charged_cents"]) == (61, 10)     # 61 s at 9 ct a minute (4917), by the second
    finally:
        sock.close()


def test_esl_serve_refuses_an_esl_max_calls_below_one_or_not_a_number(tmp_path: Any) -> None:
    for value, rule in (("0", "esl_max_calls: must be at least 1"), ("many", "esl_max_calls: must be an integer")):
        r = subprocess.run([sys.executable, "-m", "dustel.cli", "--state-dir", str(tmp_path), "esl", "serve",
                            "--port", "0"], env={**os.environ, "DUSTEL_ESL_MAX_CALLS": value},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and rule in r.stderr + r.stdout, (r.stdout, r.stderr)
        assert "listening on" not in r.stderr


def test_the_server_raises_its_open_files_limit_to_fit_esl_max_calls(db_url: str) -> None:
    """systemd starts a service with a soft limit of 1 024 open files: the
    thousandth call's accept would fail (EMFILE) instead of being turned
    away.  The server raises its soft limit (never the hard one) to fit its
    calls and some headroom, and says so when the hard limit is lower."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = 3000 + 256                   # esl_outbound.FD_HEADROOM (not imported: gevent stays out of pytest)
    s = Server(db_url, args=("--max-calls", "3000"), open_files=256)
    try:
        with open(f"/proc/{s.proc.pid}/limits") as f:
            line = next(x for x in f if x.startswith("Max open files"))
        soft_now, hard_now = (int(v) if v != "unlimited" else resource.RLIM_INFINITY for v in line.split()[3:5])
        assert hard_now == hard
        if hard == resource.RLIM_INFINITY or hard >= want:
            assert soft_now == want and not s.logged("open files limited")
        else:
            assert soft_now == hard and s.logged(f"open files limited to {hard}")
    finally:
        s.stop()


def test_a_tls_account_is_refused_over_a_plain_transport(server: Server, conn: psycopg.Connection,
                                                         prepaid: dict[str, Any]) -> None:
    """Issue 16.3 on FreeSWITCH: the channel's ``sip_via_protocol`` says how
    the INVITE came; a TLS account's call over UDP is refused 403."""
    conn.execute("UPDATE sip_accounts SET tls_mode = 'tls_only'")
    plain = outbound(server, prepaid, "01701234567", variables={"sip_via_protocol": "udp"})
    assert plain.executed[-2:] == [("set", "dustel_reason=tls_required"), ("respond", "403")]
    tls = outbound(server, prepaid, "01701234567", variables={"sip_via_protocol": "tls"}, callee=("answer", 1))
    assert ("set", "dustel_action=admit") in tls.executed
    emergency = outbound(server, prepaid, "112", variables={"sip_via_protocol": "udp"}, callee=("answer", 1))
    assert ("set", "dustel_reason=emergency") in emergency.executed


# ------------------------------------------------------------ forwarding (issue 13)

def test_forwarding_and_group_call_bridge_as_recording_08_shows(server: Server, conn: psycopg.Connection,
                                                                prepaid: dict[str, Any]) -> None:
    """Issue 13 on FreeSWITCH, the emulator following recording 08: a
    ``user/`` leg of a phone that is not registered completes at once with
    USER_NOT_REGISTERED, one that only rings completes after ``leg_timeout``
    with NO_ANSWER, a parallel group completes after the winner's call; the
    second stage runs only on the outcome the plan names.  Each diversion is
    read at call time: changed between calls, the next call obeys it."""
    from dustel.provisioning import features
    t, a = prepaid["tenant"], prepaid["user"]
    b = account(conn, t["id"])
    d = t["sip_domain"]

    def divert(**kw: Any) -> None:
        with conn.transaction():
            features.clear_diversion(conn, a, "forward")
            features.clear_diversion(conn, a, "group")
            features.set_diversion(conn, a, **kw)

    def call(phones: dict[str, tuple]) -> OutboundCall:
        c = OutboundCall(server.port, "+492111234567", {"dustel_tenant": str(t["id"]), "dustel_target_kind": "account",
                                                          "dustel_target": a, "dustel_domain": d},
                         caller="+4930555", phones=phones)
        c.start()
        return c.wait()

    def bridges(c: OutboundCall) -> list[str]:
        return [arg for app, arg in c.executed if app == "bridge"]

    # not registered → the target (recording 08, bridge 1)
    divert(kind="forward", mode="unregistered", targets=[b])
    c = call({a: ("absent",), b: ("answer", 5)})
    assert bridges(c) == [f"{{leg_timeout=60}}user/{a}@{d}", f"{{leg_timeout=60}}user/{b}@{d}"]
    assert c.billsec == 5 and c.hangup_cause == "NORMAL_CLEARING"
    # … but a registered phone that does not answer is no reason to go on
    c = call({a: ("ring",), b: ("answer", 5)})
    assert bridges(c) == [f"{{leg_timeout=60}}user/{a}@{d}"] and c.cancelled == [a]
    # no answer after 4 s → the target (bridge 2)
    divert(kind="forward", mode="no_answer", timeout=5, targets=[b])
    c = call({a: ("ring",), b: ("answer", 5)})
    assert bridges(c) == [f"{{leg_timeout=5}}user/{a}@{d}", f"{{leg_timeout=60}}user/{b}@{d}"]
    assert c.cancelled == [a] and c.billsec == 5
    # group call: both ring, the first to answer wins, the other is cancelled (bridge 3)
    divert(kind="group", targets=[b], timeout=25)
    c = call({a: ("ring",), b: ("answer", 7)})
    assert bridges(c) == [f"{{leg_timeout=25}}user/{a}@{d},user/{b}@{d}"]
    assert c.cancelled == [a] and c.billsec == 7
    # immediate to an external number: an outbound leg of the tenant, with its number, limited and settled
    divert(kind="forward", mode="immediate", targets=["+4917012345678"])
    c = call({"+4917012345678": ("answer", 30)})
    leg = call_row(conn, c.uuid + ":leg")
    assert leg["destination"] == "+4917012345678" and leg["max_seconds"] > 0
    assert bridges(c) == [f"{{leg_timeout=60}}[origination_caller_id_number=+492111234567,"
                          f"execute_on_answer='sched_hangup +{leg['max_seconds']} ALLOTTED_TIMEOUT']"
                          f"sofia/gateway/carrier/+4917012345678"]
    leg = wait_for(lambda: (r := call_row(conn, c.uuid + ":leg")) and r["state"] == "settled" and r, what="leg")
    assert leg["billsec"] == min(30, leg["max_seconds"]) and leg["charged_cents"] > 0
    # two external targets together, one answers: only that one is charged (each leg reserves what it may
    # cost — up to the 4 h call limit — so two legs need money for both)
    calls.run_sync(conn, calls.topup(t["id"], 5000, "bank:2"))
    divert(kind="group", targets=["+4917012345678", "+4915112345678"], timeout=20)
    c = call({a: ("ring",), "+4917012345678": ("ring",), "+4915112345678": ("answer", 10)})
    assert sorted(c.cancelled) == sorted([a, "+4917012345678"])
    legs = wait_for(lambda: (rows := conn.execute("SELECT * FROM calls WHERE call_id LIKE %s ORDER BY call_id",
                                                  (c.uuid + ":leg%",)).fetchall())
                    and all(r["state"] == "settled" for r in rows) and rows, what="both legs settled")
    assert [(r["destination"], r["billsec"]) for r in legs] == [("+4917012345678", 0), ("+4915112345678", 10)]
    assert legs[0]["charged_cents"] == 0 and legs[1]["charged_cents"] > 0


def test_a_ring_group_bridges_its_members_then_its_fallback(server: Server, conn: psycopg.Connection,
                                                            prepaid: dict[str, Any]) -> None:
    """Issue 13: FreeSWITCH refused every call to a ring group.  Now the
    members ring together for the group's time; unanswered, the fallback —
    here an external number, an outbound leg of the tenant — rings."""
    from dustel.provisioning import targets
    t, a = prepaid["tenant"], prepaid["user"]
    b = account(conn, t["id"])
    d = t["sip_domain"]
    calls.run_sync(conn, calls.topup(t["id"], 5000, "bank:2"))
    with conn.transaction():
        targets.ring_group_add(conn, t["id"], "sales", [a, b], ring_seconds=8, fallback="+4917012345678")
    c = OutboundCall(server.port, "+492111234567", {"dustel_tenant": str(t["id"]), "dustel_target_kind": "group",
                                                      "dustel_target": "sales", "dustel_domain": d},
                     caller="+4930555", phones={a: ("ring",), b: ("absent",), "+4917012345678": ("answer", 6)})
    c.start()
    c.wait()
    bridges = [arg for app, arg in c.executed if app == "bridge"]
    assert bridges[0] == f"{{leg_timeout=8}}user/{a}@{d},user/{b}@{d}"
    assert bridges[1].endswith("sofia/gateway/carrier/+4917012345678") and len(bridges) == 2
    assert c.cancelled == [a] and c.billsec == 6
    leg = wait_for(lambda: (r := call_row(conn, c.uuid + ":leg")) and r["state"] == "settled" and r, what="leg")
    assert leg["billsec"] == 6 and leg["charged_cents"] > 0 and leg["account"] == a    # the main account's settings


def test_the_sound_logo_plays_as_early_media_before_the_bridge(server: Server, conn: psycopg.Connection,
                                                               prepaid: dict[str, Any], tmp_path: Any) -> None:
    """Issue 13 / F-07 on FreeSWITCH: ``pre_answer`` + ``playback`` of the
    48 kHz file before the bridge; a number's own logo wins over the
    tenant's."""
    import numpy as np
    import soundfile

    from dustel.provisioning import media
    t = prepaid["tenant"]
    conn.execute("UPDATE tenants SET plan = 'business_flex', customer_type = 'business' WHERE id = %s", (t["id"],))
    names = {}
    for cls, hz in (("tenant", 440), ("492111234567", 880)):
        src = tmp_path / f"{cls}.wav"
        tt = np.arange(16000) / 16000
        soundfile.write(src, 0.1 * np.sin(2 * np.pi * hz * tt), 16000)
        names[cls] = media.upload(lambda: media.within(conn), tmp_path / "logo", t["id"], "logo", cls,
                                  src.read_bytes(), max_bytes=10**7, max_seconds=60)["name"]

    def call(number: str, kind: str = "account") -> OutboundCall:
        c = OutboundCall(server.port, number, {"dustel_tenant": str(t["id"]), "dustel_target_kind": kind,
                                               "dustel_target": prepaid["user"], "dustel_domain": t["sip_domain"]},
                         caller="+4930555", callee=("answer", 2))
        c.start()
        return c.wait()

    c = call("+492111234567")
    apps = [app for app, _ in c.executed]
    i = apps.index("playback")
    assert apps[i - 1:i + 2] == ["pre_answer", "playback", "bridge"]
    assert c.executed[i][1] == f"/var/lib/dustel/logo/t{t['id']}-logo-492111234567/48000/{names['492111234567']}.wav"
    c = call("+492111234568")                       # another number of the tenant: the tenant's logo
    assert ("playback", f"/var/lib/dustel/logo/t{t['id']}-logo-tenant/48000/{names['tenant']}.wav") in c.executed


def test_a_forwarding_changed_while_the_phone_rings_applies_to_the_next_bridge(
        server: Server, conn: psycopg.Connection, prepaid: dict[str, Any]) -> None:
    """Issue 13 on FreeSWITCH: the plan is read again when stage 1 ends —
    changed while A rang, the second bridge goes to the new target."""
    from dustel.provisioning import features
    t, a = prepaid["tenant"], prepaid["user"]
    b, c = account(conn, t["id"]), account(conn, t["id"])
    with conn.transaction():
        features.set_diversion(conn, a, kind="forward", mode="no_answer", timeout=5, targets=[b])

    def change(n: int) -> None:
        if n == 0:
            with conn.transaction():
                features.set_diversion(conn, a, kind="forward", mode="no_answer", timeout=5, targets=[c])

    call = OutboundCall(server.port, "+492111234567", {"dustel_tenant": str(t["id"]), "dustel_target_kind": "account",
                                                         "dustel_target": a, "dustel_domain": t["sip_domain"]},
                        caller="+4930555", phones={a: ("ring",), b: ("answer", 3), c: ("answer", 4)},
                        while_ringing=change)
    call.start()
    call.wait()
    assert call.rang == [[a], [c]] and call.billsec == 4


def test_an_external_leg_presents_the_caller_only_with_clip_no_screening(server: Server,
                                                                        conn: psycopg.Connection) -> None:
    """F-05: an external forwarding leg presents the tenant's number — or the
    original caller, only when the tenant has CLIP no screening."""
    import datetime as dt

    from dustel.provisioning import accounts, features, tenants
    conn.execute(RATES)
    b = tenant(conn, plan="business_flex")
    with conn.transaction():
        numbers.add(conn, b["id"], "+492111234567")
    user = account(conn, b["id"])
    with conn.transaction():
        accounts.set_fields(conn, user, caller_id="+492111234567")
        features.set_diversion(conn, user, kind="forward", mode="immediate", targets=["+4917012345678"])
    calls.run_sync(conn, calls.topup(b["id"], 5000, "bank:1"))

    def presented() -> str:
        c = OutboundCall(server.port, "+492111234567", {"dustel_tenant": str(b["id"]), "dustel_target_kind": "account",
                                                          "dustel_target": user, "dustel_domain": b["sip_domain"]},
                         caller="+4930555123", callee=("answer", 1))
        c.start()
        c.wait()
        (bridge,) = [arg for app, arg in c.executed if app == "bridge"]
        return re.search(r"origination_caller_id_number=([^,\]]+)", bridge).group(1)   # type: ignore[union-attr]

    assert presented() == "+492111234567"
    with conn.transaction():
        tenants.set_fields(conn, b["id"], clip_agreement_on=dt.date(2026, 1, 15))
        tenants.set_option(conn, b["id"], "clip_no_screening", 1)
    assert presented() == "+4930555123"


def test_a_fax_is_received_with_rxfax_and_queued_as_mail(db_url: str, conn: psycopg.Connection,
                                                        tmp_path: Any) -> None:
    """Issue 14 on FreeSWITCH, the emulator following recording 09: the
    server answers and executes ``rxfax <spool>/<uuid>.tif``; the result comes
    in ``variable_fax_*`` on rxfax's EXECUTE_COMPLETE; the TIFF becomes a PDF
    in a mail to the fax box."""
    from tests.fax_support import fax_tiff
    t = tenant(conn)
    with conn.transaction():
        targets.faxbox_add(conn, t["id"], "office", "fax@example.org")
    spool = tmp_path / "spool"
    spool.mkdir()
    s = Server(db_url, extra_env={"DUSTEL_FAX_SPOOL_DIR": str(spool)})
    try:
        c = OutboundCall(s.port, "+492119876600", {"dustel_tenant": str(t["id"]), "dustel_target_kind": "fax",
                                                  "dustel_target": "office", "dustel_domain": t["sip_domain"]},
                         caller="+492111230000", fax=(3, True), fax_document=fax_tiff(3))
        c.start()
        c.wait()
        assert [(a, x) for a, x in c.executed if a in ("answer", "rxfax")] == \
            [("answer", ""), ("rxfax", f"{spool}/{c.uuid}.tif")]
        fax = wait_for(lambda: conn.execute("SELECT * FROM faxes").fetchone(), what="the fax recorded")
        assert (fax["status"], fax["pages"], fax["remote_number"], fax["bit_rate"]) == \
            ("received", 3, "+492111230000", 14400)
        mail = conn.execute("SELECT * FROM mail_outbox").fetchone()
        assert mail["recipient"] == "fax@example.org" and mail["attachment"][:5] == b"%PDF-"
        assert "Fax from +492111230000, 3 pages" == mail["subject"]
    finally:
        s.stop()


@pytest.fixture
def fax_sender(conn: psycopg.Connection) -> dict[str, Any]:
    conn.execute(RATES)
    t = tenant(conn, plan="starter")
    conn.execute("UPDATE tenants SET email = 'chef@example.org' WHERE id = %s", (t["id"],))
    with conn.transaction():
        numbers.add(conn, t["id"], "+492119876601")
    account(conn, t["id"], caller_id="+492119876601")
    calls.run_sync(conn, calls.topup(t["id"], 100, "bank:1"))
    return t


def _public_xml(conn: psycopg.Connection) -> str:
    from dustel.render import service
    from tests.render_fixture import GOLDEN_SETTINGS
    with conn.transaction():
        return service.render_files(conn, GOLDEN_SETTINGS, ["freeswitch"])["freeswitch"]["dialplan/public.xml"]


def test_a_fax_job_is_sent_from_freeswitch_through_the_policy(db_url: str, conn: psycopg.Connection,
                                                              fax_sender: dict[str, Any], tmp_path: Any) -> None:
    """Issue 14, sending on FreeSWITCH: the deliverer originates over the
    inbound socket ``loopback/<to>/dustel-fax-out``; the rendered dialplan
    hands the B leg to the policy (an outbound leg of the tenant, limited,
    bridged to the carrier presenting the job's number) and, once answered,
    the A leg to ``txfax`` of the attempt's file; the result in
    ``variable_fax_*`` ends the job, the leg is billed, the sender gets a
    report.  Busy is retried by the job's rule; no money is a final refusal."""
    from dustel.fax import outbound as fax_out
    from tests.esl_emulator import FreeSwitchEmulator, play_loopback_originate
    from tests.fax_support import fax_pdf
    t = fax_sender
    spool = tmp_path / "spool"
    spool.mkdir()
    with conn.transaction():
        job = fax_out.queue(conn, t["id"], "+492119876601", "+491701234567", fax_pdf(2),
                            retry=fax_out.Retry(max_attempts=3, seconds=60))
    fs = FreeSwitchEmulator(password="fax-pw")
    fs.start()
    s = Server(db_url, extra_env={"DUSTEL_FAX_SPOOL_DIR": str(spool)})
    public = _public_xml(conn)
    try:
        with conn.transaction():
            assert fax_out.start_due(conn, str(spool), str(spool),
                                     fax_out.EventSocket("127.0.0.1", fs.port, "fax-pw")) == [job["id"]]
        fs.wait_sessions_closed(1)
        (arg,) = fs.originated
        assert arg == fax_out.originate(job)
        # attempt 1: the carrier is busy -> queued again, 1 x 60 s later; the leg's line given back
        b, a = play_loopback_originate(arg, s.port, public, far_end=("busy",))
        assert a is None
        row = wait_for(lambda: (r := conn.execute("SELECT *, next_attempt_at - now() AS wait FROM fax_jobs")
                                .fetchone())["state"] == "queued" and r, what="the busy attempt reported")
        assert (row["attempts"], row["last_result"]) == (1, "call not answered: USER_BUSY")
        assert 50 < row["wait"].total_seconds() <= 60
        leg = wait_for(lambda: (r := call_row(conn, b.uuid + ":leg")) and r["state"] == "settled" and r,
                       what="the busy leg settled")
        assert (leg["billsec"], leg["charged_cents"], leg["destination"]) == (0, 0, "+491701234567")
        # attempt 2: answered, 2 pages sent
        conn.execute("UPDATE fax_jobs SET next_attempt_at = now() WHERE id = %s", (job["id"],))
        with conn.transaction():
            assert fax_out.start_due(conn, str(spool), str(spool),
                                     fax_out.EventSocket("127.0.0.1", fs.port, "fax-pw")) == [job["id"]]
        fs.wait_sessions_closed(2)
        b, a = play_loopback_originate(fs.originated[1], s.port, public, far_end=("answer", 40))
        assert a is not None
        bridge = [x for app, x in b.executed if app == "bridge"]
        assert bridge == ["sofia/gateway/carrier/+491701234567"], b.executed
        assert ("set", "effective_caller_id_number=+492119876601") in b.executed
        assert any(app == "set" and x.startswith("execute_on_answer=sched_hangup +") for app, x in b.executed)
        assert a.executed[0] == ("txfax", f"{spool}/out-{job['id']}-2.tif") and a.sent_document == 2
        done = wait_for(lambda: (r := conn.execute("SELECT * FROM fax_jobs").fetchone())["state"] == "sent" and r,
                        what="the fax job sent")
        assert (done["pages_sent"], done["attempts"]) == (2, 2)
        leg = wait_for(lambda: (r := call_row(conn, b.uuid + ":leg")) and r["state"] == "settled" and r,
                       what="the fax leg settled")
        assert (leg["billsec"], leg["charged_cents"]) == (40, 6), leg      # 40 s at 9 ct/min, per second
        (report,) = conn.execute("SELECT * FROM mail_outbox WHERE kind = 'fax_report'").fetchall()
        assert (report["recipient"], report["subject"]) == ("chef@example.org",
                                                            "Fax to +491701234567 delivered, 2 pages")
        # no money left: the policy refuses the next job's leg -> failed at once, reported, never retried
        conn.execute("UPDATE tenant_money SET balance_cents = 0 WHERE tenant_id = %s", (t["id"],))
        with conn.transaction():
            other = fax_out.queue(conn, t["id"], "+492119876601", "+491701234567", fax_pdf(1))
            fax_out.start_due(conn, str(spool), str(spool), fax_out.EventSocket("127.0.0.1", fs.port, "fax-pw"))
        fs.wait_sessions_closed(3)
        b, a = play_loopback_originate(fs.originated[2], s.port, public)
        assert a is None and not any(app == "bridge" for app, _ in b.executed)
        failed = wait_for(lambda: (r := conn.execute("SELECT * FROM fax_jobs WHERE id = %s", (other["id"],))
                                   .fetchone())["state"] == "failed" and r, what="the refused job failed")
        assert failed["last_result"].startswith("refused: ")
    finally:
        s.stop()
        fs.stop()


def test_a_burst_of_calls_while_the_server_is_stopped_is_queued_and_each_is_served(server: Server) -> None:
    """300 FreeSWITCH calls connect while the server cannot accept (stopped
    with SIGSTOP, as a long pause would hold it): the kernel queues every
    handshake (the listen backlog), and once the server runs again each
    call gets its ``connect``.  A full backlog drops the SYN: the caller
    waits a 1 s retransmit."""
    n = 300
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        socks, established = connect_burst(server.port, n)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    try:
        assert established == n
        for s in socks:
            s.setblocking(True)
            s.settimeout(20)
            got = b""
            while not got.endswith(b"\n\n"):
                chunk = s.recv(64)
                assert chunk, got
                got += chunk
            assert got == b"connect\n\n"
    finally:
        for s in socks:
            s.close()
    assert server.proc.poll() is None


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_worker_processes_share_the_port_and_one_that_dies_is_started_again(db_url: str, conn: psycopg.Connection,
                                                                            prepaid: dict[str, Any]) -> None:
    """Issue 32.2: one gevent process was the limit (6 % of a core, runnable
    94 % of the time at 50 calls/s on the real engine).  ``--workers N``
    runs N whole servers listening on one port (SO_REUSEPORT: the kernel
    spreads the connections, the dialplan keeps its one socket address);
    the supervisor starts a dead worker again and stops them all."""
    server = Server(db_url, args=("--workers", "2"))
    try:
        wait_for(lambda: len(server.logged(r"listening on 127\.0\.0\.1:\d+ .*worker=\d")) == 2, what="two workers")
        ports = {re.search(r":(\d+) ", line).group(1) for line in server.logged("listening on")}  # type: ignore[union-attr]
        assert ports == {str(server.port)}
        workers = wait_for(lambda: len(_children(server.proc.pid)) == 2 and _children(server.proc.pid), what="pids")
        calls_ = [outbound(server, prepaid, "01701234567", callee=("answer", 1)) for _ in range(6)]
        wait_for(lambda: all(call_row(conn, c.uuid)["state"] == "settled" for c in calls_), what="all settled")
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: server.logged("starting it again"), what="the worker started again")
        wait_for(lambda: len(server.logged("listening on")) == 3, what="it listens")
        again = outbound(server, prepaid, "01701234567", callee=("answer", 1))
        wait_for(lambda: call_row(conn, again.uuid)["state"] == "settled", what="a call after the restart")
        live = _children(server.proc.pid)
    finally:
        server.stop()
    assert server.proc.returncode is not None
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
                             for p in live), what="no worker left")


def test_a_call_whose_socket_dies_before_its_plan_holds_no_money(server: Server, conn: psycopg.Connection,
                                                                prepaid: dict[str, Any]) -> None:
    """Issue 32.3: when FreeSWITCH ended a session before the plan was taken
    (its listener killed for unread events, a socket error; the channel
    stays parked), the admitted call's reservation and line were held
    until the 5 h expiry and dustel listed the call as active.  A
    reservation whose call never reached its plan is released at once."""
    c = outbound(server, prepaid, "01701234567", drop_at="sendmsg")
    assert c.dropped and c.executed == []
    row = wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] != "active" and r,
                   what="the reservation released", timeout=10)
    assert (row["state"], row["billsec"], row["charged_cents"]) == ("settled", 0, 0)
    m = money(conn, prepaid["tenant"]["id"])
    assert (m["balance_cents"], m["reserved_cents"]) == (100, 0)
    assert conn.execute("SELECT count(*) AS n FROM calls WHERE state = 'active'").fetchone()["n"] == 0
    wait_for(lambda: server.logged("socket ended before the plan"), what="the release in the log")


def test_a_policy_server_crash_while_the_call_rings_leaves_its_plan_running(db_url: str, conn: psycopg.Connection,
                                                                          prepaid: dict[str, Any]) -> None:
    """The rendered dialplan hands a call over with ``socket_resume=true``
    (a server that fails before the plan refuses it 503) and turns the
    resume off only at answer.  A server that died while the call rang
    turned the ringing call into a 503: FreeSWITCH resumed the dialplan, to
    the refusal.  The server now sets ``socket_resume=false`` in the same
    write as its plan, so a plan FreeSWITCH holds runs on (the controller
    settles it from its CDR)."""
    from pathlib import Path

    from tests.esl_emulator import extension_actions
    golden = (Path(__file__).resolve().parents[1] / "golden" / "freeswitch" / "dialplan" / "t1.xml").read_text()
    acts = extension_actions(golden, "t1", "01701234567")
    after = acts[[a for a, _ in acts].index("socket") + 1:]          # the rendered refusal after the socket
    assert ("respond", "503") in after
    server = Server(db_url)

    def crash(_: int) -> None:                   # the policy server dies while the carrier leg rings
        server.proc.kill()
        server.proc.wait(10)

    try:
        c = outbound(server, prepaid, "01701234567", callee=("answer", 7), while_ringing=crash,
                     variables={"socket_resume": "true"}, after_socket=after)
    finally:
        server.stop()
    assert not c.resumed and c.responded == 0, f"the ringing call was refused {c.responded} when the server died"
    assert c.executed[0] == ("set", "socket_resume=false")
    assert (c.hangup_cause, c.billsec) == ("NORMAL_CLEARING", 7) and c.bridged_us
    # nobody settled it here: the controller does, from the CDR of its hangup (test_xmlcurl)
    assert call_row(conn, c.uuid)["state"] == "active"
