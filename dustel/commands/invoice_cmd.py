"""Billing commands (F-09): invoice, credit-note, payment, mandate, sepa,
ledger, billing profile, scheduler."""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from .. import db, logs
from ..billing import einvoice, fees, invoices, months, payments, sepa
from ..errors import DustelError, db_errors
from ..provisioning import tenants
from ..provisioning import validate as v
from .common import AMOUNT_ARGUMENT, INT, Env, emit, euro, json_option, pass_env, table


def _today(env: Env) -> dt.date:
    return dt.datetime.now(ZoneInfo(env.settings.billing_timezone)).date()


def _write(out: Path | None, data: bytes) -> str:
    """Write a file whole (a temporary name, then renamed) or to stdout."""
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return "-"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return str(out)


out_option = click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
                          help="Write to this file (default: stdout).")

invoice = click.Group("invoice", help="Invoices of postpaid tenants (PDF with Factur-X, XRechnung).")


@invoice.command("run")
@click.option("--month", required=True, help="The usage month YYYY-MM (base fees and options of the next one).")
@click.option("--tenant", "tenant_id", type=INT, help="Only this tenant.")
@click.option("--date", "issued", help="Issue date YYYY-MM-DD (default today); after the month, not after today.")
@json_option
@pass_env
def invoice_run(env: Env, as_json: bool, month: str, tenant_id: int | None, issued: str | None) -> None:
    """Invoice a month for every postpaid tenant not invoiced for it yet;
    running it again changes nothing.  To see a month first: invoice preview."""
    period = months.month_of(month)
    today = _today(env)
    on = v.date("date", issued) if issued else today
    with db_errors(), db.connect(env.url, autocommit=True) as conn:
        einvoice.issuing(conn, env.settings)
        r = invoices.run(conn, period, on, due_days=env.settings.invoice_due_days, tenant_id=tenant_id,
                         today=today)
    emit(invoices.as_dict(r), as_json, lambda d: click.echo(
        f"{d['issued']} invoices for {d['month']}, {euro(d['gross_cents'])} gross, "
        f"{d['direct_debits']} direct debits queued"
        + (f"; without a SEPA mandate (pay by transfer): tenants {d['without_mandate']}" if d["without_mandate"]
           else "")))


@invoice.command("preview")
@click.option("--month", required=True, help="The usage month YYYY-MM (also the one still running).")
@click.option("--tenant", "tenant_id", type=INT, help="Only this tenant.")
@json_option
@pass_env
def invoice_preview(env: Env, as_json: bool, month: str, tenant_id: int | None) -> None:
    """The invoices a month would get now, as drafts: no number is taken,
    nothing is stored or booked (a read-only transaction)."""
    period = months.month_of(month)
    with env.tx() as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        drafts = invoices.preview(conn, period, tenant_id)

    def human(rows: list[dict]) -> None:
        for d in rows:
            click.echo(f"DRAFT {d['period']:%Y-%m} tenant {d['tenant_id']} {d['name']} ({d['plan']}, "
                       f"{d['payment_means']}): net {euro(d['net_cents'])}  VAT {d['vat_percent']} % "
                       f"{euro(d['vat_cents'])}  gross {euro(d['gross_cents'])}")
            table(d["lines"], ["position", "kind", "description", "quantity", "unit_cents", "amount_cents"])
        click.echo(f"{len(rows)} draft invoices, {euro(sum(d['gross_cents'] for d in rows))} gross; "
                   "nothing was issued (invoice run issues them after the month)")
    emit(drafts, as_json, human)


@invoice.command("list")
@click.option("--tenant", "tenant_id", type=INT)
@click.option("--month", help="YYYY-MM")
@json_option
@pass_env
def invoice_list(env: Env, as_json: bool, tenant_id: int | None, month: str | None) -> None:
    """Invoices and credit notes."""
    with env.tx() as conn:
        rows = invoices.listing(conn, tenant_id, months.month_of(month) if month else None)
    emit(rows, as_json, lambda r: table(r, ["number", "kind", "tenant_id", "period", "issued_on", "due_on",
                                            "net_cents", "vat_cents", "gross_cents", "payment_means"]))


@invoice.command("show")
@click.argument("number")
@json_option
@pass_env
def invoice_show(env: Env, as_json: bool, number: str) -> None:
    """One invoice or credit note with its lines."""
    with env.tx() as conn:
        inv = invoices.get(conn, number)

    def human(d: dict) -> None:
        click.echo(f"{d['number']} ({d['kind']}) tenant {d['tenant_id']} {d['recipient']['name']}, "
                   f"issued {d['issued_on']}, due {d['due_on']}, {d['payment_means']}")
        table(d["lines"], ["position", "kind", "description", "quantity", "unit_cents", "amount_cents", "net_cents"])
        click.echo(f"net {euro(d['net_cents'])}  VAT {d['vat_percent']} % {euro(d['vat_cents'])}  "
                   f"gross {euro(d['gross_cents'])}")
    emit(inv, as_json, human)


def _document(env: Env, number: str) -> tuple[dict, dict | None]:
    with env.tx() as conn:
        return invoices.document(conn, number)


@invoice.command("pdf")
@click.argument("number")
@out_option
@pass_env
def invoice_pdf(env: Env, number: str, out: Path | None) -> None:
    """The PDF with the EN 16931 e-invoice embedded (Factur-X / ZUGFeRD)."""
    if out is None and sys.stdout.isatty():        # binary on a terminal only garbles the screen
        raise DustelError("out", "the PDF is binary and stdout is a terminal: give --out FILE.pdf "
                                 "(or redirect stdout)")
    inv, mandate = _document(env, number)
    data = einvoice.facturx_pdf(inv, einvoice.Issuer.of(env.settings), mandate=mandate)
    where = _write(out, data)
    if out is not None:
        click.echo(f"{number}: {where} ({len(data)} bytes)", err=True)


@invoice.command("xml")
@click.argument("number")
@click.option("--xrechnung", is_flag=True, help="XRechnung (CII) instead of the Factur-X XML; "
                                                  "the default for public bodies.")
@out_option
@pass_env
def invoice_xml(env: Env, number: str, xrechnung: bool, out: Path | None) -> None:
    """The e-invoice XML (EN 16931, CII), validated against the schema."""
    inv, mandate = _document(env, number)
    xr = xrechnung or inv["recipient"].get("customer_type") == "public_body"
    data = einvoice.build_xml(inv, einvoice.Issuer.of(env.settings), xrechnung=xr, mandate=mandate)
    _write(out, data)


@click.command("credit-note")
@click.argument("number")
@click.option("--reason", required=True, help="Why (printed on the credit note).")
@click.option("--amount", help="EUR in the invoice's prices (net for business, gross for private); "
                               "default: the whole invoice.")
@json_option
@pass_env
def credit_note(env: Env, as_json: bool, number: str, reason: str, amount: str | None) -> None:
    """Correct an invoice by a credit note (an invoice is never edited)."""
    cents = v.money_cents("amount", amount) if amount is not None else None
    with env.tx() as conn:
        row = invoices.credit_note(conn, number, reason, cents, _today(env))
    emit(row, as_json, lambda d: click.echo(f"{d['number']}: {euro(d['gross_cents'])} gross "
                                            f"credited to tenant {d['tenant_id']}"))


payment = click.Group("payment", help="Money received: bank statements, PayPal, Giropay, Klarna.")


@payment.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_env
def payment_import(env: Env, as_json: bool, file: Path) -> None:
    """Import a bank statement (CSV: date, amount, reference, transaction_id,
    name, iban); a line imported before is skipped, an unmatched one kept."""
    lines = payments.read_statement(file.read_bytes())
    with env.tx() as conn:
        r = payments.import_statement(conn, lines, env.settings.debit_return_fee_cents)
    emit(r, as_json, lambda d: click.echo(
        ", ".join(f"{k} {len(val)}" for k, val in d.items())
        + (f" (unmatched lines {d['unmatched']}: see payment list --unmatched)" if d["unmatched"] else "")))


@payment.command("add", context_settings=AMOUNT_ARGUMENT)
@click.argument("tenant_id", type=INT)
@click.argument("amount")
@click.option("--method", type=click.Choice(payments.METHODS), required=True)
@click.option("--ref", required=True, help="The provider's transaction id; a repeated one is a no-op.")
@click.option("--invoice", help="The invoice number it pays.")
@click.option("--date", "received", help="YYYY-MM-DD (default today).")
@json_option
@pass_env
def payment_add(env: Env, as_json: bool, tenant_id: int, amount: str, method: str, ref: str, invoice: str | None,
                received: str | None) -> None:
    """Record a payment; a customer's first PayPal payment is held until cleared."""
    cents = v.money_cents("amount", amount)
    on = v.date("date", received) if received else _today(env)
    with env.tx() as conn:
        row = payments.add(conn, tenant_id, cents, method, ref.strip(), on, invoice)
    emit(row, as_json, lambda d: click.echo(
        f"payment {d['id']}: {euro(d['amount_cents'])} {d['state']}"
        + ("" if d["applied"] else " (recorded before, same --ref)")))


@payment.command("clear")
@click.argument("payment_id", type=INT)
@json_option
@pass_env
def payment_clear(env: Env, as_json: bool, payment_id: int) -> None:
    """Credit a held payment (PayPal cleared it)."""
    with env.tx() as conn:
        row = payments.clear(conn, payment_id)
    emit(row, as_json, lambda d: click.echo(f"payment {d['id']} credited"))


@payment.command("list")
@click.option("--tenant", "tenant_id", type=INT)
@click.option("--unmatched", is_flag=True, help="Only statement lines nobody could match.")
@json_option
@pass_env
def payment_list(env: Env, as_json: bool, tenant_id: int | None, unmatched: bool) -> None:
    """Payments received (and statement lines nobody could match)."""
    with env.tx() as conn:
        rows = conn.execute(
            """SELECT id, tenant_id, method, amount_cents, state, reference, received_on FROM payments
                WHERE (%(t)s::bigint IS NULL OR tenant_id = %(t)s) AND (NOT %(u)s OR state = 'unmatched')
                ORDER BY id""", {"t": tenant_id, "u": unmatched}).fetchall()
    emit(rows, as_json, lambda r: table(r, ["id", "tenant_id", "method", "amount_cents", "state", "received_on",
                                            "reference"]))


mandate = click.Group("mandate", help="SEPA direct-debit mandates.")


@mandate.command("add")
@click.argument("tenant_id", type=INT)
@click.option("--holder", required=True, help="Account holder's name.")
@click.option("--iban", required=True)
@click.option("--bic", help="Default: from the IBAN's bank.")
@click.option("--signed", required=True, help="Date the mandate was signed, YYYY-MM-DD.")
@click.option("--reference", help="Mandate reference as signed: 1 to 35 of A-Z a-z 0-9 / - ? : ( ) . , ' + "
                                  "(no space, no leading, trailing or double /; default DUSTEL-<tenant>-<n>).")
@json_option
@pass_env
def mandate_add(env: Env, as_json: bool, tenant_id: int, holder: str, iban: str, bic: str | None, signed: str,
                reference: str | None) -> None:
    """File a signed mandate; postpaid tenants (not public bodies) need one."""
    with env.tx() as conn:
        row = sepa.add_mandate(conn, tenant_id, holder=holder, iban=iban, bic=bic,
                               signed_on=v.date("signed", signed), reference=reference)
    emit(row, as_json, lambda d: click.echo(f"mandate {d['reference']} for tenant {d['tenant_id']}: "
                                            f"{einvoice.mask_iban(d['iban'])} {d['bic']}"))


@mandate.command("list")
@click.option("--tenant", "tenant_id", type=INT)
@json_option
@pass_env
def mandate_list(env: Env, as_json: bool, tenant_id: int | None) -> None:
    """Mandates, active and revoked."""
    with env.tx() as conn:
        rows = conn.execute("""SELECT id, tenant_id, reference, holder, iban, bic, signed_on, revoked_on
                                 FROM sepa_mandates WHERE (%(t)s::bigint IS NULL OR tenant_id = %(t)s)
                                ORDER BY id""", {"t": tenant_id}).fetchall()
    for r in rows:                     # as mandate add shows it: a bank account is not for every screen
        r["iban"] = einvoice.mask_iban(r["iban"])
    emit(rows, as_json, lambda r: table(r, ["id", "tenant_id", "reference", "holder", "iban", "bic", "signed_on",
                                            "revoked_on"]))


@mandate.command("revoke")
@click.argument("reference")
@json_option
@pass_env
def mandate_revoke(env: Env, as_json: bool, reference: str) -> None:
    """Revoke; debits not yet sent to the bank are dropped."""
    with env.tx() as conn:
        row = sepa.revoke_mandate(conn, reference, _today(env))
    emit(row, as_json, lambda d: click.echo(f"mandate {d['reference']} revoked; "
                                            f"{d['debits_dropped']} pending debits dropped"))


sepa_group = click.Group("sepa", help="SEPA direct debits: pain.008 files, returns.")


@sepa_group.command("export")
@click.option("--date", "collection", required=True, help="Collection date YYYY-MM-DD (after today).")
@out_option
@json_option
@pass_env
def sepa_export(env: Env, as_json: bool, collection: str, out: Path | None) -> None:
    """The pain.008 of every pending debit due by the date, validated against
    the schema; the debits are marked exported only with the file written."""
    on = v.date("date", collection)
    with env.tx() as conn:
        ex = sepa.export(conn, on, einvoice.issuing(conn, env.settings), _today(env))
        if ex is not None:
            _write(out, ex.xml)        # inside the transaction: no file written, no debit marked
    if ex is None:
        emit({"count": 0}, as_json, lambda d: click.echo("no debits due"))
        return
    if out is None:
        return
    emit({"message_id": ex.message_id, "count": ex.count, "total_cents": ex.total_cents, "file": str(out)},
         as_json, lambda d: click.echo(f"{d['file']}: {d['count']} debits, {euro(d['total_cents'])}, "
                                       f"message {d['message_id']}"))


@sepa_group.command("list")
@click.option("--tenant", "tenant_id", type=INT)
@json_option
@pass_env
def sepa_list(env: Env, as_json: bool, tenant_id: int | None) -> None:
    """Direct debits: pending, exported, collected, returned."""
    with env.tx() as conn:
        rows = conn.execute("""SELECT id, tenant_id, purpose, ref, amount_cents, due_on, sequence, state, export_id
                                 FROM direct_debits WHERE (%(t)s::bigint IS NULL OR tenant_id = %(t)s)
                                ORDER BY id""", {"t": tenant_id}).fetchall()
    emit(rows, as_json, lambda r: table(r, ["id", "tenant_id", "purpose", "ref", "amount_cents", "due_on",
                                            "sequence", "state", "export_id"]))


@sepa_group.command("return")
@click.argument("debit_id", type=INT)
@json_option
@pass_env
def sepa_return(env: Env, as_json: bool, debit_id: int) -> None:
    """The bank took a collected debit back: book it back with the return fee."""
    with env.tx() as conn:
        row = sepa.return_debit(conn, debit_id, env.settings.debit_return_fee_cents)
    emit(row, as_json, lambda d: click.echo(f"debit {d['id']} returned"))


@click.command("ledger")
@click.argument("tenant_id", type=INT)
@click.option("--limit", type=INT, default=50, show_default=True)
@json_option
@pass_env
def ledger(env: Env, as_json: bool, tenant_id: int, limit: int) -> None:
    """A tenant's money movements, newest first, and the balance."""
    with env.tx() as conn:
        zone = tenants.get(conn, tenant_id)["timezone"]
        rows = conn.execute("""SELECT id, created_at, kind, amount_cents, ref FROM ledger WHERE tenant_id = %s
                                ORDER BY created_at DESC, id DESC LIMIT %s""", (tenant_id, limit)).fetchall()
        m = conn.execute("SELECT balance_cents, reserved_cents FROM tenant_money WHERE tenant_id = %s",
                         (tenant_id,)).fetchone()
        total = conn.execute("SELECT coalesce(sum(amount_cents), 0)::bigint AS s FROM ledger WHERE tenant_id = %s",
                             (tenant_id,)).fetchone()["s"]
    out = {"tenant_id": tenant_id, "balance_cents": m["balance_cents"], "reserved_cents": m["reserved_cents"],
           "ledger_sum_cents": total, "movements": rows}

    def human(d: dict) -> None:
        table(d["movements"], ["created_at", "kind", "amount_cents", "ref"], zone)       # the tenant's time
        click.echo(f"balance {euro(d['balance_cents'])} (the ledger sums to "
                   f"{euro(d['ledger_sum_cents'])}), reserved {euro(d['reserved_cents'])}")
    emit(out, as_json, human)


@click.command("profile")
@click.argument("tenant_id", type=INT)
@click.option("--autotopup-below", help="Top up by direct debit at night when credit is below this (EUR); "
                                        "'off' turns it off.")
@click.option("--autotopup-amount", help="… by this much (EUR, 5 to 500).")
@click.option("--leitweg-id", help="Public bodies: the Leitweg-ID for XRechnung ('' clears).")
@click.option("--vat-id", help="The customer's VAT id ('' clears).")
@json_option
@pass_env
def billing_profile(env: Env, as_json: bool, tenant_id: int, autotopup_below: str | None,
                    autotopup_amount: str | None, leitweg_id: str | None, vat_id: str | None) -> None:
    """A tenant's billing settings: automatic top-up, Leitweg-ID, VAT id."""
    with env.tx() as conn:
        te = tenants.get(conn, tenant_id, lock=True)
        conn.execute("INSERT INTO billing_profiles (tenant_id) VALUES (%s) ON CONFLICT DO NOTHING", (tenant_id,))
        if autotopup_below is not None:
            if autotopup_below == "off":
                conn.execute("""UPDATE billing_profiles SET autotopup_threshold_cents = NULL,
                                       autotopup_amount_cents = NULL WHERE tenant_id = %s""", (tenant_id,))
            else:
                below = v.money_cents("autotopup_below", autotopup_below)
                if autotopup_amount is None:
                    raise DustelError("autotopup_amount", "required with --autotopup-below")
                amount = v.money_cents("autotopup_amount", autotopup_amount)
                if not 500 <= amount <= 50000:
                    raise DustelError("autotopup_amount", "must be between 5 and 500 EUR")
                if below <= 0:
                    raise DustelError("autotopup_below", "must be more than 0")
                if te["plan"] != "starter":
                    raise DustelError("autotopup_below", "only prepaid (starter) tenants are topped up")
                if sepa.active_mandate(conn, tenant_id) is None:
                    raise DustelError("autotopup_below", f"tenant {tenant_id} has no SEPA mandate (mandate add)")
                conn.execute("""UPDATE billing_profiles SET autotopup_threshold_cents = %s,
                                       autotopup_amount_cents = %s WHERE tenant_id = %s""",
                             (below, amount, tenant_id))
        elif autotopup_amount is not None:
            raise DustelError("autotopup_amount", "goes with --autotopup-below")
        for col, value in (("leitweg_id", leitweg_id), ("vat_id", vat_id)):
            if value is not None:
                value = value.strip() or None
                if col == "leitweg_id" and value is not None and te["customer_type"] != "public_body":
                    raise DustelError("leitweg_id", "only public bodies have a Leitweg-ID")
                conn.execute(f"UPDATE billing_profiles SET {col} = %s WHERE tenant_id = %s", (value, tenant_id))
        row = conn.execute("SELECT * FROM billing_profiles WHERE tenant_id = %s", (tenant_id,)).fetchone()
    emit(row, as_json)


@click.command("cancel")
@click.argument("e164")
@json_option
@pass_env
def number_cancel(env: Env, as_json: bool, e164: str) -> None:
    """Give notice for a number: it ends with its billing year when notice
    comes 14 days before that year ends (starter), else a year later;
    monthly-billed numbers end with the month."""
    with env.tx() as conn:
        row = fees.cancel(conn, v.e164("e164", e164), _today(env))
    emit(row, as_json, lambda d: click.echo(f"{d['e164']} cancelled to {d['cancel_at']}"))


scheduler = click.Group("scheduler", help="Nightly and monthly billing jobs (APScheduler).")


@scheduler.command("run")
@click.option("--once", is_flag=True, help="Run every job once for the current period and exit.")
@click.option("--job", "only", multiple=True, help="With --once: only this job (repeatable).")
@click.option("--now", "now_text", help="With --once: the clock, ISO date and time (replays, tests).")
@json_option
@pass_env
def scheduler_run(env: Env, as_json: bool, once: bool, only: tuple[str, ...], now_text: str | None) -> None:
    """Run the scheduler in the foreground (logs to stdout): top-ups at night,
    number fees, the monthly invoice run, collecting due debits, expiring
    reservations, the mail outbox.  Each job runs once at start too."""
    from .. import scheduler as sch

    logs.service(sys.stderr if once else sys.stdout, logs.LEVELLED)   # --once prints JSON
    tz = ZoneInfo(env.settings.billing_timezone)
    names = {j.name for j in sch.JOBS}
    for name in only:
        if name not in names:
            raise DustelError("job", f"unknown job {name} (known: {', '.join(sorted(names))})")
    if not once:
        if only or now_text:
            raise DustelError("once", "--job and --now go with --once")
        sch.serve(env.url, env.settings)
        return
    now = dt.datetime.now(tz)
    if now_text:
        try:
            now = dt.datetime.fromisoformat(now_text)
        except ValueError:
            raise DustelError("now", "must be an ISO date and time such as 2026-12-01T01:30") from None
        now = now if now.tzinfo else now.replace(tzinfo=tz)
    emit(sch.run_once(env.url, env.settings, now, list(only) or None), True)
