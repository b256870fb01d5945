"""The cluster's throughput (issue 27): registrations/s and calls/s through
the SIP edge (Kamailio: digest auth against the HA1 view, locations in
PostgreSQL, dispatcher) to two Asterisk nodes, beside one Asterisk node
taking SIP itself (its own registrar and digest auth) — the same machine,
the same database, the same policy servers' code, sipp as the phones and
the carrier.

    .venv/bin/python bench/cluster.py [--accounts 5] [--registrations 1000] [--calls 200]
                                      [--in-flight 20] [--hold-ms 1000]

Needs root and the cluster test's parts (tests/cluster/harness.py:
PostgreSQL 15 primary + synchronous standby, Kamailio, the Asterisk chroot,
sipp); without them it says why and exits 1.  The edge's flood limit is
raised for the run (all load comes from one address).  Each figure is
requests completed / wall time of one sipp run pushing as fast as the
system answers (``-r`` high, a bounded number in flight), so it is the
system's rate, not sipp's pace.  A call: INVITE, the digest challenge,
INVITE again, the policy's decision and reservation, the carrier's 200,
ACK, ``--hold-ms`` of talk, BYE, the settlement.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dustel.callpath import calls  # noqa: E402
from dustel.provisioning import accounts, tenants  # noqa: E402
from dustel.render import service  # noqa: E402
from dustel.testing.asterisk import Unavailable as AsteriskUnavailable  # noqa: E402
from dustel.testing.cluster import Service, Unavailable, free_port, listening, scratch_dir  # noqa: E402
from tests.cluster import harness  # noqa: E402

SOLO_SIP, SOLO_POLICY = "127.0.0.6", "127.0.0.7"
PASSWORD = "Bench-Passw0rd"


def bench_accounts(cl: harness.Cluster, n: int) -> list[tuple[str, str]]:
    """``n`` accounts (five per starter tenant, lines unlimited, money
    enough): (username, domain)."""
    out: list[tuple[str, str]] = []
    with cl.db() as conn:
        conn.execute("UPDATE plans SET lines_in = 100000, lines_out = 100000 WHERE code = 'starter'")
        while len(out) < n:
            with conn.transaction():
                t = tenants.add(conn, name=f"Bench {len(out)}", customer_type="private", plan="starter")
                tenants.add_address(conn, t["id"], kind="seat", street="Teststraße 1", postcode="40213",
                                    city="Düsseldorf", area_code="0211")
            domain = conn.execute("SELECT sip_domain FROM tenants WHERE id = %s", (t["id"],)).fetchone()["sip_domain"]
            calls.run_sync(conn, calls.topup(t["id"], 1_000_000, f"bench:{t['id']}"))
            for _ in range(min(5, n - len(out))):
                with conn.transaction():
                    out.append((accounts.add(conn, t["id"], password=PASSWORD)["username"], domain))
    return out


def phones(cl: harness.Cluster, scenario: str, target: str, accs: list[tuple[str, str]], n: int,
           in_flight: int, hold_ms: int = 0) -> tuple[int, int, float]:
    """(successful, failed, seconds): ``n`` scenarios from as many phones as
    accounts (one sipp each — sipp's digest takes one username per process),
    at most ``in_flight`` at once over all."""
    each, limit = max(1, n // len(accs)), max(1, in_flight // len(accs))
    t0 = time.monotonic()
    procs = []
    for i, (user, domain) in enumerate(accs):
        screen = cl.base / f"screen-{scenario}-{target.replace(':', '-')}-{i}.txt"
        screen.unlink(missing_ok=True)
        procs.append((screen, subprocess.Popen(
            [cl.sipp, "-sf", str(harness.DATA / scenario), target, "-set", "domain", domain,
             *(["-s", user, "-set", "contact", f"{harness.PHONE}:5999"] if "register" in scenario
               else ["-s", "0211123456", "-set", "user", user]), "-au", user, "-ap", PASSWORD, "-i", harness.PHONE,
             "-p", str(free_port([harness.PHONE])), "-mp", str(free_port([harness.PHONE])),
             "-r", "1000", "-l", str(limit), "-m", str(each), "-d", str(hold_ms), "-timeout", "300s", "-nostdin",
             "-trace_screen", "-screen_file", str(screen), "-trace_err", "-error_file", str(screen) + ".err"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cl.base)))
    for _, p in procs:
        _, err = p.communicate(timeout=400)
        if p.returncode not in (0, 1):        # 1: some scenarios failed (counted); else sipp itself failed
            sys.exit(f"bench/cluster.py: sipp exited {p.returncode}: {err.decode(errors='replace')[-500:]}")
    seconds = time.monotonic() - t0
    texts = [screen.read_text(errors="replace") if screen.exists() else "" for screen, _ in procs]
    return sum(_count(t, "Successful call") for t in texts), sum(_count(t, "Failed call") for t in texts), seconds


def _count(text: str, what: str) -> int:
    found = re.findall(rf"{what}\s+\|\s+\S+\s+\|\s+(\d+)", text)
    return int(found[-1]) if found else 0


def solo_node(cl: harness.Cluster, started: list[Any]) -> tuple[str, Any]:
    """One more Asterisk from the chroot, rendered as a single box (no edge:
    its own registrar and digest auth), with its own policy server."""
    sip_port, agi_port, ami_port = free_port([SOLO_SIP]), free_port([SOLO_POLICY]), free_port()
    s = replace(cl.settings, edge_nodes=(), ami_nodes=(), agi_servers="", agi_host=SOLO_POLICY, agi_port=agi_port,
                sip_bind_host=SOLO_SIP, sip_port=sip_port, ami_host="127.0.0.1", ami_port=ami_port)
    cfg = cl.base / "solo.toml"
    cfg.write_text(re.sub(r"(?s)\[\[.*", "", (cl.base / "dustel.toml").read_text())
                   .replace(f'agi_servers = "{cl.settings.agi_servers}"\n', ""))
    env = {**cl.env, "DUSTEL_CONFIG": str(cfg), "DUSTEL_AGI_NODE": "solo"}
    policy = Service("policy-solo", ["agi", "serve", "--host", SOLO_POLICY, "--port", str(agi_port)], env,
                     cl.base / "policy-solo.log")
    policy.start(lambda: listening(SOLO_POLICY, agi_port))
    started.append(policy)
    with cl.db() as conn, conn.transaction():
        files = service.render_files(conn, s, ["asterisk"])["asterisk"]
    ast = next(iter(cl.asterisks.values())).instance("solo")
    ast.start({**files, "rtp.conf": "[general]\nrtpstart=24000\nrtpend=24999\n"}, dirs=[s.fax_spool_dir])
    started.append(ast)
    return f"{SOLO_SIP}:{sip_port}", ast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=5, help="phones (one sipp each)")
    ap.add_argument("--registrations", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--in-flight", type=int, default=20, help="scenarios in flight at most, over all phones")
    ap.add_argument("--hold-ms", type=int, default=1000, help="how long each call talks before the phone hangs up")
    ap.add_argument("--edge-failover-ms", type=int, default=0,
                    help="the edge's fr_timer (edge_failover_ms; 0: dustel's default, 2000)")
    args = ap.parse_args()
    try:
        sipp_path, chroot = harness.check()
    except (Unavailable, AsteriskUnavailable) as exc:
        print(f"bench/cluster.py: cannot run here: {exc}")
        sys.exit(1)
    base = scratch_dir("dustel-bench-cluster-")
    started: list[Any] = []
    try:
        cl = harness.start(base, sipp_path, chroot, started, flood_requests=10_000_000,
                           failover_ms=args.edge_failover_ms)
        accs = bench_accounts(cl, args.accounts)
        harness.rerender(cl)                          # the nodes behind the edge learn the new accounts
        solo, _ = solo_node(cl, started)
        edge = f"{harness.EDGE}:{cl.settings.edge_nodes[0].port}"
        rows = []
        for what, scenario, n in (("registrations", "register.xml", args.registrations),
                                  ("calls", "call.xml", args.calls)):
            line: list[Any] = [what]
            for target in (edge, solo):
                ok, failed, seconds = phones(cl, scenario, target, accs, n, args.in_flight,
                                             args.hold_ms if scenario == "call.xml" else 0)
                line.append((ok / seconds if seconds else 0.0, ok, failed))
            rows.append(line)
        with cl.db() as conn:
            nodes = {r["node"]: r["n"] for r in conn.execute(
                "SELECT node, count(*) AS n FROM calls GROUP BY node ORDER BY node")}
        print(f"\ncluster on this machine ({os.cpu_count()} cores), {args.accounts} phones, at most "
              f"{args.in_flight} registrations or calls in flight (sipp), calls talking {args.hold_ms} ms, "
              f"edge_failover_ms {cl.settings.edge_failover_ms}")
        print(f"{'':14} {'edge -> 2 Asterisk nodes':>30} {'1 Asterisk node direct':>30}")
        for what, (r1, ok1, f1), (r2, ok2, f2) in rows:
            print(f"{what + '/s':14} {r1:>14.0f} ({ok1} ok, {f1} failed) {r2:>14.0f} ({ok2} ok, {f2} failed)")
        print(f"calls per node: {nodes}")
    finally:
        harness.stop(started)
        if not os.environ.get("DUSTEL_KEEP_CLUSTER"):
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
