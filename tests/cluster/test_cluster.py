"""The cluster's scenarios (issue 27), in order on one running cluster
(tests/cluster/conftest.py): each an assertion on what the real parts did."""
from __future__ import annotations

from tests.cluster.conftest import NODES, Cluster, start_phone


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
