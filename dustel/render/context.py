"""Gather what the templates need, in a handful of sorted queries.

Everything here is plain data, sorted, so the same database always gives
byte-identical output.  Values are checked once here where a template
cannot (identifiers must already be safe; free text is escaped by the
template filters)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..callpath.calls import Flow, Q
from ..config import Settings
from .escape import fs_id


@dataclass
class Tenant:
    id: int
    name: str
    domain: str
    timezone: str
    plan: str
    context: str
    max_call_seconds: int = 14400
    psap_prefix: str = ""          # of the tenant's first address: the default of its accounts
    accounts: list[Account] = field(default_factory=list)
    numbers: list[dict[str, Any]] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)
    agents: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    faxboxes: list[dict[str, Any]] = field(default_factory=list)
    speed_dials: list[dict[str, Any]] = field(default_factory=list)
    moh_classes: list[str] = field(default_factory=list)


class Account:
    """One SIP account as the templates see it (slots: fast attribute access
    in jinja2 loops over 100 000 accounts)."""

    __slots__ = ("username", "ha1", "display_name", "tls_mode", "t38", "allowed_nets", "caller_id",
                 "location", "psap_prefix", "max_call_seconds", "max_override")

    def __init__(self, username: str, ha1: str, display_name: str, tls_mode: str, t38: str,
                 allowed_nets: list[str], caller_id: str, location: str, psap_prefix: str,
                 max_call_seconds: int, max_override: int | None) -> None:
        self.username = username
        self.ha1 = ha1
        self.display_name = display_name
        self.tls_mode = tls_mode
        self.t38 = t38
        self.allowed_nets = allowed_nets
        self.caller_id = caller_id
        self.location = location
        self.psap_prefix = psap_prefix
        self.max_call_seconds = max_call_seconds     # effective
        self.max_override = max_override             # the account's own limit, if any


@dataclass
class Provider:
    settings: Settings
    tenants: list[Tenant]

    @property
    def accounts(self) -> list[Account]:
        return [a for t in self.tenants for a in t.accounts]

    @property
    def numbers(self) -> list[dict[str, Any]]:
        return sorted((n for t in self.tenants for n in t.numbers), key=lambda n: n["e164"])


def tenant_context(tenant_id: int) -> str:
    return f"t{tenant_id}"


def moh_name(tenant_id: int, cls: str) -> str:
    """Engine-wide name of a tenant's hold-music class."""
    return "default" if cls == "default" else f"t{tenant_id}-{cls}"


def queue_name(tenant_id: int, name: str) -> str:
    """Engine-wide queue name (both engines): t<tenant>-<queue>."""
    return f"t{tenant_id}-{name}"


def gather(conn: psycopg.Connection, settings: Settings, tenant_id: int | None = None) -> Provider:
    only = {"t": tenant_id}
    tenants: dict[int, Tenant] = {}
    for r in conn.execute(
            """SELECT t.id, t.name, t.sip_domain, t.timezone, t.plan, t.max_call_seconds,
                      dustel_psap_prefix((SELECT area_code FROM addresses a WHERE a.tenant_id = t.id
                                           ORDER BY a.id LIMIT 1)) AS psap_prefix
                 FROM tenants t WHERE %(t)s::bigint IS NULL OR t.id = %(t)s ORDER BY t.id""", only):
        tenants[r["id"]] = Tenant(id=r["id"], name=r["name"], domain=r["sip_domain"], timezone=r["timezone"],
                                  plan=r["plan"], context=tenant_context(r["id"]),
                                  max_call_seconds=r["max_call_seconds"], psap_prefix=r["psap_prefix"])

    cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
    cur.execute(
        """SELECT a.tenant_id, a.username, a.ha1, a.display_name, a.tls_mode, a.t38,
                  a.allowed_nets::text[], coalesce(a.caller_id, dustel_presented_number(a.tenant_id, a.id)),
                  coalesce(a.location_area_code, ''),
                  dustel_psap_prefix(a.location_area_code),
                  coalesce(a.max_call_seconds, t.max_call_seconds), a.max_call_seconds
             FROM sip_accounts a JOIN tenants t ON t.id = a.tenant_id
            WHERE %(t)s::bigint IS NULL OR a.tenant_id = %(t)s
            ORDER BY a.tenant_id, a.username""", only)
    by_id = tenants
    for row in cur:
        by_id[row[0]].accounts.append(Account(*row[1:]))

    for r in conn.execute(ROUTED_NUMBERS.format(where="(%(t)s::bigint IS NULL OR n.tenant_id = %(t)s)"), only):
        tenants[r["tenant_id"]].numbers.append(routed_number(r))

    for r in conn.execute(
            """SELECT tenant_id, id, name, code, strategy, max_wait_seconds, max_callers, wrapup_seconds,
                      service_level_seconds, moh_class, announce
                 FROM queues WHERE %(t)s::bigint IS NULL OR tenant_id = %(t)s ORDER BY tenant_id, name""", only):
        q = dict(r)
        q["moh"] = moh_name(r["tenant_id"], r["moh_class"])
        q["engine_name"] = queue_name(r["tenant_id"], r["name"])
        q["members"] = []
        tenants[r["tenant_id"]].queues.append(q)
    by_queue = {q["id"]: q for t in tenants.values() for q in t.queues}
    for r in conn.execute(
            """SELECT g.tenant_id, g.id, a.username AS contact_user, g.contact_e164
                 FROM agents g LEFT JOIN sip_accounts a ON a.id = g.contact_account_id
                WHERE %(t)s::bigint IS NULL OR g.tenant_id = %(t)s ORDER BY g.tenant_id, g.id""", only):
        tenants[r["tenant_id"]].agents.append(dict(r))
    for r in conn.execute(
            """SELECT m.queue_id, m.agent_id, m.level, m.position FROM queue_members m
                WHERE %(t)s::bigint IS NULL OR m.tenant_id = %(t)s ORDER BY m.queue_id, m.agent_id""", only):
        by_queue[r["queue_id"]]["members"].append(dict(r))

    for r in conn.execute(
            """SELECT g.tenant_id, g.name, g.ring_seconds,
                      array_agg(a.username ORDER BY a.username) AS members
                 FROM ring_groups g JOIN ring_group_members m ON m.group_id = g.id
                 JOIN sip_accounts a ON a.id = m.account_id
                WHERE %(t)s::bigint IS NULL OR g.tenant_id = %(t)s
                GROUP BY g.tenant_id, g.name, g.ring_seconds ORDER BY g.tenant_id, g.name""", only):
        tenants[r["tenant_id"]].groups.append(dict(r))
    for r in conn.execute(
            """SELECT tenant_id, name, email FROM faxboxes
                WHERE %(t)s::bigint IS NULL OR tenant_id = %(t)s ORDER BY tenant_id, name""", only):
        tenants[r["tenant_id"]].faxboxes.append(dict(r))
    for r in conn.execute(
            """SELECT tenant_id, code, target FROM speed_dials
                WHERE %(t)s::bigint IS NULL OR tenant_id = %(t)s ORDER BY tenant_id, code""", only):
        tenants[r["tenant_id"]].speed_dials.append(dict(r))
    for r in conn.execute(
            """SELECT tenant_id, name FROM moh_classes
                WHERE %(t)s::bigint IS NULL OR tenant_id = %(t)s ORDER BY tenant_id, name""", only):
        tenants[r["tenant_id"]].moh_classes.append(moh_name(r["tenant_id"], r["name"]))
    return Provider(settings=settings, tenants=list(tenants.values()))


# The numbers that route somewhere, and where: what the static dialplan is
# rendered from — and what the dialplan fetch reads for a carrier's call.
ROUTED_NUMBERS = """
SELECT n.tenant_id, n.e164, n.block_size, n.central_ddi, n.target_kind, dustel_ddi_digits(n.block_size) AS ddi_digits,
       coalesce(a.username, q.name, f.name, g.name) AS target, t.sip_domain
  FROM numbers n JOIN tenants t ON t.id = n.tenant_id
  LEFT JOIN sip_accounts a ON a.id = n.account_id
  LEFT JOIN queues q ON q.id = n.queue_id
  LEFT JOIN faxboxes f ON f.id = n.faxbox_id
  LEFT JOIN ring_groups g ON g.id = n.group_id
 WHERE n.status IN ('active', 'porting_out') AND n.target_kind IS NOT NULL AND {where}
 ORDER BY n.e164"""


def routed_number(r: Mapping[str, Any]) -> dict[str, Any]:
    """A row of ROUTED_NUMBERS as the templates and the fetch read it."""
    ddi = r["ddi_digits"]   # the block-width rule lives in SQL (dustel_ddi_digits)
    return {"tenant_id": r["tenant_id"], "domain": r["sip_domain"], "e164": r["e164"], "block_size": r["block_size"],
            "ddi_digits": ddi, "central_ddi": r["central_ddi"], "kind": r["target_kind"], "target": r["target"],
            "ddi_regex": ddi_regex(r["block_size"], ddi), "ddi_pattern": ddi_pattern(r["block_size"], ddi)}


def fs_number_pattern(n: Mapping[str, Any]) -> str:
    """The FreeSWITCH condition a carrier's call to number (or block) ``n``
    matches in the ``public`` context: with or without ``+`` / ``00``, a
    block's DDI digits as group 1 (none: its central answering point)."""
    return f"^(?:\\+|00)?{n['e164'][1:]}" + (f"({n['ddi_regex']})?" if n["block_size"] else "") + "$"


def fs_number_actions(n: Mapping[str, Any], ddi: str) -> list[tuple[str, str]]:
    """What the ``public`` extension of number ``n`` sets before it hands the
    call to the policy: the tenant (exported: every leg's CDR carries it),
    the target, the domain, and for a block the dialled extension ``ddi``
    (the template: ``$1``, the regex's group; the fetch: the digits)."""
    target = queue_name(n["tenant_id"], n["target"]) if n["kind"] == "queue" else n["target"]
    out = [("export", f"dustel_tenant={n['tenant_id']}"), ("set", f"dustel_target_kind={n['kind']}"),
           ("set", f"dustel_target={fs_id(target)}"), ("set", f"dustel_domain={fs_id(n['domain'])}")]
    if n["block_size"]:
        out += [("set", f"dustel_ddi={ddi}"), ("set", f"dustel_block={n['e164']}"),
                ("set", f"dustel_central={n['central_ddi'] or ''}")]
    return out


def fs_routed(dest: str) -> Flow:
    """The number a carrier's call to ``dest`` reaches, as the static
    ``public`` context routes it — its row and the dialled DDI extension —
    or None.  The candidates (the number itself, a block's head up to five
    digits shorter) are read by key, then matched with the rendered
    condition (``fs_number_pattern``): blocks never overlap numbers, so at
    most one matches."""
    digits = dest[1:] if dest.startswith("+") else dest[2:] if dest.startswith("00") else dest
    ok = digits.isascii() and digits.isdigit()
    heads = ["+" + digits[:len(digits) - k] for k in range(0, 6) if ok and len(digits) - k >= 3]
    rows = (yield Q(ROUTED_NUMBERS.format(where="n.e164 = ANY(%(heads)s::text[])"), {"heads": heads}, last=True))
    for r in rows:
        n = routed_number(r)
        m = re.fullmatch(fs_number_pattern(n), dest)
        if m is not None:
            return n, (m.group(1) or "") if n["block_size"] else ""
    return None


def ddi_regex(block_size: int | None, width: int) -> str:
    """Regex for the DDI digits of a block (sizes are k * 10^(width-1))."""
    if block_size is None:
        return ""
    lead = block_size // 10 ** (width - 1)
    first = r"\d" if lead == 10 else f"[0-{lead - 1}]"
    return first + r"\d" * (width - 1)


def ddi_pattern(block_size: int | None, width: int) -> str:
    """The same as an Asterisk extension pattern fragment."""
    if block_size is None:
        return ""
    lead = block_size // 10 ** (width - 1)
    first = "X" if lead == 10 else f"[0-{lead - 1}]"
    return first + "X" * (width - 1)
