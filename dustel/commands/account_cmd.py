from __future__ import annotations

import click

from ..provisioning import accounts
from .common import INT, Env, emit, json_option, pass_env, read_password, table

COLUMNS = ["username", "tenant_id", "display_name", "tls_mode", "t38", "caller_id", "allowed_nets"]


@click.group("account")
def group() -> None:
    """SIP accounts (passwords are stored only as digest HA1)."""


@group.command("add")
@click.argument("tenant_id", type=INT)
@click.option("--username", help="000387 + 6 digits; default: the next free one.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (else prompt, hidden).")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--tls", "tls_mode", type=click.Choice(accounts.TLS_MODES), default="off", show_default=True,
              help="off, tls_srtp (TLS signalling + SRTP media) or tls_only.")
@click.option("--t38", type=click.Choice(accounts.T38_MODES), default="off", show_default=True)
@click.option("--allow-ip", "allowed", multiple=True, help="IP or CIDR allowed to call out; repeatable.")
@click.option("--caller-id", help="One of the tenant's numbers (E.164).")
@click.option("--location", help="Area code for emergency routing; default the tenant's first address.")
@json_option
@pass_env
def add(env: Env, as_json: bool, tenant_id: int, username: str | None, password_stdin: bool,
        display_name: str, tls_mode: str, t38: str, allowed: tuple[str, ...], caller_id: str | None,
        location: str | None) -> None:
    """Add a SIP account to a tenant."""
    password = read_password(password_stdin)
    with env.tx() as conn:
        acc = accounts.add(conn, tenant_id, password=password, username=username,
                           display_name=display_name, tls_mode=tls_mode, t38=t38,
                           allowed_nets=list(allowed), caller_id=caller_id, location=location)
    emit(acc, as_json, lambda d: click.echo(f"account {d['username']}@{d['sip_domain']} added"))


@group.command("list")
@click.option("--tenant", "tenant_id", type=INT, help="Only this tenant's accounts.")
@json_option
@pass_env
def list_(env: Env, as_json: bool, tenant_id: int | None) -> None:
    """List SIP accounts."""
    with env.tx() as conn:
        rows = accounts.list_for(conn, tenant_id)
    emit(rows, as_json, lambda r: table(r, COLUMNS))


@group.command("show")
@click.argument("username")
@json_option
@pass_env
def show(env: Env, as_json: bool, username: str) -> None:
    """Show one SIP account."""
    with env.tx() as conn:
        acc = accounts.get(conn, username)
    emit(acc, as_json, lambda d: table([d], COLUMNS + ["location_area_code", "zone_preset"]))


@group.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (else prompt, hidden).")
@pass_env
def passwd(env: Env, username: str, password_stdin: bool) -> None:
    """Set a new password (stored as HA1 only)."""
    password = read_password(password_stdin)
    with env.tx() as conn:
        accounts.set_password(conn, username, password)
    click.echo(f"password of {username} changed")


@group.command("set")
@click.argument("username")
@click.option("--name", "display_name")
@click.option("--tls", "tls_mode", type=click.Choice(accounts.TLS_MODES))
@click.option("--t38", type=click.Choice(accounts.T38_MODES))
@click.option("--allow-ip", "allowed", multiple=True, help="Replaces the list; repeatable.")
@click.option("--clear-ips", is_flag=True, help="Allow calls from anywhere.")
@click.option("--caller-id", help="E.164; '' clears it.")
@click.option("--location", help="Area code for emergency routing.")
@json_option
@pass_env
def set_(env: Env, as_json: bool, username: str, display_name: str | None, tls_mode: str | None,
         t38: str | None, allowed: tuple[str, ...], clear_ips: bool, caller_id: str | None,
         location: str | None) -> None:
    """Change a SIP account's settings."""
    nets = [] if clear_ips else (list(allowed) if allowed else None)
    with env.tx() as conn:
        acc = accounts.set_fields(conn, username, display_name=display_name, tls_mode=tls_mode,
                                  t38=t38, allowed_nets=nets, caller_id=caller_id, location=location)
    emit(acc, as_json, lambda d: table([d], COLUMNS))


@group.command("remove")
@click.argument("username")
@pass_env
def remove(env: Env, username: str) -> None:
    """Remove a SIP account (refused while a number routes to it)."""
    with env.tx() as conn:
        accounts.remove(conn, username)
    click.echo(f"account {username} removed")
