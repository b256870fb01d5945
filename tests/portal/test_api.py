"""Issue 28: the Kundencenter's API against real PostgreSQL — login,
roles, sessions, lockout, every endpoint with another tenant's ids, bad
input (field and rule, nothing written), and each concern through the
CLI's own functions."""
from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from dustel.portal import users
from tests.conftest import Cli, dump
from tests.fax_support import fax_pdf
from tests.portal.conftest import PW, SECRET, Api, login


def test_login_roles_and_logout(app_client: TestClient, two: dict[str, Any]) -> None:
    a = two["A"]
    admin = login(app_client, "admin-a")
    me = admin("GET", "/me").json()
    assert (me["login"], me["role"], me["tenant_id"]) == ("admin-a", "admin", a["id"])
    assert [x["username"] for x in admin("GET", "/accounts").json()] == sorted([a["a1"], a["a2"]])
    sup, agent = login(app_client, "supervisor-a"), login(app_client, "agent-a")
    r = sup("GET", "/accounts")
    assert r.status_code == 403 and r.json()["error"]["field"] == "role"
    assert sup("GET", "/queues").status_code == 200
    assert agent("GET", "/queues").status_code == 403
    assert agent("GET", "/agent").json()["name"] == "Agent a"
    app_client.cookies.clear()
    r = Api(app_client)("GET", "/accounts")
    assert r.status_code == 401 and r.json()["error"]["field"] == "session"
    r = app_client.post("/api/v1/login", json={"login": "admin-a", "password": "Wrong-Passw0rd-1"})
    assert r.status_code == 401 and r.json() == {"error": {"field": "login", "rule": "wrong login or password"}}
    assert admin("POST", "/logout").status_code == 200
    assert admin("GET", "/me").status_code == 401


def test_a_cookie_session_needs_the_form_token_to_change_anything(app_client: TestClient,
                                                                  two: dict[str, Any]) -> None:
    r = app_client.post("/api/v1/login", json={"login": "admin-a", "password": PW})
    csrf = r.json()["csrf"]
    assert app_client.get("/api/v1/me").status_code == 200          # the cookie
    body = {"mode": "immediate", "targets": [two["A"]["a2"]]}
    r = app_client.put(f"/api/v1/accounts/{two['A']['a1']}/forward", json=body)
    assert r.status_code == 403 and r.json()["error"]["field"] == "csrf"
    r = app_client.put(f"/api/v1/accounts/{two['A']['a1']}/forward", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text


def test_sessions_expire(app_client: TestClient, two: dict[str, Any], conn: psycopg.Connection) -> None:
    admin = login(app_client, "admin-a")
    assert admin("GET", "/me").status_code == 200
    conn.execute("UPDATE portal_sessions SET expires_at = now() - interval '1 second'")
    assert admin("GET", "/me").status_code == 401
    admin = login(app_client, "admin-a")
    conn.execute("UPDATE portal_sessions SET ends_at = now() - interval '1 second'")
    assert admin("GET", "/me").status_code == 401
    admin = login(app_client, "admin-a")                  # a password change ends every session
    uid = admin("GET", "/me").json()["id"]
    assert admin("PUT", f"/users/{uid}/password", json={"password": "Neues-Passw0rt-2"}).status_code == 200
    assert admin("GET", "/me").status_code == 401
    login(app_client, "admin-a", "Neues-Passw0rt-2")


def test_wrong_passwords_lock_the_login_out(app_client: TestClient, two: dict[str, Any],
                                            conn: psycopg.Connection) -> None:
    for _ in range(users.LOCK_AFTER):
        r = app_client.post("/api/v1/login", json={"login": "admin-a", "password": "Wrong-Passw0rd-1"})
        assert r.status_code == 401
    r = app_client.post("/api/v1/login", json={"login": "admin-a", "password": PW})
    assert r.status_code == 429 and "too many wrong passwords" in r.json()["error"]["rule"]
    other = TestClient(app_client.app, client=("192.0.2.7", 4000))   # another address: its own count …
    assert other.post("/api/v1/login", json={"login": "admin-a", "password": PW}).status_code == 200
    conn.execute("UPDATE portal_login_failures SET at = at - interval '16 minutes'")   # … and the lock ends
    assert app_client.post("/api/v1/login", json={"login": "admin-a", "password": PW}).status_code == 200
    # a login nobody has is counted the same way (no telling who exists)
    for _ in range(users.LOCK_AFTER):
        assert app_client.post("/api/v1/login", json={"login": "nobody", "password": PW}).status_code == 401
    assert app_client.post("/api/v1/login", json={"login": "nobody", "password": PW}).status_code == 429


def test_parallel_wrong_passwords_never_slip_under_the_limit(db_url: str, two: dict[str, Any],
                                                             conn: psycopg.Connection) -> None:
    """The count and the record are one step under the advisory locks:
    20 attempts at once record exactly LOCK_AFTER failures, the rest are locked out."""
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def attempt() -> None:
        with psycopg.connect(db_url, autocommit=True, row_factory=psycopg.rows.dict_row) as c:
            barrier.wait()
            with c.transaction():          # the failure is recorded: the refusal commits
                try:
                    users.login(c, "admin-a", "Wrong-Passw0rd-1", "198.51.100.1", secret=SECRET,
                                idle_minutes=30, max_hours=12)
                except users.LoginRefused as exc:
                    outcomes.append("locked" if exc.locked else "wrong")

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes).count("wrong") == users.LOCK_AFTER, outcomes
    n = conn.execute("SELECT count(*) AS n FROM portal_login_failures").fetchone()["n"]
    assert n == users.LOCK_AFTER


def received_fax(conn: psycopg.Connection, tenant_id: int, pdf: bytes) -> int:
    with conn.transaction():
        f = conn.execute("""INSERT INTO faxes (tenant_id, direction, faxbox, node, call_id, remote_number, status,
                                               pages)
                            VALUES (%s, 'in', 'box', 'fs1', %s, '+492115550100', 'received', 1) RETURNING id""",
                         (tenant_id, f"fax-{tenant_id}")).fetchone()["id"]
        conn.execute("""INSERT INTO mail_outbox (tenant_id, fax_id, kind, recipient, subject, body, attachment_name,
                                                 attachment) VALUES (%s, %s, 'fax_in', 'x@example.org', 'Fax', 'Fax',
                                                 'fax.pdf', %s)""", (tenant_id, f, pdf))
    return f


def invoice_of(conn: psycopg.Connection, tenant_id: int) -> str:
    from dustel.billing import invoices
    conn.execute("UPDATE tenants SET created_on = '2025-01-01' WHERE id = %s", (tenant_id,))
    invoices.run(conn, dt.date(2025, 3, 1), dt.date(2025, 4, 2), tenant_id=tenant_id, today=dt.date(2025, 4, 2))
    return conn.execute("SELECT number FROM invoices WHERE tenant_id = %s ORDER BY id LIMIT 1",
                        (tenant_id,)).fetchone()["number"]


@pytest.fixture
def b_things(conn: psycopg.Connection, two: dict[str, Any], run: Cli) -> dict[str, Any]:
    """Tenant B with one of everything an id can name."""
    b = two["B"]
    run.ok("forward", "set", b["a1"], "--mode", "immediate", "--to", b["a2"])
    run.ok("blacklist", "add", b["a1"], "+492215550199")
    run.ok("speeddial", "set", str(b["id"]), "7", "+492215550198")
    conn.execute("INSERT INTO moh_classes (tenant_id, name) VALUES (%s, 'jazz')", (b["id"],))
    return {"fax": received_fax(conn, b["id"], fax_pdf()), "invoice": invoice_of(conn, b["id"]),
            "user": b["users"]["admin"]["id"]}


def cross_tenant_requests(b: dict[str, Any], things: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every endpoint that names something by id, with tenant B's ids."""
    u, n, q = b["a1"], b["number"], b["queue"]
    fwd = {"json": {"mode": "immediate", "targets": [b["a2"]]}}
    return [
        ("PUT", f"/users/{things['user']}/password", {"json": {"password": "Fremdes-Passw0rt-9"}}),
        ("DELETE", f"/users/{things['user']}", {}),
        ("GET", f"/accounts/{u}", {}),
        ("PATCH", f"/accounts/{u}", {"json": {"tls": "tls_srtp"}}),
        ("PUT", f"/accounts/{u}/password", {"json": {"password": "Fremdes-Passw0rt-9"}}),
        ("GET", f"/accounts/{u}/forward", {}), ("GET", f"/accounts/{u}/group", {}),
        ("PUT", f"/accounts/{u}/forward", fwd), ("PUT", f"/accounts/{u}/group", {"json": {"targets": [b["a2"]]}}),
        ("DELETE", f"/accounts/{u}/forward", {}), ("DELETE", f"/accounts/{u}/group", {}),
        ("GET", f"/accounts/{u}/zones", {}), ("PUT", f"/accounts/{u}/zones", {"json": {"preset": "world"}}),
        ("GET", f"/accounts/{u}/blacklist", {}),
        ("POST", f"/accounts/{u}/blacklist", {"json": {"pattern": "+492215550197"}}),
        ("DELETE", f"/accounts/{u}/blacklist/+492215550199", {}),
        ("PUT", f"/numbers/{n}/route", {"json": {"kind": "account", "target": u}}),
        ("PUT", f"/numbers/{n}/route", {"json": {"kind": None}}),
        ("DELETE", "/speeddials/7", {}),
        ("DELETE", "/moh/jazz", {}),
        ("GET", f"/faxes/{things['fax']}/pdf", {}),
        ("GET", f"/invoices/{things['invoice']}/pdf", {}), ("GET", f"/invoices/{things['invoice']}/xml", {}),
        ("GET", f"/queues/{q}/stats?start=2026-01-01&end=2026-01-02", {}),
        ("PUT", "/limits", {"json": {"account": u, "max_call_seconds": 60}}),
    ]


# endpoints whose path parameter is no other tenant's id: a tenant's own key
# (a speed dial code, a hold music class it creates, the agent's action)
OWN_KEYS = {("PUT", "/api/v1/speeddials/{code}"), ("POST", "/api/v1/moh/{cls}"), ("POST", "/api/v1/agent/{action}")}


def test_every_endpoint_answers_another_tenants_ids_with_404(app_client: TestClient, two: dict[str, Any],
                                                              b_things: dict[str, Any], db_url: str) -> None:
    admin = login(app_client, "admin-a")
    reqs = cross_tenant_requests(two["B"], b_things)
    covered = set()
    for method, path, _ in reqs:
        for route in app_client.app.routes:
            if getattr(route, "methods", None) and method in route.methods and \
                    route.path.startswith("/api/") and route.path_regex.match("/api/v1" + path.split("?")[0]):
                covered.add((method, route.path))
                break
    with_ids = {(m, r.path) for r in app_client.app.routes if "{" in getattr(r, "path", "")
                and r.path.startswith("/api/") for m in r.methods}
    assert with_ids - OWN_KEYS <= covered, f"not tried with another tenant's ids: {sorted(with_ids - covered)}"
    before = {k: v for k, v in dump(db_url).items() if not k.startswith("portal_sessions")}
    for method, path, kw in reqs:
        r = admin(method, path, **kw)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert set(r.json()["error"]) == {"field", "rule"}
    after = {k: v for k, v in dump(db_url).items() if not k.startswith("portal_sessions")}
    assert after == before
    # the same ids of one's own tenant are found (the 404 above is the tenant binding, not a typo)
    own = login(app_client, "admin-b")
    for method, path, kw in reqs:
        if method == "GET":
            assert own(method, path, **kw).status_code == 200, path
    # an agent cannot log in to another tenant's queue either
    agent = login(app_client, "agent-a")
    r = agent("POST", "/agent/login", json={"queue": "20", "pin": "4711"})
    assert r.status_code == 404, r.text


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("PUT", "/accounts/{a1}/forward", {"mode": "immediate", "targets": ["+4930111111", "+4930222222", "+4930333333"]},
     "targets"),
    ("PUT", "/accounts/{a1}/forward", {"mode": "sometimes", "targets": ["{a2}"]}, "mode"),
    ("PUT", "/accounts/{a1}/forward", {"mode": "no-answer", "timeout": 500, "targets": ["{a2}"]}, "timeout"),
    ("PUT", "/accounts/{a1}/forward", {"mode": "immediate", "targets": ["{a2}\u202e"]}, "targets"),
    ("PATCH", "/accounts/{a1}", {"display_name": "Empfang\nX-Evil: 1"}, "display_name"),
    ("PATCH", "/accounts/{a1}", {"allowed_ips": ["10.0.0.1/8"]}, "allowed_ip"),
    ("PATCH", "/accounts/{a1}", {"tls": "maybe"}, "tls"),
    ("PUT", "/accounts/{a1}/password", {"password": "short1"}, "password"),
    ("PUT", "/accounts/{a1}/zones", {"preset": "mars"}, "preset"),
    ("POST", "/accounts/{a1}/whitelist", {"pattern": "jeder"}, "pattern"),
    ("PUT", "/speeddials/12345", {"target": "+4930111111"}, "code"),
    ("PUT", "/limits", {"credit_limit": "-5"}, "credit_limit"),
    ("PUT", "/limits", {"max_call_seconds": "lang"}, "max_call_seconds"),
    ("PUT", "/numbers/{number}/route", {"kind": "queue", "target": "nope"}, "queue"),
    ("POST", "/users", {"login": "x", "role": "admin", "password": PW}, "login"),
    ("POST", "/users", {"login": "neu", "role": "boss", "password": PW}, "role"),
    ("GET", "/calls?limit=100000", None, "limit"),
    ("GET", "/calls?before=nonsense", None, "before"),
    ("GET", "/queues/{queue}/stats?start=gestern&end=2026-01-02", None, "start"),
])
def test_bad_input_names_the_field_and_writes_nothing(app_client: TestClient, two: dict[str, Any], db_url: str,
                                                      method: str, path: str, body: Any, field: str) -> None:
    a = two["A"]
    admin = login(app_client, "admin-a")
    fill = {k: a[k] for k in ("a1", "a2", "number", "queue")}
    body = json.loads(json.dumps(body).replace("{a2}", a["a2"])) if body is not None else None
    before = {k: v for k, v in dump(db_url).items() if not k.startswith("portal_sessions")}
    r = admin(method, path.format(**fill), **({"json": body} if body is not None else {}))
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["field"] == field, r.json()
    assert {k: v for k, v in dump(db_url).items() if not k.startswith("portal_sessions")} == before


def test_a_control_character_in_a_path_meets_the_edge_rule(app_client: TestClient, two: dict[str, Any]) -> None:
    admin = login(app_client, "admin-a")
    r = admin("GET", "/accounts/000387%0A00001/forward")
    assert r.status_code == 400 and r.json()["error"] == {
        "field": "username", "rule": "must not contain control characters or line breaks (U+000A)"}
