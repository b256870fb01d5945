"""The cluster's scenarios (issue 27), in order on one running cluster
(tests/cluster/conftest.py): each an assertion on what the real parts did."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from typing import Any

from dustel.testing.cluster import free_port, wait_for
from tests.cluster.harness import DATA, EDGE, NODES, Cluster, _active, start_phone
from tests.factories import PASSWORD


def test_a_phone_registers_through_the_edge(cluster: Cluster) -> None:
    r = cluster.register()
    assert r.returncode == 0, r.stdout[-1500:]
    # digest against the HA1 view; the location kept in PostgreSQL (usrloc db_mode 3: every edge node sees it)
    with cluster.db() as c:
        rows = c.execute("SELECT username, contact FROM kamailio.location").fetchall()
    assert rows == [{"username": cluster.user, "contact": f"sip:{cluster.user}@127.0.0.30:{cluster.phone_port}"}]
    start_phone(cluster)


def test_a_wrong_password_registers_nothing(cluster: Cluster) -> None:
    r = cluster.sipp_run("register.xml", cluster.user, "127.0.0.31", "-set", "domain", cluster.domain,
                         "-set", "contact", "127.0.0.31:5999", "-au", cluster.user, "-ap", "wrong", timeout=5)
    assert r.returncode != 0
    with cluster.db() as c:
        assert c.execute("SELECT count(*) AS n FROM kamailio.location").fetchone()["n"] == 1


def test_calls_from_the_phone_land_on_either_node(cluster: Cluster) -> None:
    since = cluster.now()
    for _ in range(4):
        r = cluster.call("0211123456")
        assert r.returncode == 0, r.stdout[-1500:]
    rows = cluster.settled(since=since, n=4)
    assert {r["node"] for r in rows} == set(NODES), rows        # round robin over both nodes
    assert all(r["destination"] == "+49211123456" and r["billsec"] >= 1 for r in rows)
    # through the edge to the carrier, never around it
    assert cluster.carrier_invites().count(f"sip:+49211123456@127.0.0.40:{cluster.carrier_port}") >= 4


def test_a_carrier_call_reaches_the_phone_through_either_node(cluster: Cluster) -> None:
    since = cluster.now()
    before = cluster.phone_invites()
    for _ in range(2):
        r = cluster.carrier_call()
        assert r.returncode == 0, r.stdout[-1500:]
    rows = cluster.settled(since=since, n=2)
    assert {r["node"] for r in rows} == set(NODES) and all(r["direction"] == "in" for r in rows), rows
    assert cluster.phone_invites() - before == 2                 # each node reached the phone via the edge


def _udp_bound(host: str, port: int) -> bool:
    """Has a process bound this UDP port (the answering sipp is ready)?"""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def test_a_phone_behind_nat_is_reached_where_it_registered_from(cluster: Cluster) -> None:
    """A phone behind NAT registers a Contact no one can reach (10.9.9.9,
    its LAN address); the edge binds the registration to the address and
    port the REGISTER came from (received), and a carrier's call reaches
    the phone there — through either node, by the edge."""
    natted = "127.0.0.31"
    port = free_port([natted])
    with cluster.db() as c:
        c.execute("DELETE FROM kamailio.location WHERE username = %s", (cluster.user,))      # db_mode 3: at once
    uas = None
    try:
        r = cluster.sipp_run("register.xml", cluster.user, natted, "-set", "domain", cluster.domain,
                             "-set", "contact", "10.9.9.9:5060", "-au", cluster.user, "-ap", PASSWORD, port=port)
        assert r.returncode == 0, r.stdout[-1500:]
        with cluster.db() as c:
            row = c.execute("SELECT contact, received FROM kamailio.location WHERE username = %s",
                            (cluster.user,)).fetchone()
        assert "@10.9.9.9:5060" in row["contact"] and row["received"] == f"sip:{natted}:{port}", row
        log = cluster.base / "natted-phone.log"
        # answering until stopped: the edge's keepalive OPTIONS to a NATed phone (every 25 s) may come
        # first, and a sipp that counts one call only would end on it
        uas = subprocess.Popen([cluster.sipp, "-sf", str(DATA / "answer.xml"), "-i", natted, "-p", str(port),
                                "-mp", str(free_port([natted])), "-trace_msg", "-message_file", str(log),
                                "-nostdin"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cluster.base)
        wait_for(lambda: _udp_bound(natted, port), 10, "the NATed phone listening")
        call = cluster.carrier_call()
        assert call.returncode == 0, call.stdout[-1500:]
        took = log.read_text(errors="replace")                      # the phone took the call where it sent from
        assert re.search(r"^INVITE sip:\S+@10\.9\.9\.9:5060 ", took, re.M) and "SIP/2.0 200 OK" in took, took[-1500:]
    finally:
        if uas is not None and uas.poll() is None:
            uas.kill()
            uas.wait(10)
        with cluster.db() as c:
            c.execute("DELETE FROM kamailio.location WHERE username = %s", (cluster.user,))
        assert cluster.register().returncode == 0                 # the other tests' phone again


def _flood(source: str, edge: tuple[str, int], n: int) -> None:
    """``n`` OPTIONS from ``source`` as fast as one socket sends them."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        port = s.getsockname()[1]
        for i in range(n):
            s.sendto((f"OPTIONS sip:{edge[0]}:{edge[1]} SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP {source}:{port};branch=z9hG4bK{i}\r\n"
                      f"From: <sip:flood@{source}>;tag={i}\r\nTo: <sip:{edge[0]}>\r\nCall-ID: flood-{i}\r\n"
                      "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), edge)


def test_the_edge_relays_a_phones_in_dialog_request_to_an_engine_and_nowhere_else(cluster: Cluster) -> None:
    """A request with a To tag follows the Route set its sender wrote: the
    edge, then anywhere — the carrier, which trusts the edge's address.
    From a phone it goes on only to an engine node; elsewhere it gets 403."""
    import socket
    edge_port = cluster.settings.edge_nodes[0].port
    carrier_before = len(re.findall(r"^INVITE ", cluster.carrier_log.read_text(errors="replace"), re.M))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.33", 0))
        s.settimeout(10)
        port = s.getsockname()[1]
        s.sendto((f"INVITE sip:+4930999999@127.0.0.40:{cluster.carrier_port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP 127.0.0.33:{port};branch=z9hG4bK-relay-1\r\n"
                  f"Route: <sip:{EDGE}:{edge_port};lr>\r\n"
                  "From: <sip:attacker@example.org>;tag=a1\r\nTo: <sip:+4930999999@example.org>;tag=b2\r\n"
                  "Call-ID: relay-1\r\nCSeq: 2 INVITE\r\nMax-Forwards: 70\r\n"
                  f"Contact: <sip:attacker@127.0.0.33:{port}>\r\nContent-Length: 0\r\n\r\n").encode(),
                 (EDGE, edge_port))
        answer = s.recv(4096).decode(errors="replace")
    assert answer.startswith("SIP/2.0 403"), answer
    carrier_after = len(re.findall(r"^INVITE ", cluster.carrier_log.read_text(errors="replace"), re.M))
    assert carrier_after == carrier_before


def test_a_flooding_address_is_refused_but_its_112_connects(cluster: Cluster) -> None:
    flooder = "127.0.0.32"
    _flood(flooder, (EDGE, cluster.settings.edge_nodes[0].port), 400)
    wait_for(lambda: "flood from 127.0.0.32" in cluster.kamailio.log.read_text(errors="replace"), 10,
             "the edge to ban the flooding address")
    r = cluster.sipp_run("call.xml", "0211123456", flooder, "-set", "user", cluster.user, "-set", "domain",
                         cluster.domain, "-au", cluster.user, "-ap", PASSWORD, timeout=4)
    assert r.returncode != 0 and "SIP/2.0 407" not in r.stdout            # dropped unanswered
    before = len(cluster.carrier_invites())
    r = cluster.sipp_run("call.xml", "112", flooder, "-set", "user", cluster.user, "-set", "domain",
                         cluster.domain, "-au", cluster.user, "-ap", PASSWORD)
    assert r.returncode == 0, r.stdout[-1500:]
    emergency = cluster.carrier_invites()[before:]
    assert len(emergency) == 1 and re.fullmatch(r"sip:\+?\d*112@127\.0\.0\.40:\d+", emergency[0]), emergency


def test_with_one_policy_server_killed_calls_are_still_decided(cluster: Cluster) -> None:
    first, second = cluster.policy
    first.kill()                                      # SIGKILL: the first the dialplan asks is gone
    since = cluster.now()
    for _ in range(2):
        r = cluster.call("0211123456")
        assert r.returncode == 0, r.stdout[-1500:]
    rows = cluster.settled(since=since, n=2)
    assert {r["node"] for r in rows} == set(NODES)     # both nodes fell back to the second server
    decided = re.findall(r"outbound call=(\S+) .* admit=True", second.text())
    assert {r["call_id"] for r in rows} <= set(decided)


def test_the_controller_owning_the_nodes_dies_and_the_other_takes_over_cdrs_exact(cluster: Cluster) -> None:
    since = cluster.now()
    first = cluster.controller("controller-a")
    wait_for(lambda: cluster.lease_holders() == len(NODES), 20, "controller-a to hold both nodes' leases")
    second = cluster.controller("controller-b")
    wait_for(lambda: second.text().count("standing by") >= len(NODES), 20, "controller-b to stand by")
    r = cluster.call("0211123456")                       # followed by controller-a
    assert r.returncode == 0, r.stdout[-1500:]
    long_call: list[Any] = []
    talking = threading.Thread(target=lambda: long_call.append(cluster.call("0211123456", hold_ms=6000)))
    talking.start()                                      # talks across the takeover
    wait_for(lambda: any(r["state"] == "active" for r in cluster.call_rows(since)), 10, "the long call up")
    t0 = time.monotonic()
    first.kill()                                         # SIGKILL the controller host's processes
    wait_for(lambda: second.text().count("lease taken") >= len(NODES), 20, "controller-b to take both nodes over")
    took = time.monotonic() - t0
    wait_for(lambda: second.text().count("live state rebuilt") >= len(NODES), 20, "controller-b's rebuilds")
    talking.join()
    assert long_call and long_call[0].returncode == 0, long_call[0].stdout[-1500:]
    r = cluster.call("0211123456")                       # followed by controller-b
    assert r.returncode == 0, r.stdout[-1500:]
    rows = cluster.settled(since=since, n=3)
    with cluster.db() as c:
        for row in rows:                                  # exactly one CDR per call, its billsec the money's
            cdrs = c.execute("SELECT billsec, hangup_cause FROM cdrs WHERE node = %s AND call_id = %s",
                             (row["node"], row["call_id"])).fetchall()
            assert len(cdrs) == 1 and cdrs[0]["hangup_cause"] != "LOST_WHILE_DISCONNECTED", (row, cdrs)
            assert abs(cdrs[0]["billsec"] - row["billsec"]) <= 1, (row, cdrs)
    assert cluster.lease_holders() == len(NODES)
    print(f"\ncontroller takeover: controller-b followed both nodes {took:.1f} s after controller-a's SIGKILL")


def test_a_killed_node_is_skipped_and_112_keeps_connecting(cluster: Cluster) -> None:
    ast1, ast2 = cluster.asterisks["ast1"], cluster.asterisks["ast2"]
    since = cluster.now()
    marked: list[float] = []

    def watch() -> None:              # when the edge's probes take the dead node out
        wait_for(lambda: "ast1" not in _active(cluster), 20, "the edge to mark ast1 inactive")
        marked.append(time.monotonic() - t0)
    t0 = time.monotonic()
    ast1.kill()                                       # SIGKILL mid-traffic: no goodbye to anyone
    watcher = threading.Thread(target=watch)
    watcher.start()
    # calls right after: whichever node the dispatcher picks, a dead node's silence fails over to ast2
    before = len(cluster.carrier_invites())
    for dialed in ("112", "0211123456", "112", "0211123456"):
        r = cluster.call(dialed)
        assert r.returncode == 0, (dialed, r.stdout[-1500:])
    emergency = [u for u in cluster.carrier_invites()[before:] if re.match(r"sip:\+?\d*112@", u)]
    assert len(emergency) == 2
    rows = cluster.settled(since=since, n=2)
    assert {r["node"] for r in rows} == {"ast2"}
    watcher.join()
    assert marked and _active(cluster) == {"ast2"}   # later calls go straight to the live node
    print(f"\nfailover: ast1 marked inactive by the edge {marked[0]:.1f} s after its SIGKILL")
    assert ast2.proc is not None and ast2.proc.poll() is None


def test_the_standby_is_promoted_after_the_primary_dies_and_no_reservation_is_lost(cluster: Cluster) -> None:
    primary, standby = cluster.pg
    since = cluster.now()
    long_call: list[Any] = []
    talking = threading.Thread(target=lambda: long_call.append(cluster.call("0211123456", hold_ms=8000)))
    talking.start()
    row = wait_for(lambda: next((r for r in cluster.call_rows(since) if r["state"] == "active"), None), 10,
                   "the long call admitted")
    held = (row["reserved_cents"], row["reserved_free"], row["max_seconds"])
    assert held[0] + held[1] > 0                         # committed on the primary and on the synchronous standby
    primary.kill()                                        # SIGKILL: the primary's host is gone
    # no database takes writes, the edge cannot read an HA1: the phone's 112 is authenticated by the
    # HA1 the edge cached at its registration, and connects (the engine asks no policy server for it)
    before = len(cluster.carrier_invites())
    sos = cluster.call("112")
    assert sos.returncode == 0, sos.stdout[-1500:]
    assert [u for u in cluster.carrier_invites()[before:] if re.match(r"sip:\+?\d*112@", u)]
    assert "authenticated by the cached HA1 (database error)" in cluster.kamailio.log.read_text(errors="replace")
    t0 = time.monotonic()
    standby.promote()
    # every part reconnects to whichever server takes writes (the multi-host DSN): a new call is decided again
    decided = wait_for(lambda: cluster.call("0211123456").returncode == 0, 60, "a call decided after the promotion")
    took = time.monotonic() - t0
    talking.join()
    assert decided and long_call and long_call[0].returncode == 0, long_call[0].stdout[-1500:]
    rows = cluster.settled(since=since, n=2, timeout=30)
    survived = next(r for r in rows if r["call_id"] == row["call_id"])
    # the reservation was not lost: the promoted server had it, the call settled on it
    assert (survived["reserved_cents"], survived["reserved_free"], survived["max_seconds"]) == held
    assert survived["billsec"] >= 7
    with cluster.db() as c:
        money = c.execute("SELECT reserved_cents FROM tenant_money WHERE tenant_id = %s",
                          (cluster.tenant_id,)).fetchone()
        assert money["reserved_cents"] == 0
        assert c.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"] is False      # the promoted one
    r = subprocess.run([sys.executable, "-m", "dustel.cli", "billing", "reconcile", "--json"], env=cluster.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout + r.stderr
    print(f"\ndatabase failover: a call decided again {took:.1f} s after the promotion began")
