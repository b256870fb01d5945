"""``dustel portal``: the Kundencenter (F-13) — serve it, and its customer users."""
from __future__ import annotations

import sys

import click

from .. import logs
from ..config import require_secrets
from ..portal import users
from .common import INT, Env, emit, json_option, pass_env, read_password, table, tenant_required

portal = click.Group("portal", help="The Kundencenter: customers' API and web pages (F-13).")


@portal.command("serve")
@click.option("--host", help="Listen address (default from settings: portal_host).")
@click.option("--port", type=INT, help="Listen port (default from settings: portal_port).")
@pass_env
def portal_serve(env: Env, host: str | None, port: int | None) -> None:
    """Serve the API (/api/v1, OpenAPI at /api/v1/openapi.json) and the pages
    under uvicorn in the foreground, logging to stdout.  Needs portal_secret
    (environment DUSTEL_PORTAL_SECRET or the 0600 secrets file)."""
    import uvicorn

    from ..portal.app import create_app
    s = env.settings
    require_secrets(s, "portal_secret")
    logs.service(sys.stdout, logs.LEVELLED)
    app = create_app(s, env.url)
    uvicorn.run(app, host=host or s.portal_host, port=s.portal_port if port is None else port, log_config=None,
                proxy_headers=False, server_header=False)


user = click.Group("user", help="Customer users of the Kundencenter: admin, supervisor, agent.")
portal.add_command(user)


@user.command("add")
@click.argument("tenant_id", type=INT)
@click.argument("login")
@click.option("--role", type=click.Choice(users.ROLES), required=True)
@click.option("--agent", help="agent role: the name of the tenant's queue agent this user is.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (else prompt, hidden).")
@json_option
@pass_env
def user_add(env: Env, as_json: bool, tenant_id: int, login: str, role: str, agent: str | None,
             password_stdin: bool) -> None:
    """Add a customer user (the first admin of a tenant comes from here)."""
    password = read_password(password_stdin, "Portal password")
    with env.tx() as conn:
        row = users.add(conn, tenant_id, login, role, password, agent)
    emit(row, as_json, lambda d: click.echo(f"user {d['login']} ({d['role']}) added to tenant {d['tenant_id']}"))


@user.command("list")
@tenant_required
@json_option
@pass_env
def user_list(env: Env, as_json: bool, tenant_id: int) -> None:
    """The tenant's customer users."""
    with env.tx() as conn:
        rows = users.listing(conn, tenant_id)
    emit(rows, as_json, lambda r: table(r, ["id", "login", "role", "agent", "created_at"]))


@user.command("passwd")
@click.argument("tenant_id", type=INT)
@click.argument("user_id", type=INT)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (else prompt, hidden).")
@pass_env
def user_passwd(env: Env, tenant_id: int, user_id: int, password_stdin: bool) -> None:
    """Set a new password; the user's sessions end."""
    password = read_password(password_stdin, "Portal password")
    with env.tx() as conn:
        users.set_password(conn, tenant_id, user_id, password)
    click.echo(f"password of user {user_id} changed")


@user.command("remove")
@click.argument("tenant_id", type=INT)
@click.argument("user_id", type=INT)
@pass_env
def user_remove(env: Env, tenant_id: int, user_id: int) -> None:
    """Remove a customer user (and its sessions)."""
    with env.tx() as conn:
        users.remove(conn, tenant_id, user_id)
    click.echo(f"user {user_id} removed")
