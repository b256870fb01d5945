from __future__ import annotations

from typing import Any

import click

from .. import db
from ..errors import DustelError
from ..provisioning import migrate as mig
from .common import Env, emit, json_option, pass_env


@click.group("db")
def group() -> None:
    """The database: make it, migrate it, see it, stop the embedded one."""


@group.command("init")
@json_option
@pass_env
def init(env: Env, as_json: bool) -> None:
    """Make the database when there is none (the embedded PostgreSQL in
    <state-dir>/pg unless DATABASE_URL is set) and apply the migrations:
    an empty provider.  Idempotent.  Besides `dustel demo`, the only command
    that makes a database."""
    url = env.create_database()
    applied = mig.migrate(url)
    emit({"database": _where(env), "applied": applied}, as_json,
         lambda d: click.echo(f"database {d['database']}: "
                              + (f"applied {', '.join(d['applied'])}" if d["applied"] else "schema up to date")))


@group.command("migrate")
@json_option
@pass_env
def migrate(env: Env, as_json: bool) -> None:
    """Apply pending schema migrations (idempotent, one transaction each)."""
    applied = mig.migrate(env.url)
    emit({"applied": applied}, as_json,
         lambda d: click.echo(f"applied: {', '.join(d['applied'])}" if d["applied"] else "schema up to date"))


@group.command("grant-edge")
@click.argument("role")
@pass_env
def grant_edge(env: Env, role: str) -> None:
    """Grant ROLE (Kamailio's database role, made by the database's
    administrator with search_path = kamailio) what the SIP edge needs:
    read the subscriber view and the dispatcher and address tables, write
    the locations.  Idempotent."""
    from ..render import edge
    with env.tx() as conn:
        edge.grant(conn, role)
    click.echo(f"granted {role} the SIP edge's tables (schema kamailio)")


def _where(env: Env) -> str:
    return "DATABASE_URL" if env.settings.database_url else str(env.settings.state_dir / "pg")


@group.command("status")
@json_option
@pass_env
def status(env: Env, as_json: bool) -> None:
    """Where the database is, whether the embedded server runs (it is not
    started to find out), and the migrations applied and pending.  Exit
    status 1 when there is no database or it is not running."""
    s = env.settings
    out: dict[str, Any] = {"state_dir": str(s.state_dir), "found_by": s.state_found, "database": _where(env)}
    if not s.database_url:
        out["embedded"] = db.embedded_status(s.state_dir / "pg")
    if s.database_url or out["embedded"]["running"]:
        st = mig.status(env.url)
        out.update(applied=st.applied, pending=st.pending)
    emit(out, as_json, _human_status)
    if not s.database_url and not out["embedded"]["running"]:
        click.get_current_context().exit(1)


def _human_status(d: dict[str, Any]) -> None:
    click.echo(f"state directory: {d['state_dir']} (from {d['found_by']})")
    e = d.get("embedded")
    if e is None:
        click.echo("database: DATABASE_URL")
    elif not e["exists"]:
        click.echo(f"database: none in {e['data_dir']} (`dustel db init` or `dustel demo` makes one)")
    else:
        click.echo(f"database: embedded PostgreSQL in {e['data_dir']}, "
                   + (f"running (pid {e['pid']}, port {e['port']})" if e["running"] else "stopped"))
    if "applied" in d:
        click.echo(f"applied: {', '.join(d['applied']) or '-'}\npending: {', '.join(d['pending']) or '-'}")


@group.command("stop")
@json_option
@pass_env
def stop(env: Env, as_json: bool) -> None:
    """Stop the embedded PostgreSQL of the state directory (the next command
    that needs it starts it again).  `make clean` runs this first."""
    if env.settings.database_url:
        raise DustelError("database", "is DATABASE_URL's server, which dustel does not run: nothing to stop")
    data = env.settings.state_dir / "pg"
    stopped = db.embedded_stop(data)
    emit({"data_dir": str(data), "stopped": stopped}, as_json,
         lambda d: click.echo(f"embedded PostgreSQL in {d['data_dir']}: "
                              + ("stopped" if d["stopped"] else "was not running")))
