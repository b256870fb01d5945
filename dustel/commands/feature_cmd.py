"""forward, group, limits, zones, blacklist/whitelist, speeddial."""
from __future__ import annotations

import click

from ..provisioning import features, schedule
from .common import INT, Env, emit, euro, json_option, pass_env, table, tenant_required


def _show_diversion(d: dict) -> None:
    if not d["kind"]:
        click.echo(f"{d['account']}: no forwarding or group call")
        return
    what = f"forward {d['mode'].replace('_', '-')}" if d["kind"] == "forward" else "group call"
    timeout = f" after {d['timeout_seconds']} s" if d["timeout_seconds"] and d["kind"] == "forward" else ""
    click.echo(f"{d['account']}: {what}{timeout} -> {', '.join(d['targets'])}")
    for line in d["schedule"]:
        click.echo(f"  active {line}")


def _schedule_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--holiday-date", "holiday_dates", multiple=True,
                     help="Extra holiday YYYY-MM-DD; repeatable.")(f)
    f = click.option("--holidays", "holiday_region", type=click.Choice(schedule.STATES, case_sensitive=False),
                     help="Treat this German state's public holidays as 'hol'.")(f)
    f = click.option("--when", multiple=True, metavar="'DAYS HH:MM-HH:MM'",
                     help="business flex: active only then, e.g. 'mon-fri 18:00-24:00', 'hol 00:00-24:00'.")(f)
    return f


def _diversion_group(kind: str, name: str, help_text: str) -> click.Group:
    grp = click.Group(name, help=help_text)

    @grp.command("show")
    @click.argument("username")
    @json_option
    @pass_env
    def show(env: Env, as_json: bool, username: str) -> None:
        """Show the account's forwarding / group call."""
        with env.tx() as conn:
            out = features.show_diversion(conn, username)
        emit(out, as_json, _show_diversion)

    @grp.command("clear")
    @click.argument("username")
    @pass_env
    def clear(env: Env, username: str) -> None:
        """Remove it."""
        with env.tx() as conn:
            features.clear_diversion(conn, username, kind)
        click.echo(f"{name} of {username} cleared")

    return grp


forward = _diversion_group("forward", "forward", "Call forwarding per SIP account (F-05).")
group = _diversion_group("group", "group", "Group call: the account rings together with its targets (F-05).")


@forward.command("set")
@click.argument("username")
@click.option("--mode", required=True, type=click.Choice(["immediate", "no-answer", "unregistered"]))
@click.option("--timeout", type=INT, help="no-answer: seconds before forwarding (default 20).")
@click.option("--to", "targets", multiple=True, required=True,
              help="SIP username (internal) or E.164 number (external); up to 10, at most 2 external.")
@_schedule_options
@json_option
@pass_env
def forward_set(env: Env, as_json: bool, username: str, mode: str, timeout: int | None,
                targets: tuple[str, ...], when: tuple[str, ...], holiday_region: str | None,
                holiday_dates: tuple[str, ...]) -> None:
    """Set (replace) the account's forwarding."""
    with env.tx() as conn:
        out = features.set_diversion(conn, username, kind="forward", targets=list(targets),
                                     mode=mode.replace("-", "_"), timeout=timeout, when=list(when),
                                     holiday_region=holiday_region, holiday_dates=list(holiday_dates))
    emit(out, as_json, _show_diversion)


@group.command("set")
@click.argument("username")
@click.option("--to", "targets", multiple=True, required=True,
              help="SIP username or E.164 number; up to 10, at most 2 external.")
@click.option("--ring-seconds", "timeout", type=INT, help="How long all ring (default 30).")
@_schedule_options
@json_option
@pass_env
def group_set(env: Env, as_json: bool, username: str, targets: tuple[str, ...], timeout: int | None,
              when: tuple[str, ...], holiday_region: str | None, holiday_dates: tuple[str, ...]) -> None:
    """Set (replace) the account's group call."""
    with env.tx() as conn:
        out = features.set_diversion(conn, username, kind="group", targets=list(targets), timeout=timeout,
                                     when=list(when), holiday_region=holiday_region,
                                     holiday_dates=list(holiday_dates))
    emit(out, as_json, _show_diversion)


# ---------------------------------------------------------------- limits
limits = click.Group("limits", help="Credit limit per month (tenant) and time limit per call (F-04).")


def _show_limits(d: dict) -> None:
    click.echo(f"credit limit/month {euro(d['monthly_credit_limit_cents'])}, max call {d['max_call_seconds']} s,"
               f" lines in/out {d['lines_in']}/{d['lines_out']}")
    for a in d["accounts"]:
        click.echo(f"  {a['username']}: max call {a['max_call_seconds']} s")


@limits.command("set")
@click.argument("tenant_id", type=INT)
@click.option("--credit-limit", help="Spending cap per billing month in EUR (e.g. 50 or 49.90); 'none' removes it.")
@click.option("--max-call-seconds", type=INT, help="Longest call; with --account only for that account.")
@click.option("--account", help="Apply --max-call-seconds to this account only.")
@json_option
@pass_env
def limits_set(env: Env, as_json: bool, tenant_id: int, credit_limit: str | None,
               max_call_seconds: int | None, account: str | None) -> None:
    """Set limits."""
    cents, remove = features.credit_limit_arg(credit_limit)
    with env.tx() as conn:
        out = features.set_limits(conn, tenant_id, credit_limit_cents=cents,
                                  max_call_seconds=max_call_seconds, account=account, remove_credit_limit=remove)
    emit(out, as_json, _show_limits)


@limits.command("show")
@click.argument("tenant_id", type=INT)
@json_option
@pass_env
def limits_show(env: Env, as_json: bool, tenant_id: int) -> None:
    """Show effective limits."""
    with env.tx() as conn:
        out = features.show_limits(conn, tenant_id)
    emit(out, as_json, _show_limits)


# ---------------------------------------------------------------- zones
zones = click.Group("zones", help="Destination release: which zones an account may call (F-04).")


@zones.command("set")
@click.argument("username")
@click.option("--preset", help="none, germany, germany_no_0137, europe_fixed, europe, world.")
@click.option("--allow", multiple=True, help="Release an extra zone (de_premium, de_service …); repeatable.")
@click.option("--clear-extra", is_flag=True, help="Withdraw all extra zones.")
@json_option
@pass_env
def zones_set(env: Env, as_json: bool, username: str, preset: str | None, allow: tuple[str, ...],
              clear_extra: bool) -> None:
    """Set the preset and extra zones."""
    extra = [] if clear_extra else (list(allow) if allow else None)
    with env.tx() as conn:
        out = features.set_zones(conn, username, preset=preset, allow=extra)
    emit(out, as_json, lambda d: click.echo(f"{d['account']}: {d['preset']} + {d['extra'] or '-'}"
                                            f" = {', '.join(d['zones']) or 'emergency only'}"))


@zones.command("show")
@click.argument("username")
@json_option
@pass_env
def zones_show(env: Env, as_json: bool, username: str) -> None:
    """Show released zones."""
    with env.tx() as conn:
        out = features.show_zones(conn, username)
    emit(out, as_json, lambda d: click.echo(f"{d['account']}: {d['preset']} + {d['extra'] or '-'}"
                                            f" = {', '.join(d['zones']) or 'emergency only'}"))


# ---------------------------------------------------------------- lists
def _screening_group(which: str) -> click.Group:
    grp = click.Group(f"{which}list", help=f"Inbound {which}list of an account: E.164 numbers, "
                      "prefixes ending in '*', or 'anonymous' (F-04).")

    @grp.command("add")
    @click.argument("username")
    @click.argument("pattern")
    @pass_env
    def add(env: Env, username: str, pattern: str) -> None:
        """Add a pattern."""
        with env.tx() as conn:
            features.list_add(conn, username, which, pattern)
        click.echo(f"added to the {which}list of {username}")

    @grp.command("remove")
    @click.argument("username")
    @click.argument("pattern")
    @pass_env
    def remove(env: Env, username: str, pattern: str) -> None:
        """Remove a pattern."""
        with env.tx() as conn:
            features.list_remove(conn, username, which, pattern)
        click.echo(f"removed from the {which}list of {username}")

    @grp.command("list")
    @click.argument("username")
    @json_option
    @pass_env
    def list_(env: Env, as_json: bool, username: str) -> None:
        """Show the list."""
        with env.tx() as conn:
            out = features.list_show(conn, username, which)
        emit(out, as_json, lambda r: click.echo("\n".join(r) if r else "(empty)"))

    return grp


blacklist = _screening_group("black")
whitelist = _screening_group("white")

# ---------------------------------------------------------------- speed dials
speeddial = click.Group("speeddial", help="Per-tenant short codes, dialed as **<code>.")


@speeddial.command("set")
@click.argument("tenant_id", type=INT)
@click.argument("code")
@click.argument("target")
@pass_env
def speeddial_set(env: Env, tenant_id: int, code: str, target: str) -> None:
    """Set code -> number or SIP username."""
    with env.tx() as conn:
        features.speed_dial_set(conn, tenant_id, code, target)
    click.echo(f"speed dial **{code} set")


@speeddial.command("remove")
@click.argument("tenant_id", type=INT)
@click.argument("code")
@pass_env
def speeddial_remove(env: Env, tenant_id: int, code: str) -> None:
    """Remove a speed dial."""
    with env.tx() as conn:
        features.speed_dial_remove(conn, tenant_id, code)
    click.echo(f"speed dial **{code} removed")


@speeddial.command("list")
@tenant_required
@json_option
@pass_env
def speeddial_list(env: Env, as_json: bool, tenant_id: int) -> None:
    """List speed dials."""
    with env.tx() as conn:
        rows = features.speed_dial_list(conn, tenant_id)
    emit(rows, as_json, lambda r: table(r, ["code", "target"]))
