"""Fax boxes, ring groups, queues and agents as routing targets (the ACD
behaviour itself lives in dustel.queue)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import DustelError
from ..provisioning import targets, tenants
from .common import INT, Env, emit, json_option, pass_env, read_password, table, tenant_filter

faxbox = click.Group("faxbox", help="Fax-to-email boxes (F-08).")


@faxbox.command("add")
@click.argument("tenant_id", type=INT)
@click.argument("name")
@click.option("--email", required=True, help="Where received faxes are mailed.")
@click.option("--pin", "ask_pin", is_flag=True, help="Set a fax PIN for e-mail to fax (4-8 digits): hidden prompt.")
@click.option("--pin-stdin", is_flag=True, help="Read the fax PIN from stdin instead.")
@json_option
@pass_env
def faxbox_add(env: Env, as_json: bool, tenant_id: int, name: str, email: str, ask_pin: bool,
               pin_stdin: bool) -> None:
    """Add a fax box.  PINs are never taken on the command line."""
    pin = read_password(pin_stdin, "Fax PIN") if ask_pin or pin_stdin else None
    with env.tx() as conn:
        row = targets.faxbox_add(conn, tenant_id, name, email, pin)
    emit(row, as_json, lambda d: click.echo(f"fax box {d['name']} added"))


@faxbox.command("list")
@tenant_filter
@json_option
@pass_env
def faxbox_list(env: Env, as_json: bool, tenant_id: int | None) -> None:
    """List fax boxes."""
    with env.tx() as conn:
        if tenant_id is not None:
            tenants.get(conn, tenant_id)             # an unknown tenant is an error, not "(none)"
        rows = conn.execute("""SELECT id, tenant_id, name, email, pin_hash IS NOT NULL AS pin,
                                      CASE WHEN smtp_password_hash IS NOT NULL THEN tenant_id || '/' || name END
                                          AS smtp_login
                                 FROM faxboxes WHERE %(t)s::bigint IS NULL OR tenant_id = %(t)s
                                ORDER BY tenant_id, name""", {"t": tenant_id}).fetchall()
    emit(rows, as_json, lambda r: table(r, ["id", "tenant_id", "name", "email", "pin", "smtp_login"]))


@faxbox.command("set")
@click.argument("tenant_id", type=INT)
@click.argument("name")
@click.option("--email", help="Where received faxes are mailed.")
@click.option("--pin", "ask_pin", is_flag=True, help="New fax PIN for e-mail to fax (4-8 digits, stored hashed): "
              "hidden prompt.")
@click.option("--pin-stdin", is_flag=True, help="Read the new PIN from stdin (the first line).")
@click.option("--no-pin", "clear_pin", is_flag=True, help="Remove the PIN: no e-mail to fax by PIN.")
@click.option("--smtp-password", "ask_password", is_flag=True,
              help="Set the box's submission password (SMTP AUTH as TENANT/NAME, 12-128 characters): hidden prompt.")
@click.option("--smtp-password-stdin", is_flag=True, help="Read it from stdin (the line after a --pin-stdin PIN).")
@click.option("--no-smtp-password", "clear_password", is_flag=True, help="Remove the submission password.")
@json_option
@pass_env
def faxbox_set(env: Env, as_json: bool, tenant_id: int, name: str, email: str | None, ask_pin: bool,
               pin_stdin: bool, clear_pin: bool, ask_password: bool, smtp_password_stdin: bool,
               clear_password: bool) -> None:
    """Change a fax box.  PINs and passwords are never taken on the command line."""
    pin = read_password(pin_stdin, "Fax PIN") if ask_pin or pin_stdin else None
    password = read_password(smtp_password_stdin, "Submission password") \
        if ask_password or smtp_password_stdin else None
    with env.tx() as conn:
        row = targets.faxbox_set(conn, tenant_id, name, email=email, pin=pin, clear_pin=clear_pin,
                                 smtp_password=password, clear_smtp_password=clear_password)
    emit(row, as_json, lambda d: click.echo(f"fax box {d['name']} changed"
                                            + (f" (SMTP login {tenant_id}/{d['name']})" if d["smtp_login"] else "")))


@faxbox.command("remove")
@click.argument("tenant_id", type=INT)
@click.argument("name")
@json_option
@pass_env
def faxbox_remove(env: Env, as_json: bool, tenant_id: int, name: str) -> None:
    """Remove a fax box (refused while a number is routed to it)."""
    with env.tx() as conn:
        targets.faxbox_remove(conn, tenant_id, name)
    emit({"removed": name}, as_json, lambda d: click.echo(f"fax box {name} removed"))


ringgroup = click.Group("ringgroup", help="Ring groups: numbers routed to several accounts at once.")


@ringgroup.command("add")
@click.argument("tenant_id", type=INT)
@click.argument("name")
@click.option("--member", "members", multiple=True, required=True, help="SIP username; repeatable.")
@click.option("--ring-seconds", type=INT, default=30, show_default=True)
@click.option("--fallback", default=None, help="SIP username or +E.164 that rings when no member answers.")
@json_option
@pass_env
def ringgroup_add(env: Env, as_json: bool, tenant_id: int, name: str, members: tuple[str, ...],
                  ring_seconds: int, fallback: str | None) -> None:
    """Add a ring group."""
    with env.tx() as conn:
        row = targets.ring_group_add(conn, tenant_id, name, list(members), ring_seconds, fallback)
    emit(row, as_json, lambda d: click.echo(f"ring group {d['name']} added"))


queue = click.Group("queue", help="DUSqueue call-centre queues (ACD option, business flex).")


@queue.command("add")
@click.argument("tenant_id", type=INT)
@click.argument("name")
@click.option("--code", required=True, help="Digits agents dial after *51 to log in.")
@click.option("--strategy", type=click.Choice(targets.STRATEGIES), default="ring_all", show_default=True)
@click.option("--max-wait", type=INT, default=300, show_default=True, help="Seconds.")
@click.option("--max-callers", type=INT, default=10, show_default=True)
@click.option("--wrapup", type=INT, default=10, show_default=True, help="Seconds after a call.")
@click.option("--moh", "moh_class", default="default", show_default=True, help="Hold music class.")
@json_option
@pass_env
def queue_add(env: Env, as_json: bool, tenant_id: int, name: str, code: str, strategy: str,
              max_wait: int, max_callers: int, wrapup: int, moh_class: str) -> None:
    """Add a queue."""
    with env.tx() as conn:
        row = targets.queue_add(conn, tenant_id, name, code, strategy=strategy, max_wait=max_wait,
                                max_callers=max_callers, wrapup=wrapup, moh=moh_class)
    emit(row, as_json, lambda d: click.echo(f"queue {d['name']} added (login *51{d['code']})"))


@queue.command("list")
@tenant_filter
@json_option
@pass_env
def queue_list(env: Env, as_json: bool, tenant_id: int | None) -> None:
    """List queues."""
    with env.tx() as conn:
        if tenant_id is not None:
            tenants.get(conn, tenant_id)             # an unknown tenant is an error, not "(none)"
        rows = conn.execute(
            "SELECT id, tenant_id, name, code, strategy, max_wait_seconds, max_callers, wrapup_seconds, moh_class"
            " FROM queues WHERE %(t)s::bigint IS NULL OR tenant_id = %(t)s ORDER BY tenant_id, name",
            {"t": tenant_id}).fetchall()
    emit(rows, as_json, lambda r: table(r, ["tenant_id", "name", "code", "strategy", "max_wait_seconds",
                                            "max_callers"]))


@queue.command("set")
@click.argument("tenant_id", type=INT)
@click.argument("name")
@click.option("--moh", "moh_class", required=True, help="Hold music class: default, or one of `dustel moh list`.")
@json_option
@pass_env
def queue_set(env: Env, as_json: bool, tenant_id: int, name: str, moh_class: str) -> None:
    """Change a queue's hold music (then `dustel render --reload`)."""
    with env.tx() as conn:
        row = targets.queue_set_moh(conn, tenant_id, name, moh_class)
    emit(row, as_json, lambda d: click.echo(f"queue {d['name']}: hold music {d['moh_class']}"))


agent = click.Group("agent", help="Queue agents: people with a PIN.")


@agent.command("add")
@click.argument("tenant_id", type=INT)
@click.argument("name")
@click.option("--pin-stdin", is_flag=True, help="Read the PIN (4-8 digits, stored hashed) from stdin; else a hidden "
              "prompt.  Never on the command line.")
@click.option("--account", help="Default contact: a SIP username of the tenant.")
@click.option("--external", help="Default contact: an external number (home/mobile).")
@click.option("--queue", "queues", multiple=True, help="Member of this queue; repeatable.")
@json_option
@pass_env
def agent_add(env: Env, as_json: bool, tenant_id: int, name: str, pin_stdin: bool, account: str | None,
              external: str | None, queues: tuple[str, ...]) -> None:
    """Add an agent (the PIN from a hidden prompt or --pin-stdin)."""
    pin = read_password(pin_stdin, "Agent PIN")
    with env.tx() as conn:
        row = targets.agent_add(conn, tenant_id, name, pin, account=account, external=external,
                                queues=list(queues))
    emit(row, as_json, lambda d: click.echo(f"agent {d['id']} {d['name']} added"))


@queue.command("hours")
@click.argument("tenant_id", type=INT)
@click.argument("name")
@click.option("--open", "rules", multiple=True, help='When the queue is open, e.g. "mon-fri 08:00-18:00" '
              '(repeatable; "hol 10:00-12:00" for holidays; none: always open).')
@click.option("--region", help="German state for public holidays (NW, BY, …).")
@click.option("--closed-announce", help="Sound a closed queue plays (e.g. dustel/closed).")
@click.option("--closed-target", help="Where a closed queue sends the caller: +49… or a SIP account.")
@json_option
@pass_env
def queue_hours(env: Env, as_json: bool, tenant_id: int, name: str, rules: tuple[str, ...], region: str | None,
                closed_announce: str | None, closed_target: str | None) -> None:
    """Set a queue's opening hours and what happens when it is closed."""
    with env.tx() as conn:
        row = targets.queue_hours(conn, tenant_id, name, list(rules), region=region,
                                  closed_announce=closed_announce, closed_target=closed_target)
    emit(row, as_json, lambda d: click.echo(f"queue {d['name']}: "
                                            + ("always open" if not d["opening_hours"] else "opening hours set")))


@queue.command("stats")
@click.option("--tenant", "tenant_id", type=INT, required=True, help="The queue's tenant.")
@click.option("--queue", "queue_name", required=True, help="Queue name.")
@click.option("--from", "start", required=True, help="Start (ISO; the tenant's time zone unless an offset is given).")
@click.option("--to", "end", required=True, help="End, exclusive (same format).")
@click.option("--by", type=click.Choice(["hour", "day", "agent"]), default="day", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "csv-de", "xlsx"]), default="csv", show_default=True,
              help="csv: comma, decimal point, ISO times; csv-de: what a German spreadsheet reads (semicolon, "
                   "decimal comma, TT.MM.JJJJ, BOM); xlsx: a workbook (needs --out).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file (atomically) instead of stdout.")
@json_option
@pass_env
def queue_stats(env: Env, as_json: bool, tenant_id: int, queue_name: str, start: str, end: str, by: str, fmt: str,
                out: str | None) -> None:
    """Supervisor statistics of one queue: offered, answered, abandoned, timed
    out, closed, waits, talk time, service level — every hour or day of the
    range in the tenant's time zone (zero rows included), or every agent of
    the queue (calls, talk, logged-in and paused time).  An average over no
    calls is blank (null in JSON)."""
    from ..queue import stats

    if fmt == "xlsx" and out is None and not as_json:
        raise DustelError("out", "an .xlsx workbook is written to a file: give --out FILE.xlsx")
    with env.tx() as conn:
        t = tenants.get(conn, tenant_id)
        tz = t["timezone"]
        _, rows = stats.report(conn, tenant_id, queue_name, stats.moment("from", start, tz),
                               stats.moment("to", end, tz), by)
    if as_json:
        data: bytes = (stats.to_json(rows) + "\n").encode()
    elif fmt == "xlsx":
        data = stats.to_xlsx(rows, by, f"{queue_name} {by}")
    else:
        data = stats.to_csv(rows, by, fmt).encode("utf-8")
    if out is None:
        click.echo(data.decode("utf-8"), nl=False)
        return
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    click.echo(f"wrote {len(rows)} rows to {path}", err=True)
