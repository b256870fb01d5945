"""Commands to the engines: built with every data value quoted or refused,
sent by the CLI to the Event Socket emulator (exact command lines)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dustel.wire import commands as C
from tests.conftest import Cli
from tests.esl_emulator import FreeSwitchEmulator
from tests.factories import tenant


@pytest.fixture
def fs() -> Iterator[FreeSwitchEmulator]:
    emu = FreeSwitchEmulator(password="test-esl-secret")
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def configured(run: Cli, fs: FreeSwitchEmulator) -> Cli:
    state = Path(run.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    (state / "dustel.toml").write_text(
        f'[[esl_nodes]]\nname = "fs1"\nhost = "127.0.0.1"\nport = {fs.port}\nsecret = "test-esl-secret"\n')
    (state / "dustel.toml").chmod(0o600)
    return run


def live_call(conn: psycopg.Connection, fs: FreeSwitchEmulator, t: dict[str, Any]) -> str:
    uuid = fs.call("000387100001", "0211", {"dustel_tenant": str(t["id"])})
    conn.execute("INSERT INTO live_channels (node, call_id, engine, tenant_id, direction) "
                 "VALUES ('fs1', %s, 'freeswitch', %s, 'out')", (uuid, t["id"]))
    return uuid


def test_kill_and_transfer_send_exactly_one_quoted_command(configured: Cli, fs: FreeSwitchEmulator,
                                                           conn: psycopg.Connection) -> None:
    t = tenant(conn)
    uuid = live_call(conn, fs, t)
    r = configured.ok("call", "transfer", "fs1", uuid, "1002")
    assert f"api uuid_transfer {uuid} 1002 XML t{t['id']}" in fs.commands
    assert "transferred" in r.output
    configured.ok("call", "kill", "fs1", uuid)
    assert f"api uuid_kill {uuid} MANAGER_REQUEST" in fs.commands
    assert uuid not in fs.channels
    listed = configured.ok("call", "list", "--json").output
    assert uuid in listed


@pytest.mark.parametrize("args,field", [
    (("call", "kill", "fs9", "x"), "node"),
    (("call", "kill", "fs1", "no-such-call"), "call_id"),
])
def test_bad_targets_are_refused(configured: Cli, args: tuple[str, ...], field: str) -> None:
    r = configured(*args)
    assert r.exit_code != 0 and r.stderr.startswith(f"error: {field}:")


@pytest.mark.parametrize("dest", ["1002 XML evil", "1002\napi hupall", "1002&park", "it's", "${x}"])
def test_transfer_destination_cannot_add_words_or_commands(configured: Cli, fs: FreeSwitchEmulator,
                                                          conn: psycopg.Connection, dest: str) -> None:
    uuid = live_call(conn, fs, tenant(conn))
    before = list(fs.commands)
    r = configured("call", "transfer", "fs1", uuid, dest)
    assert r.exit_code != 0 and "destination" in r.stderr
    assert fs.commands == before


def test_reload_and_unreachable_node(configured: Cli, fs: FreeSwitchEmulator) -> None:
    """Issue 15.12: the profile is ``carrier`` (``external`` does not exist),
    and reloadacl / mod_callcenter / mod_local_stream were skipped.  Issue
    15.20: the assertion waits for the emulator's session to end."""
    r = configured.ok("controller", "reload")
    assert "+OK [Success]" in r.output
    fs.wait_sessions_closed(1)
    # issue 32: everything, so every gateway is made anew (a rescan keeps a changed one) and the
    # node's session caps are set (switch.conf is read at start only)
    assert fs.commands == ["auth test-esl-secret", "api reloadacl", "api reloadxml",
                           "api sofia profile internal rescan", "api sofia profile carrier killgw carrier",
                           "api sofia profile carrier rescan", "api reload mod_callcenter",
                           "api reload mod_local_stream", "api reload mod_xml_curl",      # issue 32.7
                           "api fsctl max_sessions 4000", "api fsctl sps 250", "exit"]
    fs.stop()
    r = configured("controller", "reload")
    assert r.exit_code != 0 and r.stderr.startswith("error: node: fs1:")


@pytest.mark.parametrize("value", ["a\r\nAction: Originate", "x\n\nAction: Logoff", "x\x00"])
def test_ami_values_cannot_add_headers_or_actions(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        C.ami("Redirect", Channel="PJSIP/1-0001", Exten=value)
    with pytest.raises(ValueError):
        C.ast_hangup(value)


@pytest.mark.parametrize("value", ["a b", "a'b", "a&b", "a\nb", "a,b"])
def test_esl_values_cannot_add_words(value: str) -> None:
    with pytest.raises(ValueError):
        C.fs_kill(value)
    with pytest.raises(ValueError):
        C.fs_transfer("uuid-1", value, "t1")
    with pytest.raises(ValueError):
        C.fs_kill("uuid-1", cause=value)


def test_render_reload_sends_what_changed_and_reapplies_agent_logins(configured: Cli, fs: FreeSwitchEmulator,
                                                                     conn: psycopg.Connection) -> None:
    """Issue 15.12/15.13: ``render --reload`` only printed the reloads; a
    ``reload mod_callcenter`` logs every agent out while the database says
    logged in.  Now the changed files' reloads go to every node, and the
    database's logins follow the callcenter reload in the same session."""
    from dustel.callpath.calls import run_sync
    from dustel.queue import agents, codes
    configured.ok("demo")
    out = Path(configured.state_dir) / "live"
    configured.ok("render", "--out", str(out), "--engine", "freeswitch")
    row = conn.execute("""SELECT g.tenant_id, s.username FROM agents g
                            JOIN sip_accounts s ON s.id = g.contact_account_id ORDER BY g.id LIMIT 1""").fetchone()
    code = conn.execute("SELECT code FROM queues WHERE tenant_id = %s", (row["tenant_id"],)).fetchone()["code"]
    login = run_sync(conn, agents.star(row["tenant_id"], row["username"], "", codes.parse(f"*51*{code}*4711")))
    assert login.ok, login
    before = fs.sessions_closed
    conn.execute("UPDATE queues SET max_wait_seconds = max_wait_seconds + 1")
    r = configured.ok("render", "--out", str(out), "--engine", "freeswitch", "--reload")
    assert "reload freeswitch: reload mod_callcenter -> fs1" in r.output
    fs.wait_sessions_closed(before + 1)
    sent = fs.commands[fs.commands.index("api reloadxml"):]
    assert sent[:2] == ["api reloadxml", "api reload mod_callcenter"]
    assert any(c.startswith("api callcenter_config tier add t") for c in sent)
    assert any(c.endswith(" Available") for c in sent) and sent[-1] == "exit"
    assert not any("sofia" in c for c in sent)                      # no profile changed: no rescan


def test_each_engine_gets_its_own_call_id_rule(configured: Cli, fs: FreeSwitchEmulator,
                                               conn: psycopg.Connection) -> None:
    """Issue 15.19: ``call transfer`` applied Asterisk's channel-name rule to
    FreeSWITCH calls (a channel name with a space refused the transfer),
    ``call kill`` could not hang up Asterisk ``Local/…;1`` legs and ended in
    a traceback on a channel it refused."""
    t = tenant(conn)
    uuid = live_call(conn, fs, t)
    conn.execute("UPDATE live_channels SET channel = 'sofia/internal/Anna Büro <000387100001>' WHERE call_id = %s",
                 (uuid,))
    configured.ok("call", "transfer", "fs1", uuid, "1002")
    assert f"api uuid_transfer {uuid} 1002 XML t{t['id']}" in fs.commands
    local = C.ast_hangup("Local/+4915112345678@dustel-agent-out-00000003;1")
    assert local["Channel"] == "Local/+4915112345678@dustel-agent-out-00000003;1"
    for bad in ("PJSIP/a\r\nAction: Originate", "PJSIP/a b", ""):
        with pytest.raises(ValueError, match="channel"):
            C.ast_hangup(bad)


def test_a_changed_carrier_gateway_is_applied_on_render_reload(configured: Cli, fs: FreeSwitchEmulator) -> None:
    """Issue 32.5a: after the carrier's address changed, ``render --reload``
    sent ``sofia profile carrier rescan``; FreeSWITCH kept the old gateway
    (``Ignoring duplicate gateway``, recording 11) and faxes went to the old
    proxy.  Now ``killgw`` goes first — when the gateway changed, and only
    then.  Issue 32.6: a node's changed caps reach that node with fsctl."""
    from tests.esl_emulator import SofiaGateways
    configured.ok("demo")
    state = Path(configured.state_dir)
    out = state / "live"
    configured.ok("render", "--out", str(out), "--engine", "freeswitch")
    fs.sofia = SofiaGateways(out / "freeswitch")                  # FreeSWITCH started on the rendered tree
    assert "Proxy   \tsip:127.0.0.1:5070\n" in fs.api("sofia status gateway carrier")
    config = (state / "dustel.toml").read_text()

    def reload(extra: str) -> list[str]:
        (state / "dustel.toml").write_text(extra + config)         # top-level keys before [[esl_nodes]]
        before = fs.sessions_closed
        configured.ok("render", "--out", str(out), "--engine", "freeswitch", "--reload")
        fs.wait_sessions_closed(before + 1)
        return fs.commands[len(fs.commands) - fs.commands[::-1].index("auth test-esl-secret"):]

    sent = reload('carrier_host = "127.0.0.1:5071"\n')
    assert sent == ["api reloadxml", "api sofia profile carrier killgw carrier", "api sofia profile carrier rescan",
                    "exit"], sent
    status = fs.api("sofia status gateway carrier")
    assert "Proxy   \tsip:127.0.0.1:5071\n" in status and "Uptime  \t0s\n" in status, status
    # the profile changed but not its gateway: a rescan alone
    sent = reload('carrier_host = "127.0.0.1:5071"\nsip_external_ip = "192.0.2.9"\n')
    assert "api sofia profile carrier rescan" in sent and not any("killgw" in c for c in sent), sent
    # only the provider's caps changed: fsctl to the node, nothing else
    sent = reload('carrier_host = "127.0.0.1:5071"\nsip_external_ip = "192.0.2.9"\nfs_sessions_per_second = 400\n')
    assert sent == ["api fsctl max_sessions 4000", "api fsctl sps 400", "exit"], sent
