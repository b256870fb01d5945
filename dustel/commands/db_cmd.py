from __future__ import annotations

import click

from ..provisioning import migrate as mig
from .common import Env, emit, json_option, pass_env


@click.group("db")
def group() -> None:
    """Database schema: migrate and status."""


@group.command("migrate")
@json_option
@pass_env
def migrate(env: Env, as_json: bool) -> None:
    """Apply pending schema migrations (idempotent, one transaction each)."""
    applied = mig.migrate(env.url)
    emit({"applied": applied}, as_json,
         lambda d: click.echo(f"applied: {', '.join(d['applied'])}" if d["applied"] else "schema up to date"))


@group.command("status")
@json_option
@pass_env
def status(env: Env, as_json: bool) -> None:
    """Show applied and pending migrations."""
    st = mig.status(env.url)
    emit({"applied": st.applied, "pending": st.pending}, as_json,
         lambda d: click.echo(f"applied: {', '.join(d['applied']) or '-'}\npending: {', '.join(d['pending']) or '-'}"))
