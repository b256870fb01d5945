"""Batched admission (the FastAGI server decides concurrent requests in one
transaction): a batch behaves exactly like the same requests one by one."""
from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest

from dustel.callpath import calls
from dustel.callpath.policy import CallRequest
from tests.factories import account, tenant

_ids = itertools.count(1)


@pytest.fixture
def tariff(conn: psycopg.Connection) -> Any:
    conn.execute("INSERT INTO rates (prefix, cents_per_minute) VALUES ('49', 1), ('4917', 9), ('', 30)")
    return calls.run_sync(conn, calls.load_tariff())


def req(t: dict[str, Any], user: str, **kw: Any) -> CallRequest:
    return CallRequest(direction="out", tenant_id=t["id"], account=user, caller=user, callee="01701234567",
                       node="ast1", call_id=kw.pop("call_id", f"b{next(_ids)}"), **kw)


def test_a_batch_sees_its_own_earlier_calls(conn: psycopg.Connection, tariff: Any) -> None:
    t = tenant(conn, plan="starter")
    u = account(conn, t["id"])
    calls.run_sync(conn, calls.topup(t["id"], 100, "bank:1"))
    other = tenant(conn, plan="starter", name="Other")
    v = account(conn, other["id"])
    calls.run_sync(conn, calls.topup(other["id"], 100000, "bank:2"))
    batch = [req(t, u), req(other, v), req(t, u), req(other, v), req(other, v),
             CallRequest(direction="out", tenant_id=t["id"], account="000387999999", caller="", callee="0170",
                         node="ast1", call_id="bad")]
    results = calls.run_sync(conn, calls.admit_many(batch, tariff))
    kinds = [r.reason if not isinstance(r, Exception) else type(r).__name__ for r in results]
    # tenant t: 100 ct buy one 666 s call; the second finds the money reserved.
    # tenant other: 2 outbound lines on starter; the third call finds both taken.
    assert kinds == ["ok", "ok", "insufficient_credit", "ok", "line_limit", "UnknownAccount"]
    m = {r["tenant_id"]: r for r in conn.execute("SELECT * FROM tenant_money").fetchall()}
    assert m[t["id"]]["reserved_cents"] == 100 == results[0].reserve_cents
    assert m[other["id"]]["reserved_cents"] == results[1].reserve_cents + results[3].reserve_cents > 0
    assert conn.execute("SELECT count(*) AS n FROM calls").fetchone()["n"] == 3


def test_a_retry_inside_one_batch_reserves_once(conn: psycopg.Connection, tariff: Any) -> None:
    t = tenant(conn, plan="starter")
    u = account(conn, t["id"])
    calls.run_sync(conn, calls.topup(t["id"], 300, "bank:1"))
    first, again = req(t, u, call_id="same"), req(t, u, call_id="same")
    results = calls.run_sync(conn, calls.admit_many([first, again], tariff))
    assert [r.reason for r in results] == ["ok", "retry"]
    assert results[1].max_seconds == results[0].max_seconds
    assert conn.execute("SELECT reserved_cents FROM tenant_money").fetchone()["reserved_cents"] == \
        results[0].reserve_cents
    assert calls.run_sync(conn, calls.admit(again, tariff)).reason == "retry"


def test_batch_equals_one_by_one(conn: psycopg.Connection, db_url: str, tariff: Any) -> None:
    ts = [tenant(conn, plan="starter", name=f"T{i}") for i in range(3)]
    us = [account(conn, t["id"]) for t in ts]
    for i, t in enumerate(ts):
        calls.run_sync(conn, calls.topup(t["id"], 50 + 40 * i, f"bank:{i}"))
    plan = [(i % 3, f"k{i}") for i in range(12)]
    batch = calls.run_sync(conn, calls.admit_many([req(ts[a], us[a], call_id=c) for a, c in plan], tariff))
    state = conn.execute("SELECT tenant_id, reserved_cents FROM tenant_money ORDER BY 1").fetchall()
    conn.execute("DELETE FROM calls")
    conn.execute("UPDATE tenant_money SET reserved_cents = 0, reserved_free = 0")
    single = [calls.run_sync(conn, calls.admit(req(ts[a], us[a], call_id=c), tariff)) for a, c in plan]
    assert [(d.admit, d.reason, d.max_seconds, d.reserve_cents) for d in batch] == \
        [(d.admit, d.reason, d.max_seconds, d.reserve_cents) for d in single]
    assert conn.execute("SELECT tenant_id, reserved_cents FROM tenant_money ORDER BY 1").fetchall() == state


def test_a_reused_call_id_never_inherits_another_calls_decision(conn: psycopg.Connection, tariff: Any) -> None:
    """Issue 15.9: the same (node, call id) for another tenant, direction or
    number (two engines under one node name, a transferred leg re-entering
    the dialplan) is refused as a conflict, in a batch and across batches;
    an identical retry still gets the first decision and reserves once."""
    t = tenant(conn, plan="starter")
    u = account(conn, t["id"])
    calls.run_sync(conn, calls.topup(t["id"], 100, "bank:1"))
    other = tenant(conn, plan="starter", name="Other")
    v = account(conn, other["id"])
    first = req(t, u, call_id="same")
    results = calls.run_sync(conn, calls.admit_many([first, req(other, v, call_id="same")], tariff))
    assert [r.reason for r in results] == ["ok", "call_conflict"]
    assert (results[1].admit, results[1].sip_code) == (False, 482)
    for imposter in (req(other, v, call_id="same"),
                     CallRequest(direction="out", tenant_id=t["id"], account=u, caller=u, callee="0301234567",
                                 node="ast1", call_id="same"),
                     CallRequest(direction="in", tenant_id=t["id"], account=u, caller="+4930", callee="01701234567",
                                 node="ast1", call_id="same")):
        assert calls.run_sync(conn, calls.admit(imposter, tariff)).reason == "call_conflict"
    assert calls.run_sync(conn, calls.admit(first, tariff)).reason == "retry"
    assert conn.execute("SELECT count(*) AS n FROM calls").fetchone()["n"] == 1
    assert conn.execute("SELECT reserved_cents FROM tenant_money WHERE tenant_id = %s",
                        (other["id"],)).fetchone()["reserved_cents"] == 0
