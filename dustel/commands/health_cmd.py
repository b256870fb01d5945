"""``dustel health``: what needs a person, counted (dustel/health.py)."""
from __future__ import annotations

import click

from .. import health as h
from .common import Env, emit, json_option, pass_env, table


@click.command("health")
@json_option
@pass_env
def health(env: Env, as_json: bool) -> None:
    """Count what needs a person: failed and delayed mails, stuck fax jobs,
    overdue reservations, calls to reconcile.  Exit status 1 when any count
    is not zero (for a monitoring check)."""
    with env.tx() as conn:
        found = h.checks(conn)
    emit(h.as_dict(found), as_json,
         lambda d: table(d["checks"], ["name", "count", "what"]))
    if any(c.count for c in found):
        click.get_current_context().exit(1)
