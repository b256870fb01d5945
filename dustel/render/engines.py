"""One generator per output file, per engine (Wazo confgend style): each
takes the gathered Provider and returns the file's text.  Templates are
dumb; everything computed here."""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import cache
from pathlib import PurePosixPath
from typing import Any

import jinja2
import markupsafe

from ..callpath import variables as V
from ..config import star_codes
from . import escape
from .context import Provider, Tenant, queue_name

FS_STRATEGIES = {"ring_all": "ring-all", "longest_idle": "longest-idle-agent", "round_robin": "round-robin",
                 "fewest_calls": "agent-with-fewest-calls", "random": "random"}
AST_STRATEGIES = {"ring_all": "ringall", "longest_idle": "leastrecent", "round_robin": "rrmemory",
                  "fewest_calls": "fewestcalls", "random": "random"}
EMERGENCY_DIALS = ("110", "112", "0110", "0112", "00110", "00112", "+49110", "+49112", "0049110", "0049112")


def _fs_finalize(value: Any) -> Any:
    """Every value printed into a FreeSWITCH file: XML-escaped, then made
    invisible to the config preprocessor (``escape.fs_preprocessor_safe``)."""
    return markupsafe.Markup(escape.fs_preprocessor_safe(str(markupsafe.escape(value))))


@cache
def _env(engine: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dustel", f"dialplan_templates/{engine}"),
        autoescape=(engine == "freeswitch"), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        finalize=_fs_finalize if engine == "freeswitch" else None)
    env.filters.update(ast=escape.ast, fs_text=escape.fs_text, fs_id=escape.fs_id)
    env.globals["v"] = V
    return env


def _render(engine: str, template: str, **ctx: Any) -> str:
    return _env(engine).get_template(template).render(**ctx)


def _engine_target(t: Tenant, n: dict[str, Any]) -> str:
    return queue_name(t.id, n["target"]) if n["kind"] == "queue" else n["target"]


def _numbers(p: Provider) -> list[dict[str, Any]]:
    out = []
    for t in p.tenants:
        for n in t.numbers:
            out.append({**n, "tenant_id": t.id, "domain": t.domain, "engine_target": _engine_target(t, n),
                        "pattern": ("_" + n["e164"] + n["ddi_pattern"]) if n["block_size"] else n["e164"]})
    return sorted(out, key=lambda n: n["e164"])


MOH_RATES = (8000, 16000, 32000, 48000)      # = provisioning.media.RATES: every rate a class is converted to


def _moh_classes(p: Provider) -> list[str]:
    return ["default", *sorted({c for t in p.tenants for c in t.moh_classes})]


def _agent_contact(t: Tenant, g: dict[str, Any]) -> str:
    if g["contact_user"]:
        return f"{{call_timeout=15}}user/{g['contact_user']}@{t.domain}"
    if g["contact_e164"]:
        # through the dialplan context that hands the leg to the policy (an outbound call of the tenant)
        return f"{{call_timeout=20}}loopback/{t.id}-{g['contact_e164']}/dustel-agent-out"
    return "error/user_not_registered"


def _agent_wrapup(p: Provider) -> dict[int, int]:
    """An agent's wrap-up time: the longest of its queues' (FreeSWITCH keeps it per agent)."""
    out: dict[int, int] = {}
    for t in p.tenants:
        for q in t.queues:
            for m in q["members"]:
                out[m["agent_id"]] = max(out.get(m["agent_id"], 0), q["wrapup_seconds"])
    for t in p.tenants:
        for g in t.agents:
            out.setdefault(g["id"], 10)
    return out


# ---------------------------------------------------------------- FreeSWITCH

def fs_directory(p: Provider, t: Tenant) -> str:
    # SDES keys travel in the SDP: SRTP only where the signalling can be TLS (F-03)
    return _render("freeswitch", "directory.xml.j2", t=t, tls=bool(p.settings.tls_cert_file))


def fs_tenant_dialplan(p: Provider, t: Tenant) -> str:
    return _render("freeswitch", "tenant_dialplan.xml.j2", t=t, outbound=_outbound(p), star_regex=_star_regex(p))


def _star_regex(p: Provider) -> str:
    """The provider's star codes as one FreeSWITCH condition: the code, then
    ``*queue*pin`` parts, a closing ``#`` dropped."""
    alts = "|".join(re.escape(c) for c in sorted(star_codes(p.settings), key=len, reverse=True))
    return f"^({alts})((?:\\*[0-9]*)*)#?$"


def _outbound(p: Provider) -> str:
    return f"{p.settings.esl_outbound_host}:{p.settings.esl_outbound_port}"


def freeswitch_files(p: Provider) -> dict[str, str]:
    s = p.settings
    files = {
        "autoload_configs/event_socket.conf.xml": _render("freeswitch", "event_socket.conf.xml.j2", s=s),
        "autoload_configs/acl.conf.xml": _render("freeswitch", "acl.conf.xml.j2", esl_acl=cidrs(s.esl_acl),
                                                 carrier_match=carrier_match(s)),
        "autoload_configs/callcenter.conf.xml": _render(
            "freeswitch", "callcenter.conf.xml.j2", tenants=p.tenants, strategies=FS_STRATEGIES,
            agent_contact=_agent_contact, wrapup=_agent_wrapup(p)),
        "autoload_configs/local_stream.conf.xml": _render(
            "freeswitch", "local_stream.conf.xml.j2", classes=_moh_classes(p), moh_dir=s.moh_dir, rates=MOH_RATES),
        "sip_profiles/internal.xml": _render("freeswitch", "internal.xml.j2", s=s, tls_dir=fs_tls_dir(s)),
        "sip_profiles/carrier.xml": _render("freeswitch", "carrier.xml.j2", s=s),
        "dialplan/public.xml": _render("freeswitch", "public.xml.j2", numbers=_numbers(p), outbound=_outbound(p)),
    }
    for t in p.tenants:
        files[f"directory/{t.domain}.xml"] = fs_directory(p, t)
        files[f"dialplan/{t.context}.xml"] = fs_tenant_dialplan(p, t)
    return files


def fs_tls_dir(s: Any) -> str:
    """FreeSWITCH reads its certificate and key as ``agent.pem`` (and the CA
    as ``cafile.pem``) from one directory: the directory of ``tls_cert_file``,
    which must therefore be that ``agent.pem``."""
    if not s.tls_cert_file:
        return ""
    path = PurePosixPath(s.tls_cert_file)
    if path.name != "agent.pem" or not path.is_absolute():
        raise escape.UnsafeValue("tls_cert_file", "FreeSWITCH reads the certificate and key as <dir>/agent.pem: "
                                                  "name the absolute path of that agent.pem")
    return str(path.parent)


def _carrier_cidr(host: str) -> str:
    ip = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return f"{ip}/32" if "/" not in ip else ip


def cidrs(text: str) -> list[str]:
    """A comma-separated setting of addresses/networks, normalised (refused
    when one is no network: the render fails, the last good output stays)."""
    out = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise escape.UnsafeValue("render", f"{part[:40]!r} is not an IP address or network") from None
    return out


def carrier_match(s: Any) -> list[str]:
    """Where the carrier's INVITEs come from: ``carrier_match``, else the
    address dustel sends to (``carrier_host``)."""
    return cidrs(s.carrier_match) or cidrs(_carrier_cidr(s.carrier_host))


# ---------------------------------------------------------------- Asterisk

def pjsip_conf(p: Provider) -> str:
    return _render("asterisk", "pjsip.conf.j2", s=p.settings, tenants=p.tenants,
                   carrier_match=carrier_match(p.settings))


def extensions_conf(p: Provider) -> str:
    s = p.settings
    return _render("asterisk", "extensions.conf.j2", s=s, tenants=p.tenants, numbers=_numbers(p),
                   emergency=EMERGENCY_DIALS, agi=f"agi://{s.agi_host}:{s.agi_port}",
                   star_codes=sorted(star_codes(s)))


def queues_conf(p: Provider) -> str:
    return _render("asterisk", "queues.conf.j2", tenants=p.tenants, strategies=AST_STRATEGIES)


def musiconhold_conf(p: Provider) -> str:
    return _render("asterisk", "musiconhold.conf.j2", classes=_moh_classes(p), moh_dir=p.settings.moh_dir)


def manager_conf(p: Provider) -> str:
    # Asterisk's permit= takes <address>/<netmask>
    permit = [f"{n.network_address}/{n.netmask}" for n in map(ipaddress.ip_network, cidrs(p.settings.ami_acl))]
    return _render("asterisk", "manager.conf.j2", s=p.settings, permit=permit)


ASTERISK: dict[str, Callable[[Provider], str]] = {
    "pjsip.conf": pjsip_conf,
    "extensions.conf": extensions_conf,
    "queues.conf": queues_conf,
    "musiconhold.conf": musiconhold_conf,
    "manager.conf": manager_conf,
}


def asterisk_files(p: Provider) -> dict[str, str]:
    return {name: gen(p) for name, gen in ASTERISK.items()}


ENGINES: dict[str, Callable[[Provider], dict[str, str]]] = {
    "freeswitch": freeswitch_files,
    "asterisk": asterisk_files,
}

def reload_commands(engine: str, changed: list[str]) -> list[str]:
    """What to send the engine after these files changed: ESL api commands
    (FreeSWITCH) or AMI Reload modules (Asterisk), each once, in order."""
    out: list[str] = []

    def add(cmd: str) -> None:
        if cmd not in out:
            out.append(cmd)

    for rel in changed:
        if engine == "freeswitch":
            if rel.endswith("acl.conf.xml"):
                add("reloadacl")
            add("reloadxml")
            if rel.startswith("sip_profiles/"):
                add(f"sofia profile {rel.split('/')[1].removesuffix('.xml')} rescan")
            if rel.endswith("callcenter.conf.xml"):
                add("reload mod_callcenter")
            if rel.endswith("local_stream.conf.xml"):
                add("reload mod_local_stream")
        else:
            add({"pjsip.conf": "res_pjsip.so", "extensions.conf": "pbx_config.so", "queues.conf": "app_queue.so",
                 "musiconhold.conf": "res_musiconhold.so", "manager.conf": "manager"}[rel])
    return out
