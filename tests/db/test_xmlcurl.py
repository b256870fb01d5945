"""FreeSWITCH's dialplan fetch (issue 32 item 7): ``dustel xmlcurl serve`` —
the real asyncio process — asked the way mod_xml_curl asks (recording 12's
request, this call's values), the document it answers run on the emulator's
channel, the static dialplan behind it (12b), and the call settled by the
real controller from the hangup events it follows; on a real database."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dustel.config import Settings
from dustel.provisioning import features, numbers
from dustel.render import engines, service
from tests.db.conftest import Controller
from tests.db.test_esl_outbound import Server as EslServer
from tests.esl_emulator import (
    Binding,
    FetchedCall,
    FreeSwitchEmulator,
    OutboundCall,
    dialplan_variables,
    fetch_request,
    fetched_actions,
    http_messages,
    post,
    profile_dialplans,
    wait_for,
    xml_curl_binding,
)
from tests.factories import account
from tests.processes import SECRET_DSN, ServerProcess, served_cmdline


class XmlCurlServer(ServerProcess):
    """``python -m dustel.agi.xmlcurl`` as ``dustel xmlcurl serve`` execs it."""

    def __init__(self, db_url: str, nodes: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        env = {**os.environ, "DUSTEL_XMLCURL_DSN": db_url, "DUSTEL_XMLCURL_NODES": json.dumps(nodes or {})}
        super().__init__([sys.executable, "-m", "dustel.agi.xmlcurl", "--port", "0", *args], env, "xmlcurl server")


@pytest.fixture
def xmlcurl(db_url: str) -> Iterator[XmlCurlServer]:
    s = XmlCurlServer(db_url)
    yield s
    s.stop()


@pytest.fixture
def routed(conn: psycopg.Connection, prepaid: dict[str, Any]) -> dict[str, Any]:
    """``prepaid`` with its number routed to its account."""
    with conn.transaction():
        numbers.assign(conn, "+492111234567", "account", prepaid["user"])
    return prepaid


def rendered(conn: psycopg.Connection, tmp: Path, xmlcurl_port: int, esl_port: int = 8084,
             decision: str = "fetch") -> dict[str, str]:
    s = Settings(state_dir=tmp, esl_password="test-esl-secret", fs_decision=decision, xmlcurl_port=xmlcurl_port,
                 esl_outbound_port=esl_port)
    with conn.transaction():
        return service.render_files(conn, s, ["freeswitch"])["freeswitch"]


def phone(files: dict[str, str], p: dict[str, Any], dest: str, binding: Binding | None = None,
          **kw: Any) -> FetchedCall:
    """A call from the tenant's phone routed by FreeSWITCH with the rendered
    configuration: the internal profile's dialplans, the binding, the static
    dialplan.  The channel holds what sofia's digest auth and the directory
    put there."""
    t = p["tenant"]
    dialplans = profile_dialplans(files["sip_profiles/internal.xml"])
    variables = {"user_name": p["user"], "domain_name": t["sip_domain"], "dustel_tenant": str(t["id"]),
                 "dustel_psap_prefix": "0211", "dustel_caller_id": "+492111234567",
                 "sip_network_ip": kw.pop("ip", "192.0.2.10"), "sip_via_protocol": "udp"}
    return FetchedCall(dest, variables, context=f"t{t['id']}",
                       binding=binding or xml_curl_binding(files["autoload_configs/xml_curl.conf.xml"]),
                       static=files[f"dialplan/t{t['id']}.xml"], dialplans=dialplans,
                       alt_files={arg: files[engines.EMERGENCY_FILE] for _, arg in dialplans if arg},
                       caller=p["user"], **kw).run()


def call_row(conn: psycopg.Connection, call_id: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM calls WHERE node = 'fs1' AND call_id = %s", (call_id,)).fetchone()


def money(conn: psycopg.Connection, tid: int) -> dict[str, Any]:
    return conn.execute("SELECT * FROM tenant_money WHERE tenant_id = %s", (tid,)).fetchone()


def nothing_held(conn: psycopg.Connection, tid: int) -> bool:
    m = money(conn, tid)
    active = conn.execute("SELECT count(*) AS n FROM calls WHERE state = 'active'").fetchone()["n"]
    return active == 0 and m["reserved_cents"] == 0 and m["active_out"] == 0 and m["active_in"] == 0


# ------------------------------------------------------------------ recording 12's requests

def test_the_recorded_requests_get_an_http_answer_on_one_keep_alive_connection(xmlcurl: XmlCurlServer) -> None:
    """Recording 12's three requests, byte for byte, on one connection
    (HTTP/1.1 keep-alive; mod_xml_curl itself opens one per fetch): each is
    a carrier call in ``public``, which the static dialplan routes (numbers,
    queues, fax, forwarding stages: the socket), so each gets recording
    12's third answer, ``not found``, exactly."""
    recorded = http_messages("12-dialplan-fetch")
    requests = [data for d, data in recorded if d == "fs->server"]
    not_found = [data for d, data in recorded if d == "server->fs"][2].partition(b"\r\n\r\n")[2]
    assert len(requests) == 3
    with socket.create_connection(("127.0.0.1", xmlcurl.port), timeout=10) as sock:
        import http.client
        for req in requests:
            sock.sendall(req)
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            assert (resp.status, resp.getheader("Content-Type")) == (200, "text/xml")
            assert resp.read() == not_found
            assert not resp.will_close


def test_the_emulator_posts_recording_12s_requests_byte_for_byte() -> None:
    """The emulator's fetch (``fetch_request``) with each recorded call's
    values is the recorded request, byte for byte: the header lines, the
    158 fields in FreeSWITCH's order, ``switch_url_encode``'s encoding."""
    from urllib.parse import unquote
    for _, req in (m for m in http_messages("12-dialplan-fetch") if m[0] == "fs->server"):
        body = req.partition(b"\r\n\r\n")[2].decode()
        values = {k: unquote(v) for k, _, v in (f.partition("=") for f in body.split("&"))}
        assert fetch_request("127.0.0.1", 8096, "/dialplan", values, {}) == req


def test_only_configured_engine_nodes_may_fetch(db_url: str, routed: dict[str, Any], conn: psycopg.Connection,
                                                tmp_path: Path) -> None:
    """As the other policy servers: the engine nodes' addresses only (a
    stranger gets 403 — FreeSWITCH would take the static dialplan)."""
    server = XmlCurlServer(db_url, nodes={"127.0.0.2": "fs1"})
    try:
        files = rendered(conn, tmp_path, server.port)
        stranger = phone(files, routed, "01701234567")
        assert stranger.answer == "failed" and stranger.via == "static"
        wait_for(lambda: server.logged("fetch from 127.0.0.1 refused: not a configured engine node"),
                 what="the refusal logged")
        assert call_row(conn, stranger.uuid) is None
    finally:
        server.stop()


# ------------------------------------------------------------------ the answers

def test_a_phone_call_is_fetched_admitted_limited_bridged_and_settled_by_the_controller(
        xmlcurl: XmlCurlServer, controller: Controller, fs: FreeSwitchEmulator, conn: psycopg.Connection,
        routed: dict[str, Any], tmp_path: Path) -> None:
    """Answer (1) of recording 12: the decision's variables, the time limit
    armed for the answer (``execute_on_answer=sched_hangup +N``), the
    tenant exported, the bridge.  No socket: the call is settled by the
    controller from CHANNEL_HANGUP_COMPLETE's billsec (the CDR)."""
    files = rendered(conn, tmp_path, xmlcurl.port)
    c = phone(files, routed, "01701234567", callee=("answer", 2000), engine=fs)
    assert (c.via, c.answer, c.socket) == ("fetch", "document", None)
    tid = routed["tenant"]["id"]
    assert c.channel.executed == [
        ("export", f"dustel_tenant={tid}"), ("set", f"dustel_domain={routed['tenant']['sip_domain']}"),
        ("set", "dustel_action=admit"), ("set", "dustel_reason=ok"),
        ("set", "effective_caller_id_number=+492111234567"),
        ("set", "execute_on_answer=sched_hangup +666 ALLOTTED_TIMEOUT"),
        ("set", "hangup_after_bridge=true"),
        ("bridge", "sofia/gateway/carrier/+491701234567"),
        ("sched_hangup", "+666 ALLOTTED_TIMEOUT"),          # fired at answer
    ]
    assert (c.channel.hangup_cause, c.channel.billsec) == ("ALLOTTED_TIMEOUT", 666)
    row = wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] == "settled" and r,
                   what="settled from the controller's CDR")
    assert (row["billsec"], row["charged_cents"], row["route"]) == (666, 100, "external")  # 9 ct/min, per second
    cdr = conn.execute("SELECT * FROM cdrs WHERE call_id = %s", (c.uuid,)).fetchone()
    assert (cdr["node"], cdr["tenant_id"], cdr["direction"], cdr["billsec"]) == ("fs1", tid, "out", 666)
    assert nothing_held(conn, tid) and money(conn, tid)["balance_cents"] == 0
    wait_for(lambda: xmlcurl.logged(f"fetch call={c.uuid} tenant={tid} .* admit=True reason=ok max=666"),
             what="the decision logged")


def test_a_carriers_call_to_an_account_is_fetched_and_settled_by_the_controller(
        xmlcurl: XmlCurlServer, controller: Controller, fs: FreeSwitchEmulator, conn: psycopg.Connection,
        routed: dict[str, Any], tmp_path: Path) -> None:
    """A number routed to an account whose plan is one stage of accounts
    (no forwarding, or a group call with accounts): the fetched extension
    sets what the number's ``public`` extension sets, then the socket's plan
    — the account's phones ring for the stage's time — and the controller
    settles the call from its CDR (an inbound call: nothing charged)."""
    files = rendered(conn, tmp_path, xmlcurl.port)
    t, user = routed["tenant"], routed["user"]
    c = FetchedCall("+492111234567", {}, context="public",
                    binding=xml_curl_binding(files["autoload_configs/xml_curl.conf.xml"]),
                    static=files["dialplan/public.xml"], caller="+4930555000", callee=("answer", 42), engine=fs).run()
    assert (c.via, c.answer) == ("fetch", "document")
    assert c.channel.executed[:4] == [("export", f"dustel_tenant={t['id']}"), ("set", "dustel_target_kind=account"),
                                      ("set", f"dustel_target={user}"), ("set", f"dustel_domain={t['sip_domain']}")]
    assert ("bridge", f"{{leg_timeout=60}}user/{user}@{t['sip_domain']}") in c.channel.executed
    row = wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] == "settled" and r,
                   what="settled from the controller's CDR")
    assert (row["direction"], row["billsec"], row["charged_cents"]) == ("in", 42, 0)
    cdr = conn.execute("SELECT * FROM cdrs WHERE call_id = %s", (c.uuid,)).fetchone()
    assert (cdr["tenant_id"], cdr["direction"], cdr["account"]) == (t["id"], "in", user)
    assert nothing_held(conn, t["id"])


def test_refusals_are_answered_with_the_refusal_tables_code(xmlcurl: XmlCurlServer, controller: Controller,
                                                            fs: FreeSwitchEmulator, conn: psycopg.Connection,
                                                            routed: dict[str, Any], tmp_path: Path) -> None:
    """Answer (2) of recording 12: ``respond`` with the code of
    ``policy.REFUSALS`` — the caller gets it, nothing is reserved."""
    files = rendered(conn, tmp_path, xmlcurl.port)
    tid = routed["tenant"]["id"]
    wrong_ip = phone(files, routed, "01701234567", ip="198.51.100.7", engine=fs)
    assert wrong_ip.via == "fetch" and wrong_ip.channel.executed[2:] == [
        ("set", "dustel_action=refuse"), ("set", "dustel_reason=ip_not_allowed"), ("respond", "403")]
    assert (wrong_ip.channel.responded, wrong_ip.channel.hangup_cause) == (403, "CALL_REJECTED")
    invalid = phone(files, routed, "0123", engine=fs)
    assert invalid.channel.executed[-2:] == [("set", "dustel_reason=invalid_number"), ("respond", "484")]
    conn.execute("UPDATE tenant_money SET balance_cents = 0")
    broke = phone(files, routed, "01701234567", engine=fs)
    assert broke.channel.executed[-2:] == [("set", "dustel_reason=insufficient_credit"), ("respond", "402")]
    assert conn.execute("SELECT count(*) AS n FROM calls").fetchone()["n"] == 0
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM cdrs").fetchone()["n"] == 3, what="three CDRs")
    assert nothing_held(conn, tid)


def test_what_the_fetch_does_not_decide_is_not_found_and_routed_statically(
        xmlcurl: XmlCurlServer, db_url: str, conn: psycopg.Connection, routed: dict[str, Any],
        tmp_path: Path) -> None:
    """Answer (3) of recording 12, ``not found``: FreeSWITCH routes the call
    with its static dialplan.  For a star code (the socket runs it) and a
    carrier's call whose plan needs the socket's round trips (here a
    forwarding on no answer: its second stage is read when the first ended);
    nothing decided, nothing reserved by the fetch."""
    esl = EslServer(db_url)
    try:
        files = rendered(conn, tmp_path, xmlcurl.port, esl_port=esl.port)
        star = phone(files, routed, "*52", esl_port=esl.port)
        assert (star.answer, star.via) == ("not found", "socket")
        assert ("set", "dustel_star=*52") not in star.socket.executed      # set by the static extension …
        assert star.socket.variables.get("dustel_star") == "*52"          # … before its socket
        t = routed["tenant"]
        other = account(conn, t["id"])
        with conn.transaction():       # two stages: the second is read when the first ended unanswered
            features.set_diversion(conn, routed["user"], kind="forward", mode="no_answer", timeout=5, targets=[other])
        inbound = FetchedCall("+492111234567", {}, context="public",
                              binding=xml_curl_binding(files["autoload_configs/xml_curl.conf.xml"]),
                              static=files["dialplan/public.xml"], caller="+4930555000", esl_port=esl.port,
                              callee=("answer", 3)).run()
        assert (inbound.answer, inbound.via) == ("not found", "socket")
        assert inbound.socket.variables["dustel_target"] == routed["user"]
        assert any(app == "bridge" and f"user/{routed['user']}@{t['sip_domain']}" in arg
                   for app, arg in inbound.socket.executed)
        wait_for(lambda: (r := call_row(conn, inbound.uuid)) and r["state"] == "settled", what="the socket settled")
    finally:
        esl.stop()
    assert not xmlcurl.logged(f"call={star.uuid}") and not xmlcurl.logged(f"call={inbound.uuid}")


def test_110_and_112_never_wait_for_any_server(conn: psycopg.Connection, routed: dict[str, Any],
                                               tmp_path: Path) -> None:
    """With the fetch, every call's routing would ask a server first; a
    server host that is down but routable holds it for the binding's
    timeout.  Emergency calls never ask: the internal profile's first
    dialplan is the rendered emergency file (parsed alone, no binding), so
    110/112 bridge to the PSAP with a fetch server that never answers, and
    nothing reaches it."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)                          # the kernel takes connections; nobody answers
    try:
        files = rendered(conn, tmp_path, silent.getsockname()[1])
        assert profile_dialplans(files["sip_profiles/internal.xml"])[0] == \
            ("XML", f"/etc/freeswitch/dustel/{engines.EMERGENCY_FILE}")
        for dialled in ("112", "110", "0112", "+49110"):
            c = phone(files, routed, dialled, callee=("answer", 5))
            assert (c.via, c.request) == ("emergency", b""), (dialled, c.via)
            assert c.channel.executed[-1] == ("bridge", f"sofia/gateway/carrier/0211{dialled[-3:]}")
            assert (c.channel.billsec, c.channel.hangup_cause) == (5, "NORMAL_CLEARING")
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.accept()                    # no connection was ever made
    finally:
        silent.close()
    # the carrier profile has no such file: a carrier's call to 112 is no emergency call of ours
    assert profile_dialplans(files["sip_profiles/carrier.xml"]) == [("XML", "")]


def test_a_fetch_that_times_out_falls_back_to_the_static_dialplan(db_url: str, conn: psycopg.Connection,
                                                                  routed: dict[str, Any], tmp_path: Path) -> None:
    """Recording 12b: a server slower than the binding's timeout — FreeSWITCH
    gives up and routes with the static dialplan: the socket (the call is
    decided and bridged there), then the refusal when that fails too; never
    a bridge without a decision."""
    slow = socket.socket()
    slow.bind(("127.0.0.1", 0))
    slow.listen(16)                             # takes the POST, never answers (12b held it 3 s)
    esl = EslServer(db_url)
    try:
        port = slow.getsockname()[1]
        files = rendered(conn, tmp_path, port, esl_port=esl.port)
        binding = xml_curl_binding(files["autoload_configs/xml_curl.conf.xml"])
        assert binding is not None and (binding.port, binding.path, binding.timeout) == (port, "/dialplan", 2.0)
        fast = Binding(binding.host, port, binding.path, 0.3)     # the test's own timeout, not the rendered 2 s
        c = phone(files, routed, "01701234567", binding=fast, esl_port=esl.port, callee=("answer", 4))
        assert (c.answer, c.via) == ("failed", "socket")
        assert ("bridge", "sofia/gateway/carrier/+491701234567") in c.socket.executed
        wait_for(lambda: (r := call_row(conn, c.uuid)) and r["state"] == "settled", what="the socket settled")
    finally:
        esl.stop()
    # and with the socket gone too: the rendered refusal, never an open door
    lone = phone(files, routed, "01701234567", binding=fast)
    slow.close()
    assert (lone.answer, lone.via) == ("failed", "static")
    assert (lone.channel.responded, lone.channel.executed[-1]) == (503, ("respond", "503"))
    assert not any(app == "bridge" for app, _ in lone.channel.executed)


def test_a_decision_freeswitch_never_ran_holds_nothing_once_the_call_ended(
        xmlcurl: XmlCurlServer, controller: Controller, fs: FreeSwitchEmulator, conn: psycopg.Connection,
        routed: dict[str, Any], tmp_path: Path) -> None:
    """The server admitted a call (its reservation and line taken) but its
    answer came too late for FreeSWITCH, which routed statically — and the
    socket failed too: the caller got the refusal.  The reservation is not
    held until its expiry: the controller settles the call from the CDR of
    its hangup (0 s), as for every call of the fetch."""
    files = rendered(conn, tmp_path, xmlcurl.port)
    binding = xml_curl_binding(files["autoload_configs/xml_curl.conf.xml"])
    assert binding is not None
    tid = routed["tenant"]["id"]
    late = FetchedCall("01701234567", {"user_name": routed["user"], "domain_name": routed["tenant"]["sip_domain"],
                                       "dustel_tenant": str(tid), "sip_network_ip": "192.0.2.10"},
                       context=f"t{tid}", binding=None, static=files[f"dialplan/t{tid}.xml"], caller=routed["user"],
                       engine=fs)
    got = post(binding, late.fetch_request(binding))      # the server decides; FreeSWITCH is gone by then
    assert got is not None and got[0] == 200 and b'application="bridge"' in got[1]
    assert call_row(conn, late.uuid)["state"] == "active" and money(conn, tid)["reserved_cents"] > 0
    late.run()                                            # … the static dialplan: the socket fails, the refusal
    assert (late.via, late.channel.responded) == ("static", 503)
    row = wait_for(lambda: (r := call_row(conn, late.uuid)) and r["state"] == "settled" and r,
                   what="released from the CDR")
    assert (row["billsec"], row["charged_cents"]) == (0, 0)
    assert nothing_held(conn, tid)


def test_the_recorded_timeout_is_what_the_binding_renders() -> None:
    """12b's binding (``timeout`` 2) as the rendered ``xml_curl.conf.xml``
    sets it, and what the emulator's fetch does with an answer that comes
    too late: nothing (the static dialplan)."""
    recorded = http_messages("12b-dialplan-fetch-timeout")
    assert [d for d, _ in recorded] == ["fs->server", "server->fs"]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    done = threading.Event()

    def late() -> None:        # reads the request, answers only after the client gave up
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            done.wait(10)
            try:
                conn.sendall(recorded[1][1])
            except OSError:
                pass

    threading.Thread(target=late, daemon=True).start()
    try:
        assert post(Binding("127.0.0.1", srv.getsockname()[1], "/dialplan", 0.3), recorded[0][1]) is None
    finally:
        done.set()
        srv.close()
    assert fetched_actions(recorded[1][1].partition(b"\r\n\r\n")[2], "public", "+49211987650") == [
        ("set", "dustel_tenant=1"), ("set", "dustel_call_id=dc-0001"), ("set", "hangup_after_bridge=true"),
        ("set", "execute_on_answer=sched_hangup +60 ALLOTTED_TIMEOUT"), ("export", "dustel_tenant=1"),
        ("bridge", "sofia/gateway/carrier/+4930555123")]


# ------------------------------------------------------------------ one core, both paths

CASES = [   # (destination, source address, balance in cents, talk seconds / what the far end does)
    ("01701234567", "192.0.2.10", 100, ("answer", 20)),       # a mobile, by the second
    ("02111234999", "192.0.2.10", 100, ("answer", 65)),       # German fixed
    ("01701234567", "192.0.2.10", 100, ("busy",)),            # busy: nothing charged
    ("00861012345678", "192.0.2.10", 100, ("answer", 5)),     # world: not in the starter preset
    ("01701234567", "203.0.113.9", 100, ("answer", 5)),       # not from the account's network
    ("0123", "192.0.2.10", 100, ("answer", 5)),               # no number
    ("01701234567", "192.0.2.10", 0, ("answer", 5)),          # no money left
    ("0900123456", "192.0.2.10", 100, ("answer", 5)),         # premium rate: a zone of its own
]


def test_the_fetch_and_the_socket_decide_alike(db_url: str, xmlcurl: XmlCurlServer, controller: Controller,
                                               fs: FreeSwitchEmulator, conn: psycopg.Connection,
                                               routed: dict[str, Any], tmp_path: Path) -> None:
    """One core, both engines' paths, never a rule written twice: the same
    calls through the outbound socket and through the fetch get the same
    applications (after what each path adds: the socket's
    ``socket_resume=false``, the fetched extension's tenant and domain), the
    same SIP code, the same reservation (route, zone, rate, limit) and the
    same charge — the socket's settled by the socket, the fetch's by the
    controller from its CDR."""
    esl = EslServer(db_url)
    tid = routed["tenant"]["id"]
    free = money(conn, tid)["free_seconds"]           # the start credit: each path starts with all of it
    try:
        files = rendered(conn, tmp_path, xmlcurl.port, esl_port=esl.port)
        for dest, ip, balance, far_end in CASES:
            got = {}
            for path in ("socket", "fetch"):
                conn.execute("UPDATE tenant_money SET balance_cents = %s, free_seconds = %s WHERE tenant_id = %s",
                             (balance, free, tid))
                if path == "fetch":
                    c = phone(files, routed, dest, ip=ip, callee=far_end, engine=fs)
                    assert c.via == "fetch", (dest, c.via, c.answer)
                    ch, plan = c.channel, c.channel.executed[2:]
                else:
                    variables = dialplan_variables(files[f"dialplan/t{tid}.xml"], f"t{tid}", dest, {
                        "user_name": routed["user"], "domain_name": routed["tenant"]["sip_domain"],
                        "sip_network_ip": ip, "sip_via_protocol": "udp"})
                    assert variables is not None
                    ch = OutboundCall(esl.port, dest, variables, caller=routed["user"], callee=far_end,
                                      switchname="fs1")
                    ch.start()
                    ch.wait()
                    plan = ch.executed[1:]
                plan = [a for a in plan if a[0] != "hangup"]    # a failed bridge: the socket hangs up, FS's dptools
                row = wait_for(lambda u=ch.uuid: (r := call_row(conn, u)) is None or r["state"] == "settled",
                               what=f"{path} {dest} settled")
                row = call_row(conn, ch.uuid)
                wait_for(lambda: nothing_held(conn, tid), what=f"{path} {dest}: nothing held")
                kept = ("direction", "route", "zone", "cents_per_minute", "max_seconds", "reserved_cents", "billsec",
                        "charged_cents")
                got[path] = (plan, ch.responded, ch.billsec, row and {k: row[k] for k in kept},
                             money(conn, tid)["balance_cents"])
            assert got["socket"] == got["fetch"], dest
        conn.execute("UPDATE tenant_money SET balance_cents = 100, free_seconds = %s WHERE tenant_id = %s", (free, tid))
        with conn.transaction():
            features.list_add(conn, routed["user"], "black", "+4930666*")
        for caller, phone_does in INBOUND:
            got = {}
            for path in ("socket", "fetch"):
                if path == "fetch":
                    c = FetchedCall("+492111234567", {}, context="public", caller=caller,
                                    binding=xml_curl_binding(files["autoload_configs/xml_curl.conf.xml"]),
                                    static=files["dialplan/public.xml"], phones={routed["user"]: phone_does},
                                    engine=fs).run()
                    assert c.via == "fetch", (caller, c.via, c.answer)
                    ch, plan = c.channel, c.channel.executed[len(ch_prelude(c.channel.executed)):]
                else:
                    variables = dialplan_variables(files["dialplan/public.xml"], "public", "+492111234567", {})
                    assert variables is not None
                    ch = OutboundCall(esl.port, "+492111234567", variables, caller=caller,
                                      phones={routed["user"]: phone_does}, switchname="fs1")
                    ch.start()
                    ch.wait()
                    plan = ch.executed[1:]
                plan = [a for a in plan if a[0] != "hangup"]
                wait_for(lambda: nothing_held(conn, tid), what=f"{path} {caller}: nothing held")
                row = call_row(conn, ch.uuid)
                got[path] = (plan, ch.responded, ch.billsec,
                             row and {k: row[k] for k in ("direction", "route", "billsec", "charged_cents")})
            assert got["socket"] == got["fetch"], caller
    finally:
        esl.stop()


def ch_prelude(executed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The number extension's own actions at the head of a fetched plan (up to the decision's first)."""
    return executed[:next(i for i, (app, data) in enumerate(executed) if data.startswith("dustel_action="))]


INBOUND = [   # (caller, what the account's phone does)
    ("+4930555000", ("answer", 42)),
    ("+4930555000", ("absent",)),          # not registered: USER_NOT_REGISTERED at once
    ("+4930555000", ("busy",)),
    ("+4930666123", ("answer", 5)),        # on the account's blacklist: 603
]


def test_fetch_mode_renders_only_what_it_needs_and_the_static_dialplan_stays(conn: psycopg.Connection,
                                                                             routed: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    """``fs_decision = fetch`` changes three files — the binding, the
    internal profile's dialplans, the emergency file — and leaves the
    static dialplan as it is: the socket, then the refusal."""
    socket_mode = rendered(conn, tmp_path, 8096, decision="socket")
    fetch_mode = rendered(conn, tmp_path, 8096)
    differ = sorted(rel for rel in set(socket_mode) | set(fetch_mode) if socket_mode.get(rel) != fetch_mode.get(rel))
    assert differ == ["autoload_configs/xml_curl.conf.xml", engines.EMERGENCY_FILE, "sip_profiles/internal.xml"]
    assert xml_curl_binding(socket_mode["autoload_configs/xml_curl.conf.xml"]) is None
    assert xml_curl_binding(fetch_mode["autoload_configs/xml_curl.conf.xml"]) == \
        Binding("127.0.0.1", 8096, "/dialplan", 2.0)


def test_xmlcurl_serve_keeps_the_dsn_off_the_command_line_and_checks_its_settings(tmp_path: Path) -> None:
    """``dustel xmlcurl serve`` execs the server with the DSN and the nodes in
    its environment (``ps`` shows argv to every user), as ``esl serve``."""
    cmdline = served_cmdline(str(tmp_path), "xmlcurl", "serve")
    assert "dustel.agi.xmlcurl" in cmdline and "s3cret" not in cmdline
    env = {**os.environ, "DATABASE_URL": SECRET_DSN}
    bad = subprocess.run([sys.executable, "-m", "dustel.cli", "--state-dir", str(tmp_path), "xmlcurl", "serve"],
                         env={**env, "DUSTEL_FS_DECISION": "both"}, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: fs_decision: must be socket or fetch (got 'both')"


def test_worker_processes_share_the_port(db_url: str, controller: Controller, fs: FreeSwitchEmulator,
                                         conn: psycopg.Connection, routed: dict[str, Any], tmp_path: Path) -> None:
    """``xmlcurl_workers`` (as ``esl_workers``): whole servers on one port
    (SO_REUSEPORT), the same supervisor; every fetch is answered."""
    server = XmlCurlServer(db_url, args=("--workers", "2"))
    try:
        wait_for(lambda: len(server.logged(r"listening on 127\.0\.0\.1:\d+/dialplan worker=\d")) == 2,
                 what="two workers")
        assert {re.search(r":(\d+)/", line).group(1)                           # type: ignore[union-attr]
                for line in server.logged("listening on")} == {str(server.port)}
        files = rendered(conn, tmp_path, server.port)
        placed = []
        for _ in range(4):           # one after the other: the starter plan has two lines
            placed.append(phone(files, routed, "0211123456", callee=("answer", 1), engine=fs))
            wait_for(lambda: nothing_held(conn, routed["tenant"]["id"]), what="settled by the controller")
        assert [(c.via, c.answer, c.channel.billsec) for c in placed] == [("fetch", "document", 1)] * 4, server.log
    finally:
        server.stop()
