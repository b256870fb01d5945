"""One generator per output file, per engine (Wazo confgend style): each
takes the gathered Provider and returns the file's text.  Templates are
dumb; everything computed here."""
from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import PurePosixPath
from typing import Any

import jinja2
import markupsafe

from ..callpath import policy
from ..callpath import variables as V
from ..config import EngineNode, Settings, fs_decision, fs_nodes, node_sip, session_caps, star_codes
from ..errors import DustelError
from . import escape
from .context import Provider, Tenant, fs_number_actions, fs_number_pattern, queue_name

FS_STRATEGIES = {"ring_all": "ring-all", "longest_idle": "longest-idle-agent", "round_robin": "round-robin",
                 "fewest_calls": "agent-with-fewest-calls", "random": "random"}
AST_STRATEGIES = {"ring_all": "ringall", "longest_idle": "leastrecent", "round_robin": "rrmemory",
                  "fewest_calls": "fewestcalls", "random": "random"}
EMERGENCY_DIALS = ("110", "112", "0110", "0112", "00110", "00112", "+49110", "+49112", "0049110", "0049112")


def _fs_finalize(value: Any) -> Any:
    """Every value printed into a FreeSWITCH file: XML-escaped, then made
    invisible to the config preprocessor (``escape.fs_preprocessor_safe``)."""
    return markupsafe.Markup(escape.fs_xml(value))


@cache
def _env(engine: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dustel", f"dialplan_templates/{engine}"),
        autoescape=(engine == "freeswitch"), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        finalize=_fs_finalize if engine == "freeswitch" else None)
    env.filters.update(ast=escape.ast, fs_text=escape.fs_text, fs_id=escape.fs_id, kam=escape.kam)
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
                        "pattern": ("_" + n["e164"] + n["ddi_pattern"]) if n["block_size"] else n["e164"],
                        "fs_pattern": fs_number_pattern(n), "actions": fs_number_actions(n, "$1")})
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

# Media settings of both sofia profiles (README, Rendering: every param of vanilla's internal /
# external profiles, rendered or dropped and why).
FS_CODEC_PREFS = "OPUS,G722,PCMA,PCMU"
FS_PROFILE_MEDIA = (
    # a timer paces every RTP read: without one a channel whose far end sends nothing (hold, silence
    # suppression, a fax between pages) waits up to 5 s per read (switch_rtp.c "Not using a timer") —
    # a BYE answered 5 s late, a 3 s call held 13 s (issue 32.1)
    ("rtp-timer-name", "soft"),
    # the A leg's codec is chosen when the call is answered or bridged, not on the INVITE: the bridged
    # leg then offers every codec the caller offered (ep_codec_string), not the one codec picked early
    # (switch_core_session_outgoing_channel: originator_codec)
    ("inbound-late-negotiation", "true"),
    ("inbound-codec-prefs", FS_CODEC_PREFS),
    ("outbound-codec-prefs", FS_CODEC_PREFS),
)
# profile -> the gateways its template renders (the carrier leg of every outbound call: sofia/gateway/carrier)
FS_GATEWAYS = {"carrier": ("carrier",)}
# global channel defaults (switch.conf <variables>: switch_core.c sets them at start), in milliseconds
FS_GLOBALS = (("media_timeout", 300000), ("media_hold_timeout", 1800000))
# vanilla switch.conf (conf/vanilla/autoload_configs/switch.conf.xml), the caps apart
FS_KEYBINDINGS = (
    ("1", "help"), ("2", "status"), ("3", "show channels"), ("4", "show calls"), ("5", "sofia status"),
    ("6", "reloadxml"), ("7", "console loglevel 0"), ("8", "console loglevel 7"),
    ("9", "sofia status profile internal"), ("10", "sofia profile internal siptrace on"),
    ("11", "sofia profile internal siptrace off"), ("12", "version"))
FS_CORE_SETTINGS = (
    ("colorize-console", "true"), ("dialplan-timestamps", "false"), ("max-db-handles", "50"),
    ("db-handle-timeout", "10"), ("loglevel", "debug"), ("mailer-app", "sendmail"), ("mailer-app-args", "-t"),
    ("dump-cores", "yes"))


def socket_fallback() -> dict[str, str]:
    """What the dialplan does when the policy server cannot be reached or
    never takes the call (socket.xml.j2): refuse as ``internal_error`` —
    its SIP code with ``respond`` (a SIP channel), its Q.850 cause with
    ``hangup`` (a loopback leg, which has no SIP response to send)."""
    reason = "internal_error"
    sip_code, q850 = policy.REFUSALS[reason]
    return {"reason": reason, "sip_code": str(sip_code), "cause": policy.CAUSES[q850],
            "on_answer": f"execute_on_answer_dustel_socket=set {V.SOCKET_RESUME}=false"}


def node_dir(node: EngineNode) -> str:
    """The directory of a node's own files: nodes/<name>/ (each node's
    freeswitch.xml includes only its own: the Ansible role's template)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", node.name):
        raise escape.UnsafeValue(f"node {node.name[:40]!r}.name", "must be letters, digits, '.', '_' or '-' "
                                                                  "(it names the node's directory)")
    return f"nodes/{node.name}"


def switch_conf(s: Settings, node: EngineNode) -> str:
    max_sessions, sps = session_caps(s, node)
    settings = (*FS_CORE_SETTINGS[:4], ("max-sessions", str(max_sessions)), ("sessions-per-second", str(sps)),
                *FS_CORE_SETTINGS[4:])
    return _render("freeswitch", "switch.conf.xml.j2", keybindings=FS_KEYBINDINGS, settings=settings,
                   globals=FS_GLOBALS)


def fs_caps_commands(s: Settings, node: EngineNode) -> list[str]:
    """switch.conf is read at start only: ``fsctl`` sets a running node's
    caps (mod_commands.c ctl_function; SCSC_MAX_SESSIONS, SCSC_SPS)."""
    max_sessions, sps = session_caps(s, node)
    return [f"fsctl max_sessions {max_sessions}", f"fsctl sps {sps}"]


EMERGENCY_FILE = "emergency-dialplan.xml"     # the tree's root: no glob of freeswitch.xml includes it


def fs_fetch(s: Settings) -> dict[str, str] | None:
    """With ``fs_decision = fetch``: mod_xml_curl's binding (the fetch
    server's URL, the timeout) and the internal profile's dialplans —
    the emergency file, parsed alone (``XML:<file>``: mod_dialplan_xml
    consults no binding for it), then the fetched XML dialplan.  None:
    ``socket``."""
    if fs_decision(s) != "fetch":
        return None
    host = f"[{s.xmlcurl_host}]" if ":" in s.xmlcurl_host else s.xmlcurl_host
    return {"url": f"http://{host}:{s.xmlcurl_port}{V.FETCH_PATH}", "timeout": str(s.xmlcurl_timeout),
            "dialplan": f"XML:{s.fs_dustel_dir.rstrip('/')}/{EMERGENCY_FILE},XML"}


def fs_directory(p: Provider, t: Tenant) -> str:
    # SDES keys travel in the SDP: SRTP only where the signalling can be TLS (F-03) -- never behind the
    # edge, whose hop to the phone is not TLS
    edge = _edge(p.settings)
    return _render("freeswitch", "directory.xml.j2", t=t, tls=bool(p.settings.tls_cert_file) and not edge, edge=edge)


def fs_tenant_dialplan(p: Provider, t: Tenant) -> str:
    return _render("freeswitch", "tenant_dialplan.xml.j2", t=t, outbound=_outbound(p), star_regex=_star_regex(p),
                   fallback=socket_fallback())


def _star_regex(p: Provider) -> str:
    """The provider's star codes as one FreeSWITCH condition: the code, then
    ``*queue*pin`` parts, a closing ``#`` dropped."""
    alts = "|".join(re.escape(c) for c in sorted(star_codes(p.settings), key=len, reverse=True))
    return f"^({alts})((?:\\*[0-9]*)*)#?$"


def _outbound(p: Provider) -> str:
    """The ``socket`` app's hosts: every policy server in order, ``|``-joined
    (mod_event_socket.c socket_function tries each until one connects;
    FreeSWITCH >= 1.10, FS-7603)."""
    return "|".join(esl_outbound_servers(p.settings))


def esl_outbound_servers(s: Settings) -> list[str]:
    """The outbound Event Socket's policy servers, in the order FreeSWITCH
    tries them (``esl_outbound_servers``, else ``esl_outbound_host``:``esl_outbound_port``).
    An IPv6 address loses its brackets: the app splits the port off at the
    last ``:``."""
    host = f"[{s.esl_outbound_host}]" if ":" in s.esl_outbound_host else s.esl_outbound_host
    servers = _servers("esl_outbound_servers", s.esl_outbound_servers, f"{host}:{s.esl_outbound_port}")
    return [x.replace("[", "").replace("]", "") for x in servers]


def _servers(field: str, text: str, default: str) -> list[str]:
    """A comma-separated list of ``host:port`` (a rendered file's data, so
    refused unless it is exactly that)."""
    servers = [x.strip() for x in text.split(",") if x.strip()] or [default]
    for x in servers:
        if not re.fullmatch(r"[A-Za-z0-9.-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}", x):
            raise escape.UnsafeValue(field, f"{x[:40]!r} is not host:port")
    return servers


def freeswitch_files(p: Provider) -> dict[str, str]:
    s = p.settings
    fetch = fs_fetch(s)
    edge = _edge(s)         # behind the SIP edge (F-14): SIP from it only, phones reached through it
    files = {
        "autoload_configs/event_socket.conf.xml": _render("freeswitch", "event_socket.conf.xml.j2", s=s),
        "autoload_configs/xml_curl.conf.xml": _render("freeswitch", "xml_curl.conf.xml.j2", binding=fetch),
        "autoload_configs/acl.conf.xml": _render("freeswitch", "acl.conf.xml.j2", esl_acl=cidrs(s.esl_acl),
                                                 carrier_match=carrier_match(s), edge=edge),
        "autoload_configs/callcenter.conf.xml": _render(
            "freeswitch", "callcenter.conf.xml.j2", tenants=p.tenants, strategies=FS_STRATEGIES,
            agent_contact=_agent_contact, wrapup=_agent_wrapup(p)),
        "autoload_configs/local_stream.conf.xml": _render(
            "freeswitch", "local_stream.conf.xml.j2", classes=_moh_classes(p), moh_dir=s.moh_dir, rates=MOH_RATES),
        "sip_profiles/internal.xml": _render("freeswitch", "internal.xml.j2", s=s, tls_dir=fs_tls_dir(s),
                                             media=FS_PROFILE_MEDIA, dialplan=fetch and fetch["dialplan"], edge=edge),
        "sip_profiles/carrier.xml": _render("freeswitch", "carrier.xml.j2", s=s, media=FS_PROFILE_MEDIA,
                                            gateway=FS_GATEWAYS["carrier"][0], edge=edge),
        "dialplan/public.xml": _render("freeswitch", "public.xml.j2", numbers=_numbers(p), outbound=_outbound(p),
                                       fallback=socket_fallback(), edge=edge),
    }
    if fetch:
        files[EMERGENCY_FILE] = _render("freeswitch", "emergency-dialplan.xml.j2")
    for node in fs_nodes(s):
        files[f"{node_dir(node)}/switch.conf.xml"] = switch_conf(s, node)
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

def _edge(s: Settings) -> dict[str, Any] | None:
    """What an Asterisk node behind the SIP edge needs (None: no edge, the
    node takes SIP itself): the edge's addresses (the only ones it takes SIP
    from: an ACL), the first edge node (where calls to phones and the carrier
    go: lookup(location) there), the header the edge marks carrier calls with."""
    if not s.edge_nodes:
        return None
    addresses = [_host_of(n.host) for n in s.edge_nodes]
    first = s.edge_nodes[0]
    proxy = edge_proxy(s)
    return {"permit": [f"{n.network_address}/{n.netmask}" for n in map(ipaddress.ip_network, cidrs(",".join(
                addresses)))],
            "match": cidrs(",".join(addresses)), "proxy": proxy or f"{first.host}:{first.port}",
            "carrier_header": f"{EDGE_HEADER}: carrier", "source_header": EDGE_SOURCE_HEADER}


def edge_proxy(s: Settings) -> str:
    """``edge_proxy`` checked: a host name or an IP address, a port
    optional ('' when unset).  It is rendered into every engine's config
    and is each edge node's alias (a request to it is the edge's own)."""
    value = s.edge_proxy.strip()
    if value and not re.fullmatch(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
                                  r"(?::[0-9]{1,5})?", value):
        raise escape.UnsafeValue("edge_proxy", f"{value[:40]!r} must be host[:port] (a name or an address "
                                               "every edge node answers)")
    return value


def _host_of(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise escape.UnsafeValue("edge_nodes.host", f"{host[:40]!r} must be an IP address (the engines' ACL "
                                                    "and identify match it)") from None
    return host


def pjsip_conf(p: Provider) -> str:
    return _render("asterisk", "pjsip.conf.j2", s=p.settings, tenants=p.tenants,
                   carrier_match=carrier_match(p.settings), edge=_edge(p.settings))


def agi_servers(s: Settings) -> list[str]:
    """The policy servers' FastAGI URLs, in the order the dialplan asks them
    (``agi_servers``, else ``agi_host``:``agi_port``).  Behind the edge a
    request names its node (``?node=${SYSTEMNAME}``: several nodes may share
    one source address — fastagi accepts the name only from that address)."""
    return [f"agi://{x}" for x in _servers("agi_servers", s.agi_servers, f"{s.agi_host}:{s.agi_port}")]


def extensions_conf(p: Provider) -> str:
    s = p.settings
    return _render("asterisk", "extensions.conf.j2", s=s, tenants=p.tenants, numbers=_numbers(p),
                   emergency=EMERGENCY_DIALS, edge=_edge(s),
                   agi_lines=_agi_lines(agi_servers(s), "?node=${SYSTEMNAME}" if s.edge_nodes else ""),
                   star_codes=sorted(star_codes(s)))


def _agi_lines(servers: list[str], query: str) -> Callable[[str, str], str]:
    """One AGI step of the dialplan: the first policy server, then each next
    one while the last gave AGISTATUS FAILURE (it could not be reached or
    broke off).  ExecIf splits its argument only outside parentheses, so an
    address's ``:`` inside the AGI() stays whole."""
    def lines(route: str, args: str) -> str:
        first, *rest = (f"AGI({srv}/{route}{query}{args})" for srv in servers)
        return first + "".join(f'\n same => n,ExecIf($["${{AGISTATUS}}" = "FAILURE"]?{app})' for app in rest)
    return lines


def queues_conf(p: Provider) -> str:
    return _render("asterisk", "queues.conf.j2", tenants=p.tenants, strategies=AST_STRATEGIES)


def musiconhold_conf(p: Provider) -> str:
    return _render("asterisk", "musiconhold.conf.j2", classes=_moh_classes(p), moh_dir=p.settings.moh_dir)


def manager_conf(p: Provider, node: EngineNode | None = None) -> str:
    """manager.conf; behind the edge each node's own, bound to its address."""
    # Asterisk's permit= takes <address>/<netmask>
    permit = [f"{n.network_address}/{n.netmask}" for n in map(ipaddress.ip_network, cidrs(p.settings.ami_acl))]
    bind = (node.host, node.port) if node else (p.settings.ami_host, p.settings.ami_port)
    return _render("asterisk", "manager.conf.j2", s=p.settings, permit=permit, bind=bind)


def pjsip_node_conf(p: Provider, node: EngineNode) -> str:
    """A node's transports behind the edge: bound to its own SIP address
    (pjsip.conf includes it)."""
    host, _, port = node_sip(p.settings, node).rpartition(":")
    return _render("asterisk", "pjsip_node.conf.j2", s=p.settings, node=node, host=host, port=int(port))


ASTERISK: dict[str, Callable[[Provider], str]] = {
    "pjsip.conf": pjsip_conf,
    "extensions.conf": extensions_conf,
    "queues.conf": queues_conf,
    "musiconhold.conf": musiconhold_conf,
    "manager.conf": manager_conf,
}


# behind the edge: one per node (nodes/<name>/...), installed into that node's /etc/asterisk
ASTERISK_NODE: dict[str, Callable[[Provider, EngineNode], str]] = {
    "pjsip_node.conf": pjsip_node_conf,
    "manager.conf": manager_conf,
}


def asterisk_files(p: Provider) -> dict[str, str]:
    files = {name: gen(p) for name, gen in ASTERISK.items()}
    if p.settings.edge_nodes:
        del files["manager.conf"]
        for node in p.settings.ami_nodes:
            for name, node_gen in ASTERISK_NODE.items():
                files[f"{node_dir(node)}/{name}"] = node_gen(p, node)
    return files


# ---------------------------------------------------------------- the SIP edge (Kamailio)

EDGE_HEADER = V.EDGE_MARK_HEADER         # what the edge marks a carrier call with (and strips from everything else)
EDGE_SOURCE_HEADER = V.EDGE_SOURCE_HEADER  # a phone's address as the edge saw it (the policy's IP rule), likewise
EDGE_PING_S = 1                    # OPTIONS probe interval per engine node
EDGE_PING_MISSES = 2               # probes in a row without a 2xx take a node out
EDGE_PIKE = {"pike_unit": 2, "ban_s": 60}    # flood limit per source address: edge_flood_requests per 2 s
# how long the edge remembers an emergency call's dialog (its in-dialog requests pass a flood ban) and
# the HA1 of an account it authenticated (110/112 while the database does not answer)
EDGE_MEMORY = {"emergency_dialog_s": 4 * 3600, "ha1_cache_s": 25 * 3600,
               "natping_s": 25}   # a NAT binding of a registered phone kept open (UDP mappings: 30 s and more)
# every dialled form of 110/112 as one Kamailio regex (our constants: not user data)
EDGE_EMERGENCY_RE = "^(" + "|".join(d.replace("+", "[+]") for d in EMERGENCY_DIALS) + ")$"


def kamailio_cfg(p: Provider, edge: EngineNode) -> str:
    s = p.settings
    if not edge.rpc_port:
        raise escape.UnsafeValue(f"edge node {edge.name}.rpc_port", "is required (its JSON-RPC listener)")
    if s.edge_flood_requests < 1:
        raise DustelError("edge_flood_requests", "must be a positive integer (requests per 2 s per address)")
    if not 200 <= s.edge_failover_ms <= 30000:
        raise DustelError("edge_failover_ms", "must be 200 to 30000 (milliseconds)")
    proxy = edge_proxy(s)
    return _render("kamailio", "kamailio.cfg.j2", node=edge, db_url=kamailio_db_url(s),
                   alias=proxy,
                   sip_listen=f"{_host_of(edge.host)}:{edge.port}", rpc_listen=f"{edge.host}:{edge.rpc_port}",
                   rpc_port=edge.rpc_port, rpc_acl=cidrs(s.edge_rpc_acl), carrier=s.carrier_host,
                   emergency_re=EDGE_EMERGENCY_RE, headers=(EDGE_HEADER, EDGE_SOURCE_HEADER), fr_ms=s.edge_failover_ms,
                   ping_s=EDGE_PING_S, ping_misses=EDGE_PING_MISSES, pike_density=s.edge_flood_requests, **EDGE_PIKE,
                   **EDGE_MEMORY)


def kamailio_db_url(s: Settings) -> str:
    url = s.kamailio_db_url
    if not re.fullmatch(r"postgres://[^\s\"\\$/@]+:[^\s\"\\$/@]+@[A-Za-z0-9.,:\[\]-]+/[A-Za-z0-9_]+", url):
        raise DustelError("kamailio_db_url", "must be postgres://user:password@host[,host2][:port]/database "
                                             "(Kamailio's own role; no quote, backslash or $)")
    return url


def kamailio_files(p: Provider) -> dict[str, str]:
    return {f"{node_dir(edge)}/kamailio.cfg": kamailio_cfg(p, edge) for edge in p.settings.edge_nodes}


ENGINES: dict[str, Callable[[Provider], dict[str, str]]] = {
    "freeswitch": freeswitch_files,
    "asterisk": asterisk_files,
    "kamailio": kamailio_files,
}

def reload_commands(engine: str, changed: list[str], killgw: Mapping[str, Iterable[str]] | None = None) -> list[str]:
    """What to send the engine after these files changed: ESL api commands
    (FreeSWITCH) or AMI Reload modules (Asterisk), each once, in order.
    ``killgw``: profile -> its gateways whose definition changed or went.
    ``sofia profile P rescan`` adds new gateways but keeps a changed one
    (``Ignoring duplicate gateway``, recording 11); ``killgw`` first marks it
    deleted, and the rescan then loads the rendered one (sofia.c
    parse_gateways skips only gateways not marked deleted).  A node's own
    files (``nodes/<name>/``) are ``node_reload_commands``'."""
    out: list[str] = []
    killgw = killgw or {}

    def add(cmd: str) -> None:
        if cmd not in out:
            out.append(cmd)

    for rel in changed:
        if engine == "freeswitch":
            if rel.startswith("nodes/"):
                continue
            if rel.endswith("acl.conf.xml"):
                add("reloadacl")
            add("reloadxml")
            if rel.startswith("sip_profiles/"):
                profile = rel.split("/")[1].removesuffix(".xml")
                for gateway in sorted(killgw.get(profile, ())):
                    add(f"sofia profile {profile} killgw {gateway}")
                add(f"sofia profile {profile} rescan")
            if rel.endswith("callcenter.conf.xml"):
                add("reload mod_callcenter")
            if rel.endswith("local_stream.conf.xml"):
                add("reload mod_local_stream")
            if rel.endswith("xml_curl.conf.xml"):
                # read when the module loads; without a binding (fs_decision = socket) its load fails: no fetch
                add("reload mod_xml_curl")
        elif engine == "kamailio":
            # kamailio.cfg is read at start only (its tables are reloaded over its RPC: render/edge.py)
            add("restart")
        else:
            rel = rel.rsplit("/", 1)[-1]     # a node's own file (nodes/<name>/) reloads the same module
            add({"pjsip_node.conf": "res_pjsip.so", "pjsip.conf": "res_pjsip.so", "extensions.conf": "pbx_config.so",
                 "queues.conf": "app_queue.so",
                 "musiconhold.conf": "res_musiconhold.so", "manager.conf": "manager"}[rel])
    return out


def node_reload_commands(s: Settings, changed: Iterable[str]) -> dict[str, list[str]]:
    """Node name -> the commands for its own changed files (its switch.conf:
    the caps, with ``fsctl``)."""
    changed = set(changed)
    return {n.name: fs_caps_commands(s, n) for n in fs_nodes(s) if f"{node_dir(n)}/switch.conf.xml" in changed}


def changed_gateways(old: str | None, new: str | None) -> list[str]:
    """The gateways of a rendered sofia profile that a rescan would not
    apply: defined in ``old`` and changed or gone in ``new`` (an ``old`` that
    is no XML — edited by hand — has every gateway of ``new`` changed)."""
    def gateways(text: str | None) -> dict[str, bytes]:
        root = ET.fromstring(text.encode()) if text else None
        return {} if root is None else {g.get("name", ""): ET.tostring(g) for g in root.iter("gateway")}

    after = gateways(new)
    try:
        before = gateways(old)
    except ET.ParseError:
        return sorted(after)
    return sorted(name for name, xml in before.items() if after.get(name) != xml)
