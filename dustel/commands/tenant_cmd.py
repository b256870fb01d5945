from __future__ import annotations

import datetime as dt

import click

from ..billing import einvoice, months, texts
from ..provisioning import tenants
from ..provisioning import validate as v
from .common import INT, Env, emit, euro, json_option, pass_env, table


@click.group("tenant")
def group() -> None:
    """Tenants (customers): plan, type, addresses, options."""


@group.command("add")
@click.option("--name", required=True, help="Customer name.")
@click.option("--type", "customer_type", required=True,
              type=click.Choice(tenants.CUSTOMER_TYPES), help="private, business or public_body.")
@click.option("--plan", required=True, help="starter, complete or business_flex.")
@click.option("--domain", help="SIP domain (realm); default t<ID>.<suffix>.")
@click.option("--email", help="Address for invoices and fax mail.")
@click.option("--timezone", default="Europe/Berlin", show_default=True)
@click.option("--created-on", help="Tariff date YYYY-MM-DD (decides the porting-fee rule); default today.")
@click.option("--number-quota", type=INT, help="business flex: number block size chosen (10, 20, 30, 50, 70, 100 …).")
@click.option("--kind", "address_kind", type=click.Choice(tenants.ADDRESS_KINDS), default="seat",
              show_default=True, help="Kind of the first address.")
@click.option("--street", required=True)
@click.option("--postcode", required=True)
@click.option("--city", required=True)
@click.option("--area-code", required=True, help="Area code of the address, e.g. 0211.")
@json_option
@pass_env
def add(env: Env, as_json: bool, name: str, customer_type: str, plan: str, domain: str | None,
        email: str | None, timezone: str, created_on: str | None, number_quota: int | None,
        address_kind: str, street: str, postcode: str, city: str, area_code: str) -> None:
    """Add a tenant with its first address."""
    with env.tx() as conn:
        t = tenants.add(conn, name=name, customer_type=customer_type, plan=plan, domain=domain,
                        email=email, timezone=timezone,
                        created_on=v.date("created_on", created_on) if created_on is not None else None,
                        number_quota=number_quota, domain_suffix=env.settings.sip_domain_suffix)
        tenants.add_address(conn, t["id"], kind=address_kind, street=street, postcode=postcode,
                            city=city, area_code=area_code)
        out = tenants.show(conn, t["id"])
    emit(out, as_json, lambda d: click.echo(f"tenant {d['id']} added: {d['name']} ({d['plan']}, {d['sip_domain']})"))


@group.command("list")
@click.option("--plan", help="Only tenants on this plan.")
@json_option
@pass_env
def list_(env: Env, as_json: bool, plan: str | None) -> None:
    """List tenants."""
    with env.tx() as conn:
        rows = tenants.list_all(conn, plan)
    cols = ["id", "name", "customer_type", "plan", "sip_domain", "accounts", "numbers"]
    emit(rows, as_json, lambda r: table(r, cols))


def _show_human(d: dict) -> None:
    lim = d["limits"]
    click.echo(f"tenant {d['id']}: {d['name']}")
    click.echo(f"  plan {d['plan_name']} ({d['payment']}), {d['customer_type']}, domain {d['sip_domain']},"
               f" tz {d['timezone']}, invoices in {d['language']}, since {d['created_on']}")
    click.echo(f"  lines in/out {lim['lines_in']}/{lim['lines_out']}, accounts {d['counts']['accounts']}"
               f"/{lim['accounts_max']}, numbers {d['counts']['numbers']}/{lim['numbers_max'] or '-'},"
               f" queues {d['counts']['queues']}")
    click.echo(f"  credit limit/month {euro(lim['monthly_credit_limit_cents'])},"
               f" max call {lim['max_call_seconds']} s, billing increment {lim['billing_increment']} s")
    for o in d["options"]:
        click.echo(f"  option {o['option']} x{o['quantity']} ({euro(o['price_cents'])}/month each)")
    for a in d["addresses"]:
        click.echo(f"  address {a['id']} {a['kind']}: {a['street']}, {a['postcode']} {a['city']} (0{a['area_code']})")
    if d["porting_fee_yearly_cents"]:
        click.echo(f"  porting fee {euro(d['porting_fee_yearly_cents'])}/year")
    if d.get("closing_invoices"):
        click.echo(f"  the plan left is closed by invoice(s) {', '.join(d['closing_invoices'])}")


@group.command("show")
@click.argument("tenant_id", type=INT)
@json_option
@pass_env
def show(env: Env, as_json: bool, tenant_id: int) -> None:
    """Show one tenant with limits, options and addresses."""
    with env.tx() as conn:
        out = tenants.show(conn, tenant_id)
    emit(out, as_json, _show_human)


@group.command("set")
@click.argument("tenant_id", type=INT)
@click.option("--name")
@click.option("--email", help="'' clears it.")
@click.option("--timezone")
@click.option("--language", type=click.Choice(texts.LANGUAGES),
              help="Of its invoices and credit notes from now on: de (the default) or en.")
@click.option("--type", "customer_type", type=click.Choice(tenants.CUSTOMER_TYPES))
@click.option("--plan")
@click.option("--number-quota", type=INT)
@click.option("--clip-agreement", help="Date YYYY-MM-DD the signed CLIP-no-screening agreement was filed, or 'none'.")
@click.option("--option", "options", multiple=True, metavar="NAME=QTY",
              help="Book an option (QTY 0 cancels); repeatable, e.g. --option acd=1.")
@json_option
@pass_env
def set_(env: Env, as_json: bool, tenant_id: int, name: str | None, email: str | None,
         timezone: str | None, language: str | None, customer_type: str | None, plan: str | None,
         number_quota: int | None, clip_agreement: str | None, options: tuple[str, ...]) -> None:
    """Change a tenant: fields, plan, booked options."""
    parsed = []
    for item in options:
        opt, sep, qty = item.partition("=")
        if not sep or not qty.isascii() or not qty.isdigit() or not opt:
            raise click.BadParameter("must be NAME=QTY with QTY a whole number", param_hint="--option")
        parsed.append((opt, int(qty)))
    agreement = ...
    if clip_agreement is not None:
        agreement = None if clip_agreement == "none" else v.date("clip_agreement", clip_agreement)
    with env.tx() as conn:
        changed = tenants.set_fields(conn, tenant_id, due_days=env.settings.invoice_due_days,
                                     first_month=months.first_billed(env.settings.billing_first_month), name=name,
                                     email=email, timezone=timezone, language=language,
                                     customer_type=customer_type, plan=plan,
                                     number_quota=number_quota, clip_agreement_on=agreement)
        if changed["closing_invoices"]:
            einvoice.issuing(conn, env.settings)     # else the transaction, the invoices with it, is rolled back
        for opt, qty in parsed:
            tenants.set_option(conn, tenant_id, opt, qty)
        out = tenants.show(conn, tenant_id)
    out["closing_invoices"] = changed["closing_invoices"]
    emit(out, as_json, _show_human)


@group.command("cancel")
@click.argument("tenant_id", type=INT)
@click.option("--on", "on", help="Last day of the contract, YYYY-MM-DD (a month's last day; default: the "
                                 "earliest allowed, the end of this month or of the minimum term).")
@json_option
@pass_env
def cancel(env: Env, as_json: bool, tenant_id: int, on: str | None) -> None:
    """Cancel a contract: it ends with a month, not before the minimum term
    (complete: 12 months); no base fees or options are billed after it."""
    end = v.date("on", on) if on else None
    with env.tx() as conn:
        out = tenants.cancel(conn, tenant_id, end, dt.date.today())
    emit(out, as_json, lambda d: click.echo(f"tenant {d['id']} cancelled; the contract ends on {d['cancel_at']}"))


@group.group("address")
def address() -> None:
    """A tenant's addresses (they bind geographic numbers to area codes)."""


@address.command("add")
@click.argument("tenant_id", type=INT)
@click.option("--kind", type=click.Choice(tenants.ADDRESS_KINDS), required=True)
@click.option("--street", required=True)
@click.option("--postcode", required=True)
@click.option("--city", required=True)
@click.option("--area-code", required=True)
@json_option
@pass_env
def address_add(env: Env, as_json: bool, tenant_id: int, kind: str, street: str, postcode: str,
                city: str, area_code: str) -> None:
    """Add an address (seat, residence, branch, second residence)."""
    with env.tx() as conn:
        a = tenants.add_address(conn, tenant_id, kind=kind, street=street, postcode=postcode,
                                city=city, area_code=area_code)
    emit(a, as_json, lambda d: click.echo(f"address {d['id']} added (area code 0{d['area_code']})"))


@address.command("remove")
@click.argument("tenant_id", type=INT)
@click.argument("address_id", type=INT)
@pass_env
def address_remove(env: Env, tenant_id: int, address_id: int) -> None:
    """Remove an address; refused while a number is bound to its area."""
    with env.tx() as conn:
        tenants.remove_address(conn, tenant_id, address_id)
    click.echo(f"address {address_id} removed")
