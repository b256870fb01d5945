"""Queue statistics benchmark (F-06): 1 000 000 queue events in a month
(one tenant: 10 queues, 40 agents; calls with every outcome and agent
sessions with pauses), then the time to aggregate and export that month
per day, per hour and per agent for every queue, as a supervisor would.

    .venv/bin/python bench/queue_stats.py [EVENTS]

Target (DESIGN.md): a month of 1 000 000 events aggregated and exported in
under 10 s."""
from __future__ import annotations

import datetime as dt
import random
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._db import fresh_database  # noqa: E402
from dustel.queue import stats  # noqa: E402

QUEUES, AGENTS = 10, 40
BERLIN = ZoneInfo("Europe/Berlin")
START = dt.datetime(2026, 10, 1, tzinfo=BERLIN)
END = dt.datetime(2026, 11, 1, tzinfo=BERLIN)


def populate(url: str, events: int) -> None:
    rnd = random.Random(7)
    span = (END - START).total_seconds()
    with psycopg.connect(url) as c:
        c.execute("SET session_replication_role = replica")
        c.execute("""INSERT INTO tenants (id, name, customer_type, plan, sip_domain, number_quota)
                     VALUES (1, 'Bench GmbH', 'business', 'business_flex', 't1.sip.dustel.de', 100)""")
        for q in range(1, QUEUES + 1):
            c.execute("INSERT INTO queues (id, tenant_id, name, code) VALUES (%s, 1, %s, %s)", (q, f"q{q}", str(q)))
        for a in range(1, AGENTS + 1):
            c.execute("INSERT INTO agents (id, tenant_id, name, pin_hash) VALUES (%s, 1, %s, 'x')", (a, f"Agent {a}"))
        n = 0
        with c.cursor().copy("COPY queue_events (tenant_id, queue_id, at, kind, call_id, agent_id, wait_ms, talk_ms)"
                             " FROM STDIN") as cp:
            # agent sessions: ~5 % of the events
            for a in range(1, AGENTS + 1):
                q = 1 + a % QUEUES
                t = START
                while t < END and n < events // 20:
                    cp.write_row((1, q, t, "login", "", a, None, None))
                    cp.write_row((1, q, t + dt.timedelta(minutes=50), "pause", "", a, None, None))
                    cp.write_row((1, q, t + dt.timedelta(minutes=55), "unpause", "", a, None, None))
                    cp.write_row((1, q, t + dt.timedelta(hours=8), "logout", "", a, None, None))
                    n += 4
                    t += dt.timedelta(hours=24)
            i = 0
            while n < events:
                q = 1 + i % QUEUES
                t0 = START + dt.timedelta(seconds=rnd.random() * span)
                cid = f"c{i}"
                cp.write_row((1, q, t0, "offered", cid, None, None, None))
                n += 1
                wait = rnd.randint(0, 180_000)
                r = rnd.random()
                if r < 0.7:
                    a = rnd.randint(1, AGENTS)
                    talk = rnd.randint(1000, 600_000)
                    cp.write_row((1, q, t0 + dt.timedelta(milliseconds=wait), "answered", cid, a, wait, None))
                    cp.write_row((1, q, t0 + dt.timedelta(milliseconds=wait + talk), "completed", cid, a, None, talk))
                    n += 2
                elif r < 0.9:
                    cp.write_row((1, q, t0 + dt.timedelta(milliseconds=wait), "abandoned", cid, None, wait, None))
                    n += 1
                else:
                    cp.write_row((1, q, t0 + dt.timedelta(seconds=300), "timeout", cid, None, 300_000, None))
                    n += 1
                i += 1
        c.commit()
        c.execute("ANALYZE queue_events")
        c.commit()


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    url = fresh_database("dustel_bench_queue_stats")
    t0 = time.perf_counter()
    populate(url, events)
    load = time.perf_counter() - t0
    with psycopg.connect(url, row_factory=dict_row) as c:
        n = c.execute("SELECT count(*) AS n FROM queue_events").fetchone()["n"]
        print(f"queue statistics: {n:,} events in {START:%B %Y} (10 queues, 40 agents), loaded in {load:.1f} s\n")
        print(f"{'export (all 10 queues)':28} {'rows':>7} {'bytes':>10} {'seconds':>8}")
        total = 0.0
        for by in ("day", "hour", "agent"):
            for fmt in ("csv", "json"):
                t = time.perf_counter()
                rows_n = size = 0
                for q in range(1, QUEUES + 1):
                    _, rows = stats.report(c, 1, f"q{q}", START, END, by)
                    text = stats.to_csv(rows, by) if fmt == "csv" else stats.to_json(rows)
                    rows_n += len(rows)
                    size += len(text)
                secs = time.perf_counter() - t
                total += secs
                print(f"{'by ' + by + ', ' + fmt:28} {rows_n:>7,} {size:>10,} {secs:>8.2f}")
        print(f"\nmonth aggregated and exported six ways: {total:.2f} s in all "
              f"(the slowest single export is the figure for the <10 s target)")


if __name__ == "__main__":
    main()
