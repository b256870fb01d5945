"""Render: gather once, generate every file in memory, then write.  A
generator that fails (e.g. an unsafe identifier) aborts before anything is
written, so the last good output stays."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ..config import Settings, require_secrets
from . import context, engines, writer

# the secret each engine's rendered files carry (event_socket.conf, manager.conf)
SECRET_OF = {"freeswitch": "esl_password", "asterisk": "ami_secret"}


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


def _text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None
