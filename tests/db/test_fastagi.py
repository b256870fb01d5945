"""The FastAGI server on loopback, spoken to the way Asterisk does, on a real
database: concurrent requests are batched yet never overdraw; bad requests
are dropped or refused and the server goes on."""
from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import psycopg
import pytest

from dustel.agi import fastagi
from dustel.billing import calls
from tests.factories import account, tenant


def block(route: str, args: list[str], uid: str, callee: str = "01701234567") -> bytes:
    lines = [f"agi_network_script: {route}", f"agi_request: agi://127.0.0.1/{route}", f"agi_uniqueid: {uid}",
             "agi_callerid: 4921100", f"agi_extension: {callee}", "agi_context: dustel-outbound"]
    lines += [f"agi_arg_{i}: {a}" for i, a in enumerate(args, 1)]
    return ("\n".join(lines) + "\n\n").encode()


async def request(port: int, data: bytes) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = []
    while line := await reader.readline():
        out.append(line.decode().strip())
        writer.write(b"200 result=1\n")
    writer.close()
    return out


def decision(cmds: list[str]) -> dict[str, str]:
    assert len(cmds) == 1 and cmds[0].startswith('EXEC MSet "'), cmds
    return dict(kv.split("=", 1) for kv in cmds[0][len('EXEC MSet "'):-1].split(","))


@pytest.fixture
def prepaid(conn: psycopg.Connection) -> dict[str, Any]:
    conn.execute("INSERT INTO rates (prefix, cents_per_minute) VALUES ('49', 1), ('4917', 9), ('', 30)")
    conn.execute("UPDATE plans SET lines_out = 1000 WHERE code = 'starter'")
    t = tenant(conn, plan="starter")
    u = account(conn, t["id"])
    conn.execute("UPDATE tenants SET max_call_seconds = 666 WHERE id = %s", (t["id"],))
    calls.run_sync(conn, calls.topup(t["id"], 1000, "bank:1"))    # 10 EUR: 10 calls of 666 s at 9 ct/min
    return {"t": t, "u": u}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_server(db_url: str, scenario) -> Any:  # type: ignore[no-untyped-def]
    port = free_port()

    async def main() -> Any:
        ready = asyncio.Event()
        task = asyncio.create_task(fastagi.serve(db_url, "127.0.0.1", port, "ast1", ready=ready))
        await asyncio.wait_for(ready.wait(), 20)
        try:
            return await scenario(port)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return asyncio.run(main())


def test_concurrent_admits_are_batched_and_never_overdraw(db_url: str, conn: psycopg.Connection,
                                                          prepaid: dict[str, Any]) -> None:
    args = [str(prepaid["t"]["id"]), prepaid["u"], "192.0.2.1:5060"]

    async def scenario(port: int) -> list[dict[str, str]]:
        return [decision(c) for c in await asyncio.gather(*(request(port, block("outbound", args, f"u{i}"))
                                                            for i in range(60)))]

    ds = run_server(db_url, scenario)
    admitted = [d for d in ds if d["DUSTEL_ACTION"] == "admit"]
    assert len(admitted) == 10
    assert all(d["DUSTEL_MAX_SECONDS"] == "666" and d["DUSTEL_DIAL"] == "PJSIP/+491701234567@carrier"
               for d in admitted)
    assert {d["DUSTEL_REASON"] for d in ds if d["DUSTEL_ACTION"] == "refuse"} == {"insufficient_credit"}
    m = conn.execute("SELECT * FROM tenant_money").fetchone()
    assert m["reserved_cents"] == 1000 and m["balance_cents"] == 1000


def test_bad_requests_do_not_stop_the_server(db_url: str, prepaid: dict[str, Any]) -> None:
    good = [str(prepaid["t"]["id"]), prepaid["u"], "192.0.2.1:5060"]

    async def scenario(port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["not_a_tenant"] = await request(port, block("outbound", ["7; DROP", prepaid["u"], ""], "x1"))
        out["unknown_account"] = await request(port, block("outbound", [good[0], "000387999999", ""], "x2"))
        out["unknown_route"] = await request(port, block("nosuch", good, "x3"))
        out["garbage"] = await request(port, b"\xff\xfe\x00garbage\n\n")
        r, w = await asyncio.open_connection("127.0.0.1", port)   # closes before the blank line
        w.write(b"agi_network_script: outbound\n")
        w.close()
        out["hangup_unknown"] = await request(port, block("hangup", ["12"], "never-admitted"))
        out["after"] = await request(port, block("outbound", good, "x4"))
        return out

    out = run_server(db_url, scenario)
    for key in ("not_a_tenant", "unknown_account"):
        d = decision(out[key])
        assert (d["DUSTEL_ACTION"], d["DUSTEL_CAUSE"], d["DUSTEL_REASON"]) == ("refuse", "41", "internal_error")
    assert out["unknown_route"] == [] and out["garbage"] == [] and out["hangup_unknown"] == []
    assert decision(out["after"])["DUSTEL_ACTION"] == "admit"


def test_mset_refuses_values_that_could_split_or_quote() -> None:
    for bad in ("a,b", 'a"b', "a b", "a\\b", "a\nb", "${EVIL}"):
        with pytest.raises(ValueError, match="DUSTEL_REASON"):
            fastagi.mset_command({"DUSTEL_REASON": bad})
    cmd = fastagi.mset_command({"A": "1", "B": "PJSIP/+49@carrier"})
    assert re.fullmatch(r'EXEC MSet "A=1,B=PJSIP/\+49@carrier"', cmd)
