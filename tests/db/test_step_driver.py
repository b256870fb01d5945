"""The policy servers' step driver (calls.run_steps_sync / run_steps_async,
issue 10): one round trip per step of a flow — an admission is two
(BEGIN + lock and read; insert + COMMIT) — deciding exactly as the plain
driver does, binding every value as a quoted literal, and leaving nothing
half written when a step fails."""
from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from dustel.callpath import calls
from dustel.callpath.policy import CallRequest
from tests.factories import account, tenant

_ids = itertools.count(1)


@pytest.fixture
def tariff(conn: psycopg.Connection) -> Any:
    conn.execute("INSERT INTO rates (prefix, cents_per_minute) VALUES ('49', 1), ('4917', 9), ('', 30)")
    return calls.run_sync(conn, calls.load_tariff())


def funded(conn: psycopg.Connection, cents: int, name: str) -> tuple[dict[str, Any], str]:
    t = tenant(conn, plan="starter", name=name)
    u = account(conn, t["id"])
    calls.run_sync(conn, calls.topup(t["id"], cents, f"bank:{name}"))
    return t, u


def req(t: dict[str, Any], user: str, **kw: Any) -> CallRequest:
    return CallRequest(direction="out", tenant_id=t["id"], account=user, caller=user,
                       callee=kw.pop("callee", "01701234567"), node=kw.pop("node", "ast1"),
                       call_id=kw.pop("call_id", f"s{next(_ids)}"), **kw)


def shape(results: list[Any]) -> list[Any]:
    return [type(r).__name__ if isinstance(r, Exception) else (r.admit, r.reason, r.max_seconds, r.reserve_cents)
            for r in results]


def queries_sent(trace: Path) -> int:
    """Statements the client sent (libpq's trace): simple-protocol queries
    (``F … Query``) and extended-protocol executions (``F … Bind``)."""
    return len(re.findall(r"^(?:\S+ \S+\t)?F\t\d+\t(?:Query|Bind)\t", trace.read_text(), re.M))


def test_the_step_driver_decides_as_the_plain_one(conn: psycopg.Connection, tariff: Any) -> None:
    """The same batch for two identical tenants, one through each driver:
    the same decisions (money, lines, retries, an unknown account) and the
    same money rows afterwards."""
    outcome = []
    for run in (calls.run_sync, calls.run_steps_sync):
        t, u = funded(conn, 5000, f"T-{run.__name__}")
        batch = [req(t, u), req(t, u, call_id=f"{run.__name__}-same"), req(t, u, call_id=f"{run.__name__}-same"),
                 req(t, u), req(t, "000387999999")]
        results = run(conn, calls.admit_many(batch, calls.TariffCache()))
        m = conn.execute("SELECT balance_cents, reserved_cents, active_out FROM tenant_money WHERE tenant_id = %s",
                         (t["id"],)).fetchone()
        outcome.append((shape(results), m))
        settled = run(conn, calls.settle_many([("ast1", batch[0].call_id, 61), ("ast1", batch[0].call_id, 61),
                                               ("ast1", "nothing", 5)]))
        outcome.append([(s.status, s.charged_cents) for s in settled])
    assert outcome[0] == outcome[2] and outcome[1] == outcome[3]
    first, second, retry, fourth, unknown = outcome[0][0]
    assert first[:2] == (True, "ok") and first[2] > 0 and first[3] > 0
    assert second[:2] == (True, "ok") and retry == (True, "retry", *second[2:])
    assert fourth == (False, "line_limit", 0, 0) and unknown == "UnknownAccount"   # starter: 2 outbound lines
    assert outcome[0][1]["reserved_cents"] == first[3] + second[3] and outcome[0][1]["active_out"] == 2
    assert outcome[1] == [("settled", 10), ("already", 10), ("unknown", 0)]      # 61 s at 9 ct/min


def test_an_admission_and_a_settlement_are_two_round_trips_each(db_url: str, conn: psycopg.Connection,
                                                                  tariff: Any, tmp_path: Path) -> None:
    t, u = funded(conn, 100_000, "Trips")
    cache = calls.TariffCache()
    trace = tmp_path / "libpq.trace"
    with psycopg.connect(db_url, row_factory=dict_row, autocommit=True, **calls.POOL_KWARGS) as c, \
            trace.open("w") as f:
        warm = req(t, u)
        calls.run_steps_sync(c, calls.admit_many([warm], cache))           # prepares, fills the cache
        calls.run_steps_sync(c, calls.settle_many([("ast1", warm.call_id, 0)]))
        c.pgconn.trace(f.fileno())
        c.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        batch = [req(t, u), req(t, u)]
        results = calls.run_steps_sync(c, calls.admit_many(batch, cache))
        c.pgconn.untrace()
        f.flush()
        assert [r.reason for r in results] == ["ok", "ok"]
        assert queries_sent(trace) == 2
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE       # committed
        m = conn.execute("SELECT * FROM tenant_money WHERE tenant_id = %s", (t["id"],)).fetchone()
        assert m["active_out"] == 2 and m["reserved_cents"] == sum(r.reserve_cents for r in results) > 0
        with (tmp_path / "settle.trace").open("w") as g:
            c.pgconn.trace(g.fileno())
            settled = calls.run_steps_sync(c, calls.settle_many([("ast1", b.call_id, 30) for b in batch]))
            c.pgconn.untrace()
        assert [s.status for s in settled] == ["settled"] * 2
        assert queries_sent(tmp_path / "settle.trace") == 2
    m = conn.execute("SELECT * FROM tenant_money WHERE tenant_id = %s", (t["id"],)).fetchone()
    assert (m["active_out"], m["reserved_cents"]) == (0, 0)
    assert m["balance_cents"] == 100_000 - 2 * 5                         # 2 × 30 s at 9 ct/min


def test_hostile_values_are_bound_as_literals(conn: psycopg.Connection, tariff: Any) -> None:
    """A call id and a node name reach the SQL string only as
    quoted literals: quotes, semicolons, ``%s``, ``$1`` and backslashes are
    stored as they came."""
    t, u = funded(conn, 10_000, "Hostile")
    evil_id = "x'); DELETE FROM calls; -- %s $1 \\' %(rows)s"
    evil_node = "ast1'; COMMIT; DROP TABLE ledger; --"
    (d,) = calls.run_steps_sync(conn, calls.admit_many([req(t, u, call_id=evil_id, node=evil_node)],
                                                       calls.TariffCache()))
    assert d.admit
    row = conn.execute("SELECT node, call_id FROM calls").fetchone()
    assert (row["node"], row["call_id"]) == (evil_node, evil_id)
    (s,) = calls.run_steps_sync(conn, calls.settle_many([(evil_node, evil_id, 60)]))
    assert s.status == "settled" and s.charged_cents == 9
    assert conn.execute("SELECT count(*) AS n FROM ledger WHERE kind = 'charge'").fetchone()["n"] == 1


def test_a_failing_step_writes_nothing_and_the_connection_goes_on(db_url: str, conn: psycopg.Connection,
                                                                  tariff: Any) -> None:
    t, u = funded(conn, 100_000, "Fails")

    def topup_then_fail() -> calls.Flow:
        yield calls.Q(calls.BOOK, {"rows": psycopg.types.json.Jsonb([calls.book_row(t["id"], 700, "topup", "x:1")])})
        yield calls.Q("INSERT INTO calls (node, call_id, tenant_id) VALUES (%(n)s, %(c)s, %(t)s)",
                      {"n": "ast1", "c": "broken", "t": t["id"]}, last=True)     # NOT NULL columns missing

    with psycopg.connect(db_url, row_factory=dict_row, autocommit=True, **calls.POOL_KWARGS) as c:
        (before,) = calls.run_steps_sync(c, calls.admit_many([req(t, u)], calls.TariffCache()))
        with pytest.raises(psycopg.errors.NotNullViolation):
            calls.run_steps_sync(c, topup_then_fail())
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert c.execute("SELECT count(*) AS n FROM pg_prepared_statements").fetchone()["n"] == 0
        # the next flow prepares what it needs again and runs
        (d,) = calls.run_steps_sync(c, calls.admit_many([req(t, u)], calls.TariffCache()))
        assert d.reason == "ok"
    m = conn.execute("SELECT balance_cents, reserved_cents FROM tenant_money WHERE tenant_id = %s",
                     (t["id"],)).fetchone()
    assert (m["balance_cents"], m["reserved_cents"]) == (100_000, before.reserve_cents + d.reserve_cents)
    assert conn.execute("SELECT count(*) AS n FROM ledger WHERE ref = 'x:1'").fetchone()["n"] == 0


def test_the_async_driver_and_its_refusals(db_url: str, conn: psycopg.Connection, tariff: Any) -> None:
    t, u = funded(conn, 100, "Async")

    async def main() -> tuple[list[Any], list[Any]]:
        async with await psycopg.AsyncConnection.connect(db_url, row_factory=dict_row, autocommit=True,
                                                         **calls.POOL_KWARGS) as c:
            a, b = req(t, u), req(t, u)
            first = await calls.run_steps_async(c, calls.admit_many([a, b], calls.TariffCache()))
            settled = await calls.run_steps_async(c, calls.settle_many([("ast1", a.call_id, 10)]))
            return first, settled

    first, settled = asyncio.run(main())
    assert [r.reason for r in first] == ["ok", "insufficient_credit"]
    assert [(s.status, s.charged_cents) for s in settled] == [("settled", 2)]
    with psycopg.connect(db_url, row_factory=dict_row) as c, pytest.raises(ValueError, match="autocommit"):
        calls.run_steps_sync(c, calls.settle_many([("ast1", "x", 1)]))


def test_a_flow_error_survives_a_connection_that_died_under_it(db_url: str, conn: psycopg.Connection,
                                                               tariff: Any) -> None:
    """The flow's own error is what the caller sees, even when the clean-up
    after it (ROLLBACK) cannot reach the server any more."""
    t, _ = funded(conn, 1000, "Dies")
    with psycopg.connect(db_url, row_factory=dict_row, autocommit=True, **calls.POOL_KWARGS) as c:
        pid = c.info.backend_pid

        def dies() -> calls.Flow:
            yield calls.Q("SELECT * FROM tenant_money WHERE tenant_id = %(t)s FOR UPDATE", {"t": t["id"]})
            conn.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))    # returns once it is gone
            raise ValueError("the flow refused")

        with pytest.raises(ValueError, match="the flow refused"):
            calls.run_steps_sync(c, dies())
    # the lock went with the session: the row is free
    with conn.transaction():
        assert conn.execute("SELECT tenant_id FROM tenant_money WHERE tenant_id = %s FOR UPDATE NOWAIT",
                            (t["id"],)).fetchone()["tenant_id"] == t["id"]


def _index_entries_read(db_url: str, policy: psycopg.Connection) -> dict[str, int]:
    """Index entries read so far through calls' and tenant_money's indexes (the
    policy connection's statistics flushed first: PostgreSQL reports them
    before it answers the next query once a flush is forced)."""
    policy.execute("SELECT pg_stat_force_next_flush()")
    policy.execute("SELECT 1")
    with psycopg.connect(db_url, autocommit=True) as c:
        return dict(c.execute("SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes"
                              " WHERE indexrelname IN ('calls_pkey', 'calls_legs', 'tenant_money_pkey')").fetchall())


def _fresh_install(conn: psycopg.Connection) -> None:
    """calls empty and analysed, as on a fresh installation; no autovacuum
    analyses it again (and makes the plans anew) while a test runs."""
    for table in ("calls", "tenant_money"):
        conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    conn.execute("ANALYZE calls")
    conn.execute("ANALYZE tenant_money")
    conn.commit()


def _grow_calls(conn: psycopg.Connection, t: dict[str, Any], user: str) -> None:
    """3 000 settled calls of one node: a few days' history."""
    conn.execute("""INSERT INTO calls (node, call_id, tenant_id, account, direction, route, destination,
                                       max_seconds, expires_at, state)
                    SELECT 'ast1', 'old-' || i, %s, %s, 'out', 'external', '+4930123', 60, now(), 'settled'
                      FROM generate_series(1, 3000) AS i""", (t["id"], user))
    conn.commit()


def test_plans_made_on_an_empty_calls_table_still_read_only_the_batchs_rows(db_url: str, conn: psycopg.Connection,
                                                                             tariff: Any) -> None:
    """A policy connection plans each statement once, at its first
    execution (generic plans) — on a fresh installation with `calls` empty
    and analysed, a table "of one row".  After calls has grown to thousands
    of rows, an admission and a settlement still read only the batch's
    calls and money rows by key: no scan of the whole calls index, no merge
    join over every tenant's money row (bench/policy.py: 2 000 index entries
    read per batch and a third of the closed loop lost before this)."""
    # money rows a merge join in tenant order would read before it reaches the last tenant's
    conn.execute("""INSERT INTO tenants (name, customer_type, plan, sip_domain)
                    SELECT 'Other ' || i, 'private', 'starter', 'o' || i || '.sip.example'
                      FROM generate_series(1, 2000) AS i""")
    t, u = funded(conn, 10_000_000, "Grows")
    _fresh_install(conn)
    with psycopg.connect(db_url, row_factory=dict_row, autocommit=True, **calls.POOL_KWARGS) as policy:
        first = req(t, u)                   # the plans are made here, with calls empty
        assert calls.run_steps_sync(policy, calls.admit_many([first], calls.TariffCache()))[0].admit
        assert calls.run_steps_sync(policy, calls.settle_many([("ast1", first.call_id, 5)]))[0].status == "settled"
        _grow_calls(conn, t, u)
        before = _index_entries_read(db_url, policy)
        batch = [req(t, u), req(t, u, callee="+4930123456")]
        assert [d.reason for d in calls.run_steps_sync(policy, calls.admit_many(batch, calls.TariffCache()))] \
            == ["ok", "ok"]
        settled = calls.run_steps_sync(policy, calls.settle_many([("ast1", r.call_id, 61) for r in batch]))
        assert [s.status for s in settled] == ["settled", "settled"]
        read = {k: v - before[k] for k, v in _index_entries_read(db_url, policy).items()}
    # by key: each call a few times (retry check, lock, settle), each money row a few times
    assert read["calls_pkey"] <= 12, read
    assert read["tenant_money_pkey"] <= 12, read
    m = conn.execute("SELECT balance_cents, reserved_cents, active_out FROM tenant_money WHERE tenant_id = %s",
                     (t["id"],)).fetchone()
    assert (m["reserved_cents"], m["active_out"]) == (0, 0)
    charges = conn.execute("SELECT charged_cents FROM calls WHERE tenant_id = %s AND call_id NOT LIKE 'old-%%'"
                           " ORDER BY started_at, callee", (t["id"],)).fetchall()
    # 5 s to a mobile at 9 ct/min; the batch (by callee): 61 s to a landline inside the starter plan's
    # start credit, 61 s to a mobile
    assert [c["charged_cents"] for c in charges] == [1, 0, 10]
    assert m["balance_cents"] == 10_000_000 - 11


def test_a_calls_legs_are_found_by_an_index_range(db_url: str, conn: psycopg.Connection, tariff: Any) -> None:
    """The legs dustel placed for a call (``<id>:leg``, ``<id>:leg2``) are
    counted and settled by a range of an index (migration 0017), not by
    reading every call the node stored (LIKE with a parameter: no index
    range in a generic plan); ids that only look alike are no legs."""
    conn.execute("UPDATE plans SET lines_out = 10 WHERE code = 'starter'")    # the call, 4 look-alikes, 2 legs
    t, u = funded(conn, 10_000_000, "Legs")
    _grow_calls(conn, t, u)
    conn.execute("ANALYZE calls")
    conn.commit()
    cache = calls.TariffCache()
    with psycopg.connect(db_url, row_factory=dict_row, autocommit=True, prepare_threshold=0,
                         **calls.POOL_KWARGS) as policy:
        # the servers run these two on the plain driver, which prepares a statement it ran five times
        # (here: at once) — a generic plan (POOL_KWARGS)
        assert calls.run_sync(policy, calls.call_limit_and_legs("ast1", "none")) is None
        assert calls.run_sync(policy, calls.settle_legs("ast1", "none", 0, "")) == []
        parent = req(t, u, call_id="1700000000.42")
        lookalikes = [req(t, u, call_id=parent.call_id + s) for s in (":le", ":leh", "x:leg", "0:leg")]
        assert all(d.admit for d in calls.run_steps_sync(policy, calls.admit_many([parent, *lookalikes], cache)))
        for i, callee in enumerate(("+4930123456", "01701234567")):
            _, d = calls.run_steps_sync(policy, calls.admit_leg(parent, callee, cache, suffix=calls.leg_suffix(i)))
            assert d.admit
        before = _index_entries_read(db_url, policy)
        limit_and_legs = calls.run_sync(policy, calls.call_limit_and_legs("ast1", parent.call_id))
        settled = calls.run_sync(policy, calls.settle_legs("ast1", parent.call_id, 61, "+491701234567@carrier"))
        read = {k: v - before[k] for k, v in _index_entries_read(db_url, policy).items()}
    assert limit_and_legs is not None and limit_and_legs[1] == 2
    assert [(cid.removeprefix(parent.call_id), s.status, s.billsec, s.charged_cents) for cid, s in settled] == \
        [(":leg", "settled", 0, 0), (":leg2", "settled", 61, 10)]     # the mobile leg talked: 61 s at 9 ct/min
    active = conn.execute("SELECT call_id FROM calls WHERE tenant_id = %s AND state = 'active' ORDER BY call_id",
                          (t["id"],)).fetchall()
    assert [r["call_id"] for r in active] == sorted([parent.call_id] + [x.call_id for x in lookalikes])
    assert read["calls_pkey"] <= 12 and 0 < read["calls_legs"] <= 12, read
