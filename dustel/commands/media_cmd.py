"""``dustel moh`` and ``dustel logo``: hold music classes and sound logos
of a tenant (F-07, business flex), converted by provisioning/media.py."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import DustelError
from ..provisioning import media
from .common import INT, Env, emit, json_option, pass_env, table, tenant_required


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DustelError("file", f"cannot read {path}: {exc.strerror}") from None


def _upload(env: Env, tenant_id: int, kind: str, cls: str, path: str, root: str) -> dict:
    s = env.settings
    return media.upload(env.tx, root, tenant_id, kind, cls, _read(path), max_bytes=s.media_max_bytes,
                        max_seconds=s.media_max_seconds)


def _remove(env: Env, tenant_id: int, kind: str, cls: str, root: str) -> list[str]:
    return [str(f) for f in media.drop(env.tx, root, tenant_id, kind, cls)]


moh = click.Group("moh", help="Hold music classes of a tenant (F-07, business flex).")


@moh.command("upload")
@click.argument("tenant_id", type=INT)
@click.argument("cls", metavar="CLASS")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@pass_env
def moh_upload(env: Env, as_json: bool, tenant_id: int, cls: str, file: str) -> None:
    """Add FILE (WAV, MP3, FLAC, OGG) to hold music class CLASS; then `dustel render --reload`."""
    row = _upload(env, tenant_id, "moh", cls, file, env.settings.moh_dir)
    emit(row, as_json, lambda d: click.echo(f"hold music {d['class']}: {d['name']} ({d['seconds']} s) added"))


@moh.command("list")
@tenant_required
@json_option
@pass_env
def moh_list(env: Env, as_json: bool, tenant_id: int) -> None:
    """The tenant's hold music files ('default' is everyone's and not listed)."""
    with env.tx() as conn:
        rows = media.listing(conn, tenant_id, "moh")
    emit(rows, as_json, lambda d: table(d, ["class", "name", "seconds", "source_bytes", "uploaded_at"]))


@moh.command("remove")
@click.argument("tenant_id", type=INT)
@click.argument("cls", metavar="CLASS")
@json_option
@pass_env
def moh_remove(env: Env, as_json: bool, tenant_id: int, cls: str) -> None:
    """Remove a hold music class and its files (refused while a queue plays it)."""
    files = _remove(env, tenant_id, "moh", cls, env.settings.moh_dir)
    emit({"removed": files}, as_json, lambda d: click.echo(f"hold music {cls} removed ({len(files)} files)"))


logo = click.Group("logo", help="Sound logos played before a call is put through (F-07, business flex).")


def _logo_class(number: str | None) -> str:
    return media.logo_class(number)


@logo.command("upload")
@click.argument("tenant_id", type=INT)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--number", default=None, help="Only for calls to this number (+E.164); default every number.")
@json_option
@pass_env
def logo_upload(env: Env, as_json: bool, tenant_id: int, file: str, number: str | None) -> None:
    """Set the sound logo (replaces the one before)."""
    s = env.settings
    row = media.set_logo(env.tx, s.logo_dir, tenant_id, _logo_class(number), _read(file),
                         max_bytes=s.media_max_bytes, max_seconds=s.media_max_seconds)
    emit(row, as_json, lambda d: click.echo(f"sound logo for {number or 'every number'}: {d['seconds']} s"))


@logo.command("remove")
@click.argument("tenant_id", type=INT)
@click.option("--number", default=None, help="The number's own logo; default the tenant's.")
@json_option
@pass_env
def logo_remove(env: Env, as_json: bool, tenant_id: int, number: str | None) -> None:
    files = _remove(env, tenant_id, "logo", _logo_class(number), env.settings.logo_dir)
    emit({"removed": files}, as_json, lambda d: click.echo("sound logo removed"))
