from __future__ import annotations

import datetime as dt

import click

from ..config import ensure_demo_secrets
from ..provisioning import demo as demo_data
from ..provisioning import migrate as mig
from ..render import service
from .common import Env, emit, json_option, pass_env, table


@click.command("demo")
@json_option
@pass_env
def demo(env: Env, as_json: bool) -> None:
    """Set up a demo provider: migrate, load one tenant per plan, render
    configs, print a summary.  A second run changes nothing."""
    applied = mig.migrate(env.create_database())
    if ensure_demo_secrets(env.settings.state_dir):
        env.reload_settings()
    creds = env.settings.state_dir / "demo-credentials.txt"
    with env.tx() as conn:
        loaded = demo_data.load(conn, creds)
        summ = demo_data.summary(conn)
        rendered = service.render_files(conn, env.settings, ["freeswitch", "asterisk"])
    out = env.settings.state_dir / "etc"
    results = service.apply(rendered, out, write=True)
    summ["rendered"] = {r.engine: {"out": str(r.out), "files": len(rendered[r.engine]),
                                   "changed": len(r.plan.changed)} for r in results}
    summ.update(migrations_applied=applied, loaded_now=loaded, credentials_file=str(creds),
                database="DATABASE_URL" if env.settings.database_url else str(env.settings.state_dir / "pg"))
    emit(summ, as_json, lambda d: _human(d, env))


def _human(d: dict, env: Env) -> None:
    click.echo("dustel demo provider " + ("loaded" if d["loaded_now"] else "already loaded, nothing changed"))
    click.echo(f"database: {d['database']}")
    click.echo("")
    table(d["plans"], ["plan", "tenants", "accounts", "numbers"])
    click.echo("")
    table(d["tenants"], ["id", "name", "plan", "sip_domain", "accounts", "numbers"])
    click.echo("")
    click.echo(f"queues {d['queues']}, agents {d['agents']}, forwardings/group calls {d['diversions']}, "
               f"queue events {d['queue_events']} (a day of traffic, {d['queue_day']})")
    click.echo(f"SIP passwords (demo only): {d['credentials_file']} (mode 0600)")
    for engine, r in d["rendered"].items():
        click.echo(f"{engine} config: {r['files']} files in {r['out']} ({r['changed']} changed now)")
    sd = env.settings.state_dir
    click.echo("")
    click.echo("next, try:")
    click.echo(f"  .venv/bin/dustel --state-dir {sd} tenant show 3")
    click.echo(f"  .venv/bin/dustel --state-dir {sd} number list --tenant 3")
    click.echo(f"  .venv/bin/dustel --state-dir {sd} account add 1   # starter: up to 5 accounts, the 6th is refused")
    click.echo(f"  .venv/bin/dustel --state-dir {sd} rates list   # the demo rate table (rates import FILE.csv)")
    click.echo(f"  .venv/bin/dustel --state-dir {sd} forward show 000387100003")
    click.echo(f"  .venv/bin/dustel --state-dir {sd} render --diff   # after a change: what would be written")
    click.echo(f"  less {sd}/etc/asterisk/pjsip.conf {sd}/etc/freeswitch/dialplan/public.xml")
    click.echo(f"  .venv/bin/dustel --state-dir {sd} agi serve   # call-time policy, Asterisk (esl serve: FreeSWITCH)")
    day = dt.date.fromisoformat(d["queue_day"])
    click.echo(f"  .venv/bin/dustel --state-dir {sd} queue stats --tenant 3 --queue support --from {day} "
               f"--to {day + dt.timedelta(days=1)} --by hour   # the demo queue's day ({d['queue_events']} events;"
               " --by agent, --format csv-de | xlsx --out F)")
    month = dt.date.today().replace(day=1)
    click.echo(f"  .venv/bin/dustel --state-dir {sd} invoice preview --month {month:%Y-%m}"
               "   # this month's invoices so far, as drafts (nothing issued)")
    click.echo(f"  .venv/bin/dustel --state-dir {sd} ledger 1   # a tenant's money movements")
    click.echo(f"  DUSTEL_PORTAL_COOKIE_SECURE=0 .venv/bin/dustel --state-dir {sd} portal serve   # the Kundencenter "
               f"on http://127.0.0.1:{env.settings.portal_port}/ (logins in {d['credentials_file']})")
