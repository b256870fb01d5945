"""Invoice run benchmark (issue 11): 100 000 tenants with a month of 10 M
rated calls; target: the run under 60 s on this machine, peak memory
printed.  The data is generated in SQL (not timed); the run is
``invoices.run`` as ``dustel invoice run`` calls it.  Then the same month
again (nothing to do: the re-run's cost), and the invoices' sums checked.

    .venv/bin/python bench/billing.py [--tenants 100000] [--calls 10000000]
"""
from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import time

import psycopg
from _db import fresh_database

from dustel import db
from dustel.billing import invoices

MONTH = dt.date(2026, 11, 1)


def populate(url: str, n_tenants: int, n_calls: int) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        t0 = time.perf_counter()
        # a third each: starter (prepaid: no invoice), complete (gross), business flex (net, options, numbers)
        c.execute("""
            INSERT INTO tenants (name, customer_type, plan, sip_domain, created_on, plan_since, number_quota)
            SELECT 'Kunde ' || i, CASE mod(i, 3) WHEN 2 THEN 'business' ELSE 'private' END,
                   CASE mod(i, 3) WHEN 0 THEN 'starter' WHEN 1 THEN 'complete' ELSE 'business_flex' END,
                   't' || i || '.bench.dustel.de', '2026-01-01', '2026-01-01',
                   CASE WHEN mod(i, 3) = 2 THEN 100 END
              FROM generate_series(1, %s) i""", (n_tenants,))
        c.execute("""INSERT INTO addresses (tenant_id, kind, street, postcode, city, area_code)
                     SELECT id, 'seat', 'Benchweg ' || id, '40213', 'Düsseldorf', '211' FROM tenants""")
        c.execute("""INSERT INTO tenant_options (tenant_id, plan, option, quantity)
                     SELECT id, plan, 'extra_line', 1 + id % 3 FROM tenants WHERE plan = 'business_flex'
                     UNION ALL
                     SELECT id, plan, 'flat_de_mobile', 1 FROM tenants WHERE plan = 'complete' AND id % 2 = 0""")
        # the numbers' integrity triggers check each row against the table
        # (quadratic for a bulk load); this data is valid by construction
        c.execute("SET session_replication_role = replica")
        c.execute("""INSERT INTO numbers (tenant_id, e164, block_size)
                     SELECT id, '+49211' || (1000000 + id), CASE WHEN id % 2 = 0 THEN 100 END
                       FROM tenants WHERE plan = 'business_flex'""")
        c.execute("SET session_replication_role = DEFAULT")
        print(f"tenants: {n_tenants} in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        c.execute("ALTER TABLE calls SET UNLOGGED")           # generation only; the run reads it as it is
        step = 1_000_000
        for start in range(0, n_calls, step):
            c.execute("""
                INSERT INTO calls (node, call_id, tenant_id, account, direction, route, destination, zone,
                                   cents_per_minute, increment, max_seconds, state, started_at, expires_at,
                                   billsec, charged_cents, settled_at)
                SELECT 'bench', 'c' || g, 1 + (g::bigint * 7919) %% %(t)s, '000387000001', 'out', 'out', '4930123456',
                       (ARRAY['de_fixed','de_mobile','eu_fixed','eu_mobile'])[1 + g %% 4], 9, 1, 3600, 'settled',
                       ts, ts + interval '1 hour', 1 + g %% 900, 1 + g %% 97, ts
                  FROM generate_series(%(a)s, %(b)s) g,
                       LATERAL (SELECT timestamptz '2026-11-01 00:00+01' + (g %% 2591000) * interval '1 second') x(ts)
                """, {"t": n_tenants, "a": start + 1, "b": min(start + step, n_calls)})
            print(f"  calls: {min(start + step, n_calls)}", flush=True)
        c.execute("ALTER TABLE calls SET LOGGED")
        # as autovacuum leaves a month of calls: hint bits set, statistics
        # fresh, and the WAL of the load checkpointed before the clock starts
        c.execute("VACUUM (ANALYZE)")
        c.execute("CHECKPOINT")
        print(f"calls: {n_calls} in {time.perf_counter() - t0:.1f} s", flush=True)


def reset(conn: psycopg.Connection) -> None:
    """Undo a run (this database has no other money movements)."""
    conn.execute("DELETE FROM ledger WHERE kind = 'invoice'")
    conn.execute("DELETE FROM direct_debits WHERE purpose = 'invoice'")
    conn.execute("DELETE FROM invoice_lines")
    conn.execute("DELETE FROM invoices")
    conn.execute("DELETE FROM document_counters")
    conn.execute("UPDATE tenant_money SET balance_cents = 0 WHERE balance_cents <> 0")
    conn.execute("VACUUM ANALYZE")
    conn.execute("CHECKPOINT")


def timed(conn: psycopg.Connection) -> tuple[float, invoices.RunResult, float]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    r = invoices.run(conn, MONTH, dt.date(2026, 12, 2))
    return time.perf_counter() - t0, r, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=10_000_000)
    args = ap.parse_args()
    url = fresh_database("dustel_bench_billing")
    populate(url, args.tenants, args.calls)
    rows = []
    with db.connect(url, autocommit=True) as conn:
        for label in ("right after the load", "again, vacuumed"):
            if rows:
                reset(conn)
            took, r, grew = timed(conn)
            t1 = time.perf_counter()
            again = invoices.run(conn, MONTH, dt.date(2026, 12, 2))
            rerun = time.perf_counter() - t1
            bad = conn.execute("""SELECT count(*) AS n FROM invoices i
                                   WHERE i.net_cents <> (SELECT sum(net_cents) FROM invoice_lines l
                                                          WHERE l.invoice_id = i.id)""").fetchone()["n"]
            lines = conn.execute("SELECT count(*) AS n FROM invoice_lines").fetchone()["n"]
            rows.append((label, r, lines, took, grew, rerun, again.issued, bad))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(f"{'run':<22} {'tenants':>8} {'calls':>10} {'invoices':>8} {'lines':>8} {'run s':>7} {'target s':>8} "
          f"{'RSS grew MiB':>12} {'re-run s':>8}")
    for label, r, lines, took, grew, rerun, _, _ in rows:
        print(f"{label:<22} {args.tenants:>8} {args.calls:>10} {r.issued:>8} {lines:>8} {took:>7.1f} {60:>8} "
              f"{grew:>12.0f} {rerun:>8.1f}")
    print(f"peak RSS of this process {rss:.0f} MiB; gross billed {rows[-1][1].gross_cents / 100:,.2f} EUR; "
          f"invoices whose lines do not add up: {sum(x[7] for x in rows)}; re-runs issued {sum(x[6] for x in rows)}")
    sys.exit(1 if any(x[6] or x[7] for x in rows) else 0)


if __name__ == "__main__":
    main()
