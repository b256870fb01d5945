"""rates import/list, credit topup/show, agi serve, esl serve, xmlcurl serve."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .. import logs
from ..callpath import calls
from ..config import fs_decision, node_addresses, node_sources, star_codes
from ..errors import DustelError
from ..provisioning import rates as rating_table
from ..provisioning import tenants
from ..provisioning import validate as v
from .common import AMOUNT_ARGUMENT, INT, Env, emit, euro, json_option, pass_env, table

rates = click.Group("rates", help="Per-minute prices by destination prefix (longest match), integer cents.")


@rates.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Drop prefixes the file does not list.")
@json_option
@pass_env
def rates_import(env: Env, as_json: bool, csv_file: Path, replace: bool) -> None:
    """Load rates from CSV (prefix,cents_per_minute,description) in one transaction."""
    rows = rating_table.read(csv_file)
    with env.tx() as conn:
        total = rating_table.store(conn, rows, replace=replace)
    emit({"imported": len(rows), "total": total}, as_json,
         lambda d: click.echo(f"{d['imported']} rates imported, {d['total']} in the table"))


@rates.command("list")
@json_option
@pass_env
def rates_list(env: Env, as_json: bool) -> None:
    """List rates."""
    with env.tx() as conn:
        rows = conn.execute("SELECT prefix, cents_per_minute, description FROM rates ORDER BY prefix").fetchall()
    emit(rows, as_json, lambda r: table(r, ["prefix", "cents_per_minute", "description"]))


credit = click.Group("credit", help="Prepaid credit and the money state of a tenant.")


@credit.command("topup", context_settings=AMOUNT_ARGUMENT)
@click.argument("tenant_id", type=INT)
@click.argument("amount")
@click.option("--ref", required=True, help="Payment reference (bank transfer id …); a repeated ref is a no-op.")
@json_option
@pass_env
def credit_topup(env: Env, as_json: bool, tenant_id: int, amount: str, ref: str) -> None:
    """Add AMOUNT EUR of prepaid credit."""
    cents = v.money_cents("amount", amount)
    if cents == 0:
        raise DustelError("amount", "must be more than 0")
    ref = v.text("ref", ref, max_len=100)
    with env.tx() as conn:
        te = tenants.get(conn, tenant_id)
        if te["plan"] != "starter":
            raise DustelError("tenant", "only prepaid (starter) tenants are topped up")
        done = calls.run_sync(conn, calls.topup(tenant_id, cents, f"topup:{ref}"))
        m = conn.execute("SELECT * FROM tenant_money WHERE tenant_id = %s", (tenant_id,)).fetchone()
    emit({"applied": done, **m}, as_json, lambda d: click.echo(
        ("topped up" if d["applied"] else "already applied (same --ref)")
        + f"; balance {euro(d['balance_cents'])}"))


@credit.command("show")
@click.argument("tenant_id", type=INT)
@json_option
@pass_env
def credit_show(env: Env, as_json: bool, tenant_id: int) -> None:
    """Balance, reserved money, start credit left, active calls."""
    with env.tx() as conn:
        tenants.get(conn, tenant_id)
        m = conn.execute("SELECT * FROM tenant_money WHERE tenant_id = %s", (tenant_id,)).fetchone()
        m["active_calls"] = conn.execute("SELECT count(*) AS n FROM calls WHERE tenant_id = %s AND state = 'active'",
                                         (tenant_id,)).fetchone()["n"]
    emit(m, as_json, lambda d: click.echo(
        f"balance {euro(d['balance_cents'])}, reserved {euro(d['reserved_cents'])}, "
        f"start credit {d['free_seconds'] - d['reserved_free']} s, active calls {d['active_calls']}"))


agi = click.Group("agi", help="The call-time policy server for Asterisk (FastAGI).")


@agi.command("serve")
@click.option("--host", help="Listen address (default from settings: agi_host).")
@click.option("--port", type=INT, help="Listen port (default from settings: agi_port).")
@pass_env
def agi_serve(env: Env, host: str | None, port: int | None) -> None:
    """Run the FastAGI server in the foreground, logging to stdout."""
    import uvloop

    from ..agi import fastagi

    logs.service(sys.stdout, logs.LEVELLED)
    s = env.settings
    nodes = node_addresses(s.ami_nodes, s.agi_node)
    try:
        uvloop.run(fastagi.serve(env.url, host or s.agi_host, port or s.agi_port, s.agi_node, nodes=nodes,
                                 star_codes=star_codes(s), logo_dir=s.logo_dir,
                                 fax_read_dir=s.fax_read_dir or s.fax_spool_dir))
    except KeyboardInterrupt:
        pass


esl = click.Group("esl", help="The call-time policy server for FreeSWITCH (outbound Event Socket).")


@esl.command("serve")
@click.option("--host", help="Listen address (default from settings: esl_outbound_host).")
@click.option("--port", type=INT, help="Listen port (default from settings: esl_outbound_port; 0 picks one).")
@pass_env
def esl_serve(env: Env, host: str | None, port: int | None) -> None:
    """Run the outbound Event Socket server in the foreground (a gevent
    process of its own: this command execs it), logging to stderr."""
    s = env.settings
    if s.esl_max_calls < 1:
        raise DustelError("esl_max_calls", "must be at least 1")
    if s.esl_workers < 0:
        raise DustelError("esl_workers", "must be 0 (one per core) or more")
    argv = [sys.executable, "-m", "dustel.agi.esl_main", "--host", host or s.esl_outbound_host,
            "--port", str(s.esl_outbound_port if port is None else port), "--max-calls", str(s.esl_max_calls),
            "--workers", str(s.esl_workers)]
    # secrets never on the command line (``ps`` shows it to every user): the
    # DSN and the node list go through the environment of the exec'd process
    child_env = {**os.environ, "DUSTEL_ESL_DSN": env.url,
                 "DUSTEL_ESL_NODES": json.dumps(node_sources(s.esl_nodes, "")),
                 "DUSTEL_STAR_CODES": json.dumps(star_codes(s)), "DUSTEL_LOGO_DIR": s.logo_dir,
                 "DUSTEL_FAX_SPOOL_DIR": s.fax_spool_dir, "DUSTEL_FAX_READ_DIR": s.fax_read_dir or s.fax_spool_dir}
    sys.stdout.flush()
    os.execve(sys.executable, argv, child_env)


xmlcurl = click.Group("xmlcurl", help="The call-time policy server for FreeSWITCH's dialplan fetch (mod_xml_curl).")


@xmlcurl.command("serve")
@click.option("--host", help="Listen address (default from settings: xmlcurl_host).")
@click.option("--port", type=INT, help="Listen port (default from settings: xmlcurl_port; 0 picks one).")
@pass_env
def xmlcurl_serve(env: Env, host: str | None, port: int | None) -> None:
    """Run the dialplan fetch server in the foreground (an asyncio process of
    its own, uvloop: this command execs it), logging to stderr.  FreeSWITCH
    fetches from it with ``fs_decision = fetch``; the outbound socket server
    (``esl serve``) still runs what the fetch leaves to the static dialplan."""
    s = env.settings
    fs_decision(s)
    if s.xmlcurl_workers < 0:
        raise DustelError("xmlcurl_workers", "must be 0 (one per core) or more")
    argv = [sys.executable, "-m", "dustel.agi.xmlcurl", "--host", host or s.xmlcurl_host,
            "--port", str(s.xmlcurl_port if port is None else port), "--workers", str(s.xmlcurl_workers)]
    # the DSN and the nodes through the environment, never argv (as esl serve)
    child_env = {**os.environ, "DUSTEL_XMLCURL_DSN": env.url,
                 "DUSTEL_XMLCURL_NODES": json.dumps(node_sources(s.esl_nodes, "")), "DUSTEL_LOGO_DIR": s.logo_dir}
    sys.stdout.flush()
    os.execve(sys.executable, argv, child_env)


billing = click.Group("billing", help="Money checks and corrections.")


@billing.command("reconcile")
@click.option("--tenant", "tenant_id", type=INT, help="Only this tenant's calls.")
@click.option("--fix", is_flag=True, help="Settle / release / adjust what disagrees (one transaction).")
@json_option
@pass_env
def billing_reconcile(env: Env, tenant_id: int | None, fix: bool, as_json: bool) -> None:
    """Calls whose money and CDR disagree: lost settlements, unbilled expired
    reservations, charges that differ from the engine's billsec."""
    from dataclasses import asdict

    from ..billing import reconcile
    with env.tx() as conn:
        found = calls.run_sync(conn, reconcile.reconcile(tenant_id, fix))
    emit([asdict(f) for f in found], as_json, lambda rows: table(
        rows, ["node", "call_id", "tenant_id", "problem", "charged_cents", "due_cents", "action"]))
