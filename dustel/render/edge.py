"""The SIP edge's tables (issue 27): what Kamailio reads besides its
kamailio.cfg, written by ``dustel render`` from the settings and reloaded
over each edge node's JSON-RPC when they changed.

- ``kamailio.dispatcher``: set 1, every engine node's SIP address (Asterisk
  and FreeSWITCH nodes alike: any node takes any call), probed; set 2, the
  same never probed: the last resort when set 1 has no node alive;
- ``kamailio.address``: group 1, the carrier's networks (``carrier_match``,
  else ``carrier_host``'s address) — the only way the edge recognises it.

(``kamailio.subscriber`` is a view of the accounts and ``kamailio.location``
usrloc's own: neither needs writing here.)"""
from __future__ import annotations

import ipaddress
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

import psycopg
import psycopg.sql

from ..config import EngineNode, Settings, node_sip
from ..errors import DustelError
from . import engines

DISPATCH_SET = 1
LAST_RESORT_SET = 2          # the same nodes, never probed (flag 4): when set 1 has none alive
SKIP_PROBING = 4
CARRIER_GROUP = 1
# table -> the RPC that makes Kamailio read it again
RELOADS = {"dispatcher": "dispatcher.reload", "address": "permissions.addressReload"}


def dispatcher_rows(s: Settings) -> list[tuple[int, str, int, int, str, str]]:
    """(setid, destination, flags, priority, attrs, description) of every engine node."""
    rows = []
    for node in (*s.ami_nodes, *s.esl_nodes):
        sip = node_sip(s, node)
        host, _, port = sip.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            ok = port.isdigit() and 0 < int(port) < 65536
        except ValueError:
            ok = False
        if not ok:
            raise DustelError(f"node {node.name}.sip", f"{sip[:40]!r} must be <IP address>:<port>")
        rows.append((DISPATCH_SET, f"sip:{sip}", 0, 0, "", node.name[:64]))
        rows.append((LAST_RESORT_SET, f"sip:{sip}", SKIP_PROBING, 0, "", node.name[:64]))
    return sorted(rows)


def address_rows(s: Settings) -> list[tuple[int, str, int, int, str]]:
    """(grp, ip_addr, mask, port, tag): the carrier's networks."""
    nets = map(ipaddress.ip_network, engines.carrier_match(s))
    return sorted((CARRIER_GROUP, str(n.network_address), n.prefixlen, 0, "carrier") for n in nets)


def _current(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "dispatcher": sorted(tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in conn.execute(
            "SELECT setid, destination, flags, priority, attrs, description FROM kamailio.dispatcher")),
        "address": sorted(tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in conn.execute(
            "SELECT grp, ip_addr, mask, port, tag FROM kamailio.address")),
    }


def plan(conn: psycopg.Connection, s: Settings) -> list[str]:
    """The edge tables that differ from the settings (nothing written)."""
    want = {"dispatcher": dispatcher_rows(s), "address": address_rows(s)}
    have = _current(conn)
    return [t for t in RELOADS if want[t] != have[t]]


def sync(conn: psycopg.Connection, s: Settings) -> list[str]:
    """Make the edge tables what the settings say, inside the caller's
    transaction; the tables that changed."""
    changed = plan(conn, s)
    if "dispatcher" in changed:
        conn.execute("DELETE FROM kamailio.dispatcher")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO kamailio.dispatcher (setid, destination, flags, priority, attrs, "
                            "description) VALUES (%s, %s, %s, %s, %s, %s)", dispatcher_rows(s))
    if "address" in changed:
        conn.execute("DELETE FROM kamailio.address")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO kamailio.address (grp, ip_addr, mask, port, tag) "
                            "VALUES (%s, %s, %s, %s, %s)", address_rows(s))
    return changed


# what Kamailio's database role may do (dustel's schema owner grants it:
# `dustel db grant-edge ROLE`); the role itself, its password and its
# search_path = kamailio are made by the database's administrator (the Ansible
# postgresql role): README, Cluster
GRANTS = (
    "GRANT USAGE ON SCHEMA kamailio TO {role}",
    "GRANT SELECT ON ALL TABLES IN SCHEMA kamailio TO {role}",
    "GRANT INSERT, UPDATE, DELETE ON kamailio.location, kamailio.location_attrs TO {role}",
    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA kamailio TO {role}",
)


def grant(conn: psycopg.Connection, role: str) -> None:
    """Grant an existing role what Kamailio needs of dustel's tables (idempotent)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise DustelError("role", "must be a lower-case PostgreSQL identifier (letters, digits, _)")
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        raise DustelError("role", f"{role} does not exist (the database's administrator makes it: README, Cluster)")
    for stmt in GRANTS:
        conn.execute(psycopg.sql.SQL(stmt).format(role=psycopg.sql.Identifier(role)))


def rpc(node: EngineNode, method: str, *params: Any, timeout: float = 5.0) -> Any:
    """One JSON-RPC call to an edge node (jsonrpcs over HTTP on its
    ``rpc_port``); its ``result``, or a DustelError naming the node."""
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()
    req = urllib.request.Request(f"http://{node.host}:{node.rpc_port}/RPC", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:      # noqa: S310 (http to a configured node)
            answer = json.loads(r.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise DustelError(f"edge node {node.name}", f"JSON-RPC {method} failed: {exc}") from None
    if "error" in answer:
        raise DustelError(f"edge node {node.name}", f"JSON-RPC {method}: {answer['error']}")
    return answer.get("result")


def reload(s: Settings, tables: Iterable[str] = RELOADS) -> list[str]:
    """Ask every edge node to read ``tables`` again (by default all of them:
    a node that missed an earlier reload — down, unreachable — catches up,
    though the tables no longer differ from the render's); a line per node
    and table.  Every node is tried; those that failed are named together
    in one DustelError at the end."""
    out, failed = [], []
    for node in s.edge_nodes:
        for table in tables:
            try:
                rpc(node, RELOADS[table])
            except DustelError as exc:
                failed.append(f"{exc.field}: {exc.rule}")
                continue
            out.append(f"{node.name}: {RELOADS[table]} ok")
    if failed:
        raise DustelError("edge reload", "; ".join(failed) + (" (reloaded: " + ", ".join(out) + ")" if out else ""))
    return out
