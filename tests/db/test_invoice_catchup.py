"""The scheduler's invoice catch-up (issue 26.16, 26.15): a first start
bills from a configured first billing month, not from the oldest tenant's
creation, and never in the name of the demo's placeholder issuer."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pytest

from dustel import scheduler
from dustel.config import Settings, load_settings
from dustel.errors import DustelError

from ..billing_support import BERLIN, ISSUER, old_tenant
from ..conftest import dump

FIRST_START = dt.datetime(2026, 12, 2, 9, 0, tzinfo=BERLIN)


def _periods(conn: psycopg.Connection) -> list[str]:
    return [f"{r['period']:%Y-%m}" for r in conn.execute("SELECT period FROM invoices ORDER BY period")]


def test_a_first_start_bills_only_the_month_just_ended_unless_told_where_billing_starts(
        db_url: str, conn: psycopg.Connection) -> None:
    """A tenant since January: a first start used to issue eleven invoices
    (January to November) at once — months another system had billed."""
    old_tenant(conn, "complete", dt.date(2026, 1, 5), name="Becker")
    s = Settings(state_dir=Path("."), **ISSUER)
    assert scheduler.run_once(db_url, s, FIRST_START, ["invoice_run"])["invoice_run"] == {"issued": 1}
    assert _periods(conn) == ["2026-11"]
    # the next month goes on from the last completed run
    nxt = scheduler.run_once(db_url, s, dt.datetime(2027, 1, 2, 9, 0, tzinfo=BERLIN), ["invoice_run"])
    assert nxt["invoice_run"] == {"issued": 1} and _periods(conn) == ["2026-11", "2026-12"]


def test_the_configured_first_billing_month_is_where_the_first_start_begins(db_url: str,
                                                                         conn: psycopg.Connection) -> None:
    old_tenant(conn, "complete", dt.date(2026, 1, 5), name="Becker")
    s = Settings(state_dir=Path("."), billing_first_month="2026-09", **ISSUER)
    assert scheduler.run_once(db_url, s, FIRST_START, ["invoice_run"])["invoice_run"] == {"issued": 3}
    assert _periods(conn) == ["2026-09", "2026-10", "2026-11"]


def test_a_bad_first_billing_month_or_the_demo_issuer_is_refused_and_bills_nothing(
        db_url: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    old_tenant(conn, "complete", dt.date(2026, 1, 5), name="Becker")
    before = dump(db_url)
    with pytest.raises(DustelError, match="^billing_first_month: must be YYYY-MM"):
        scheduler.run_once(db_url, Settings(state_dir=Path("."), billing_first_month="09/2026", **ISSUER),
                           FIRST_START, ["invoice_run"])
    with pytest.raises(DustelError, match="^issuer_iban: is the demo's placeholder"):
        scheduler.run_once(db_url, Settings(state_dir=Path(".")), FIRST_START, ["invoice_run"])
    assert dump(db_url) == before                          # no invoice, no job_runs row: the next start retries
    # the setting from the environment
    got = load_settings(tmp_path, env={"DUSTEL_BILLING_FIRST_MONTH": "2026-10"})
    assert got.billing_first_month == "2026-10"
