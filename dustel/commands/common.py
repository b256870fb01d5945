"""What every command shares: the environment (settings, database), one
transaction per command with errors translated to "field: rule", and
output as text or JSON."""
from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import re
import sys
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

import click
import psycopg

from .. import db
from ..billing import money
from ..config import Settings, load_settings
from ..errors import db_errors
from ..provisioning import validate


class Env:
    def __init__(self, state_dir: str | None, config: str | None) -> None:
        self._state_dir = state_dir
        self._config = config

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self._state_dir, self._config)

    def reload_settings(self) -> Settings:
        self.__dict__.pop("settings", None)
        return self.settings

    @cached_property
    def url(self) -> str:
        """The database; never a new one (db.database_url)."""
        return db.database_url(self.settings)

    def create_database(self) -> str:
        """The database, made when there is none (`demo`, `db init` only)."""
        url = db.database_url(self.settings, create=True)
        self.__dict__["url"] = url
        return url

    @contextlib.contextmanager
    def tx(self) -> Iterator[psycopg.Connection]:
        """One transaction: all of the command's writes or none."""
        with db_errors(), db.transaction(self.url) as conn:
            yield conn


pass_env = click.make_pass_decorator(Env)


class AsciiInt(click.ParamType):
    """A whole number in ASCII digits.  click's INT uses int(), which also
    takes '١٢٣' or '1_000' — not what an operator typed on purpose."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not re.fullmatch(r"-?[0-9]{1,12}", text):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        return int(text)


INT = AsciiInt()
# a command with an amount argument: '-5' reaches the amount's own rule
# ("amount: must not be negative") instead of click's "No such option '-5'"
AMOUNT_ARGUMENT = {"ignore_unknown_options": True}
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
# the one convention of the lists: `--tenant T` (issue 31); a command that
# acts on one tenant's thing takes TENANT_ID as its first argument instead
tenant_filter = click.option("--tenant", "tenant_id", type=INT, help="Only this tenant's (default: every tenant's).")
tenant_required = click.option("--tenant", "tenant_id", type=INT, required=True, help="The tenant.")


def _default(o: Any) -> Any:
    if isinstance(o, dt.datetime | dt.date):
        return o.isoformat()
    if isinstance(o, decimal.Decimal):
        return str(o)
    return str(o)


def emit(data: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    if as_json or human is None:
        click.echo(json.dumps(data, default=_default, ensure_ascii=False, indent=None if as_json else 2,
                              sort_keys=True))
    else:
        human(data)


HUMAN_ZONE = "Europe/Berlin"        # where times of several tenants are shown (the billing time zone)


def cell(column: str, value: Any, zone: str = HUMAN_ZONE) -> str:
    """One value as a person reads it: money (a ``*_cents`` column) as
    ``1.234,56 €``, a moment in ``zone`` to the second with its zone's
    abbreviation; JSON keeps cents and ISO times."""
    if value is None:
        return ""
    if column.endswith("_cents") and isinstance(value, int):
        return euro(value)
    if isinstance(value, dt.datetime):
        local = value.astimezone(ZoneInfo(zone)) if value.tzinfo else value
        return local.strftime("%Y-%m-%d %H:%M:%S %Z").rstrip()
    return validate.shown(str(value))          # a row stays one line, whatever a text held before the edge rule


def table(rows: list[dict[str, Any]], columns: list[str], zone: str = HUMAN_ZONE) -> None:
    """A plain table; ``*_cents`` columns show money (the header without
    ``_cents``), times show in ``zone`` (a tenant's own for its rows)."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[cell(c, r.get(c), zone) for c in columns] for r in rows]
    heads = [c.removesuffix("_cents") for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def euro(cents: int | None) -> str:
    """The one money format people read: ``1.234,56 €`` (``-`` for none);
    the rule is ``money.eur``'s.  JSON carries cents."""
    return "-" if cents is None else f"{money.eur(cents)} €"


def read_password(from_stdin: bool, what: str = "SIP password") -> str:
    """Passwords and PINs come from stdin (one line each, in the order the
    command's help names them) or a hidden prompt with confirmation, never
    from argv (which ends up in shell history and process lists)."""
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    return click.prompt(what, hide_input=True, confirmation_prompt=True)
