"""The rendered Asterisk files loaded by a real Asterisk 22 (F-10)."""
from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import psycopg

from dustel.render import service
from dustel.testing.asterisk import Asterisk
from tests.engines.conftest import free_port
from tests.render_fixture import GOLDEN_SETTINGS, load_fixture

DATA = Path(__file__).resolve().parents[1] / "data"


def _start(conn: psycopg.Connection, asterisk: Asterisk) -> tuple[dict[str, str], int]:
    port = free_port()
    settings = replace(GOLDEN_SETTINGS, sip_port=port, ami_port=free_port())
    with conn.transaction():
        files = service.render_files(conn, settings, ["asterisk"])["asterisk"]
    for cls in ("default", "t3-jazz"):
        asterisk.add_moh_class_dir(f"{settings.moh_dir}/{cls}/8000")
    asterisk.start(files, dirs=[settings.fax_spool_dir])
    return files, port


def test_asterisk_loads_rendered_config(conn: psycopg.Connection, tmp_path: Path, asterisk: Asterisk) -> None:
    load_fixture(conn, tmp_path)
    _start(conn, asterisk)
    assert asterisk.errors() == []
    endpoints = set(re.findall(r"^ Endpoint:  (\S+?)/", asterisk.cli("pjsip show endpoints"), re.M))
    accounts = {r["username"] for r in conn.execute("SELECT username FROM sip_accounts")}
    assert endpoints - {"carrier", "<Endpoint"} == accounts and len(accounts) == 10
    dialplan = asterisk.cli("dialplan show")
    contexts = set(re.findall(r"\[ Context '([^']+)' created by 'pbx_config' \]", dialplan))
    assert {"t1", "t2", "t3", "dustel-public", "dustel-inbound", "dustel-outbound", "dustel-emergency"} <= contexts
    assert "'_+4921198765X' =>" in asterisk.cli("dialplan show dustel-public")
    queues = asterisk.cli("queue show")
    assert re.search(r"^t3-support has 0 calls \(max 20\) in 'leastrecent' strategy", queues, re.M)
    classes = set(re.findall(r"^Class: (\S+)", asterisk.cli("moh show classes"), re.M))
    assert classes == {"default", "t3-jazz"}
    assert re.search(r"Manager \(AMI\):\s+Yes", asterisk.cli("manager show settings"))
    assert re.search(r"^\s*dustel\s", asterisk.cli("manager show users"), re.M)


def _register(sipp: str, port: int, user: str, password: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sipp, "-sf", str(DATA / "register.xml"), f"127.0.0.1:{port}", "-s", user, "-au", user, "-ap", password,
         "-i", "127.0.0.1", "-p", str(free_port()), "-m", "1", "-timeout", "10s", "-timeout_error",
         "-trace_err", "-error_file", str(tmp / f"err-{user}.log"), "-nostdin"],
        capture_output=True, text=True, timeout=30, cwd=tmp)


def test_sipp_register_right_and_wrong_password(conn: psycopg.Connection, tmp_path: Path,
                                                asterisk: Asterisk, sipp: str) -> None:
    passwords = load_fixture(conn, tmp_path)
    _, port = _start(conn, asterisk)
    good_user, bad_user = "000387100001", "000387100003"
    ok = _register(sipp, port, good_user, passwords[good_user], tmp_path)
    assert ok.returncode == 0, ok.stdout[-800:] + ok.stderr[-800:]
    bad = _register(sipp, port, bad_user, passwords[bad_user] + "x", tmp_path)
    assert bad.returncode != 0
    contacts = asterisk.cli("pjsip show contacts")
    assert f"{good_user}/sip:{good_user}@127.0.0.1" in contacts
    assert bad_user not in contacts
