"""The ``dustel`` command: a thin click layer over the domain modules.

Every command runs in one database transaction; bad input ends with one
line on stderr naming the field and the rule, exit status 1 (2 for usage
errors), and nothing written."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from .commands import (
    account_cmd,
    billing_cmd,
    controller_cmd,
    db_cmd,
    demo_cmd,
    fax_cmd,
    feature_cmd,
    health_cmd,
    invoice_cmd,
    media_cmd,
    number_cmd,
    portal_cmd,
    render_cmd,
    target_cmd,
    tenant_cmd,
)
from .commands.common import Env
from .errors import DustelError
from .provisioning import validate


def _fail(field: str, rule: str, code: int, as_json: bool) -> None:
    """One line on stderr: ``error: <field>: <rule>``, or with --json
    ``{"error": {"field": …, "rule": …}}`` for the script that reads it."""
    rule = " ".join(rule.split())  # one line, whatever the message held
    if as_json:
        click.echo(json.dumps({"error": {"field": field, "rule": rule}}, ensure_ascii=False), err=True)
    else:
        click.echo(f"error: {field}: {rule}" if field else f"error: {rule}", err=True)
    sys.exit(code)


def _usage_field(exc: click.ClickException) -> str:
    """The parameter a click error is about ('usage' when it names none)."""
    param = getattr(exc, "param", None)
    if param is not None and param.name:
        return str(param.name)
    name = getattr(exc, "option_name", None)
    return str(name).lstrip("-") if name else "usage"


class DustelGroup(click.Group):
    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv
        try:
            rv = super().main(args, prog_name or "dustel", complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if as_json:
                _fail(_usage_field(exc), exc.format_message(), exc.exit_code, True)
            _fail("", exc.format_message(), exc.exit_code, False)
        except DustelError as exc:
            _fail(exc.field, exc.rule, 1, as_json)
        except click.Abort:
            _fail("", "aborted", 1, as_json)
        except UnicodeError as exc:
            _fail("input", f"not valid text ({exc.reason})", 2, as_json)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


@click.group(cls=DustelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", help="Where the embedded PostgreSQL, rendered configs and demo files live.  "
              "Without it: $DUSTEL_STATE_DIR, the state_dir of the config file (--config, $DUSTEL_CONFIG, "
              "/etc/dustel/dustel.toml), then ./.dustel if it exists.")
@click.option("--config", envvar="DUSTEL_CONFIG", help="Settings file (TOML); default <state-dir>/dustel.toml.")
@click.version_option(package_name="dustel")
@click.pass_context
def cli(ctx: click.Context, state_dir: str, config: str | None) -> None:
    """dustel: control plane of the DUStel VoIP platform.

    DATABASE_URL selects PostgreSQL; without it an embedded server runs in
    <state-dir>/pg (made only by `demo` and `db init`).  Add --json to
    list/show commands for scripts."""
    ctx.obj = Env(state_dir, config)


for command in (
    db_cmd.group, tenant_cmd.group, account_cmd.group, number_cmd.group,
    feature_cmd.forward, feature_cmd.group, feature_cmd.limits, feature_cmd.zones,
    feature_cmd.blacklist, feature_cmd.whitelist, feature_cmd.speeddial,
    target_cmd.faxbox, target_cmd.ringgroup, target_cmd.queue, target_cmd.agent, media_cmd.moh, media_cmd.logo,
    fax_cmd.fax, fax_cmd.mailgw,
    billing_cmd.rates, billing_cmd.credit, billing_cmd.billing, billing_cmd.agi, billing_cmd.esl,
    billing_cmd.xmlcurl,
    controller_cmd.controller, controller_cmd.call,
    render_cmd.render, demo_cmd.demo, health_cmd.health,
    invoice_cmd.invoice, invoice_cmd.credit_note, invoice_cmd.payment, invoice_cmd.mandate,
    invoice_cmd.sepa_group, invoice_cmd.ledger, invoice_cmd.scheduler, portal_cmd.portal,
):
    cli.add_command(command)
billing_cmd.billing.add_command(invoice_cmd.billing_profile)
number_cmd.group.add_command(invoice_cmd.number_cancel)


class EdgeContext(click.Context):
    """Every command's context: before its callback runs, each text it was
    given on the command line meets the one edge rule (validate.edge),
    named by its parameter — so no field can forget it."""

    def invoke(self, callback: Any, /, *args: Any, **kwargs: Any) -> Any:
        if isinstance(callback, click.Command):
            return super().invoke(callback, *args, **kwargs)
        for name, value in kwargs.items():
            for item in value if isinstance(value, tuple | list) else (value,):
                if isinstance(item, str):
                    validate.edge(name, item)
        return super().invoke(callback, *args, **kwargs)


def _edge_everywhere(cmd: click.Command) -> None:
    cmd.context_class = EdgeContext
    for sub in getattr(cmd, "commands", {}).values():
        _edge_everywhere(sub)


_edge_everywhere(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
