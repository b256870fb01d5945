"""Render: gather once, generate every file in memory, then write.  A
generator that fails (e.g. an unsafe identifier) aborts before anything is
written, so the last good output stays."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ..config import Settings, require_secrets
from . import context, engines, scope, writer

# the secret each engine's rendered files carry (event_socket.conf, manager.conf)
SECRET_OF = {"freeswitch": "esl_password", "asterisk": "ami_secret", "kamailio": "kamailio_db_url"}


@dataclass
class EngineResult:
    engine: str
    out: Path
    plan: writer.Plan
    reload: list[str]                                  # to every node of the engine
    killgw: dict[str, list[str]] = field(default_factory=dict)   # profile -> changed gateways (FreeSWITCH)


def render_files(conn: psycopg.Connection, settings: Settings, engine_names: list[str],
                 tenant_id: int | None = None) -> dict[str, dict[str, str]]:
    require_secrets(settings, *[SECRET_OF[n] for n in engine_names])
    provider = context.gather(conn, settings, tenant_id)
    return {name: engines.ENGINES[name](provider) for name in engine_names}


def apply(rendered: dict[str, dict[str, str]], out: Path, *, write: bool, owner: str = "",
          group: str = "") -> list[EngineResult]:
    results = []
    for name, files in rendered.items():
        target = out / name
        # read before the write: a changed gateway needs more than a rescan
        profiles = {rel: _text(target / rel) for rel in files if rel.startswith("sip_profiles/")} \
            if name == "freeswitch" else {}
        pl = writer.write(target, files, owner, group) if write else writer.plan(target, files)
        killgw = {rel.split("/")[1].removesuffix(".xml"): gws for rel in pl.changed
                  if rel in profiles and (gws := engines.changed_gateways(profiles[rel], files[rel]))}
        results.append(EngineResult(name, target, pl, engines.reload_commands(name, pl.changed + pl.removed, killgw),
                                    killgw))
    return results


def tenant_diff(target: Path, files: dict[str, str], tenant_id: int, domains: dict[str, int]) -> str:
    """What writing ``files`` (the whole tree) into ``target`` would change
    for one tenant: the hunks of each changed or removed file that touch it
    (render/scope.py); a tenant's own file (its dialplan, its directory)
    whole."""
    pl = writer.plan(target, files)
    chunks = []
    for rel in pl.changed + pl.removed:
        old = (target / rel).read_text().splitlines(keepends=True) if (target / rel).exists() else []
        new = files[rel].splitlines(keepends=True) if rel in files else []
        chunks.append(scope.tenant_diff(rel, old, new, tenant_id, domains, _owner(rel, domains)))
    return "".join(chunks)


def _owner(rel: str, domains: dict[str, int]) -> int | None:
    """The tenant a file belongs to whole (FreeSWITCH's per-tenant files), or None."""
    if m := re.fullmatch(r"dialplan/t(\d+)\.xml", rel):
        return int(m.group(1))
    if m := re.fullmatch(r"directory/(.+)\.xml", rel):
        return domains.get(m.group(1), -1)
    return None


def _text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None
