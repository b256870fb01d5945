from __future__ import annotations

import click

from ..provisioning import numbers
from ..provisioning import validate as v
from .common import INT, Env, emit, json_option, pass_env, table


@click.group("number")
def group() -> None:
    """Phone numbers and blocks: add, route, port, remove."""


@group.command("add")
@click.argument("tenant_id", type=INT)
@click.argument("e164")
@click.option("--block", "block_size", type=INT, help="Block size (10, 20 … 100): E164 is the head.")
@click.option("--central", "central_ddi", help="DDI of the central answering point of a block, e.g. 0.")
@json_option
@pass_env
def add(env: Env, as_json: bool, tenant_id: int, e164: str, block_size: int | None,
        central_ddi: str | None) -> None:
    """Add a new number or block to a tenant (area binding and quotas apply)."""
    with env.tx() as conn:
        row = numbers.add(conn, tenant_id, e164, block_size=block_size, central_ddi=central_ddi)
    emit(row, as_json, lambda d: click.echo(
        f"number {d['e164']}" + (f" (block of {d['block_size']})" if d["block_size"] else "") + " added"))


@group.command("assign")
@click.argument("e164")
@click.option("--account", help="Route to this SIP account (username).")
@click.option("--queue", help="Route to this queue (name).")
@click.option("--fax", help="Route to this fax box (name).")
@click.option("--group", "group_", help="Route to this ring group (name).")
@click.option("--none", "unroute", is_flag=True, help="Remove the routing.")
@json_option
@pass_env
def assign(env: Env, as_json: bool, e164: str, account: str | None, queue: str | None,
           fax: str | None, group_: str | None, unroute: bool) -> None:
    """Route a number or a whole block to one target."""
    given = [(k, t) for k, t in (("account", account), ("queue", queue), ("fax", fax), ("group", group_))
             if t is not None]                # an empty name meets its field's rule, not a usage error
    if len(given) + unroute != 1:
        raise click.UsageError("give exactly one of --account, --queue, --fax, --group, --none")
    kind, target = given[0] if given else (None, None)
    with env.tx() as conn:
        row = numbers.assign(conn, e164, kind, target)
    emit(row, as_json, lambda d: click.echo(f"{d['e164']} -> {d['target_kind'] or 'nothing'}"
                                            + (f" {target}" if target else "")))


@group.command("remove")
@click.argument("e164")
@pass_env
def remove(env: Env, e164: str) -> None:
    """Remove a number or a whole block (never one number of a block)."""
    with env.tx() as conn:
        numbers.remove(conn, e164)
    click.echo(f"number {e164} removed")


@group.command("list")
@click.option("--tenant", "tenant_id", type=INT)
@json_option
@pass_env
def list_(env: Env, as_json: bool, tenant_id: int | None) -> None:
    """List numbers and blocks with their routing."""
    with env.tx() as conn:
        rows = numbers.list_for(conn, tenant_id)
    emit(rows, as_json, lambda r: table(r, ["e164", "block_size", "tenant_id", "status", "origin",
                                            "target_kind", "target"]))


@group.group("port")
def port() -> None:
    """Porting: requested -> confirmed (date) -> done / rejected."""


@port.command("in")
@click.argument("tenant_id", type=INT)
@click.argument("e164")
@click.option("--block", "block_size", type=INT, help="Port a whole block with this head number.")
@click.option("--carrier", required=True, help="The losing carrier.")
@json_option
@pass_env
def port_in(env: Env, as_json: bool, tenant_id: int, e164: str, block_size: int | None, carrier: str) -> None:
    """Request a port-in (the number is reserved as porting_in)."""
    with env.tx() as conn:
        order = numbers.port_in(conn, tenant_id, e164, carrier=carrier, block_size=block_size)
    emit(order, as_json, lambda d: click.echo(f"porting order {d['id']}: {d['e164']} in, {d['state']}"))


@port.command("out")
@click.argument("e164")
@click.option("--carrier", required=True, help="The gaining carrier.")
@json_option
@pass_env
def port_out(env: Env, as_json: bool, e164: str, carrier: str) -> None:
    """Request a port-out of a number or whole block."""
    with env.tx() as conn:
        order = numbers.port_out(conn, e164, carrier=carrier)
    emit(order, as_json, lambda d: click.echo(f"porting order {d['id']}: {d['e164']} out, {d['state']}"))


@port.command("confirm")
@click.argument("order_id", type=INT)
@click.option("--date", "port_date", required=True, help="Porting date set by the losing carrier (YYYY-MM-DD).")
@json_option
@pass_env
def port_confirm(env: Env, as_json: bool, order_id: int, port_date: str) -> None:
    """Confirm an order with the porting date."""
    with env.tx() as conn:
        order = numbers.port_event(conn, order_id, "confirm", port_date=v.date("date", port_date))
    emit(order, as_json, lambda d: click.echo(f"porting order {d['id']}: confirmed for {d['port_date']}"))


@port.command("done")
@click.argument("order_id", type=INT)
@json_option
@pass_env
def port_done(env: Env, as_json: bool, order_id: int) -> None:
    """Mark a confirmed order as carried out."""
    with env.tx() as conn:
        order = numbers.port_event(conn, order_id, "done")
    emit(order, as_json, lambda d: click.echo(f"porting order {d['id']}: done"))


@port.command("reject")
@click.argument("order_id", type=INT)
@click.option("--reason", required=True)
@json_option
@pass_env
def port_reject(env: Env, as_json: bool, order_id: int, reason: str) -> None:
    """Reject an open order."""
    with env.tx() as conn:
        order = numbers.port_event(conn, order_id, "reject", reason=reason)
    emit(order, as_json, lambda d: click.echo(f"porting order {d['id']}: rejected"))


@port.command("list")
@click.option("--tenant", "tenant_id", type=INT)
@json_option
@pass_env
def port_list(env: Env, as_json: bool, tenant_id: int | None) -> None:
    """List porting orders."""
    with env.tx() as conn:
        rows = numbers.orders(conn, tenant_id)
    emit(rows, as_json, lambda r: table(r, ["id", "tenant_id", "e164", "block_size", "direction", "state",
                                            "carrier", "port_date"]))
