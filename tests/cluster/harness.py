"""The cluster on one machine (issue 27), real parts on loopback addresses:

  127.0.0.10      Kamailio (the SIP edge), its JSON-RPC on another port
  127.0.0.2/.3    Asterisk nodes ast1, ast2 (SIP); their AMI on 127.0.0.1 (two ports)
  127.0.0.4/.5    two policy servers (dustel agi serve)
  127.0.0.1       two controllers (dustel controller run)
  127.0.0.21/.22  PostgreSQL primary and streaming standby (synchronous)
  127.0.0.30      the phone (sipp): registers, calls, answers
  127.0.0.40      the carrier (sipp): answers outbound calls, places inbound ones

Asterisk reaches the policy servers from 127.0.0.1 whatever its SIP
address (the kernel picks loopback's source address): both nodes' AMI
``host`` is 127.0.0.1, and each request names its node (``?node=``).

``start`` brings it up (a few seconds), ``stop`` takes it down; the
cluster test (conftest.py: once per module, skipped with the reason where
a part cannot run) and bench/cluster.py use it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dustel.callpath import calls
from dustel.config import load_settings
from dustel.controller import lease
from dustel.provisioning import numbers
from dustel.render import edge, service
from dustel.testing.asterisk import Asterisk
from dustel.testing.cluster import (
    Kamailio,
    Postgres,
    Service,
    free_port,
    json_rpc_ready,
    listening,
    multi_host_url,
    sipp_available,
    wait_for,
)
from tests.factories import PASSWORD, account, tenant

DATA = Path(__file__).resolve().parents[1] / "data" / "cluster"
EDGE, PHONE, CARRIER = "127.0.0.10", "127.0.0.30", "127.0.0.40"
NODES = {"ast1": "127.0.0.2", "ast2": "127.0.0.3"}
POLICY = ("127.0.0.4", "127.0.0.5")
PG_HOSTS = ("127.0.0.21", "127.0.0.22")
NUMBER = "+492115550100"
AMI_SECRET = "cluster-ami-secret"


@dataclass
class Cluster:
    base: Path
    sipp: str
    pg: list[Postgres]
    db_url: str                 # the multi-host URL every dustel process uses
    env: dict[str, str]
    settings: Any
    kamailio: Kamailio
    asterisks: dict[str, Asterisk]
    policy: list[Service]
    controllers: list[Service] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tenant_id: int = 0
    user: str = ""
    domain: str = ""
    phone_port: int = 0
    phone_log: Path = Path()
    carrier_log: Path = Path()
    carrier_port: int = 0

    # ------------------------------------------------------------ SIP
    def sipp_run(self, scenario: str, service_: str, source: str, *extra: str, timeout: int = 30,
                 target: str | None = None, port: int | None = None) -> subprocess.CompletedProcess[str]:
        log = self.base / f"sipp-{scenario}-{service_}-{time.monotonic_ns()}.log"
        r = subprocess.run(
            [self.sipp, "-sf", str(DATA / scenario), target or f"{EDGE}:{self.settings.edge_nodes[0].port}",
             "-s", service_, "-i", source, "-p", str(port or free_port([source])), "-mp", str(free_port([source])),
             "-m", "1", "-timeout", f"{timeout}s", "-timeout_error", "-trace_msg", "-message_file", str(log),
             "-nostdin", *extra],
            capture_output=True, text=True, timeout=timeout + 15, cwd=self.base)
        r.stdout = log.read_text(errors="replace") if log.exists() else ""
        return r

    def call(self, dialed: str, timeout: int = 30, hold_ms: int = 1000) -> subprocess.CompletedProcess[str]:
        """The phone calls ``dialed`` through the edge (digest against the HA1), talks ``hold_ms``."""
        return self.sipp_run("call.xml", dialed, PHONE, "-set", "user", self.user, "-set", "domain", self.domain,
                             "-au", self.user, "-ap", PASSWORD, "-d", str(hold_ms), timeout=timeout)

    def controller(self, name: str) -> Service:
        svc = Service(name, ["controller", "run"], self.env, self.base / f"{name}.log")
        svc.start()
        self.procs.append(svc)
        self.controllers.append(svc)
        return svc

    def lease_holders(self) -> int:
        with self.db() as c:
            return len(c.execute(lease.holders_sql()).fetchall())

    def carrier_call(self, number: str = NUMBER) -> subprocess.CompletedProcess[str]:
        return self.sipp_run("carrier_call.xml", number, CARRIER)

    def register(self) -> subprocess.CompletedProcess[str]:
        return self.sipp_run("register.xml", self.user, PHONE, "-set", "domain", self.domain,
                             "-set", "contact", f"{PHONE}:{self.phone_port}", "-au", self.user, "-ap", PASSWORD)

    # ------------------------------------------------------------ state
    def db(self) -> psycopg.Connection:
        return psycopg.connect(self.db_url, row_factory=dict_row, autocommit=True)

    def call_rows(self, since: Any = None) -> list[dict[str, Any]]:
        with self.db() as c:
            return c.execute("SELECT * FROM calls WHERE %s::timestamptz IS NULL OR started_at > %s "
                             "ORDER BY started_at", (since, since)).fetchall()

    def now(self) -> Any:
        with self.db() as c:
            return c.execute("SELECT clock_timestamp() AS t").fetchone()["t"]  # type: ignore[index]

    def settled(self, call_id_like: str = "%", since: Any = None, n: int = 1, timeout: float = 20) \
            -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            rows = [r for r in self.call_rows(since) if re.fullmatch(call_id_like.replace("%", ".*"), r["call_id"])]
            return rows if len(rows) >= n and all(r["state"] == "settled" for r in rows) else None
        return wait_for(done, timeout, f"{n} settled call(s)")

    def carrier_invites(self) -> list[str]:
        text = self.carrier_log.read_text(errors="replace") if self.carrier_log.exists() else ""
        return re.findall(r"^INVITE (sip:\S+) SIP/2\.0", text, re.M)

    def phone_invites(self) -> int:
        text = self.phone_log.read_text(errors="replace") if self.phone_log.exists() else ""
        return len(re.findall(r"^INVITE sip:", text, re.M))

    def rpc(self, method: str, *params: Any) -> Any:
        return edge.rpc(self.settings.edge_nodes[0], method, *params)


def _roles(url: str, kamailio_password: str) -> None:
    """Kamailio's role, as the database's administrator makes it (its schema
    first on the search path), then dustel's grants (README, Cluster)."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE ROLE kamailio LOGIN PASSWORD '{kamailio_password}'")
        c.execute("ALTER ROLE kamailio SET search_path = kamailio")
    r = subprocess.run([sys.executable, "-m", "dustel.cli", "db", "grant-edge", "kamailio"],
                       env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _config(base: Path, rpc_port: int, sip_ports: dict[str, int], ami_ports: dict[str, int], agi_ports: list[int],
            edge_port: int, carrier_port: int, flood_requests: int, failover_ms: int = 0) -> Path:
    nodes = "".join(f'[[ami_nodes]]\nname = "{n}"\nhost = "127.0.0.1"\nport = {ami_ports[n]}\nusername = "dustel"\n'
                    f'sip = "{ip}:{sip_ports[n]}"\n' for n, ip in NODES.items())
    text = (f'agi_servers = "{",".join(f"{h}:{p}" for h, p in zip(POLICY, agi_ports, strict=True))}"\n'
            f'carrier_host = "{CARRIER}:{carrier_port}"\ncarrier_match = "{CARRIER}/32"\n'
            f'moh_dir = "/var/lib/dustel/moh"\nami_acl = "127.0.0.1/32"\n'
            + (f"edge_flood_requests = {flood_requests}\n" if flood_requests else "")
            + (f"edge_failover_ms = {failover_ms}\n" if failover_ms else "")
            + f'[[edge_nodes]]\nname = "edge1"\nhost = "{EDGE}"\nport = {edge_port}\nrpc_port = {rpc_port}\n'
            + nodes)
    cfg = base / "dustel.toml"
    cfg.write_text(text)
    return cfg


def check() -> tuple[str, Asterisk]:
    """sipp and the Asterisk chroot, or Unavailable / asterisk.Unavailable with the reason."""
    Postgres.check()
    Kamailio.check()
    sipp = sipp_available()
    return sipp, Asterisk.ensure_built()


def start(base: Path, sipp: str, chroot: Asterisk, started: list[Any], flood_requests: int = 0,
          failover_ms: int = 0) -> Cluster:
    """Bring the cluster up in ``base``; every part started is appended to
    ``started`` (``stop`` takes them down, last first).  ``flood_requests``,
    ``failover_ms``: the edge's flood limit per source address and its
    fr_timer (0: the defaults)."""
    pg_port = free_port(PG_HOSTS)
    primary = Postgres(base / "pg1", PG_HOSTS[0], pg_port, "cluster-pg-secret")
    standby = Postgres(base / "pg2", PG_HOSTS[1], pg_port, "cluster-pg-secret")
    primary.init_primary()
    primary.start()
    started.append(primary)
    with psycopg.connect(primary.url(), autocommit=True) as c:
        c.execute("CREATE DATABASE dustel")
    standby.init_standby(primary, "standby1")
    standby.start()
    started.append(standby)
    # the money trade-off (README, Cluster): a commit returns once the standby has it
    with psycopg.connect(primary.url(), autocommit=True) as c:
        c.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
        c.execute("SELECT pg_reload_conf()")
        wait_for(lambda: c.execute("SELECT 1 FROM pg_stat_replication WHERE application_name = 'standby1' "
                                   "AND sync_state = 'sync'").fetchone(), 20, "the standby to be synchronous")
    db_url = multi_host_url([primary, standby], "dustel")
    # through the host list, as every dustel process connects (yoyo parses one host: db.single_host)
    r = subprocess.run([sys.executable, "-m", "dustel.cli", "db", "migrate"],
                       env={**os.environ, "DATABASE_URL": db_url}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "applied" in r.stdout, r.stdout + r.stderr
    _roles(db_url, "cluster-kamailio-secret")

    edge_port = free_port([EDGE])
    rpc_port = free_port([EDGE])
    sip_ports = {n: free_port([ip]) for n, ip in NODES.items()}
    ami_ports = {n: free_port() for n in NODES}
    agi_ports = [free_port([h]) for h in POLICY]
    carrier_port = free_port([CARRIER])
    cfg = _config(base, rpc_port, sip_ports, ami_ports, agi_ports, edge_port, carrier_port, flood_requests,
                  failover_ms)
    env = {**os.environ, "DATABASE_URL": db_url, "DUSTEL_CONFIG": str(cfg), "DUSTEL_STATE_DIR": str(base / "state"),
           "DUSTEL_AMI_SECRET": AMI_SECRET,
           "DUSTEL_KAMAILIO_DB_URL": f"postgres://kamailio:cluster-kamailio-secret@{PG_HOSTS[0]},{PG_HOSTS[1]}:"
                                     f"{pg_port}/dustel"}
    settings = load_settings(env=env)

    cl = Cluster(base, sipp, [primary, standby], db_url, env, settings, None, {}, [],  # type: ignore[arg-type]
                 procs=started)
    with cl.db() as conn:
        conn.execute("INSERT INTO rates (prefix, cents_per_minute) VALUES ('49', 1)")
        t = tenant(conn, plan="starter", area="0211")
        cl.tenant_id, cl.user = t["id"], account(conn, t["id"])
        cl.domain = conn.execute("SELECT sip_domain FROM tenants WHERE id = %s", (t["id"],)).fetchone()["sip_domain"]
        with conn.transaction():
            numbers.add(conn, t["id"], NUMBER)
            numbers.assign(conn, NUMBER, "account", cl.user)
        conn.execute("UPDATE tenants SET max_call_seconds = 30 WHERE id = %s", (t["id"],))
        calls.run_sync(conn, calls.topup(t["id"], 5000, "cluster:start"))
        with conn.transaction():
            rendered = service.render_files(conn, settings, ["asterisk", "kamailio"])
            edge.sync(conn, settings)

    # the edge
    kcfg = base / "kamailio.cfg"
    kcfg.write_text(rendered["kamailio"]["nodes/edge1/kamailio.cfg"])
    cl.kamailio = Kamailio(kcfg, base / "kamailio", env={"PGTARGETSESSIONATTRS": "read-write",
                                                                  "PGCONNECT_TIMEOUT": "3"})
    cl.kamailio.start(json_rpc_ready(settings.edge_nodes[0]))
    started.append(cl.kamailio)

    # the policy servers
    for host, port in zip(POLICY, agi_ports, strict=True):
        svc = Service(f"policy@{host}", ["agi", "serve", "--host", host, "--port", str(port)], env,
                      base / f"policy-{host}.log")
        svc.start(lambda h=host, p=port: listening(h, p))
        started.append(svc)
        cl.policy.append(svc)

    # the carrier (answers outbound calls, through the edge) and the engine nodes
    cl.carrier_port, cl.carrier_log = carrier_port, base / "carrier.log"
    carrier = subprocess.Popen([sipp, "-sf", str(DATA / "answer.xml"), "-i", CARRIER, "-p", str(carrier_port),
                                "-mp", str(free_port([CARRIER])), "-trace_msg", "-message_file", str(cl.carrier_log),
                                "-nostdin"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base)
    started.append(carrier)
    for i, name in enumerate(NODES):
        ast = chroot.instance(name)
        ast.add_moh_class_dir(f"{settings.moh_dir}/default/8000")
        rtp = f"[general]\nrtpstart={21000 + 1000 * i}\nrtpend={21999 + 1000 * i}\n"
        ast.start({**node_files(rendered["asterisk"], name), "rtp.conf": rtp}, dirs=[settings.fax_spool_dir])
        started.append(ast)
        cl.asterisks[name] = ast
    # the edge sees both nodes alive (its OPTIONS probes)
    wait_for(lambda: _active(cl) == set(NODES), 20, "the edge to probe both nodes alive")

    # the phone: registered through the edge, answering on its contact
    cl.phone_port, cl.phone_log = free_port([PHONE]), base / "phone.log"
    return cl


def node_files(rendered: dict[str, str], name: str) -> dict[str, str]:
    """A node's /etc/asterisk from the render: the shared files and its own
    (nodes/<name>/...) beside them, as the Ansible role installs them."""
    shared = {k: v for k, v in rendered.items() if not k.startswith("nodes/")}
    return {**shared, **{k.rsplit("/", 1)[1]: v for k, v in rendered.items() if k.startswith(f"nodes/{name}/")}}


def rerender(cl: Cluster) -> None:
    """Render the database as it is now into every node and reload it (new accounts, numbers)."""
    with cl.db() as conn, conn.transaction():
        rendered = service.render_files(conn, cl.settings, ["asterisk"])["asterisk"]
    for name, ast in cl.asterisks.items():
        if ast.proc is not None and ast.proc.poll() is None:
            ast.update_config(node_files(rendered, name))
            ast.cli("module reload res_pjsip.so")
            ast.cli("dialplan reload")


def _active(cl: Cluster) -> set[str]:
    """The engine nodes the edge's dispatcher holds active (dispatcher.list)."""
    names = {f"sip:{n.sip}": n.name for n in cl.settings.ami_nodes}
    return {names.get(d["DEST"]["URI"], d["DEST"]["URI"]) for s in cl.rpc("dispatcher.list")["RECORDS"]
            if s["SET"]["ID"] == edge.DISPATCH_SET
            for d in s["SET"]["TARGETS"] if d["DEST"]["FLAGS"].startswith("A")}


def start_phone(cl: Cluster) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([cl.sipp, "-sf", str(DATA / "answer.xml"), "-i", PHONE, "-p", str(cl.phone_port),
                             "-mp", str(free_port([PHONE])), "-trace_msg", "-message_file", str(cl.phone_log),
                             "-nostdin"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cl.base)
    cl.procs.append(proc)
    return proc


def stop(started: list[Any]) -> None:
    for part in reversed(started):
        try:
            part.stop() if hasattr(part, "stop") else (part.terminate(), part.wait(timeout=10))
        except Exception:   # noqa: BLE001 (take down the rest)
            pass
