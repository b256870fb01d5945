"""The scheduler service (SPEC F-09, F-12): ``dustel scheduler run``.

One process with APScheduler runs the jobs below at their times in
``billing_timezone``.  Each dated job belongs to a *period* (a night, a
month); a run of it takes a PostgreSQL advisory lock for the job, does the
work only when ``job_runs`` has no row for the period yet, and writes that
row with the work — so two schedulers started at once (or a restart in the
middle) never do a period twice, and the work itself is idempotent by its
references besides (``autotopup:<tenant>:<night>``, ``invoice`` per tenant
and month, ``numfee:…``).

After downtime every job runs once at start (APScheduler's coalesce: the
missed firings become one), for the period the clock is in now: a top-up
night missed is not made up (only tonight's is due), fees and invoices of
earlier periods are (their job books everything due by today / every month
since the last completed invoice run; the very first start invoices from
``billing_first_month``, or only the month just ended).
"""
from __future__ import annotations

import datetime as dt
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb

from .. import db
from ..config import Settings

log = logging.getLogger("dustel.scheduler")


@dataclass(frozen=True)
class Job:
    name: str
    cron: dict[str, Any]                       # APScheduler CronTrigger fields (or interval: {"minutes": n})
    period: Callable[[dt.datetime], str] | None   # None: runs every time (idempotent by itself)
    work: Callable[[psycopg.Connection, dt.datetime, Settings], dict[str, Any]]
    interval: bool = False


def _night(now: dt.datetime) -> str:
    return now.date().isoformat()


def _last_month(now: dt.datetime) -> str:
    first = now.date().replace(day=1)
    return f"{(first - dt.timedelta(days=1)):%Y-%m}"


def _autotopup(conn: psycopg.Connection, now: dt.datetime, s: Settings) -> dict[str, Any]:
    from ..billing import sepa
    with conn.transaction():
        rows = sepa.autotopup(conn, now.date(), s.sepa_lead_days)
    return {"debits": len(rows), "cents": sum(r["amount_cents"] for r in rows)}


def _collect(conn: psycopg.Connection, now: dt.datetime, s: Settings) -> dict[str, Any]:
    from ..billing import sepa
    with conn.transaction():
        rows = sepa.collect(conn, now.date())
    return {"collected": len(rows)}


def _fees(conn: psycopg.Connection, now: dt.datetime, s: Settings) -> dict[str, Any]:
    from ..billing import fees
    with conn.transaction():
        rows = fees.charge_due(conn, now.date())
    return {"fees": len(rows), "cents": -sum(r["a"] for r in rows)}


def _invoices(conn: psycopg.Connection, now: dt.datetime, s: Settings) -> dict[str, Any]:
    """Every month since the last completed run up to the last month, for
    tenants not invoiced yet (after a long downtime each missed month gets
    its invoices; months a run completed are not read again).  The first
    start begins at ``billing_first_month`` (the months before it were
    billed by whatever billed before dustel), or — not set — with the month
    that just ended: never with the oldest tenant's creation."""
    from ..billing import einvoice, invoices, months
    last = months.month_of(_last_month(now))
    configured = months.first_billed(s.billing_first_month)
    done = conn.execute("SELECT max(period) AS p FROM job_runs WHERE job = 'invoice_run'").fetchone()["p"]
    month = months.next_month(months.month_of(done)) if done is not None else configured or last
    if configured is not None:
        month = max(month, configured)
    out: dict[str, Any] = {"issued": 0}
    if month <= last:
        einvoice.issuing(conn, s)            # never in the name of the demo's placeholder issuer
    while month <= last:
        r = invoices.run(conn, month, now.date(), due_days=s.invoice_due_days, today=now.date())
        out["issued"] += r.issued
        month = months.next_month(month)
    return out


def _expire(conn: psycopg.Connection, now: dt.datetime, s: Settings) -> dict[str, Any]:
    from ..callpath import calls
    with conn.transaction():
        return {"expired": calls.run_sync(conn, calls.expire())}


def _outbox(conn: psycopg.Connection, now: dt.datetime, s: Settings) -> dict[str, Any]:
    from ..fax import outbox
    smtp = outbox.Smtp.of(s)
    return outbox.deliver_due(conn, smtp)


JOBS = (
    Job("autotopup", {"hour": 1, "minute": 30}, _night, _autotopup),
    Job("number_fees", {"hour": 2, "minute": 0}, _night, _fees),
    Job("invoice_run", {"day": 1, "hour": 3, "minute": 0}, _last_month, _invoices),
    Job("collect_debits", {"hour": 6, "minute": 0}, _night, _collect),
    Job("expire_reservations", {"minutes": 1}, None, _expire, interval=True),
    Job("mail_outbox", {"minutes": 1}, None, _outbox, interval=True),
)


def lock_key(job: str) -> int:
    return zlib.crc32(f"dustel.scheduler.{job}".encode())


def run_job(url: str, job: Job, now: dt.datetime, s: Settings) -> dict[str, Any] | None:
    """Run ``job`` for the period of ``now`` unless it ran for it already;
    None when it had."""
    with db.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_key(job.name),))
        try:
            period = job.period(now) if job.period else None
            if period is not None and conn.execute("SELECT 1 FROM job_runs WHERE job = %s AND period = %s",
                                                   (job.name, period)).fetchone():
                log.info("job %s %s: done before", job.name, period)
                return None
            result = job.work(conn, now, s)
            if period is not None:
                conn.execute("INSERT INTO job_runs (job, period, result) VALUES (%s, %s, %s)",
                             (job.name, period, Jsonb(result)))
            log.info("job %s %s: %s", job.name, period or "", result)
            return result
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(job.name),))


def run_once(url: str, s: Settings, now: dt.datetime, only: list[str] | None = None) -> dict[str, Any]:
    """Every (chosen) job once for ``now``: the catch-up a start does."""
    out = {}
    for job in JOBS:
        if only and job.name not in only:
            continue
        out[job.name] = run_job(url, job, now, s)
    return out


def fire(url: str, job: Job, s: Settings, tz: ZoneInfo) -> bool:
    """One firing of a job in the service: whatever goes wrong is logged
    and the service goes on (the next firing tries again); False then."""
    try:
        run_job(url, job, dt.datetime.now(tz), s)
        return True
    except (psycopg.Error, OSError) as exc:      # the database away: this firing fails, the next one tries
        log.error("job %s failed: %s", job.name, exc)
    except Exception:                             # noqa: BLE001 - a bug or bad data: logged whole, and the
        log.exception("job %s failed", job.name)  # other jobs (and this one's next firing) still run
    return False


def serve(url: str, s: Settings) -> None:
    """The service: every job at its time, and each once at start."""
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    tz = ZoneInfo(s.billing_timezone)
    sched = BlockingScheduler(timezone=tz, job_defaults={"coalesce": True, "max_instances": 1,
                                                         "misfire_grace_time": None})

    start = dt.datetime.now(tz)
    for job in JOBS:
        trigger = IntervalTrigger(**job.cron, timezone=tz) if job.interval else CronTrigger(**job.cron, timezone=tz)
        sched.add_job(fire, trigger, args=[url, job, s, tz], id=job.name, name=job.name, next_run_time=start)
    log.info("scheduler: %s", ", ".join(j.name for j in JOBS))
    sched.start()
