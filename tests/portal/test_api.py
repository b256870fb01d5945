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
