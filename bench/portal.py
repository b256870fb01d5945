"""Kundencenter benchmark (F-13): the call list of a tenant with 1 000 000
calls through the real API (``dustel portal serve`` under uvicorn, a
separate process), requests/s and latency percentiles, printed.

    .venv/bin/python bench/portal.py [CALLS] [REQUESTS] [CLIENTS]

The calls are generated in SQL first (untimed); then CLIENTS threads ask
``GET /api/v1/calls?limit=50`` (the newest page), and as many again follow
``next`` cursors deep into the list (keyset pages, each one index range of
``calls_tenant_started``).  The query plan is printed too."""
from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._db import fresh_database  # noqa: E402
from dustel.portal import itemised, users  # noqa: E402
from dustel.provisioning import tenants  # noqa: E402

PW = "Bench-Passw0rd-1"


def setup(url: str, calls: int) -> int:
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as c:
        with c.transaction():
            t = tenants.add(c, name="Bench GmbH", customer_type="business", plan="business_flex")
            tenants.add_address(c, t["id"], kind="seat", street="Benchweg 1", postcode="40213", city="Düsseldorf",
                                area_code="0211")
            other = tenants.add(c, name="Other", customer_type="business", plan="business_flex")
            users.add(c, t["id"], "bench-admin", "admin", PW)
        t0 = time.perf_counter()
        for tid, n in ((t["id"], calls), (other["id"], calls // 10)):
            c.execute("""INSERT INTO calls (node, call_id, tenant_id, account, direction, route, destination, callee,
                                            zone, cents_per_minute, increment, max_seconds, state, started_at,
                                            expires_at, billsec, charged_cents, settled_at)
                         SELECT 'fs' || (i %% 4), 'c-' || %(t)s || '-' || i, %(t)s,
                                '000387' || lpad((i %% 50)::text, 6, '0'), 'out', 'external',
                                '49211' || (1000000 + i %% 8999999), '+49211' || (1000000 + i %% 8999999),
                                'de_fixed', 9, 1, 3600, 'settled',
                                now() - make_interval(secs => i * 30), now() - make_interval(secs => i * 30 - 3600),
                                i %% 600, (i %% 600) * 9 / 60, now() - make_interval(secs => i * 30 - 600)
                           FROM generate_series(1, %(n)s) i""", {"t": tid, "n": n})
        c.execute("ANALYZE calls")
        print(f"setup (untimed): {calls} calls of tenant {t['id']} (+{calls // 10} of another) "
              f"in {time.perf_counter() - t0:.1f} s")
        plan = c.execute("EXPLAIN " + itemised._FIRST, {"t": t["id"], "n": 50}).fetchall()
        print("plan, first page:  " + plan[0]["QUERY PLAN"].strip() + " / " + plan[1]["QUERY PLAN"].strip())
    return int(t["id"])


def request(port: int, path: str, token: str, conn: http.client.HTTPConnection | None = None) \
        -> tuple[dict, float, http.client.HTTPConnection]:
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    body = r.read()
    dt_ = time.perf_counter() - t0
    if r.status != 200:
        raise RuntimeError(f"{path}: {r.status} {body[:200]!r}")
    return json.loads(body), dt_, conn


def worker(port: int, token: str, per: int, deep: bool, lat: list[float], lock: threading.Lock) -> None:
    """One client: ``per`` requests on one keep-alive connection; ``deep``
    follows each page's cursor."""
    conn = None
    path = "/api/v1/calls?limit=50"
    mine = []
    for _ in range(per):
        data, d, conn = request(port, path, token, conn)
        mine.append(d)
        if deep and data["next"]:
            path = f"/api/v1/calls?limit=50&before={data['next']}"
    if conn is not None:
        conn.close()
    with lock:
        lat.extend(mine)


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    total = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
    clients = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    url = fresh_database("dustel_bench_portal")
    setup(url, calls)
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "DATABASE_URL": url, "DUSTEL_PORTAL_SECRET": "bench-secret-" + os.urandom(8).hex(),
           "DUSTEL_PORTAL_PORT": str(port), "DUSTEL_STATE_DIR": str(Path(".dustel/bench-portal").resolve())}
    server = subprocess.Popen([sys.executable, "-m", "dustel.cli", "portal", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("POST", "/api/v1/login", body=json.dumps({"login": "bench-admin", "password": PW}),
                          headers={"Content-Type": "application/json"})
                token = json.loads(c.getresponse().read())["token"]
                c.close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("portal did not start: " + (server.stderr.read().decode()
                                                                 if server.poll() is not None else "timeout")) from None
                time.sleep(0.2)
        for label, deep in (("newest page", False), ("keyset pages, walking deeper", True)):
            lat: list[float] = []
            lock = threading.Lock()
            per = total // clients
            request(port, "/api/v1/calls?limit=50", token)[2].close()          # warm
            t0 = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(port, token, per, deep, lat, lock))
                       for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            lat.sort()
            q = statistics.quantiles(lat, n=100)
            print(f"GET /api/v1/calls ({label}), tenant of {calls} calls, {len(lat)} requests, {clients} clients: "
                  f"{len(lat) / wall:.0f} requests/s, p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
                  f"max {lat[-1] * 1000:.1f} ms")
    finally:
        server.terminate()
        server.wait(20)


if __name__ == "__main__":
    main()
