"""Migrations of billing data (issue 26): what was booked before a change is
carried over the way it was billed."""
from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row
from yoyo import read_migrations
from yoyo.migrations import MigrationList

from dustel import db
from dustel.provisioning import migrate


@pytest.fixture
def old_url(pg_url: str) -> Iterator[str]:
    name = f"dustel_mig_{os.getpid()}"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    yield db.with_dbname(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _upto(url: str, last: str) -> None:
    backend = migrate._backend(url)
    try:
        todo = MigrationList([m for m in read_migrations(str(migrate.MIGRATIONS_DIR)) if m.id <= last])
        with backend.lock():
            backend.apply_migrations(backend.to_apply(todo))
    finally:
        backend.connection.close()


def test_earlier_corrections_keep_their_call_and_the_invoice_that_billed_them(old_url: str) -> None:
    """0020: a correction booked before names no call; the migration finds
    it from its reference (call ids may hold ':'), and marks it billed by
    the invoice of the month it was booked in — where there is one."""
    _upto(old_url, "0017_calls_legs_index")
    with psycopg.connect(old_url, autocommit=True, row_factory=dict_row) as c:
        t = c.execute("""INSERT INTO tenants (name, customer_type, plan, sip_domain, created_on, number_quota)
                         VALUES ('Firma', 'business', 'business_flex', 't.example', '2026-01-01', 10)
                         RETURNING id""").fetchone()["id"]
        for call in ("u1", "u2:leg2"):
            c.execute("""INSERT INTO calls (node, call_id, tenant_id, account, direction, route, destination,
                                            max_seconds, state, expires_at, billsec, charged_cents, settled_at)
                         VALUES ('fs1', %s, %s, '000387000001', 'out', 'external', '4930', 3600, 'settled',
                                 now(), 100, 15, '2026-10-20 10:00+02')""", (call, t))
        inv = c.execute("""INSERT INTO invoices (number, kind, tenant_id, period, issued_on, due_on, prices_net,
                                                 vat_percent, net_cents, vat_cents, gross_cents, payment_means,
                                                 recipient)
                           VALUES ('RE-2026-000001', 'invoice', %s, '2026-11-01', '2026-12-02', '2026-12-16', true,
                                   19, 100, 19, 119, 'transfer', '{}') RETURNING id""", (t,)).fetchone()["id"]
        c.execute("""INSERT INTO ledger (tenant_id, amount_cents, kind, ref, created_at) VALUES
                     (%(t)s, 15, 'adjust', 'reconcile:fs1:u1:100', '2026-11-20 12:00+01'),
                     (%(t)s, 15, 'adjust', 'reconcile:fs1:u2:leg2:100', '2026-12-03 12:00+01'),
                     (%(t)s, 5, 'adjust', 'reconcile:fs9:gone:7', '2026-11-21 12:00+01')""", {"t": t})
    assert "0020_billed_corrections" in migrate.migrate(old_url)
    with psycopg.connect(old_url, row_factory=dict_row) as c:
        got = c.execute("SELECT ref, call_node, call_id, invoice_id FROM ledger ORDER BY id").fetchall()
    assert got == [
        {"ref": "reconcile:fs1:u1:100", "call_node": "fs1", "call_id": "u1", "invoice_id": inv},   # billed in Nov
        {"ref": "reconcile:fs1:u2:leg2:100", "call_node": "fs1", "call_id": "u2:leg2", "invoice_id": None},
        {"ref": "reconcile:fs9:gone:7", "call_node": None, "call_id": None, "invoice_id": inv}]


def test_documents_issued_before_languages_stay_as_they_were_issued(old_url: str) -> None:
    """0024 (issue 31.12): every tenant and every document issued before is
    German (their headings were; their stored line texts are kept as they
    were issued), options and zones get German names, and a new document
    must name its language."""
    _upto(old_url, "0021_plan_periods")
    with psycopg.connect(old_url, autocommit=True, row_factory=dict_row) as c:
        t = c.execute("""INSERT INTO tenants (name, customer_type, plan, sip_domain, created_on, number_quota)
                         VALUES ('Firma', 'business', 'business_flex', 't.example', '2026-01-01', 10)
                         RETURNING id""").fetchone()["id"]
        inv = c.execute("""INSERT INTO invoices (number, kind, tenant_id, period, issued_on, due_on, prices_net,
                                                 vat_percent, net_cents, vat_cents, gross_cents, payment_means,
                                                 recipient)
                           VALUES ('RE-2026-000001', 'invoice', %s, '2026-11-01', '2026-12-02', '2026-12-16', true,
                                   19, 720, 137, 857, 'transfer', '{}') RETURNING id""", (t,)).fetchone()["id"]
        c.execute("""INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, unit_cents,
                                                amount_cents, net_cents, period_start, period_end)
                     VALUES (%s, 1, 'base_fee', 'Base fee business flex, 12/2026', 1, 720, 720, 720, '2026-12-01',
                             '2026-12-31')""", (inv,))
    assert "0024_languages_and_mandate_ids" in migrate.migrate(old_url)
    with psycopg.connect(old_url, row_factory=dict_row) as c:
        assert c.execute("SELECT language FROM invoices").fetchone()["language"] == "de"
        assert c.execute("SELECT language FROM tenants").fetchone()["language"] == "de"
        assert c.execute("SELECT description FROM invoice_lines").fetchone()["description"] == \
            "Base fee business flex, 12/2026"                                  # as issued: never rewritten
        assert c.execute("SELECT description_de FROM zones WHERE code = 'de_mobile'").fetchone()[
            "description_de"] == "Deutschland, Mobilfunknetze"
        assert c.execute("""SELECT description_de FROM plan_options WHERE plan = 'business_flex'
                              AND option = 'extra_account'""").fetchone()["description_de"] == "ein weiteres SIP-Konto"
        with pytest.raises(psycopg.errors.NotNullViolation):
            c.execute("""INSERT INTO invoices (number, kind, tenant_id, period, issued_on, due_on, prices_net,
                                               vat_percent, net_cents, vat_cents, gross_cents, payment_means,
                                               recipient)
                         SELECT 'RE-2026-000002', kind, tenant_id, period, issued_on, due_on, prices_net, vat_percent,
                                net_cents, vat_cents, gross_cents, payment_means, recipient FROM invoices""")


def test_a_mandate_filed_before_the_mandate_id_rule_stays_but_is_not_exported(old_url: str) -> None:
    """0024 (issue 31.19): a mandate reference with a space was accepted
    before; the mandate stays as it was signed, but sepa export refuses to
    put it into a pain.008 (a bank would refuse the file), naming it."""
    import datetime as dt

    from dustel.billing import sepa
    from dustel.billing.einvoice import Issuer
    from dustel.errors import DustelError

    _upto(old_url, "0021_plan_periods")
    with psycopg.connect(old_url, autocommit=True, row_factory=dict_row) as c:
        t = c.execute("""INSERT INTO tenants (name, customer_type, plan, sip_domain, created_on)
                         VALUES ('Anna', 'private', 'starter', 't.example', '2026-01-01')
                         RETURNING id""").fetchone()["id"]
        m = c.execute("""INSERT INTO sepa_mandates (tenant_id, reference, holder, iban, bic, signed_on)
                         VALUES (%s, 'OLD REF 1', 'Anna', 'DE89370400440532013000', 'COBADEFFXXX', '2026-01-02')
                         RETURNING id""", (t,)).fetchone()["id"]
        c.execute("""INSERT INTO direct_debits (tenant_id, mandate_id, purpose, ref, amount_cents, due_on)
                     VALUES (%s, %s, 'autotopup', 'autotopup:x', 2000, current_date)""", (t, m))
    migrate.migrate(old_url)
    issuer = Issuer("P", "S 1", "40210", "D", "DE123456788", "a@example.org", "+49 211 1", "DE02120300000000202051",
                    "BYLADEM1001", "DE98ZZZ00001234567")
    with psycopg.connect(old_url, row_factory=dict_row) as c:
        assert c.execute("SELECT reference FROM sepa_mandates").fetchone()["reference"] == "OLD REF 1"
        with pytest.raises(DustelError) as exc, c.transaction():
            sepa.export(c, dt.date.today() + dt.timedelta(days=3), issuer, dt.date.today())
        assert exc.value.field == "mandate OLD REF 1" and "U+0020 is not one" in exc.value.rule \
            and "needs a new mandate" in exc.value.rule
        assert c.execute("SELECT state FROM direct_debits").fetchone()["state"] == "pending"     # nothing marked
        with pytest.raises(psycopg.errors.CheckViolation), c.transaction():        # a new one meets the rule
            c.execute("UPDATE sepa_mandates SET reference = 'NEW REF 1'")
