"""The Kundencenter against real PostgreSQL: the ASGI app in-process
(Starlette's TestClient runs its lifespan: pool, LISTEN hub), two tenants
with everything a customer has, and their users."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from dustel.config import load_settings
from dustel.portal import users
from dustel.portal.app import create_app
from dustel.provisioning import numbers, targets
from tests.db.conftest import controller, fs  # noqa: F401 - the emulator and the real controller
from tests.factories import account, tenant

SECRET = "portal-test-secret-0123456789"
PW = "Kunden-Passw0rt-1"


def settings(tmp: Path, **extra: str) -> Any:
    env = {"DUSTEL_PORTAL_SECRET": SECRET, "DUSTEL_PORTAL_COOKIE_SECURE": "0", "DUSTEL_MOH_DIR": str(tmp / "moh"),
           "DUSTEL_LOGO_DIR": str(tmp / "logo"), **extra}
    return load_settings(tmp / "state", env=env)


def customer(conn: psycopg.Connection, area: str, prefix: str, n: int) -> dict[str, Any]:
    """A business flex tenant with ACD: two accounts, a number, a queue with
    an agent, a fax box, and an admin, a supervisor and an agent user."""
    t = tenant(conn, area=area, options={"acd": 1}, name=f"Kunde {prefix}")
    a1, a2 = account(conn, t["id"]), account(conn, t["id"])
    with conn.transaction():
        conn.execute("UPDATE tenants SET email = %s WHERE id = %s", (f"chef-{prefix}@example.org", t["id"]))
        num = numbers.add(conn, t["id"], f"+49{area[1:]}98766{n:02d}")["e164"]
        targets.queue_add(conn, t["id"], f"hotline{prefix}", f"{n}0")
        targets.agent_add(conn, t["id"], f"Agent {prefix}", "4711", account=a2, queues=[f"hotline{prefix}"])
        targets.faxbox_add(conn, t["id"], f"box{prefix}", f"fax-{prefix}@example.org")
        us = {r: users.add(conn, t["id"], f"{r}-{prefix}", r, PW, f"Agent {prefix}" if r == "agent" else None)
              for r in users.ROLES}
    return {"t": t, "id": t["id"], "a1": a1, "a2": a2, "number": num, "queue": f"hotline{prefix}", "users": us}


@pytest.fixture
def two(conn: psycopg.Connection) -> dict[str, Any]:
    return {"A": customer(conn, "0211", "a", 1), "B": customer(conn, "0221", "b", 2)}


class Api:
    """A TestClient logged in as one user (bearer token)."""

    def __init__(self, client: TestClient, token: str | None = None) -> None:
        self.client, self.token = client, token

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.client.request(method, "/api/v1" + path, headers=headers, **kw)


@pytest.fixture
def app_client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(settings(tmp_path), db_url, pool_size=4)
    with TestClient(app) as c:
        yield c


def login(client: TestClient, name: str, password: str = PW) -> Api:
    r = client.post("/api/v1/login", json={"login": name, "password": password})
    assert r.status_code == 200, r.text
    return Api(client, r.json()["token"])


class Server:
    """The portal under a real uvicorn on an ephemeral loopback port, in a
    thread of the test process (the browser and SSE tests talk HTTP to it)."""

    def __init__(self, app: Any) -> None:
        import socket

        import uvicorn
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        from tests.esl_emulator import wait_for
        wait_for(lambda: self.server.started, what="portal server started")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()
