"""DUSqueue agents: star codes on FreeSWITCH (the real outbound-socket
process against the emulator: the exact callcenter_config commands) and on
the FastAGI server (the app_queue applications), PIN lockout, bad input."""
from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dustel.agi import fastagi
from dustel.provisioning import targets
from dustel.queue import agents, codes
from tests.db.test_esl_outbound import Server
from tests.db.test_fastagi import free_port
from tests.esl_emulator import OutboundCall, wait_for
from tests.factories import account, tenant


@pytest.fixture
def org(conn: psycopg.Connection) -> dict[str, Any]:
    t = tenant(conn, options={"acd": 1})
    u, other = account(conn, t["id"]), account(conn, t["id"])
    with conn.transaction():
        q = targets.queue_add(conn, t["id"], "support", "1")
        targets.queue_add(conn, t["id"], "sales", "2")
        g = targets.agent_add(conn, t["id"], "Erika", "1234", account=u, queues=["support", "sales"])
    return {"t": t, "u": u, "other": other, "q": q, "g": g, "d": t["sip_domain"]}


@pytest.fixture
def server(db_url: str) -> Iterator[Server]:
    s = Server(db_url)
    yield s
    s.stop()


def star(server: Server, org: dict[str, Any], dialed: str, user: str | None = None,
         dtmf: list[str] | None = None) -> OutboundCall:
    assert dialed.startswith("*5")
    c = OutboundCall(server.port, dialed, {"dustel_tenant": str(org["t"]["id"]), "user_name": user or org["u"],
                                           "dustel_star": dialed[:3], "dustel_star_args": dialed[3:]},
                     dtmf=list(dtmf or []))
    c.start()
    return c.wait()


def api(c: OutboundCall) -> list[str]:
    return [x for x in c.commands if x.startswith("api ")]


def logins(conn: psycopg.Connection) -> list[tuple[str, bool]]:
    return [(r["name"], r["paused"]) for r in conn.execute(
        """SELECT q.name, l.paused_since IS NOT NULL AS paused FROM agent_logins l JOIN queues q ON q.id = l.queue_id
            ORDER BY q.name""").fetchall()]


def events(conn: psycopg.Connection) -> list[str]:
    return [r["kind"] for r in conn.execute("SELECT kind FROM queue_events ORDER BY id").fetchall()]


def test_login_pause_logout_send_the_exact_callcenter_commands(server: Server, conn: psycopg.Connection,
                                                               org: dict[str, Any]) -> None:
    a, d, tid = f"agent-{org['g']['id']}@{org['d']}", org["d"], org["t"]["id"]
    c = star(server, org, "*51*1*1234")
    assert api(c) == [f"api callcenter_config tier add t{tid}-support@{d} {a} 1 1",
                      f"api callcenter_config agent set status {a} Available"]
    assert c.executed[0] == ("answer", "") and c.executed[-2][1].startswith("tone_stream://%(150")
    assert logins(conn) == [("support", False)]
    c = star(server, org, "*51", dtmf=["2", "1234"])              # prompted for queue, then PIN
    assert api(c)[0] == f"api callcenter_config tier add t{tid}-sales@{d} {a} 1 1"
    assert [x[0] for x in c.executed].count("play_and_get_digits") == 2
    assert logins(conn) == [("sales", False), ("support", False)]
    assert api(star(server, org, "*53")) == [f"api callcenter_config agent set status {a} 'On Break'"] * 2
    assert logins(conn) == [("sales", True), ("support", True)]
    assert api(star(server, org, "*54")) == [f"api callcenter_config agent set status {a} Available"] * 2
    assert api(star(server, org, "*52*1")) == [f"api callcenter_config tier del t{tid}-support@{d} {a}"]
    assert api(star(server, org, "*52")) == [f"api callcenter_config tier del t{tid}-sales@{d} {a}",
                                             f"api callcenter_config agent set status {a} 'Logged Out'"]
    assert logins(conn) == []
    assert events(conn) == ["login", "login", "pause", "pause", "unpause", "unpause", "logout", "logout"]


@pytest.mark.parametrize("dialed,user_key,dtmf", [
    ("*51*9*1234", "u", []),                 # unknown queue
    ("*51*1*123456789", "u", []),            # overlong PIN
    ("*51*1*1234", "other", []),             # not an agent
    ("*51", "u", ["12x"]),                   # prompt answered with non-digits
    ("*52", "u", []),                        # not logged in
])
def test_bad_input_is_refused_and_changes_nothing(server: Server, conn: psycopg.Connection, org: dict[str, Any],
                                                  dialed: str, user_key: str, dtmf: list[str]) -> None:
    c = star(server, org, dialed, user=org[user_key], dtmf=dtmf)
    assert api(c) == []
    assert ("playback", "tone_stream://%(400,200,425);loops=3") in c.executed
    assert logins(conn) == [] and events(conn) == []


def test_wrong_pins_lock_the_agent(server: Server, conn: psycopg.Connection, org: dict[str, Any]) -> None:
    lock = "SELECT failed, locks, locked_until > now() AS locked FROM agent_pin_locks"
    for i in range(agents.MAX_FAILURES - 1):
        star(server, org, "*51*1*9999")
        assert conn.execute(lock).fetchone()["failed"] == i + 1
    star(server, org, "*51*1*9999")
    g = conn.execute(lock).fetchone()
    assert g["locked"] and (g["failed"], g["locks"]) == (0, 1)
    c = star(server, org, "*51*1*1234")                     # the right PIN while locked
    assert api(c) == [] and logins(conn) == []
    wait_for(lambda: any("reason=locked" in line for line in server.log), what="the lock logged")
    conn.execute("UPDATE agent_pin_locks SET locked_until = now() - interval '1 second'")
    assert len(api(star(server, org, "*51*1*1234"))) == 2
    attempts = conn.execute("SELECT source, ok FROM pin_attempts ORDER BY id").fetchall()
    assert [a["ok"] for a in attempts] == [False] * 6 + [True]
    assert {a["source"] for a in attempts} == {f"account:{org['u']}"}


def test_a_spoofed_hotline_caller_locks_only_its_own_way_in(conn: psycopg.Connection,
                                                            external: dict[str, Any]) -> None:
    """Issue 16.6: five wrong PINs from a spoofed caller ID locked the agent
    everywhere, again and again.  Now failures count per source: a caller
    claiming the agent's number locks that claim (for longer each time),
    never the agent's phone; a source guessing too fast is refused without
    its PIN being checked; every attempt is logged."""
    from dustel.callpath.calls import run_sync
    tid = external["t"]["id"]
    for _ in range(agents.MAX_FAILURES):
        out = run_sync(conn, agents.hotline(tid, "support", "+4917012345678", "0000"))
    assert out.reason == "locked"
    lk = conn.execute("SELECT source, locks, locked_until - now() AS left FROM agent_pin_locks").fetchone()
    assert lk["source"] == "hotline:+4917012345678" and lk["locks"] == 1
    # Erika at her phone is not affected by what happens on the hotline
    assert run_sync(conn, agents.star(tid, external["u"], "", codes.parse("*51*1*1234"))).ok
    # the next lock of the same source lasts twice as long
    conn.execute("UPDATE agent_pin_locks SET locked_until = now() - interval '1 second'")
    conn.execute("DELETE FROM pin_attempts")       # (outside the rate limit's minute)
    for _ in range(agents.MAX_FAILURES):
        run_sync(conn, agents.hotline(tid, "support", "+4917012345678", "0000"))
    lk2 = conn.execute("SELECT locks, locked_until - now() AS left FROM agent_pin_locks "
                       "WHERE source LIKE 'hotline:%'").fetchone()
    assert lk2["locks"] == 2 and lk2["left"] > lk["left"] * 1.5
    # rate limit: a source with RATE_PER_MINUTE failures this minute gets no PIN check at all
    conn.execute("UPDATE agent_pin_locks SET locked_until = NULL, failed = 0")
    conn.execute("""INSERT INTO pin_attempts (tenant_id, agent_id, source, ok)
                    SELECT %s, NULL, 'hotline:+4917012345678', false FROM generate_series(1, %s)""",
                 (tid, agents.RATE_PER_MINUTE))
    out = run_sync(conn, agents.hotline(tid, "support", "+4917012345678", "4321"))     # the right PIN
    assert (out.ok, out.reason) == (False, "rate_limited")
    assert conn.execute("SELECT count(*) AS n FROM pin_attempts").fetchone()["n"] >= 2 * agents.MAX_FAILURES


def test_another_tenants_queue_is_unknown(conn: psycopg.Connection, org: dict[str, Any]) -> None:
    from dustel.callpath.calls import run_sync
    other = tenant(conn, name="Other", options={"acd": 1})
    with conn.transaction():
        targets.queue_add(conn, other["id"], "secret", "7")
    out = run_sync(conn, agents.star(org["t"]["id"], org["u"], "", codes.parse("*51*7*1234")))
    assert (out.ok, out.reason) == (False, "unknown_queue")


@pytest.mark.parametrize("dialed", ["*51*1*2*3", "*51*a", "*52*1*1234", "*5", "*55", "*51**1234"])
def test_star_code_parsing_refuses(dialed: str) -> None:
    with pytest.raises(ValueError, match="star code"):
        codes.parse(dialed)


# ----------------------------------------------------------- FastAGI (Asterisk)

async def agi_session(port: int, block: bytes, answers: list[str]) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(block)
    seen = []
    while line := await reader.readline():
        cmd = line.decode().strip()
        seen.append(cmd)
        writer.write(f"200 result={answers.pop(0) if cmd.startswith('GET DATA') and answers else '0'}\n".encode())
    writer.close()
    return seen


def test_fastagi_agent_route_runs_app_queue_applications(db_url: str, conn: psycopg.Connection,
                                                         org: dict[str, Any]) -> None:
    port = free_port()
    tid, u, gid = org["t"]["id"], org["u"], org["g"]["id"]

    def block(exten: str) -> bytes:
        return (f"agi_network_script: agent\nagi_uniqueid: s1\nagi_extension: {exten}\n"
                f"agi_arg_1: {tid}\nagi_arg_2: {u}\n\n").encode()

    async def main() -> tuple[list[str], list[str], list[str]]:
        ready = asyncio.Event()
        task = asyncio.create_task(fastagi.serve(db_url, "127.0.0.1", port, "ast1", ready=ready))
        await asyncio.wait_for(ready.wait(), 20)
        try:
            a = await agi_session(port, block("*51*1*1234"), [])
            b = await agi_session(port, block("*51"), ["2", "1234"])
            c = await agi_session(port, block("*53"), [])
            return a, b, c
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    a, b, c = asyncio.run(main())
    assert a == ["ANSWER", f'EXEC AddQueueMember "t{tid}-support,PJSIP/{u},0,,agent-{gid}"',
                 f'EXEC Playtones "{fastagi.TONE_OK}"', "EXEC Wait 1"]
    assert b[:3] == ["ANSWER", "GET DATA beep 6000 8", "GET DATA beep 6000 8"]
    assert b[3] == f'EXEC AddQueueMember "t{tid}-sales,PJSIP/{u},0,,agent-{gid}"'
    assert c[1:3] == [f'EXEC PauseQueueMember "t{tid}-sales,PJSIP/{u}"',
                      f'EXEC PauseQueueMember "t{tid}-support,PJSIP/{u}"']
    assert logins(conn) == [("sales", True), ("support", True)]


# ------------------------------------------------------------- opening hours

def test_queue_hours_cli_and_bad_input(run: Any, conn: psycopg.Connection, org: dict[str, Any]) -> None:
    tid = str(org["t"]["id"])
    run.ok("queue", "hours", tid, "support", "--open", "mon-fri 08:00-18:00", "--region", "NW",
           "--closed-announce", "dustel/closed", "--closed-target", "+4921155501")
    q = conn.execute("SELECT * FROM queues WHERE name = 'support'").fetchone()
    assert q["opening_hours"]["rules"] and q["closed_target"] == "+4921155501"
    for args, field in ((("--open", "someday 25:00-26:00"), "when"), (("--closed-target", "nobody"),
                                                                     "closed_target"),
                        (("--closed-announce", "../../etc/passwd"), "closed_announce")):
        r = run("queue", "hours", tid, "support", *args)
        assert r.exit_code != 0 and r.stderr.startswith(f"error: {field}:"), (args, r.stderr)
    assert conn.execute("SELECT closed_target FROM queues WHERE name = 'support'").fetchone()["closed_target"] == \
        "+4921155501"


def test_closed_queue_on_freeswitch_announces_and_forwards(server: Server, conn: psycopg.Connection,
                                                           org: dict[str, Any]) -> None:
    t = org["t"]
    with conn.transaction():
        targets.queue_hours(conn, t["id"], "support", ["hol 00:00-00:01"], closed_announce="dustel/closed",
                            closed_target="+4921155501")
    variables = {"dustel_tenant": str(t["id"]), "dustel_target_kind": "queue", "dustel_target": f"t{t['id']}-support",
                 "dustel_domain": t["sip_domain"]}
    c = OutboundCall(server.port, "+492111230000", dict(variables), caller="+4930555", callee=("answer", 5))
    c.start()
    c.wait()
    # issue 15.15: no rate for the external target: the leg is refused like any outbound call of the tenant
    tail = [a for a in c.executed if a[0] in ("answer", "playback", "bridge", "callcenter", "hangup")]
    assert tail == [("answer", ""), ("playback", "dustel/closed"), ("hangup", "NORMAL_CLEARING")]
    wait_for(lambda: any("leg call=" in line and "reason=no_rate" in line for line in server.log), what="logged")
    conn.execute("INSERT INTO rates (prefix, cents_per_minute) VALUES ('49', 1)")
    c = OutboundCall(server.port, "+492111230000", dict(variables), caller="+4930555", callee=("answer", 65))
    c.start()
    c.wait()
    tail = [a for a in c.executed if a[0] in ("answer", "playback", "bridge", "callcenter")]
    assert tail[:2] == [("answer", ""), ("playback", "dustel/closed")] and len(tail) == 3
    assert re.fullmatch(r"\{origination_caller_id_number=[^,]+,execute_on_answer='sched_hangup \+\d+ "
                        r"ALLOTTED_TIMEOUT'\}sofia/gateway/carrier/\+4921155501", tail[2][1]), tail[2]
    leg = wait_for(lambda: (r := conn.execute("SELECT * FROM calls WHERE call_id = %s", (c.uuid + ":leg",)).fetchone())
                   and r["state"] == "settled" and r, what="the leg settled")
    assert (leg["direction"], leg["account"], leg["billsec"], leg["charged_cents"]) == ("out", org["u"], 65, 2)
    with conn.transaction():
        targets.queue_hours(conn, t["id"], "support", [])          # always open again
    c = OutboundCall(server.port, "+492111230000", dict(variables), caller="+4930555", callee=("answer", 5))
    c.start()
    c.wait()
    assert ("callcenter", f"t{t['id']}-support@{t['sip_domain']}") in c.executed


# ------------------------------------------------- external agents (hotline)

@pytest.fixture
def external(conn: psycopg.Connection, org: dict[str, Any]) -> dict[str, Any]:
    with conn.transaction():
        g = targets.agent_add(conn, org["t"]["id"], "Max", "4321", external="+4917012345678", queues=["support"])
    return {**org, "x": g}


def hotline_call(server: Server, org: dict[str, Any], caller: str, dtmf: list[str]) -> OutboundCall:
    t = org["t"]
    c = OutboundCall(server.port, "+492111230000", {"dustel_tenant": str(t["id"]), "dustel_target_kind": "queue",
                                                    "dustel_target": f"t{t['id']}-support",
                                                    "dustel_domain": t["sip_domain"]},
                     caller=caller, dtmf=dtmf, callee=("answer", 3))
    c.start()
    return c.wait()


def test_external_agent_logs_in_and_out_through_the_hotline_on_freeswitch(
        server: Server, conn: psycopg.Connection, external: dict[str, Any]) -> None:
    a = f"agent-{external['x']['id']}@{external['d']}"
    q = f"t{external['t']['id']}-support@{external['d']}"
    wrong = hotline_call(server, external, "+4917012345678", ["1111"])
    assert api(wrong) == [] and logins(conn) == []
    c = hotline_call(server, external, "+4917012345678", ["4321"])
    assert api(c) == [f"api callcenter_config tier add {q} {a} 1 1",
                      f"api callcenter_config agent set status {a} Available"]
    assert ("callcenter", q) not in c.executed                    # the agent is not queued as a caller
    c = hotline_call(server, external, "+4917012345678", ["4321"])
    assert api(c) == [f"api callcenter_config tier del {q} {a}",
                      f"api callcenter_config agent set status {a} 'Logged Out'"]
    # any other caller is queued as usual
    caller = hotline_call(server, external, "+4930999", [])
    assert ("callcenter", q) in caller.executed
    assert events(conn) == ["login", "logout"]


def test_external_agent_hotline_on_fastagi(db_url: str, conn: psycopg.Connection, external: dict[str, Any]) -> None:
    port = free_port()
    tid, gid = external["t"]["id"], external["x"]["id"]
    block = (f"agi_network_script: inbound\nagi_uniqueid: h1\nagi_callerid: +4917012345678\n"
             f"agi_extension: +492111230000\nagi_arg_1: {tid}\nagi_arg_2: queue\n"
             f"agi_arg_3: t{tid}-support\n\n").encode()

    async def main() -> list[str]:
        ready = asyncio.Event()
        task = asyncio.create_task(fastagi.serve(db_url, "127.0.0.1", port, "ast1", ready=ready))
        await asyncio.wait_for(ready.wait(), 20)
        try:
            return await agi_session(port, block, ["4321"])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    seen = asyncio.run(main())
    assert seen[:3] == ["ANSWER", "GET DATA beep 6000 8",
                        f'EXEC AddQueueMember "t{tid}-support,Local/{tid}-+4917012345678@dustel-agent-out,0,,'
                        f'agent-{gid}"']
    assert seen[-1] == 'EXEC MSet "DUSTEL_ACTION=agent,DUSTEL_CAUSE=16,DUSTEL_REASON=done"'
    assert logins(conn) == [("support", False)]
