"""Settings from a TOML file and the environment; the environment wins.

Lookup order for every value: environment variable, then the file
(``--config`` or ``$DUSTEL_CONFIG`` or ``<state-dir>/dustel.toml``), then
the default.  Without ``DATABASE_URL`` an embedded PostgreSQL (pgserver)
lives in ``<state-dir>/pg`` and is reused between runs.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import DustelError


@dataclass(frozen=True)
class EngineNode:
    name: str
    host: str
    port: int
    username: str
    secret: str
    # FreeSWITCH only: this node's own switch.conf caps (None: the provider's
    # fs_max_sessions / fs_sessions_per_second)
    max_sessions: int | None = None
    sessions_per_second: int | None = None
    # the cluster (issue 27): an engine node's SIP address host[:port], what the
    # edge dispatches to (empty: its host and the provider's sip_port); an edge
    # node's JSON-RPC port (HTTP, on its host: dispatcher.reload, ...)
    sip: str = ""
    rpc_port: int | None = None


# The demo's placeholders for who issues the invoices and collects the
# direct debits (an example IBAN, the Bundesbank's test creditor id, a VAT id
# nobody has): the defaults, and refused on anything issued outside the demo.
DEMO_ISSUER = {"issuer_iban": "DE89370400440532013000", "sepa_creditor_id": "DE98ZZZ09999999999",
               "issuer_vat_id": "DE999999999"}


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    state_found: str = "--state-dir"   # how state_dir was found (config.locate), for messages
    database_url: str | None = None
    # Where the renderer writes and the engines read their configs.
    freeswitch_conf_dir: Path | None = None
    asterisk_conf_dir: Path | None = None
    # Live-control endpoints (controller) and secrets rendered into the
    # engines' own configs (event_socket.conf, manager.conf).
    esl_nodes: tuple[EngineNode, ...] = ()
    ami_nodes: tuple[EngineNode, ...] = ()
    # the SIP edge (issue 27): Kamailio hosts (name, host and port of SIP, rpc_port);
    # none: every engine takes SIP itself, as on one box
    edge_nodes: tuple[EngineNode, ...] = ()
    # who may call the edge's JSON-RPC (the hosts that run `dustel render --reload`)
    edge_rpc_acl: str = "127.0.0.1/32"
    # the edge's flood limit: requests per 2 s from one source address, over it
    # the address is refused for a minute -- never a call to 110/112
    edge_flood_requests: int = 100
    # an engine node that sends no answer to an INVITE within this is skipped
    # for the next (Kamailio's fr_timer): the failover bound of a dead node
    edge_failover_ms: int = 2000
    # where the engines send what leaves them (calls to phones, the carrier,
    # 110/112): host[:port] that every edge node answers -- a floating address
    # or a DNS name (SRV); empty: the first edge node, a single point of failure
    edge_proxy: str = ""
    # the policy servers the engines ask, in order (comma-separated host:port):
    # when one does not answer the dialplan asks the next; empty: agi_host:agi_port
    agi_servers: str = ""
    # likewise for FreeSWITCH's socket app (the outbound Event Socket); empty:
    # esl_outbound_host:esl_outbound_port
    esl_outbound_servers: str = ""
    # secrets: from the environment or a 0600 file (<state-dir>/secrets.toml,
    # which ``dustel demo`` fills with random ones); never a default
    esl_password: str = ""
    ami_username: str = "dustel"
    ami_secret: str = ""
    agi_host: str = "127.0.0.1"
    agi_port: int = 4573
    agi_node: str = "asterisk"    # the node name calls are recorded under (node, call id)
    esl_outbound_host: str = "127.0.0.1"
    esl_outbound_port: int = 8084
    # calls one outbound Event Socket server holds at once: each call keeps
    # its socket (and a file descriptor) for as long as it lasts; above this
    # a call is turned away (greenswitch's max_connections)
    esl_max_calls: int = 20000
    # worker processes of the outbound Event Socket server, all listening on
    # its port (SO_REUSEPORT: the kernel spreads the calls); 0: one per core
    esl_workers: int = 0
    # how FreeSWITCH asks the policy: "socket" (the outbound Event Socket per
    # call) or "fetch" (the dialplan of each call fetched by mod_xml_curl from
    # ``dustel xmlcurl serve``, the static dialplan's socket behind it)
    fs_decision: str = "socket"
    xmlcurl_host: str = "127.0.0.1"
    xmlcurl_port: int = 8096
    xmlcurl_timeout: int = 2          # seconds mod_xml_curl waits (then: the static dialplan)
    xmlcurl_workers: int = 0          # as esl_workers
    # where each FreeSWITCH node finds dustel's rendered tree (the Ansible
    # freeswitch role's freeswitch_dustel_dir): the emergency dialplan file
    fs_dustel_dir: str = "/etc/freeswitch/dustel"
    sip_domain_suffix: str = "sip.dustel.de"
    carrier_host: str = "127.0.0.1:5070"
    # the carrier's source addresses (comma-separated CIDRs): the only way
    # the carrier is recognised; empty: carrier_host's address
    carrier_match: str = ""
    # who may connect to FreeSWITCH's event socket (the controller's hosts)
    esl_acl: str = "127.0.0.1/32"
    sip_bind_host: str = "0.0.0.0"   # FreeSWITCH: 0.0.0.0 renders each node's $${local_ip_v4}
    sip_external_ip: str = ""         # behind NAT: an address, or "node" for each node's $${external_sip_ip}
    sip_port: int = 5060
    sip_tls_port: int = 5061
    tls_cert_file: str = ""       # empty: no TLS transport rendered
    tls_key_file: str = ""
    ami_host: str = "127.0.0.1"
    ami_acl: str = "127.0.0.1/32"   # who may log in to AMI (the controller's hosts): comma-separated CIDRs
    ami_port: int = 5038
    esl_host: str = "127.0.0.1"
    esl_port: int = 8021
    # FreeSWITCH's switch.conf caps per node (vanilla: 1000 and 30); every
    # leg is a session (a call through the carrier two, a fax three), so a
    # node takes calls/s up to half of sessions_per_second.  A node's own
    # max_sessions / sessions_per_second in [[esl_nodes]] wins.
    fs_max_sessions: int = 4000
    fs_sessions_per_second: int = 250
    moh_dir: str = "/var/lib/dustel/moh"
    logo_dir: str = "/var/lib/dustel/logo"     # sound logos, converted like hold music (provisioning/media.py)
    media_max_bytes: int = 20_000_000          # an upload larger than this is refused
    media_max_seconds: int = 900               # … and one that plays longer
    fax_spool_dir: str = "/var/spool/dustel/fax"    # where the engines write received faxes
    fax_read_dir: str = ""        # where the policy servers read them ('' = fax_spool_dir: one host, or shared)
    asterisk_outgoing_dir: str = "/var/spool/asterisk/outgoing"   # call files: faxes to send (pbx_spool)
    fax_engine: str = "asterisk"  # which engine places fax jobs' calls: asterisk (call files) | freeswitch (ESL)
    fax_max_attempts: int = 4     # tries per fax job (busy, no answer, a failed transmission)
    fax_retry_seconds: int = 300  # wait after attempt n failed: n × this
    # FreeSWITCH: the carrier takes T.38 for the faxes dustel sends (the carrier
    # leg then runs mod_spandsp's t38_gateway); 0: G.711 audio only
    fax_send_t38: int = 0
    fax_mail_domain: str = "fax.dustel.invalid"   # e-mail to fax: <number>@<this>
    mailgw_host: str = "127.0.0.1"
    mailgw_port: int = 2525
    # STARTTLS and authenticated submission (SMTP AUTH) at the mail gateway;
    # empty: no TLS, only the PIN in the subject
    mailgw_tls_cert_file: str = ""
    mailgw_tls_key_file: str = ""
    smtp_host: str = "127.0.0.1"  # the mail relay fax mails go through
    smtp_port: int = 25
    mail_from: str = "fax@dustel.invalid"
    mail_max_age_hours: int = 120  # a mail the relay keeps refusing for a while (4xx, down) is retried this long
    # agent star codes (F-06: configurable per provider)
    # billing (F-09): who issues the invoices and collects the direct debits;
    # the demo's values are placeholders (a test creditor id, an example IBAN)
    issuer_name: str = "DUStel GmbH"
    issuer_street: str = "Musterstraße 1"
    issuer_postcode: str = "40210"
    issuer_city: str = "Düsseldorf"
    issuer_vat_id: str = DEMO_ISSUER["issuer_vat_id"]
    issuer_email: str = "rechnung@dustel.invalid"
    issuer_phone: str = "+49 211 0000000"
    issuer_iban: str = DEMO_ISSUER["issuer_iban"]
    issuer_bic: str = "COBADEFFXXX"
    sepa_creditor_id: str = DEMO_ISSUER["sepa_creditor_id"]
    invoice_due_days: int = 14        # an invoice is due (and its direct debit collected) this many days after it
    sepa_lead_days: int = 2           # an automatic top-up's debit is due this many days after the night
    debit_return_fee_cents: int = 300  # charged when the bank takes a direct debit back
    billing_timezone: str = "Europe/Berlin"   # the scheduler's nights and months
    # YYYY-MM: the first month the scheduler's first start invoices (months
    # before it were billed elsewhere); '' = only the month that just ended
    billing_first_month: str = ""
    star_login: str = "*51"
    star_logout: str = "*52"
    star_pause: str = "*53"
    star_unpause: str = "*54"
    # owner and group of rendered files (mode 0640): the engine's user/group;
    # empty: the rendering user's
    config_owner: str = ""
    config_group: str = ""
    # the Kundencenter (F-13, `dustel portal serve`): where it listens, the
    # secret its session tokens and form tokens are keyed with (a secret:
    # environment or the 0600 secrets file, never a default), how long a
    # session lives idle and at most, and whether its cookie is Secure (0
    # only for plain-HTTP tests and a demo on localhost; behind TLS keep 1)
    portal_host: str = "127.0.0.1"
    portal_port: int = 8080
    portal_secret: str = ""
    portal_session_minutes: int = 30
    portal_session_hours: int = 12
    portal_cookie_secure: int = 1
    kamailio_db_url: str = ""
    extra: dict[str, object] = field(default_factory=dict)


_ENV = {
    "database_url": "DATABASE_URL",
    "esl_password": "DUSTEL_ESL_PASSWORD",
    "ami_username": "DUSTEL_AMI_USERNAME",
    "ami_secret": "DUSTEL_AMI_SECRET",
    "agi_host": "DUSTEL_AGI_HOST",
    "agi_port": "DUSTEL_AGI_PORT",
    "agi_node": "DUSTEL_AGI_NODE",
    "esl_outbound_host": "DUSTEL_ESL_OUTBOUND_HOST",
    "esl_outbound_port": "DUSTEL_ESL_OUTBOUND_PORT",
    "esl_max_calls": "DUSTEL_ESL_MAX_CALLS",
    "esl_workers": "DUSTEL_ESL_WORKERS",
    "fs_decision": "DUSTEL_FS_DECISION",
    "xmlcurl_host": "DUSTEL_XMLCURL_HOST",
    "xmlcurl_port": "DUSTEL_XMLCURL_PORT",
    "xmlcurl_workers": "DUSTEL_XMLCURL_WORKERS",
    "sip_domain_suffix": "DUSTEL_SIP_DOMAIN_SUFFIX",
    "carrier_host": "DUSTEL_CARRIER_HOST",
    "carrier_match": "DUSTEL_CARRIER_MATCH",
    "esl_acl": "DUSTEL_ESL_ACL",
    "ami_acl": "DUSTEL_AMI_ACL",
    "sip_bind_host": "DUSTEL_SIP_BIND_HOST",
    "sip_external_ip": "DUSTEL_SIP_EXTERNAL_IP",
    "sip_port": "DUSTEL_SIP_PORT",
    "ami_port": "DUSTEL_AMI_PORT",
    "moh_dir": "DUSTEL_MOH_DIR",
    "logo_dir": "DUSTEL_LOGO_DIR",
    "fax_read_dir": "DUSTEL_FAX_READ_DIR",
    "asterisk_outgoing_dir": "DUSTEL_ASTERISK_OUTGOING_DIR",
    "fax_engine": "DUSTEL_FAX_ENGINE",
    "smtp_host": "DUSTEL_SMTP_HOST",
    "fax_mail_domain": "DUSTEL_FAX_MAIL_DOMAIN",
    "mailgw_host": "DUSTEL_MAILGW_HOST",
    "mailgw_port": "DUSTEL_MAILGW_PORT",
    "smtp_port": "DUSTEL_SMTP_PORT",
    "mail_from": "DUSTEL_MAIL_FROM",
    "config_owner": "DUSTEL_CONFIG_OWNER",
    "config_group": "DUSTEL_CONFIG_GROUP",
    "billing_first_month": "DUSTEL_BILLING_FIRST_MONTH",
    "agi_servers": "DUSTEL_AGI_SERVERS",
    "esl_outbound_servers": "DUSTEL_ESL_OUTBOUND_SERVERS",
    "kamailio_db_url": "DUSTEL_KAMAILIO_DB_URL",
    "portal_host": "DUSTEL_PORTAL_HOST",
    "portal_port": "DUSTEL_PORTAL_PORT",
    "portal_secret": "DUSTEL_PORTAL_SECRET",
    "portal_cookie_secure": "DUSTEL_PORTAL_COOKIE_SECURE",
}
_INT_FIELDS = {f.name for f in fields(Settings) if f.type in ("int", int)}


# kamailio_db_url: the database URL rendered into kamailio.cfg (its own role,
# README Cluster): postgres://user:password@host[,host2]:port/db
SECRETS = ("esl_password", "ami_secret", "database_url", "portal_secret", "kamailio_db_url")
# the secrets `dustel demo` makes (random) when the secrets file lacks them
DEMO_SECRETS = ("esl_password", "ami_secret", "portal_secret")
# what FreeSWITCH / earlier dustel versions ship: known to every attacker
DEFAULT_SECRETS = frozenset({"", "ClueCon", "dustel-ami", "amp111", "secret"})


def secrets_path(state_dir: Path) -> Path:
    return state_dir / "secrets.toml"


def _toml(path: Path, what: str) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DustelError(f"{what} {path}", f"not valid TOML ({exc})") from None


def _private(path: Path, what: str) -> None:
    if path.stat().st_mode & 0o077:
        raise DustelError(f"{what} {path}", "holds secrets: must be mode 0600 (chmod 600)")


# What the Ansible dustel role writes on an application host: the CLI finds
# the host's dustel there when no state directory is named (its state_dir,
# and a secrets.toml next to it).
SYSTEM_CONFIG = Path("/etc/dustel/dustel.toml")
SYSTEM_STATE_DIR = Path("/var/lib/dustel")


def locate(state_dir: str | Path | None, config_file: str | Path | None,
           env: dict[str, str]) -> tuple[Path, Path | None, str]:
    """(state directory, config file or None, how the state directory was
    found), one way for every command: ``--state-dir``, then
    ``$DUSTEL_STATE_DIR``, then the ``state_dir`` of the config file
    (``--config``, ``$DUSTEL_CONFIG``, else /etc/dustel/dustel.toml when it
    exists: an application host), then ./.dustel — only when it exists.
    Nothing is created here; where nothing was found the state directory is
    ./.dustel and ``how`` says so (db.database_url names where it looked)."""
    cfg = Path(config_file or env.get("DUSTEL_CONFIG") or "") if (config_file or env.get("DUSTEL_CONFIG")) else None
    if state_dir or env.get("DUSTEL_STATE_DIR"):
        sd = Path(state_dir or env["DUSTEL_STATE_DIR"])
        how = "--state-dir" if state_dir else "$DUSTEL_STATE_DIR"
        return sd.resolve(), cfg or sd.resolve() / "dustel.toml", how
    if cfg is None and SYSTEM_CONFIG.exists():
        cfg = SYSTEM_CONFIG
    if cfg is not None and cfg.exists():
        named = _toml(cfg, "config").get("state_dir")
        if named is not None:
            if not isinstance(named, str) or not named:
                raise DustelError(f"config {cfg} state_dir", "must be a directory (a string)")
            return Path(named).resolve(), cfg, f"state_dir in {cfg}"
        if cfg == SYSTEM_CONFIG:
            return SYSTEM_STATE_DIR, cfg, f"{cfg} (no state_dir: {SYSTEM_STATE_DIR})"
    local = Path(".dustel").resolve()
    if local.is_dir():
        return local, cfg or local / "dustel.toml", "./.dustel"
    return local, cfg, NOWHERE


NOWHERE = ("nothing: no --state-dir, no $DUSTEL_STATE_DIR, no state_dir in a config file (--config, "
           f"$DUSTEL_CONFIG, {SYSTEM_CONFIG}), no ./.dustel here")


def load_settings(state_dir: str | Path | None = None, config_file: str | Path | None = None,
                  env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    sd, cfg_found, how = locate(state_dir, config_file, env)
    cfg_path = cfg_found or sd / "dustel.toml"
    data: dict[str, object] = {}
    if cfg_path.exists():
        data = _toml(cfg_path, "config")
        data.pop("state_dir", None)            # read by locate
        if any(k in data for k in DEMO_SECRETS) or any(
                isinstance(n, dict) and n.get("secret") for k in NODE_KEYS
                for n in (data.get(k) or []) if isinstance(data.get(k), list)):
            _private(cfg_path, "config")
    elif config_file:
        raise DustelError("config", f"file {cfg_path} does not exist")
    beside = cfg_path.with_name("secrets.toml")           # the system config's: /etc/dustel/secrets.toml
    sec_path = Path(env.get("DUSTEL_SECRETS_FILE")
                    or (beside if cfg_path == SYSTEM_CONFIG and beside.exists() else secrets_path(sd)))
    if sec_path.exists():
        _private(sec_path, "secrets file")
        for key, value in _toml(sec_path, "secrets file").items():
            if key not in SECRETS:
                raise DustelError(f"secrets file {key}", f"unknown secret (known: {', '.join(SECRETS)})")
            data[key] = value          # the secrets file wins over the config file, the environment over both

    values: dict[str, object] = {}
    known = set(Settings.__dataclass_fields__) - {"state_dir", "state_found", "extra", *NODE_KEYS}
    for key, raw in data.items():
        if key in NODE_KEYS:
            continue
        if key not in known:
            raise DustelError(f"config {key}", "unknown setting")
        values[key] = raw
    for key, var in _ENV.items():
        if env.get(var):
            values[key] = env[var]
    for key in list(values):
        if key in _INT_FIELDS:
            try:
                values[key] = int(values[key])  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise DustelError(key, "must be an integer") from None
        elif key.endswith("_dir") and values[key] is not None:
            values[key] = Path(str(values[key]))
        elif not isinstance(values[key], str):
            raise DustelError(key, "must be a string")
    nodes = {k: _nodes(k, data.get(k, [])) for k in NODE_KEYS}
    return Settings(state_dir=sd, state_found=how, **nodes, **values)  # type: ignore[arg-type]


def star_codes(s: Settings) -> dict[str, str]:
    """code -> action of the provider's agent star codes (validated)."""
    from .queue import codes
    try:
        return codes.table(s.star_login, s.star_logout, s.star_pause, s.star_unpause)
    except ValueError as exc:
        field, _, rule = str(exc).partition(": ")
        raise DustelError(field, rule) from None


FS_DECISIONS = ("socket", "fetch")


def fs_decision(s: Settings) -> str:
    """How FreeSWITCH asks the policy (``fs_decision``), checked with the
    settings that go with it."""
    if s.fs_decision not in FS_DECISIONS:
        raise DustelError("fs_decision", f"must be socket or fetch (got {s.fs_decision[:20]!r})")
    if not 1 <= s.xmlcurl_timeout <= 60:
        raise DustelError("xmlcurl_timeout", "must be 1-60 seconds (mod_xml_curl's timeout)")
    if s.fs_decision == "fetch" and not (s.fs_dustel_dir.startswith("/") and
                                         all(c not in s.fs_dustel_dir for c in ",$ \t\r\n")):
        raise DustelError("fs_dustel_dir", "must be an absolute path without ',', '$' or spaces (it names a file "
                                           "in a sofia profile's dialplan list)")
    return s.fs_decision


def require_secrets(s: Settings, *names: str) -> None:
    """Refuse to render or start with a missing or well-known secret."""
    for name in names:
        if getattr(s, name) in DEFAULT_SECRETS:
            env = _ENV[name]
            raise DustelError(name, f"must be set to a secret of your own (environment {env} or the 0600 file "
                                    f"{secrets_path(s.state_dir)}; `dustel demo` makes random ones), "
                                    "not empty or a well-known default")


def require_issuer(s: Settings, demo: bool) -> None:
    """Refuse to issue invoices or direct debits in the name of the demo's
    placeholder issuer (its IBAN, creditor id, VAT id) outside the demo."""
    if demo:
        return
    for name, placeholder in DEMO_ISSUER.items():
        if getattr(s, name) == placeholder:
            raise DustelError(name, f"is the demo's placeholder {placeholder}: set the provider's own in the "
                                    "config file before invoices or direct debits are issued")


def ensure_demo_secrets(state_dir: Path) -> bool:
    """The demo's secrets (engines, Kundencenter): random, made once, in a
    0600 file; a file made by an older dustel gets the ones it lacks.  True
    when any was made now."""
    import secrets
    path = secrets_path(state_dir)
    have: dict[str, object] = {}
    if path.exists():
        _private(path, "secrets file")
        have = _toml(path, "secrets file")
    missing = [k for k in DEMO_SECRETS if k not in have]
    if not missing:
        return False
    state_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(f'{k} = "{secrets.token_urlsafe(18)}"\n' for k in missing)
    if have or path.exists():
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return True
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# made by `dustel demo`: the secrets of this demo (keep mode 0600)\n" + text)
    return True


def node_secret(s: Settings, node: EngineNode, engine: str) -> str:
    """A node's own secret, else the shared one; never a well-known default."""
    name = "esl_password" if engine == "freeswitch" else "ami_secret"
    secret = node.secret or getattr(s, name)
    if secret in DEFAULT_SECRETS:
        raise DustelError(f"node {node.name}.secret", f"missing or a well-known default (set it or {name})")
    return secret


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")

# The policy servers' listen backlog: the connections the kernel completes and
# queues while a server is busy (a slow batch, a GC pause).  A full backlog
# drops the engine's SYN and the call waits a 1 s retransmit: asyncio's
# default of 100 did at 1 000 calls/s (bench/policy.py: p99 1 s, the host's
# ListenOverflows counter).  The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


def node_addresses(nodes: tuple[EngineNode, ...], fallback: str) -> dict[str, tuple[str, ...]]:
    """Source address -> the names of the engine nodes at it (their ``host``,
    resolved now; several nodes may share a host).  Without configured nodes
    only loopback may ask, as node ``fallback`` (a one-box demo)."""
    import socket
    if not nodes:
        return {ip: (fallback,) for ip in LOOPBACK}
    out: dict[str, tuple[str, ...]] = {}
    for n in nodes:
        try:
            infos = socket.getaddrinfo(n.host, None, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise DustelError(f"node {n.name}.host", f"cannot be resolved ({exc})") from None
        for ip in {str(info[4][0]) for info in infos}:
            for key in (ip, "::ffff:" + ip) if ip.count(".") == 3 else (ip,):
                if n.name not in out.get(key, ()):
                    out[key] = (*out.get(key, ()), n.name)
    return out


def node_sources(nodes: tuple[EngineNode, ...], fallback: str) -> dict[str, str]:
    """Source address -> node name of the engine nodes a policy server
    accepts requests from (``node_addresses``; of several nodes at one
    address the last configured)."""
    return {ip: names[-1] for ip, names in node_addresses(nodes, fallback).items()}


def _nodes(key: str, raw: object) -> tuple[EngineNode, ...]:
    if not isinstance(raw, list):
        raise DustelError(key, "must be a list of tables")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise DustelError(f"{key}[{i}]", "must be a table")
        unknown = set(item) - NODE_KEYS[key]
        if unknown:
            raise DustelError(f"{key}[{i}].{sorted(unknown)[0]}", "unknown setting")
        try:
            out.append(EngineNode(name=str(item["name"]), host=str(item["host"]),
                                  port=int(item["port"]), username=str(item.get("username", "")),
                                  secret=str(item.get("secret", "")), sip=str(item.get("sip", "")),
                                  **{k: _positive(f"{key}[{i}].{k}", item[k]) for k in NODE_INTS if k in item}))
        except KeyError as exc:
            raise DustelError(f"{key}[{i}].{exc.args[0]}", "is required") from None
        except (TypeError, ValueError):
            raise DustelError(f"{key}[{i}].port", "must be an integer") from None
    return tuple(out)


NODE_CAPS = ("max_sessions", "sessions_per_second")
NODE_INTS = (*NODE_CAPS, "rpc_port")
NODE_KEYS = {"esl_nodes": {"name", "host", "port", "username", "secret", "sip", *NODE_CAPS},
             "ami_nodes": {"name", "host", "port", "username", "secret", "sip"},
             "edge_nodes": {"name", "host", "port", "rpc_port"}}


def _positive(field: str, raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise DustelError(field, f"must be a positive integer (got {raw!r})")
    return raw


def fs_nodes(s: Settings) -> tuple[EngineNode, ...]:
    """The FreeSWITCH nodes: ``esl_nodes``, else the one at ``esl_host``:``esl_port``
    (a one-box install), named ``freeswitch``."""
    return s.esl_nodes or (EngineNode("freeswitch", s.esl_host, s.esl_port, "", ""),)


def node_sip(s: Settings, node: EngineNode) -> str:
    """An engine node's SIP address host:port (what the edge dispatches to):
    its ``sip``, else its host and the provider's ``sip_port``."""
    return node.sip or f"{node.host}:{s.sip_port}"


def session_caps(s: Settings, node: EngineNode) -> tuple[int, int]:
    """(max-sessions, sessions-per-second) of a FreeSWITCH node's switch.conf:
    the node's own, else the provider's; each at least 1."""
    caps = (node.max_sessions or s.fs_max_sessions, node.sessions_per_second or s.fs_sessions_per_second)
    for name, value in zip(("fs_max_sessions", "fs_sessions_per_second"), caps, strict=True):
        if value < 1:
            raise DustelError(name, f"must be a positive integer (got {value})")
    return caps
