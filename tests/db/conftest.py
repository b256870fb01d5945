"""What the database tests of the FreeSWITCH side share: the node's inbound
Event Socket (the emulator) and the real controller following it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dustel.callpath import calls
from dustel.provisioning import numbers
from tests.esl_emulator import FreeSwitchEmulator, wait_for
from tests.factories import account, tenant

RATES = "INSERT INTO rates (prefix, cents_per_minute) VALUES ('49', 1), ('4917', 9), ('', 30)"


class Controller:
    def __init__(self, db_url: str, port: int, watchdog: float | None = None, give_up: float | None = None) -> None:
        env = {**os.environ, "DUSTEL_CONTROLLER_NODES": json.dumps([["fs1", "127.0.0.1", port, "ClueCon"]]),
               "DUSTEL_CONTROLLER_DSN": db_url, "DUSTEL_CONTROLLER_WATCHDOG": str(watchdog or ""),
               "DUSTEL_CONTROLLER_GIVE_UP": str(give_up or "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "dustel.controller.esl_main"], env=env,
                                     stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def fs() -> Iterator[FreeSwitchEmulator]:
    emu = FreeSwitchEmulator()
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def controller(db_url: str, fs: FreeSwitchEmulator) -> Iterator[Controller]:
    c = Controller(db_url, fs.port)
    wait_for(lambda: fs.subscribed() == 1, what="controller subscribed")
    yield c
    c.stop()




@pytest.fixture
def prepaid(conn: psycopg.Connection) -> dict[str, Any]:
    """A starter tenant with 1 EUR, its number and an account restricted to 192.0.2.0/24."""
    conn.execute(RATES)
    t = tenant(conn, plan="starter")
    with conn.transaction():
        numbers.add(conn, t["id"], "+492111234567")
    user = account(conn, t["id"], allowed_nets=["192.0.2.0/24"], caller_id="+492111234567")
    calls.run_sync(conn, calls.topup(t["id"], 100, "bank:1"))
    return {"tenant": t, "user": user}
