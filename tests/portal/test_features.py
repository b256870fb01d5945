"""Issue 28: what a customer does through the API is what the CLI does
(the same functions, the same results), and the live queue view."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from dustel.callpath.calls import Q
from dustel.portal import itemised
from dustel.queue import stats
from dustel.wire.esl import Event
from tests.conftest import Cli
from tests.fax_support import fax_pdf
from tests.portal.conftest import login


def test_forwarding_set_in_the_portal_is_what_the_cli_shows(app_client: TestClient, two: dict[str, Any],
                                                            run: Cli) -> None:
    a = two["A"]
    admin = login(app_client, "admin-a")
    r = admin("PUT", f"/accounts/{a['a1']}/forward",
              json={"mode": "no-answer", "timeout": 15, "targets": [a["a2"], "+492115550123"],
                    "when": ["mon-fri 08:00-18:00"]})
    assert r.status_code == 200, r.text
    shown = json.loads(run.ok("forward", "show", a["a1"], "--json").output)
    assert r.json() == shown
    assert shown["mode"] == "no_answer" and shown["targets"] == [a["a2"], "+492115550123"]
    assert admin("DELETE", f"/accounts/{a['a1']}/forward").json()["kind"] is None
    assert json.loads(run.ok("forward", "show", a["a1"], "--json").output)["kind"] is None


def test_account_settings_zones_lists_speed_dials_limits(app_client: TestClient, two: dict[str, Any],
                                                         run: Cli) -> None:
    a = two["A"]
    admin = login(app_client, "admin-a")
    r = admin("PATCH", f"/accounts/{a['a1']}", json={"tls": "tls_only", "allowed_ips": ["192.0.2.0/24"]})
    assert r.status_code == 200 and r.json()["tls_mode"] == "tls_only"
    cli = json.loads(run.ok("account", "show", a["a1"], "--json").output)
    assert (cli["tls_mode"], cli["allowed_nets"]) == ("tls_only", ["192.0.2.0/24"])
    assert admin("PUT", f"/accounts/{a['a1']}/zones", json={"preset": "europe"}).json()["preset"] == "europe"
    assert admin("POST", f"/accounts/{a['a1']}/blacklist", json={"pattern": "anonymous"}).json() == ["anonymous"]
    assert admin("PUT", "/speeddials/5", json={"target": a["a2"]}).json() == [{"code": "5", "target": a["a2"]}]
    r = admin("PUT", "/limits", json={"credit_limit": "49,90", "max_call_seconds": 3600})
    assert r.status_code == 200 and r.json()["monthly_credit_limit_cents"] == 4990
    assert json.loads(run.ok("limits", "show", str(a["id"]), "--json").output)["monthly_credit_limit_cents"] == 4990
    assert admin("PUT", f"/numbers/{a['number']}/route", json={"kind": "account", "target": a["a2"]}).json()[
        "target_kind"] == "account"
    assert admin("PUT", f"/accounts/{a['a1']}/password", json={"password": "Neues-SIP-Passw0rt"}).status_code == 200


def test_fax_sent_from_a_pdf_and_received_faxes(app_client: TestClient, two: dict[str, Any],
                                                conn: psycopg.Connection) -> None:
    a = two["A"]
    admin = login(app_client, "admin-a")
    r = admin("POST", "/faxes", data={"from": a["number"], "to": "+492115550177"},
              files={"file": ("brief.pdf", fax_pdf(2), "application/pdf")})
    assert r.status_code == 201, r.text
    job = conn.execute("SELECT tenant_id, to_number, pages, state FROM fax_jobs").fetchone()
    assert job == {"tenant_id": a["id"], "to_number": "+492115550177", "pages": 2, "state": "queued"}
    assert [j["id"] for j in admin("GET", "/faxes/jobs").json()] == [r.json()["id"]]
    r = admin("POST", "/faxes", data={"from": a["number"], "to": "+492115550177"},
              files={"file": ("kein.pdf", b"not a pdf", "application/pdf")})
    assert r.status_code == 400 and r.json()["error"]["field"] == "file"
    from tests.portal.test_api import received_fax
    fid = received_fax(conn, a["id"], fax_pdf())
    assert admin("GET", "/faxes").json()[0]["id"] == fid
    pdf = admin("GET", f"/faxes/{fid}/pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")


def test_calls_are_itemised_with_the_last_digits_masked_unless_chosen(app_client: TestClient, two: dict[str, Any],
                                                                      conn: psycopg.Connection) -> None:
    from tests.billing_support import settled_call
    a = two["A"]
    t0 = dt.datetime(2026, 3, 2, 10, tzinfo=dt.UTC)
    for i in range(5):
        settled_call(conn, a["id"], "de_fixed", 60, 9, t0 + dt.timedelta(minutes=i), destination=f"49301234{i}67")
    settled_call(conn, two["B"]["id"], "de_fixed", 60, 9, t0, destination="4930999999")
    admin = login(app_client, "admin-a")
    page1 = admin("GET", "/calls?limit=3").json()
    assert page1["masked"] and [c["destination"] for c in page1["calls"]] == \
        ["49301234xxx", "49301234xxx", "49301234xxx"]
    page2 = admin("GET", f"/calls?limit=3&before={page1['next']}").json()
    assert len(page2["calls"]) == 2 and page2["next"] is None
    assert admin("PUT", "/settings", json={"show_full_numbers": True}).status_code == 200
    full = admin("GET", "/calls?limit=10").json()
    assert [c["destination"] for c in full["calls"]] == [f"49301234{i}67" for i in (4, 3, 2, 1, 0)]
    assert itemised.mask("110") == "110" and itemised.mask("+49 211 123456") == "+49 211 123xxx"


def test_queue_statistics_download_and_the_agents_own_state(app_client: TestClient, two: dict[str, Any],
                                                            conn: psycopg.Connection) -> None:
    a = two["A"]
    sup = login(app_client, "supervisor-a")
    r = sup("GET", f"/queues/{a['queue']}/stats?start=2026-01-01&end=2026-01-03&format=csv")
    assert r.status_code == 200 and r.text.splitlines()[0].startswith("start,offered,answered")
    assert len(r.text.splitlines()) == 3
    assert len(sup("GET", f"/queues/{a['queue']}/stats?start=2026-01-01&end=2026-01-03").json()) == 2
    agent = login(app_client, "agent-a")
    r = agent("POST", "/agent/login", json={"queue": "10", "pin": "0000"})
    assert r.status_code == 400 and r.json()["error"] == {"field": "pin", "rule": "wrong PIN"}
    assert conn.execute("SELECT count(*) AS n FROM pin_attempts WHERE NOT ok").fetchone()["n"] == 1   # counted
    r = agent("POST", "/agent/login", json={"queue": "10", "pin": "4711"})
    assert r.status_code == 200 and [x["queue"] for x in r.json()["logins"]] == [a["queue"]]
    assert agent("POST", "/agent/pause", json={}).json()["logins"][0]["paused_since"] is not None
    live = sup("GET", "/queues/live").json()
    assert live["agents"][0]["state"] == "paused"


def offered(node: str, tenant_id: int, queue: str, call: str) -> list[Q]:
    """A caller entering the queue, as the controller stores mod_callcenter's event."""
    now = int(dt.datetime.now(dt.UTC).timestamp())
    return stats.from_fs(node, Event({"Event-Name": "CUSTOM", "Event-Subclass": "callcenter::info",
                                      "CC-Action": "member-queue-start", "CC-Queue": f"t{tenant_id}-{queue}@x",
                                      "CC-Member-Session-UUID": call, "CC-Member-Joined-Time": str(now),
                                      "Event-Date-Timestamp": str(now * 1_000_000)}))


def test_the_live_view_shows_waiting_callers_and_only_its_tenants(app_client: TestClient, two: dict[str, Any],
                                                                  conn: psycopg.Connection) -> None:
    a, b = two["A"], two["B"]
    with conn.transaction():
        for q in offered("fs1", a["id"], a["queue"], "call-a") + offered("fs1", b["id"], b["queue"], "call-b"):
            conn.execute(q.sql, q.params)
    sup = login(app_client, "supervisor-a")
    snap = sup("GET", "/queues/live").json()
    assert [(q["queue"], [w["call_id"] for w in q["waiting"]]) for q in snap["queues"]] == [(a["queue"], ["call-a"])]
    assert snap["queues"][0]["offered"] == 1
