"""Commands to the engines: built with every data value quoted or refused,
sent by the CLI to the Event Socket emulator (exact command lines)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dustel.controller import commands as C
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
    r = configured.ok("controller", "reload")
    assert "+OK [Success]" in r.output
    assert fs.commands[-4:] == ["api reloadxml", "api sofia profile internal rescan",
                                "api sofia profile external rescan", "exit"]
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
