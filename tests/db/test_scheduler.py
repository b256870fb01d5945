"""The scheduler (issue 11): two real scheduler processes started at once on
real PostgreSQL perform each nightly top-up exactly once; a catch-up after
downtime runs each job once, never twice."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from dustel import scheduler
from dustel.billing import money, sepa
from dustel.config import Settings

from ..billing_support import BERLIN, ISSUER, old_tenant


def _starter(conn: psycopg.Connection, name: str, balance: int) -> dict:
    t = old_tenant(conn, "starter", dt.date(2026, 1, 5), name=name)
    with conn.transaction():
        sepa.add_mandate(conn, t["id"], holder=name, iban="DE89370400440532013000", bic=None,
                         signed_on=dt.date(2026, 1, 2), reference=f"M-{t['id']}")
        conn.execute("""INSERT INTO billing_profiles (tenant_id, autotopup_threshold_cents, autotopup_amount_cents)
                        VALUES (%s, 1000, 2500)""", (t["id"],))
        if balance:
            money.post(conn, t["id"], balance, "topup", f"seed:{t['id']}")
    return t


def _waiting_on(conn: psycopg.Connection, key: int) -> int:
    return conn.execute("""SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                            AND ((classid::bigint << 32) | objid::bigint) = %s""", (key,)).fetchone()["n"]


def test_two_schedulers_started_at_once_top_up_each_tenant_once(db_url: str, conn: psycopg.Connection,
                                                               tmp_path: Path) -> None:
    low = [_starter(conn, f"Low {i}", 200 * i) for i in range(3)]
    _starter(conn, "Fine", 5000)
    key = scheduler.lock_key("autotopup")
    env = {**os.environ, "DATABASE_URL": db_url}
    argv = [sys.executable, "-m", "dustel.cli", "--state-dir", str(tmp_path), "scheduler", "run", "--once",
            "--job", "autotopup", "--now", "2026-12-02T01:30"]
    with psycopg.connect(db_url, autocommit=True) as gate:
        # both processes start while the job's lock is held, and queue on it;
        # released, they race for the same night
        gate.execute("SELECT pg_advisory_lock(%s)", (key,))
        procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        with psycopg.connect(db_url, autocommit=True, row_factory=psycopg.rows.dict_row) as watch:
            watch.execute("SET statement_timeout = '120s'")
            while _waiting_on(watch, key) < 2:
                # wait for the event "both queue on the lock", read from pg_locks
                watch.execute("SELECT pg_sleep(0.05)")
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        gate.execute("SELECT pg_advisory_unlock(%s)", (key,))
        outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = sorted((json.loads(o)["autotopup"] for o, _ in outs), key=lambda r: r is None)
    assert results == [{"debits": 3, "cents": 7500}, None]      # one did the night, the other found it done
    rows = conn.execute("SELECT tenant_id, ref, amount_cents FROM direct_debits ORDER BY tenant_id").fetchall()
    assert [r["tenant_id"] for r in rows] == [t["id"] for t in low]
    assert all(r["ref"].endswith(":2026-12-02") and r["amount_cents"] == 2500 for r in rows)
    assert conn.execute("SELECT count(*) AS n FROM job_runs").fetchone()["n"] == 1


def test_even_without_the_lock_a_night_is_topped_up_once(db_url: str, conn: psycopg.Connection) -> None:
    """The reference per tenant and night holds by itself: two transactions
    queuing the same night at once, neither seeing the other's rows."""
    _starter(conn, "Low", 0)
    with psycopg.connect(db_url, autocommit=False, row_factory=psycopg.rows.dict_row) as a, \
            psycopg.connect(db_url, autocommit=False, row_factory=psycopg.rows.dict_row) as b:
        got_a = sepa.autotopup(a, dt.date(2026, 12, 2), 2)
        b.execute("SET lock_timeout = '60s'")
        # b's insert waits on a's uncommitted row of the same reference…
        import threading
        done: list[list[dict]] = []
        th = threading.Thread(target=lambda: done.append(sepa.autotopup(b, dt.date(2026, 12, 2), 2)))
        th.start()
        with psycopg.connect(db_url, autocommit=True, row_factory=psycopg.rows.dict_row) as watch:
            while watch.execute("SELECT count(*) AS n FROM pg_locks WHERE NOT granted").fetchone()["n"] < 1:
                watch.execute("SELECT pg_sleep(0.02)")
        a.commit()
        th.join(60)
        b.commit()
    assert len(got_a) == 1 and done == [[]]
    assert conn.execute("SELECT count(*) AS n FROM direct_debits").fetchone()["n"] == 1


def test_a_catch_up_runs_each_job_once_and_a_second_start_changes_nothing(db_url: str,
                                                                        conn: psycopg.Connection) -> None:
    _starter(conn, "Low", 0)
    old_tenant(conn, "complete", dt.date(2026, 9, 5), name="Becker")
    # no mail queued: the outbox job sends nothing; dustel bills from September (the first start catches up)
    s = Settings(state_dir=Path("."), smtp_port=1, billing_first_month="2026-09", **ISSUER)
    now = dt.datetime(2026, 12, 2, 9, 0, tzinfo=BERLIN)   # the scheduler was down for days
    first = scheduler.run_once(db_url, s, now)
    assert first["autotopup"] == {"debits": 1, "cents": 2500}
    assert first["invoice_run"] == {"issued": 3}          # September, October, November: each month missed
    second = scheduler.run_once(db_url, s, now + dt.timedelta(hours=1))
    assert second["autotopup"] is None and second["invoice_run"] is None and second["number_fees"] is None
    assert conn.execute("SELECT count(*) AS n FROM invoices").fetchone()["n"] == 3
    # the next month's run starts after the last completed one: months done are not read again
    # (a tenant entered later with a past start date is invoiced from then on; earlier months by hand)
    late = old_tenant(conn, "complete", dt.date(2026, 10, 10), name="Spät")
    third = scheduler.run_once(db_url, s, dt.datetime(2027, 1, 2, 9, 0, tzinfo=BERLIN), ["invoice_run"])
    assert third["invoice_run"] == {"issued": 2}
    got = conn.execute("SELECT period FROM invoices WHERE tenant_id = %s", (late["id"],)).fetchall()
    assert got == [{"period": dt.date(2026, 12, 1)}]
    assert money.reconciles(conn) == []
