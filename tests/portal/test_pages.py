"""Issue 28: hold music and logo uploads through the API, the customer
users' CLI, and the pages (German and English, forms with their token,
a refused form shows the rule and writes nothing)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from dustel.portal.i18n import TEXTS
from tests.conftest import Cli, dump
from tests.db.test_media import tone
from tests.portal.conftest import PW, login


def test_hold_music_and_sound_logo_uploads(app_client: TestClient, two: dict[str, Any], tmp_path: Path,
                                           conn: psycopg.Connection, run: Cli) -> None:
    admin = login(app_client, "admin-a")
    wav = tone(tmp_path / "jazz.wav", "WAV").read_bytes()
    r = admin("POST", "/moh/jazz", files={"file": ("jazz.wav", wav, "audio/wav")})
    assert r.status_code == 201, r.text
    assert [(m["class"], m["seconds"]) for m in admin("GET", "/moh").json()] == [("jazz", r.json()["seconds"])]
    assert list((tmp_path / "moh").rglob("*.wav")), "the converted files are written"
    r = admin("POST", "/logo", files={"file": ("logo.wav", wav, "audio/wav")}, data={"number": two["A"]["number"]})
    assert r.status_code == 201 and r.json()["class"] == two["A"]["number"][1:]
    bad = admin("POST", "/moh/jazz", files={"file": ("x.wav", b"RIFF nonsense", "audio/wav")})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "file"
    assert admin("DELETE", "/moh/jazz").json()["removed"] > 0
    assert not list((tmp_path / "moh").rglob("*.wav"))


def test_customer_users_from_the_cli_and_no_portal_without_a_secret(run: Cli, two: dict[str, Any]) -> None:
    a = two["A"]
    run.ok("portal", "user", "add", str(a["id"]), "Chef@Example.org", "--role", "admin", "--password-stdin",
           input=PW + "\n")
    r = run("portal", "user", "add", str(a["id"]), "zweiter", "--role", "agent", "--password-stdin", input=PW + "\n")
    assert r.exit_code == 1 and "agent: an agent user is one of the tenant's agents" in r.stderr
    r = run("portal", "user", "add", str(a["id"]), "dritter", "--role", "admin", "--password-stdin", input="kurz\n")
    assert r.exit_code == 1 and "password: must be 12 to 128 characters" in r.stderr
    assert "chef@example.org" in run.ok("portal", "user", "list", "--tenant", str(a["id"])).stdout
    r = run("portal", "serve")
    assert r.exit_code == 1 and "portal_secret: must be set to a secret of your own" in r.stderr


def test_both_languages_have_every_word() -> None:
    assert TEXTS["de"].keys() == TEXTS["en"].keys()


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert m, "the form carries its token"
    return m.group(1)


def test_pages_log_in_set_a_forwarding_and_refuse_bad_input(app_client: TestClient, two: dict[str, Any],
                                                            db_url: str, conn: psycopg.Connection) -> None:
    a = two["A"]
    assert app_client.get("/forwarding", follow_redirects=False).headers["location"] == "/login"
    r = app_client.post("/login", data={"login": "admin-a", "password": "Falsch-Passw0rt-1"})
    assert r.status_code == 401 and "wrong login or password" in r.text
    r = app_client.post("/login", data={"login": "admin-a", "password": PW})
    assert r.status_code == 200 and "Willkommen" in r.text                  # German unless asked otherwise
    page = app_client.get("/forwarding?lang=en")
    assert "Call forwarding" in page.text and a["a1"] in page.text
    token = _csrf(page.text)
    r = app_client.post("/forwarding", data={"csrf": "0" * 64, "account": a["a1"], "mode": "immediate",
                                             "targets": a["a2"]})
    assert r.status_code == 403
    before = {k: v for k, v in dump(db_url).items() if not k.startswith("portal_sessions")}
    r = app_client.post("/forwarding", data={"csrf": token, "account": a["a1"], "mode": "immediate",
                                             "targets": "+4930111111 +4930222222 +4930333333"})
    assert r.status_code == 400 and "targets: at most 2 external numbers" in r.text
    assert {k: v for k, v in dump(db_url).items() if not k.startswith("portal_sessions")} == before
    r = app_client.post("/forwarding", data={"csrf": token, "account": a["a1"], "mode": "immediate",
                                             "targets": a["a2"]})
    assert r.status_code == 200 and 'id="done"' in r.text
    assert conn.execute("SELECT kind, mode FROM diversions").fetchone() == {"kind": "forward", "mode": "immediate"}
    assert app_client.get("/invoices").status_code == 200 and "Invoices" in app_client.get("/invoices").text
    app_client.cookies.clear()
    app_client.post("/login", data={"login": "supervisor-a", "password": PW})
    assert app_client.get("/forwarding").status_code == 403
    assert app_client.get("/live").status_code == 200
