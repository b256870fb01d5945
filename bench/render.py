"""Render benchmark (F-10): synthetic providers of 1 000, 10 000 and
100 000 SIP accounts; seconds (gather + generate, per engine) and peak
memory of the rendering process.  Target: 100 000 accounts < 3 s per
engine, linear.

    .venv/bin/python bench/render.py [SIZES…]

Data is bulk-loaded with COPY and triggers off (session_replication_role
= replica): the benchmark measures rendering, not provisioning.  Each
(size, engine) renders in a child process so its peak RSS is its own."""
from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._db import fresh_database  # noqa: E402

PER_TENANT = 100


def populate(url: str, accounts: int) -> None:
    tenants = max(1, accounts // PER_TENANT)
    with psycopg.connect(url) as c:
        c.execute("SET session_replication_role = replica")
        with c.cursor().copy("COPY tenants (id, name, customer_type, plan, sip_domain, number_quota)"
                             " FROM STDIN") as cp:
            for t in range(1, tenants + 1):
                cp.write_row((t, f"Tenant {t} GmbH", "business", "business_flex", f"t{t}.sip.dustel.de", 1000))
        with c.cursor().copy("COPY addresses (tenant_id, kind, street, postcode, city, area_code) FROM STDIN") as cp:
            for t in range(1, tenants + 1):
                cp.write_row((t, "seat", "Königsallee 1", "40212", "Düsseldorf", "211"))
        with c.cursor().copy("COPY sip_accounts (tenant_id, username, ha1, display_name, tls_mode, t38,"
                             " allowed_nets, caller_id, location_area_code) FROM STDIN") as cp:
            for i in range(accounts):
                t = i // PER_TENANT + 1
                user = f"000387{100001 + i:06d}"
                ha1 = hashlib.md5(f"{user}:t{t}.sip.dustel.de:pw{i}".encode()).hexdigest()
                cp.write_row((t, user, ha1, f"Mitarbeiter {i} <Büro>", ("off", "tls_srtp")[i % 2],
                              ("off", "enable")[i % 3 == 0], "{192.0.2.0/24}" if i % 5 == 0 else "{}",
                              f"+49211{t:05d}{i % PER_TENANT:02d}", "211"))
        with c.cursor().copy("COPY numbers (tenant_id, e164, block_size, target_kind, account_id) FROM STDIN") as cp:
            for t in range(1, tenants + 1):
                cp.write_row((t, f"+49211{t:05d}", 100, "account", (t - 1) * PER_TENANT + 1))
        c.execute("SELECT setval('tenants_id_seq', %s)", (tenants,))
        c.commit()


def child(url: str, engine: str) -> None:
    from dustel.config import Settings
    from dustel.render import service

    t0 = time.perf_counter()
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        s = Settings(state_dir=Path("/srv/dustel"), esl_password="bench-esl-secret", ami_secret="bench-ami-secret")
        files = service.render_files(conn, s, [engine])[engine]
    secs = time.perf_counter() - t0
    size = sum(len(v) for v in files.values())
    print(json.dumps({"seconds": secs, "bytes": size, "files": len(files),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    sizes = [int(a) for a in sys.argv[1:]] or [1_000, 10_000, 100_000]
    print(f"{'accounts':>9} {'engine':<11} {'seconds':>8} {'s/1k acc':>9} {'MB out':>7} {'files':>6}"
          f" {'peak RSS MB':>12}")
    for n in sizes:
        url = fresh_database(f"dustel_bench_render_{n}")
        populate(url, n)
        for engine in ("freeswitch", "asterisk"):
            r = subprocess.run([sys.executable, __file__, "--child", url, engine], capture_output=True, text=True,
                               check=True)
            d = json.loads(r.stdout)
            print(f"{n:>9} {engine:<11} {d['seconds']:>8.2f} {d['seconds'] / n * 1000:>9.4f}"
                  f" {d['bytes'] / 1e6:>7.1f} {d['files']:>6} {d['peak_rss_mb']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
