"""Calls through the rendered dialplan of a real Asterisk 22, decided by
``dustel agi serve`` (FastAGI) on real PostgreSQL; sipp is the phone and
the carrier (F-04)."""
from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dustel.callpath import calls
from dustel.callpath.policy import REFUSALS
from dustel.provisioning import numbers, targets
from dustel.render import service
from dustel.testing.asterisk import Asterisk
from tests.engines.conftest import free_port
from tests.esl_emulator import wait_for
from tests.factories import PASSWORD, account, tenant
from tests.render_fixture import GOLDEN_SETTINGS
from tests.tls_relay import TLSRelay

DATA = Path(__file__).resolve().parents[1] / "data"
NODE = "ast-test"


@dataclass
class Stack:
    conn: psycopg.Connection
    asterisk: Asterisk
    sipp: str
    tmp: Path
    sip_port: int
    carrier_log: Path
    agi_log: Path
    tenant_id: int
    user: str
    files: dict[str, str]
    settings: Any
    dirs: list[str]
    relay: TLSRelay | None = None

    def call(self, dialed: str, scenario: str, timeout: int = 30, user: str | None = None,
             port: int | None = None, source: str = "127.0.0.1", tls: bool = False) \
            -> subprocess.CompletedProcess[str]:
        user = user or self.user
        log = self.tmp / f"uac-{dialed}-{time.monotonic_ns()}.log"
        r = subprocess.run(
            [self.sipp, "-sf", str(DATA / scenario), self.target(tls), "-s", dialed, *self.transport(tls),
             "-set", "user", user, "-au", user, "-ap", PASSWORD, "-i", source,
             "-p", str(port or free_port()), "-mp", str(free_port()), "-m", "1", "-timeout", f"{timeout}s",
             "-timeout_error", "-trace_msg", "-message_file", str(log), "-nostdin"],
            capture_output=True, text=True, timeout=timeout + 15, cwd=self.tmp)
        r.stdout = log.read_text(errors="replace") if log.exists() else ""
        return r

    def render(self) -> dict[str, str]:
        with self.conn.transaction():
            self.files = service.render_files(self.conn, self.settings, ["asterisk"])["asterisk"]
        return self.files

    def restart(self, extra: dict[str, str] | None = None) -> None:
        """Render the database as it is now and run Asterisk again with it."""
        files = {**self.render(), **(extra or {})}
        self.files = files
        self.asterisk.stop()
        self.asterisk.start(files, dirs=self.dirs)

    RELOAD = {"pjsip.conf": "module reload res_pjsip.so", "extensions.conf": "dialplan reload"}

    def reload(self, *names: str) -> None:
        """Render and reload these files in the running Asterisk."""
        files = self.render()
        self.asterisk.update_config({n: files[n] for n in names})
        for n in names:
            self.asterisk.cli(self.RELOAD[n])

    def target(self, tls: bool) -> str:
        """Where sipp sends: over TLS, a relay (tests/tls_relay.py: Debian's
        sipp has no TLS) that carries its TCP stream over TLS to Asterisk."""
        if not tls:
            return f"127.0.0.1:{self.sip_port}"
        if self.relay is None:
            self.relay = TLSRelay(("127.0.0.1", self.settings.sip_tls_port))
        return f"127.0.0.1:{self.relay.port}"

    @staticmethod
    def transport(tls: bool) -> list[str]:
        return ["-t", "t1"] if tls else []

    def call_row(self, callee_like: str) -> dict[str, Any]:
        for _ in range(50):   # the hangup AGI runs right after the call ends
            row = self.conn.execute("SELECT * FROM calls WHERE destination LIKE %s ORDER BY started_at DESC LIMIT 1",
                                    (callee_like,)).fetchone()
            if row and row["state"] == "settled":
                return row
            time.sleep(0.1)
        raise AssertionError(f"no settled call to {callee_like}: {row}")


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


@pytest.fixture
def stack(conn: psycopg.Connection, db_url: str, tmp_path: Path, asterisk: Asterisk, sipp: str) -> Iterator[Stack]:
    conn.execute("INSERT INTO rates (prefix, cents_per_minute) VALUES ('49', 1), ('4917', 60), ('49900', 199)")
    t = tenant(conn, plan="starter", area="0211")
    user = account(conn, t["id"])
    sip_port, agi_port, carrier_port = free_port(), free_port(), free_port()
    settings = replace(GOLDEN_SETTINGS, sip_port=sip_port, ami_port=free_port(), agi_port=agi_port,
                       carrier_host=f"127.0.0.1:{carrier_port}")
    with conn.transaction():
        files = service.render_files(conn, settings, ["asterisk"])["asterisk"]
    agi_log = tmp_path / "agi.log"
    env = {**os.environ, "DATABASE_URL": db_url, "DUSTEL_AGI_NODE": NODE,
           # received faxes: Asterisk writes them in its chroot, the policy server reads them from outside
           "DUSTEL_FAX_READ_DIR": f"{asterisk.root}{settings.fax_spool_dir}"}
    with agi_log.open("wb") as out:
        agi = subprocess.Popen([sys.executable, "-m", "dustel.cli", "agi", "serve", "--host", "127.0.0.1",
                                "--port", str(agi_port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    carrier_log = tmp_path / "carrier.log"
    carrier = subprocess.Popen([sipp, "-sn", "uas", "-i", "127.0.0.1", "-p", str(carrier_port),
                                "-mp", str(free_port()), "-trace_msg", "-message_file", str(carrier_log),
                                "-nostdin"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        _wait_port(agi_port, agi, "dustel agi serve")
        asterisk.add_moh_class_dir(f"{settings.moh_dir}/default/8000")
        asterisk.start(files, dirs=[settings.fax_spool_dir])
        st = Stack(conn, asterisk, sipp, tmp_path, sip_port, carrier_log, agi_log, t["id"], user, files, settings,
                   [settings.fax_spool_dir])
        yield st
        if st.relay is not None:
            st.relay.close()
    finally:
        for p in (agi, carrier):
            p.terminate()
            p.wait(timeout=10)


def test_call_is_cut_when_the_money_runs_out(stack: Stack) -> None:
    calls.run_sync(stack.conn, calls.topup(stack.tenant_id, 3, "test:3ct"))   # 3 ct at 60 ct/min: 3 s
    r = stack.call("01701234567", "call_until_bye.xml")
    assert r.returncode == 0, r.stdout[-1500:]
    row = stack.call_row("+49170%")
    assert row["max_seconds"] == 3 and row["reserved_cents"] == 3
    assert abs(row["billsec"] - 3) <= 1, row
    assert row["charged_cents"] == row["billsec"]                             # 1 ct per second here
    m = stack.conn.execute("SELECT * FROM tenant_money WHERE tenant_id = %s", (stack.tenant_id,)).fetchone()
    assert m["reserved_cents"] == 0 and m["balance_cents"] == 3 - row["charged_cents"] >= 0
    assert "INVITE sip:+491701234567@" in stack.carrier_log.read_text(errors="replace")


def test_time_limit_cuts_a_call(stack: Stack) -> None:
    stack.conn.execute("UPDATE sip_accounts SET max_call_seconds = 2")
    r = stack.call("0211123456", "call_until_bye.xml")                     # start credit: free minutes
    assert r.returncode == 0, r.stdout[-1500:]
    row = stack.call_row("+49211123456")
    assert row["max_seconds"] == 2 and abs(row["billsec"] - 2) <= 1 and row["charged_cents"] == 0


@pytest.mark.parametrize("dialed,reason", [
    ("0900123456", "zone_blocked"),            # premium not released
    ("01701234567", "insufficient_credit"),    # empty prepaid balance
    ("0123", "invalid_number"),                # no number
])
def test_refused_calls_get_a_cause(stack: Stack, dialed: str, reason: str) -> None:
    """Issue 15.3: the SIP code of policy.REFUSALS — the same table the
    FreeSWITCH side responds with (test_esl_outbound)."""
    status = str(REFUSALS[reason][0])
    r = stack.call(dialed, "call_hangup.xml")
    assert r.returncode != 0
    finals = re.findall(r"^SIP/2\.0 ([3-6]\d\d)", r.stdout, re.M)
    assert finals and finals[-1] == status, r.stdout[-1500:]
    assert re.search(rf"outbound call=\S+ tenant={stack.tenant_id} .* admit=False reason={reason}",
                     stack.agi_log.read_text())
    assert "INVITE sip:" not in (stack.carrier_log.read_text(errors="replace") if stack.carrier_log.exists()
                                 else "")


def test_wrong_ip_refused(stack: Stack) -> None:
    # changed after the render: Asterisk's rendered ACL does not know it, the live policy does
    stack.conn.execute("UPDATE sip_accounts SET allowed_nets = '{192.0.2.0/24}'")
    r = stack.call("0211123456", "call_hangup.xml")
    assert r.returncode != 0
    assert re.findall(r"^SIP/2\.0 ([3-6]\d\d)", r.stdout, re.M)[-1] == "403"
    assert "admit=False reason=ip_not_allowed" in stack.agi_log.read_text()


def test_a_tls_account_is_refused_over_udp(stack: Stack) -> None:
    """Issue 16.3 (calls): Asterisk tells the policy ``CHANNEL(pjsip,secure)``;
    a TLS account calling over UDP is refused 403, its emergency call not."""
    stack.conn.execute("UPDATE sip_accounts SET tls_mode = 'tls_only'")
    r = stack.call("0211123456", "call_hangup.xml")
    assert re.findall(r"^SIP/2\.0 ([3-6]\d\d)", r.stdout, re.M)[-1] == "403"
    assert "admit=False reason=tls_required" in stack.agi_log.read_text()
    r = stack.call("112", "call_hangup.xml")
    assert r.returncode == 0, r.stdout[-1500:]


def test_emergency_passes_with_empty_balance(stack: Stack) -> None:
    stack.conn.execute("UPDATE sip_accounts SET zone_preset = 'none'")
    r = stack.call("112", "call_hangup.xml")
    assert r.returncode == 0, r.stdout[-1500:]
    # routed to the PSAP of Düsseldorf (the account's area) without asking the policy
    assert "INVITE sip:021111112@" in stack.carrier_log.read_text(errors="replace")
    assert "callee=112" not in stack.agi_log.read_text()


# ------------------------------------------------------------ attacks (issue 16)

def test_a_spoofed_carrier_is_refused(stack: Stack) -> None:
    """Issue 16.1: an INVITE with ``From: <sip:carrier@…>`` from a host that is
    not the carrier (127.0.0.2; the carrier is 127.0.0.1) was taken as the
    carrier: a fake inbound call with any caller ID.  Now no endpoint
    matches it; the real carrier address still gets through."""
    r = stack.call("+492111230000", "carrier_call_until_bye.xml", user="carrier", source="127.0.0.2", timeout=10)
    assert r.returncode != 0
    finals = re.findall(r"^SIP/2\.0 ([3-6]\d\d)", r.stdout, re.M)
    assert finals and finals[-1] in ("401", "403"), r.stdout[-1500:]
    assert "inbound call=" not in stack.agi_log.read_text()
    # Asterisk's logger writes asynchronously: wait for its line, do not read the log at once
    wait_for(lambda: "No matching endpoint found" in stack.asterisk.log()
             or "Failed to authenticate" in stack.asterisk.log(), 10, "Asterisk's log of the refusal")


def test_ip_restricted_account_reaches_the_psap_from_anywhere(stack: Stack) -> None:
    """Issue 16.2: an endpoint ACL refused 112 from a foreign address before
    the emergency rule ran.  Rendered with the restriction, the phone (on
    127.0.0.1, not in 192.0.2.0/24) reaches the PSAP; a landline is refused
    by the policy with 403."""
    stack.conn.execute("UPDATE sip_accounts SET allowed_nets = '{192.0.2.0/24}'")
    stack.reload("pjsip.conf")
    r = stack.call("112", "call_hangup.xml")
    assert r.returncode == 0, r.stdout[-1500:]
    assert "INVITE sip:021111112@" in stack.carrier_log.read_text(errors="replace")
    r = stack.call("0211123456", "call_hangup.xml")
    assert re.findall(r"^SIP/2\.0 ([3-6]\d\d)", r.stdout, re.M)[-1] == "403"
    assert "admit=False reason=ip_not_allowed" in stack.agi_log.read_text()


def test_ami_user_reloads_but_cannot_run_commands_or_originate(stack: Stack) -> None:
    """Issue 16.4 / 15.12: the rendered AMI user had read=all, write=all.
    Now it can do what the controller does (ModuleReload of each module,
    channel and contact lists) and nothing of command / originate."""
    from dustel.wire import commands as C
    s = stack.settings
    res = C.ami_run("127.0.0.1", s.ami_port, s.ami_username, s.ami_secret,
                    C.ast_reload() + [C.ami("CoreShowChannels"), C.ami("PJSIPShowContacts")])
    first = [r[0] if isinstance(r, list) else r for r in res]
    assert [r.get("Response") for r in first[:5]] == ["Success"] * 5, res
    # the lists answer (PJSIPShowContacts with no contact: "No Contacts found"), no permission refused
    assert all("ermission" not in str(r.get("Message", "")) for r in first[5:]), res
    bad = C.ami_run("127.0.0.1", s.ami_port, s.ami_username, s.ami_secret,
                    [C.ami("Command", Command="core show version"),
                     C.ami("Originate", Channel="Local/1@dustel-public", Application="Wait", Data="1")])
    assert all(r.get("Response") == "Error" and "ermission" in r.get("Message", "") for r in bad), bad


# ------------------------------------------------------------ controller (AMI)

class AMIController:
    def __init__(self, stack: Stack, db_url: str) -> None:
        s = stack.settings
        env = {**os.environ, "DUSTEL_CONTROLLER_DSN": db_url,
               "DUSTEL_CONTROLLER_NODES": json.dumps([[NODE, "127.0.0.1", s.ami_port, s.ami_username,
                                                        s.ami_secret]])}
        self.log_path = stack.tmp / "controller.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "dustel.controller.ami_main"], env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rebuilt(self, times: int = 1) -> None:
        wait_for(lambda: self.log().count("live state rebuilt") >= times, 40, f"rebuild #{times}: {self.log()}")


@pytest.fixture
def controller(stack: Stack, db_url: str) -> Iterator[AMIController]:
    c = AMIController(stack, db_url)
    yield c
    c.proc.terminate()
    c.proc.wait(10)


def register(stack: Stack, tls: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [stack.sipp, "-sf", str(DATA / "register.xml"), stack.target(tls), "-s", stack.user, *stack.transport(tls),
         "-au", stack.user, "-ap", PASSWORD, "-i", "127.0.0.1",
         "-p", str(free_port()), "-m", "1", "-timeout", "15s", "-timeout_error", "-nostdin"],
        capture_output=True, text=True, timeout=30, cwd=stack.tmp)


def cdrs(stack: Stack) -> list[dict[str, Any]]:
    return stack.conn.execute("SELECT * FROM cdrs WHERE node = %s ORDER BY started_at", (NODE,)).fetchall()


def test_controller_follows_registrations_and_writes_one_cdr_per_leg(stack: Stack, controller: AMIController) -> None:
    controller.rebuilt()
    r = register(stack)
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-800:]
    reg = wait_for(lambda: stack.conn.execute("SELECT * FROM registrations WHERE node = %s", (NODE,)).fetchone(),
                   20, "registration in the live state")
    assert reg["username"] == stack.user and reg["tenant_id"] == stack.tenant_id
    stack.conn.execute("UPDATE sip_accounts SET max_call_seconds = 2")
    r = stack.call("0211123456", "call_until_bye.xml")
    assert r.returncode == 0, r.stdout[-1500:]
    wait_for(lambda: len(cdrs(stack)) == 2, 20, "two CDRs (caller leg, carrier leg)")
    a, b = sorted(cdrs(stack), key=lambda c: c["direction"] != "out")
    assert (a["direction"], a["tenant_id"], a["account"], a["callee"]) == ("out", stack.tenant_id, stack.user,
                                                                           "0211123456")
    assert abs(a["billsec"] - 2) <= 1 and a["answered_at"] is not None
    assert b["direction"] == "leg" and b["tenant_id"] == stack.tenant_id      # the account code is inherited
    assert {a["hangup_cause"], b["hangup_cause"]} <= {"NORMAL_CLEARING", "RECOVERY_ON_TIMER_EXPIRE", "16", "19"}
    assert stack.conn.execute("SELECT count(*) AS n FROM live_channels").fetchone()["n"] == 0


def test_a_tls_account_registers_and_calls_over_tls_only(stack: Stack, controller: AMIController) -> None:
    """Issue 16.3 on the real Asterisk: with a certificate configured the TLS
    transport is rendered; a ``tls_only`` account registering over UDP gets
    Asterisk's 200 (no engine ties an account to a transport) and the
    controller drops the contact at once — never stored, never dialled; over
    TLS it registers, stays, and its call is admitted, while the same call
    over UDP is refused.  (The phone is sipp over TCP through a TLS relay:
    Debian's sipp is built without OpenSSL, ``-t l1`` refuses to start.)"""
    key, cert = stack.tmp / "key.pem", stack.tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    stack.settings = replace(stack.settings, sip_tls_port=free_port(socket.SOCK_STREAM),
                             tls_cert_file="/etc/asterisk/keys/agent.pem", tls_key_file="/etc/asterisk/keys/agent.key")
    stack.conn.execute("UPDATE sip_accounts SET tls_mode = 'tls_only'")
    controller.rebuilt()
    stack.restart({"keys/agent.pem": cert.read_text(), "keys/agent.key": key.read_text()})
    assert "transport=transport-tls" in stack.files["pjsip.conf"]
    controller.rebuilt(2)

    assert register(stack).returncode == 0          # Asterisk says 200 …
    wait_for(lambda: "refused registration" in controller.log(), 20, "the controller dropping the contact")
    assert "No objects found" in stack.asterisk.cli("pjsip show contacts") or \
        stack.user not in stack.asterisk.cli("pjsip show contacts")         # … and the contact is gone
    assert stack.conn.execute("SELECT count(*) AS n FROM registrations").fetchone()["n"] == 0

    r = register(stack, tls=True)
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-800:]
    reg = wait_for(lambda: stack.conn.execute("SELECT * FROM registrations").fetchone(), 20, "the TLS contact")
    assert "transport=tls" in reg["contact"].lower()
    assert stack.user in stack.asterisk.cli("pjsip show contacts")
    assert controller.log().count("refused registration") == 1

    r = stack.call("0211123456", "call_hangup.xml", tls=True)
    assert r.returncode == 0, r.stdout[-1500:]
    assert "INVITE sip:+49211123456@" in stack.carrier_log.read_text(errors="replace")
    r = stack.call("0211123457", "call_hangup.xml")
    assert re.findall(r"^SIP/2\.0 ([3-6]\d\d)", r.stdout, re.M)[-1] == "403"


def test_controller_survives_an_asterisk_restart(stack: Stack, controller: AMIController) -> None:
    controller.rebuilt()
    assert register(stack).returncode == 0
    wait_for(lambda: stack.conn.execute("SELECT count(*) AS n FROM online_accounts").fetchone()["n"] == 1, 20,
             f"registration: {stack.conn.execute('SELECT * FROM registrations').fetchall()} {controller.log()}")
    before = stack.conn.execute("SELECT username, contact FROM registrations").fetchall()
    stack.conn.execute("UPDATE registrations SET user_agent = 'stale'")
    stack.asterisk.stop()
    stack.asterisk.start(stack.files, dirs=stack.dirs, fresh=False)
    controller.rebuilt(2)
    # the contact survived the restart in Asterisk's astdb; the rebuild took it from the engine again
    after = stack.conn.execute("SELECT username, contact, user_agent FROM registrations").fetchall()
    assert [(r["username"], r["contact"]) for r in after] == [(r["username"], r["contact"]) for r in before]
    assert all(r["user_agent"] != "stale" for r in after)
    stack.conn.execute("UPDATE sip_accounts SET max_call_seconds = 1")
    assert stack.call("0211123456", "call_until_bye.xml").returncode == 0
    wait_for(lambda: len(cdrs(stack)) == 2, 20, "CDRs after the restart")
    assert controller.proc.poll() is None


# --------------------------------------------------------------- DUSqueue

def test_agents_log_in_by_star_code_and_take_a_hotline_call(stack: Stack) -> None:
    conn = stack.conn
    t = tenant(conn, options={"acd": 1})
    tid = t["id"]
    agent_user = account(conn, tid)
    with conn.transaction():
        targets.queue_add(conn, tid, "support", "1", wrapup=0)
        targets.agent_add(conn, tid, "Erika", "1234", account=agent_user, queues=["support"])
        numbers.add(conn, tid, "+492111230000")
        numbers.assign(conn, "+492111230000", "queue", "support")
    conn.execute("UPDATE tenants SET max_call_seconds = 3 WHERE id = %s", (tid,))
    stack.restart()
    queue = f"t{tid}-support"

    def members() -> str:
        return stack.asterisk.cli(f"queue show {queue}")

    assert "No Members" in members()
    r = stack.call("*51*1*1234", "call_until_bye.xml", user=agent_user)
    assert r.returncode == 0, r.stdout[-1500:]
    assert f"PJSIP/{agent_user}" in members() and "paused" not in members()
    assert stack.call("*53", "call_until_bye.xml", user=agent_user).returncode == 0
    assert "paused" in members()
    assert stack.call("*54", "call_until_bye.xml", user=agent_user).returncode == 0
    assert "paused" not in members()
    wrong = stack.call("*51*1*9999", "call_until_bye.xml", user=agent_user)
    assert wrong.returncode == 0 and "reason=wrong_pin" in stack.agi_log.read_text()

    # the agent's phone registers on a port where a sipp UAS then answers the queue's call
    phone_port = free_port()
    reg = subprocess.run(
        [stack.sipp, "-sf", str(DATA / "register.xml"), f"127.0.0.1:{stack.sip_port}", "-s", agent_user,
         "-au", agent_user, "-ap", PASSWORD, "-i", "127.0.0.1", "-p", str(phone_port), "-m", "1",
         "-timeout", "15s", "-timeout_error", "-nostdin"], capture_output=True, text=True, timeout=30, cwd=stack.tmp)
    assert reg.returncode == 0, reg.stdout[-800:]
    phone_log = stack.tmp / "agent-phone.log"
    phone = subprocess.Popen([stack.sipp, "-sf", str(DATA / "agent_phone.xml"), "-i", "127.0.0.1",
                              "-p", str(phone_port), "-mp", str(free_port()), "-trace_msg",
                              "-message_file", str(phone_log), "-nostdin"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=stack.tmp)
    try:
        wait_for(lambda: "Avail" in stack.asterisk.cli("pjsip show contacts"), 15, "agent phone reachable")
        def offered() -> int:      # calls the queue offered to the agent's phone
            return len(re.findall(r"INVITE sip:\S+ SIP/2.0", phone_log.read_text(errors="replace")))

        def hotline_call() -> None:
            caller = stack.call("+492111230000", "carrier_call_until_bye.xml", user="+4930555000")
            assert caller.returncode == 0, caller.stdout[-2000:]      # answered by the queue, cut after 3 s

        hotline_call()
        assert offered() == 1                                 # the queue rang the agent's phone, which answered
        assert stack.call("*53", "call_until_bye.xml", user=agent_user).returncode == 0
        hotline_call()
        assert offered() == 1                                 # paused: the next caller is not offered
        assert stack.call("*54", "call_until_bye.xml", user=agent_user).returncode == 0
        hotline_call()
        assert offered() == 2                                 # unpaused: offered again
        assert stack.call("*52", "call_until_bye.xml", user=agent_user).returncode == 0
        assert "No Members" in members()
        hotline_call()
        assert offered() == 2                                 # logged out: not offered
    finally:
        phone.terminate()
        phone.wait(10)
    assert re.search(rf"inbound call=\S+ tenant={tid} target=queue:{queue} .* admit=True", stack.agi_log.read_text())
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM queue_events WHERE tenant_id = %s ORDER BY id",
                                             (tid,)).fetchall()]
    assert kinds == ["login", "pause", "unpause", "pause", "unpause", "logout"]


def test_closed_queue_plays_its_announcement_and_goes_to_its_target(stack: Stack) -> None:
    conn = stack.conn
    t = tenant(conn, options={"acd": 1})
    tid = t["id"]
    account(conn, tid)                    # the tenant's main account: the leg's zones and area
    with conn.transaction():
        targets.queue_add(conn, tid, "support", "1")
        numbers.add(conn, tid, "+492111230000")
        numbers.assign(conn, "+492111230000", "queue", "support")
        # open only on public holidays around midnight: closed now
        targets.queue_hours(conn, tid, "support", ["hol 00:00-00:01"], closed_announce="dustel/silence",
                            closed_target="+4921155501")
    conn.execute("UPDATE tenants SET max_call_seconds = 3 WHERE id = %s", (tid,))
    stack.asterisk.add_moh_class_dir("/usr/share/asterisk/sounds/dustel")      # dustel/silence.wav
    stack.restart()
    r = stack.call("+492111230000", "carrier_call_until_bye.xml", user="+4930555000")
    assert r.returncode == 0, r.stdout[-1500:]
    assert "queue_open=0" in stack.agi_log.read_text()
    wait_for(lambda: "Playing 'dustel/silence" in stack.asterisk.log(), 10, "the announcement in Asterisk's log")
    assert "INVITE sip:+4921155501@" in stack.carrier_log.read_text(errors="replace")
    # issue 15.15: that external leg was an outbound call of the tenant — decided, limited, reserved, settled
    leg = wait_for(lambda: (r := conn.execute("SELECT * FROM calls WHERE call_id LIKE '%:leg'").fetchone())
                   and r["state"] == "settled" and r, what="the leg settled")
    assert (leg["tenant_id"], leg["direction"], leg["destination"], leg["max_seconds"]) == (
        tid, "out", "+4921155501", 3)
    assert re.search(r"leg call=\S+:leg tenant=\d+ callee=\+4921155501 admit=True", stack.agi_log.read_text())
    # issue 15.14: the caller the closed queue did not take is in the statistics
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM queue_events WHERE tenant_id = %s ORDER BY id",
                                             (tid,)).fetchall()]
    assert kinds == ["offered", "closed"]


def test_queue_caller_times_out_after_the_queues_max_wait(stack: Stack) -> None:
    """Issue 15.14: Asterisk got the call's time limit as the queue's max
    wait (``max_wait_seconds`` ignored) and ``timed_out`` stayed 0.  Now
    Queue() waits the queue's max wait, and the dialplan reports TIMEOUT."""
    import datetime as dt

    from dustel.queue import stats
    conn = stack.conn
    t = tenant(conn, options={"acd": 1})
    tid = t["id"]
    with conn.transaction():
        targets.queue_add(conn, tid, "support", "1")
        numbers.add(conn, tid, "+492111230000")
        numbers.assign(conn, "+492111230000", "queue", "support")
    conn.execute("UPDATE queues SET max_wait_seconds = 10 WHERE tenant_id = %s", (tid,))
    conn.execute("UPDATE tenants SET max_call_seconds = 600 WHERE id = %s", (tid,))    # not the limit that ends it
    stack.restart()
    r = stack.call("+492111230000", "carrier_call_until_bye.xml", user="+4930555000", timeout=60)
    assert r.returncode == 0, r.stdout[-1500:]
    wait_for(lambda: "status=TIMEOUT" in stack.agi_log.read_text(), what="the queue result")
    row = conn.execute("SELECT wait_ms FROM queue_events WHERE tenant_id = %s AND kind = 'timeout'",
                       (tid,)).fetchone()
    assert row is not None and 10_000 <= row["wait_ms"] < 60_000     # the queue's wait, not the call limit
    now = dt.datetime.now(dt.UTC)
    _, rows = stats.report(conn, tid, "support", now - dt.timedelta(hours=1), now + dt.timedelta(hours=1), "day")
    assert sum(r["timed_out"] for r in rows) == 1


def answering_phone(stack: Stack, name: str, user: str | None = None,
                    scenario: str = "agent_phone.xml") -> tuple[subprocess.Popen[bytes], Path]:
    """An account (the stack's) registers from a new port where a sipp UAS
    then answers every call — or only rings (``ringing_phone.xml``) — its
    messages in the returned log."""
    port = free_port()
    user = user or stack.user
    reg = subprocess.run(
        [stack.sipp, "-sf", str(DATA / "register.xml"), f"127.0.0.1:{stack.sip_port}", "-s", user,
         "-au", user, "-ap", PASSWORD, "-i", "127.0.0.1", "-p", str(port), "-m", "1",
         "-timeout", "15s", "-timeout_error", "-nostdin"], capture_output=True, text=True, timeout=30, cwd=stack.tmp)
    assert reg.returncode == 0, reg.stdout[-800:]
    log = stack.tmp / f"{name}.log"
    proc = subprocess.Popen([stack.sipp, "-sf", str(DATA / scenario), "-i", "127.0.0.1", "-p", str(port),
                             "-mp", str(free_port()), "-trace_msg", "-message_file", str(log), "-nostdin"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=stack.tmp)
    # a call placed before sipp has bound its port meets a closed port (ICMP
    # unreachable: the leg fails at once); on a busy machine that happened
    wait_for(lambda: _udp_bound(port) or proc.poll() is not None, 20, f"sipp {name} listening on {port}")
    assert proc.poll() is None, f"sipp {name} exited {proc.returncode}"
    return proc, log


def _udp_bound(port: int) -> bool:
    """Is a UDP socket bound to 127.0.0.1:``port`` (``/proc/net/udp``)?"""
    with open("/proc/net/udp") as f:
        return any(line.split()[1] == f"0100007F:{port:04X}" for line in f.readlines()[1:])


def route_to_the_account(stack: Stack, e164: str, **number: Any) -> None:
    """A new number (or block) of the stack's tenant routed to its account,
    calls cut after 2 s, the dialplan rendered and reloaded."""
    conn = stack.conn
    with conn.transaction():
        numbers.add(conn, stack.tenant_id, e164, **number)
        numbers.assign(conn, e164, "account", stack.user)
    conn.execute("UPDATE tenants SET max_call_seconds = 2 WHERE id = %s", (stack.tenant_id,))
    stack.reload("extensions.conf")


def test_hostile_caller_id_is_delivered_cleaned_and_takes_no_line(stack: Stack) -> None:
    """Issue 15.7 on the real Asterisk: ``!`` and ``~`` are legal in a SIP
    user part but not in the decision's MSet — the call was refused and its
    line stayed taken.  Now the phone gets the cleaned number and the line
    is free after the call."""
    conn = stack.conn
    route_to_the_account(stack, "+492115557000")
    phone, log = answering_phone(stack, "phone")
    try:
        wait_for(lambda: "Avail" in stack.asterisk.cli("pjsip show contacts"), 15, "phone reachable")
        for _ in range(3):                                  # more calls than the tenant has inbound lines
            r = stack.call("+492115557000", "carrier_call_until_bye.xml", user="+4930!555~1")
            assert r.returncode == 0, r.stdout[-1500:]
        wait_for(lambda: log.exists() and log.read_text(errors="replace").count("INVITE sip:") >= 3, 10,
                 "three calls at the phone")
        froms = re.findall(r"^INVITE sip:.*?^From: (.*?)$", log.read_text(errors="replace"), re.M | re.S)
        assert len(froms) == 3 and all("<sip:+49305551@" in f and "!" not in f for f in froms), froms
    finally:
        phone.terminate()
        phone.wait(10)
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM calls WHERE state = 'active'").fetchone()["n"] == 0,
             what="no line left taken")
    assert conn.execute("SELECT count(*) AS n FROM calls WHERE direction = 'in'").fetchone()["n"] == 3


def test_ddi_block_reaches_the_pbx_with_its_extension_on_every_contact(stack: Stack) -> None:
    """Issue 15.18: the dialled extension never reached the PBX behind a DDI
    account, the block head was refused instead of reaching the central
    answering point, and ``Dial(PJSIP/<user>)`` rang only the first contact."""
    route_to_the_account(stack, "+4921155560", block_size=10, central_ddi="0")
    phones, logs = [], []
    try:
        for i in range(2):                                  # the PBX registered twice (two contacts)
            proc, log = answering_phone(stack, f"pbx-{i}")
            phones.append(proc)
            logs.append(log)
        wait_for(lambda: stack.asterisk.cli("pjsip show contacts").count("Avail") >= 2, 15, "two contacts")

        def invites() -> list[str]:
            return [u for log in logs if log.exists()
                    for u in re.findall(r"^INVITE sip:([^@ ]+)@", log.read_text(errors="replace"), re.M)]
        r = stack.call("+49211555603", "carrier_call_until_bye.xml", user="+4930555000")
        assert r.returncode == 0, r.stdout[-1500:]
        wait_for(lambda: len(invites()) >= 2, 10, "both contacts rang")
        assert invites() == ["+49211555603", "+49211555603"]              # the extension reached the PBX
        r = stack.call("+4921155560", "carrier_call_until_bye.xml", user="+4930555000")
        assert r.returncode == 0, r.stdout[-1500:]                        # the head is not refused …
        wait_for(lambda: len(invites()) >= 4, 10, "the central answering point rang")
        assert sorted(invites()) == ["+49211555600"] * 2 + ["+49211555603"] * 2   # … it reaches the central point
    finally:
        for p in phones:
            p.terminate()
            p.wait(10)


def test_an_external_agent_leg_goes_through_the_policy(stack: Stack) -> None:
    """Issue 15.15 on the real Asterisk: the member interface app_queue rings
    for an agent on an external number (Local/<tenant>-<number>@dustel-agent-out)
    asks the policy: the carrier gets the tenant's number, the leg its limit
    and its reservation, settled after the hangup."""
    conn = stack.conn
    with conn.transaction():
        numbers.add(conn, stack.tenant_id, "+492115557100")
    calls.run_sync(conn, calls.topup(stack.tenant_id, 100, "test:leg"))
    conn.execute("UPDATE tenants SET max_call_seconds = 2 WHERE id = %s", (stack.tenant_id,))
    stack.asterisk.cli(f"channel originate Local/{stack.tenant_id}-+4921155501@dustel-agent-out application Wait 5")
    leg = wait_for(lambda: (r := conn.execute("SELECT * FROM calls WHERE call_id LIKE '%:leg'").fetchone())
                   and r["state"] == "settled" and r, 30, "the agent leg settled")
    assert (leg["tenant_id"], leg["destination"], leg["max_seconds"]) == (stack.tenant_id, "+4921155501", 2)
    assert leg["billsec"] <= 3                                      # cut at its limit (the carrier never hangs up)
    invite = re.search(r"^INVITE sip:\+4921155501@.*?^From: (.*?)$", stack.carrier_log.read_text(errors="replace"),
                       re.M | re.S)
    assert invite and "+492115557100" in invite.group(1)            # the tenant's number, not the queue caller's


# ------------------------------------------------------------ forwarding (issue 13)

def _invites(log: Path) -> int:
    return len(re.findall(r"^INVITE sip:", log.read_text(errors="replace"), re.M)) if log.exists() else 0


def _has(log: Path, what: str) -> bool:
    return log.exists() and re.search(what, log.read_text(errors="replace"), re.M) is not None


def test_forwarding_and_group_call_ring_what_the_plan_says(stack: Stack) -> None:
    """Issue 13 on the real Asterisk, one diversion after another on the same
    number, each read at call time (no render): not registered → the
    target; group call → both phones ring, the first to answer wins and the
    other gets CANCEL; no answer after 5 s → the target; immediate → only
    the target; an external target → the carrier, with the tenant's number,
    rated and settled as an outbound leg of the tenant; a schedule outside
    its hours → no diversion."""
    from dustel.provisioning import features
    conn = stack.conn
    a, b = stack.user, account(conn, stack.tenant_id)
    route_to_the_account(stack, "+492115550101")
    stack.reload("pjsip.conf")

    def divert(**kw: Any) -> None:
        with conn.transaction():
            features.clear_diversion(conn, a, "forward")
            features.clear_diversion(conn, a, "group")
            if kw:
                features.set_diversion(conn, a, **kw)

    def call() -> subprocess.CompletedProcess[str]:
        return stack.call("+492115550101", "carrier_call_until_bye.xml", user="+4930555000", timeout=40)

    procs = []
    try:
        b_proc, b_log = answering_phone(stack, "phone-b", user=b)
        procs.append(b_proc)
        wait_for(lambda: b in stack.asterisk.cli("pjsip show contacts"), 15, "B registered")
        # 1. A not registered: forwarded to B
        divert(kind="forward", mode="unregistered", targets=[b])
        assert call().returncode == 0
        assert _invites(b_log) == 1

        a_proc, a_log = answering_phone(stack, "phone-a", scenario="ringing_phone.xml")
        procs.append(a_proc)
        wait_for(lambda: a in stack.asterisk.cli("pjsip show contacts"), 15, "A registered")
        # 2. group call: A rings, B answers first, A is cancelled
        divert(kind="group", targets=[b], timeout=20)
        assert call().returncode == 0
        wait_for(lambda: _has(a_log, r"^CANCEL sip:"), 10, "A cancelled")
        assert _invites(a_log) == 1 and _invites(b_log) == 2
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    procs = []
    try:
        a_proc, a_log = answering_phone(stack, "phone-a2", scenario="ringing_phone.xml")
        b_proc, b_log = answering_phone(stack, "phone-b2", user=b)
        procs += [a_proc, b_proc]
        # 3. no answer after 5 s: A rings, is cancelled, B answers
        divert(kind="forward", mode="no_answer", timeout=5, targets=[b])
        t0 = time.monotonic()
        assert call().returncode == 0
        assert _invites(a_log) == 1 and _has(a_log, r"^CANCEL sip:") and _invites(b_log) == 1
        assert time.monotonic() - t0 >= 5
        # 4. immediate: only B
        divert(kind="forward", mode="immediate", targets=[b])
        assert call().returncode == 0
        assert _invites(a_log) == 1 and _invites(b_log) == 2
        # 5. external: the carrier, with the tenant's number; an outbound leg, rated and settled
        divert(kind="forward", mode="immediate", targets=["+4917012345678"])
        calls.run_sync(conn, calls.topup(stack.tenant_id, 500, "test:5eur"))
        r = call()
        assert r.returncode == 0, r.stdout[-1500:]
        carrier = stack.carrier_log.read_text(errors="replace")
        invite = carrier[carrier.index("INVITE sip:+4917012345678@"):]
        from_line = re.search(r"^From:.*$", invite, re.M).group(0)   # type: ignore[union-attr]
        assert "+4930555000" not in from_line and "+49211555" in from_line, from_line
        leg = wait_for(lambda: conn.execute("SELECT * FROM calls WHERE call_id LIKE '%:leg' AND state = 'settled'")
                       .fetchone(), 10, "the external leg settled")
        assert leg["destination"] == "+4917012345678" and leg["charged_cents"] > 0 and leg["billsec"] >= 1
        assert _invites(a_log) == 1 and _invites(b_log) == 2
        # 6. a schedule outside its hours (business flex): no diversion, A rings
        conn.execute("UPDATE tenants SET plan = 'business_flex', customer_type = 'business' WHERE id = %s",
                     (stack.tenant_id,))
        divert(kind="forward", mode="immediate", targets=[b], when=["hol 00:00-00:01"])
        r = stack.call("+492115550101", "carrier_call_until_bye.xml", user="+4930555000", timeout=4)
        assert r.returncode != 0
        wait_for(lambda: _invites(a_log) == 2, 10, "A rang")
        assert _invites(b_log) == 2
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def test_a_ring_group_rings_its_members_then_its_fallback(stack: Stack) -> None:
    """Issue 13: a number routed to a ring group dialled ``PJSIP/`` (nothing).
    Now every registered member rings for the group's ring time; nobody
    answers, so the fallback account rings and answers."""
    conn = stack.conn
    a, b, c = stack.user, account(conn, stack.tenant_id), account(conn, stack.tenant_id)
    with conn.transaction():
        targets.ring_group_add(conn, stack.tenant_id, "sales", [a, b], ring_seconds=5, fallback=c)
        numbers.add(conn, stack.tenant_id, "+492115550200")
        numbers.assign(conn, "+492115550200", "group", "sales")
    conn.execute("UPDATE tenants SET max_call_seconds = 2 WHERE id = %s", (stack.tenant_id,))
    stack.reload("pjsip.conf", "extensions.conf")
    procs = []
    try:
        for name, user, scenario in (("ga", a, "ringing_phone.xml"), ("gb", b, "ringing_phone.xml"),
                                     ("gc", c, "agent_phone.xml")):
            proc, log = answering_phone(stack, name, user=user, scenario=scenario)
            procs.append((proc, log))
        wait_for(lambda: all(u in stack.asterisk.cli("pjsip show contacts") for u in (a, b, c)), 15, "3 phones")
        t0 = time.monotonic()
        r = stack.call("+492115550200", "carrier_call_until_bye.xml", user="+4930555000", timeout=40)
        assert r.returncode == 0, r.stdout[-1500:]
        (_, a_log), (_, b_log), (_, c_log) = procs
        assert _invites(a_log) == 1 and _invites(b_log) == 1 and _invites(c_log) == 1
        assert _has(a_log, r"^CANCEL sip:") and _has(b_log, r"^CANCEL sip:")        # both rang 5 s, then …
        assert _has(c_log, r"^BYE sip:") and time.monotonic() - t0 >= 5                # … the fallback answered
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait(10)


def test_the_caller_hears_the_sound_logo_then_the_uploaded_hold_music(stack: Stack, tmp_path: Path) -> None:
    """Issue 13 / F-07 on the real Asterisk: an uploaded sound logo plays as
    early media before the call is put through, and the queue plays the
    uploaded hold music class (``moh show classes`` lists it; the log says
    which class played)."""
    import numpy as np
    import soundfile

    from dustel.provisioning import media
    conn = stack.conn
    t = tenant(conn, options={"acd": 1})
    tid = t["id"]
    src = tmp_path / "jingle.ogg"
    tt = np.arange(2 * 44100) / 44100
    soundfile.write(src, 0.1 * np.sin(2 * np.pi * 523 * tt), 44100, format="OGG")
    root = stack.asterisk.root
    moh = media.upload(lambda: media.within(conn), f"{root}{stack.settings.moh_dir}", tid, "moh", "jazz",
                       src.read_bytes(), max_bytes=10**7, max_seconds=60)
    logo = media.upload(lambda: media.within(conn), f"{root}/var/lib/dustel/logo", tid, "logo", "tenant",
                        src.read_bytes(), max_bytes=10**7, max_seconds=60)
    with conn.transaction():
        targets.queue_add(conn, tid, "support", "1")
        targets.queue_set_moh(conn, tid, "support", "jazz")
        numbers.add(conn, tid, "+492111230000")
        numbers.assign(conn, "+492111230000", "queue", "support")
    conn.execute("UPDATE queues SET max_wait_seconds = 10 WHERE tenant_id = %s", (tid,))
    stack.restart()
    assert f"Class: t{tid}-jazz" in stack.asterisk.cli("moh show classes")
    r = stack.call("+492111230000", "carrier_call_until_bye.xml", user="+4930555000", timeout=60)
    assert r.returncode == 0, r.stdout[-1500:]
    # Asterisk logs the file by the format it read it as (the 8 kHz WAV is signed linear: '.slin')
    logo_file = f"/var/lib/dustel/logo/t{tid}-logo-tenant/8000/{logo['name']}."
    wait_for(lambda: f"Playing '{logo_file}" in stack.asterisk.log(), 10, "the sound logo played")
    wait_for(lambda: f"Started music on hold, class 't{tid}-jazz'" in stack.asterisk.log(), 10, "the class played")
    log = stack.asterisk.log()
    assert log.index(f"Playing '{logo_file}") < log.index(f"Started music on hold, class 't{tid}-jazz'")
    assert moh["name"] == logo["name"]          # the same upload: the same checksum name


def test_a_forwarding_changed_while_the_phone_rings_applies_to_the_next_leg(stack: Stack) -> None:
    """Issue 13: "a change through the CLI applies to the next leg of a call
    already in progress".  A rings (no answer after 5 s → B); while it
    rings the forwarding is changed to C; when A's time is up, C rings and
    answers — B never rings.  No render, no reload."""
    from dustel.provisioning import features
    conn = stack.conn
    a, b, c = stack.user, account(conn, stack.tenant_id), account(conn, stack.tenant_id)
    route_to_the_account(stack, "+492115550101")
    with conn.transaction():
        features.set_diversion(conn, a, kind="forward", mode="no_answer", timeout=5, targets=[b])
    stack.reload("pjsip.conf")
    procs = []
    try:
        for name, user, scenario in (("la", a, "ringing_phone.xml"), ("lb", b, "agent_phone.xml"),
                                     ("lc", c, "agent_phone.xml")):
            procs.append(answering_phone(stack, name, user=user, scenario=scenario))
        (_, a_log), (_, b_log), (_, c_log) = procs
        result: list[subprocess.CompletedProcess[str]] = []
        caller = threading.Thread(target=lambda: result.append(
            stack.call("+492115550101", "carrier_call_until_bye.xml", user="+4930555000", timeout=40)))
        caller.start()
        wait_for(lambda: _invites(a_log) == 1, 10, "A rings")
        with conn.transaction():
            features.set_diversion(conn, a, kind="forward", mode="no_answer", timeout=5, targets=[c])
        caller.join(60)
        assert result and result[0].returncode == 0, result[0].stdout[-1500:] if result else "no result"
        assert _invites(c_log) == 1 and _has(c_log, r"^BYE sip:") and _invites(b_log) == 0
        assert "next stage" in stack.agi_log.read_text() and "go=True" in stack.agi_log.read_text()
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait(10)


# ------------------------------------------------------------------ fax (issue 14)

def test_a_real_fax_is_received_and_mailed_as_a_pdf(stack: Stack, tmp_path: Path) -> None:
    """Issue 14 on the real Asterisk: SendFAX on one side of a Local channel
    pair transmits a 2-page document (T.30 audio through res_fax_spandsp) to
    a number routed to a fax box; ReceiveFAX writes the TIFF; the policy
    server turns it into a PDF and queues the mail; the outbox delivers it to
    an aiosmtpd server, where the PDF is parsed back: 2 pages of A4 fax
    size, as sent."""
    import pypdf

    from dustel.fax import outbox
    from tests.fax_support import Mailbox, fax_tiff
    conn = stack.conn
    tid = stack.tenant_id
    conn.execute("UPDATE tenants SET email = 'chef@example.org' WHERE id = %s", (tid,))
    with conn.transaction():
        targets.faxbox_add(conn, tid, "office", "fax@example.org")
        numbers.add(conn, tid, "+492119876600")
        numbers.assign(conn, "+492119876600", "fax", "office")
    stack.reload("extensions.conf")
    sent = stack.asterisk.root / "tmp" / "page.tif"
    sent.write_bytes(fax_tiff(2))
    stack.asterisk.cli("channel originate Local/+492119876600@dustel-public application SendFAX /tmp/page.tif")
    row = wait_for(lambda: conn.execute("SELECT * FROM faxes").fetchone(), 120, "the received fax")
    assert (row["status"], row["pages"], row["faxbox"]) == ("received", 2, "office"), row

    box = Mailbox(free_port(socket.SOCK_STREAM)).start()
    try:
        counts = outbox.deliver_due(conn, outbox.Smtp("127.0.0.1", box.port, "fax@dustel.test"))
    finally:
        box.stop()
    assert counts == {"sent": 1, "retry": 0, "failed": 0}
    (msg,) = box.messages
    assert msg["To"] == "fax@example.org" and msg["Subject"].startswith("Fax from ") and "2 pages" in msg["Subject"]
    (part,) = [p for p in msg.walk() if p.get_content_type() == "application/pdf"]
    pdf = pypdf.PdfReader(io.BytesIO(part.get_payload(decode=True)))
    assert len(pdf.pages) == 2
    for page in pdf.pages:         # 1728 x 2292 px at 204 x 196 dpi: 610 x 842 pt (A4 is 595 x 842)
        w, h = float(page.mediabox.width), float(page.mediabox.height)
        assert abs(w - 1728 / 204 * 72) < 8 and abs(h - 2292 / 196 * 72) < 25, (w, h)
    body = [p for p in msg.walk() if p.get_content_type() == "text/plain"][0].get_content()
    assert "Pages: 2" in body and "Transmission: complete" in body


def test_a_mailed_pdf_is_faxed_through_the_policy_and_the_sender_gets_the_report(stack: Stack,
                                                                                  tmp_path: Path) -> None:
    """Issue 14, e-mail to fax end to end on the real Asterisk: a mail with a
    2-page PDF, sent with smtplib to the running gateway (fax box PIN in the
    subject, the sender the fax box's address), becomes a fax job; the
    deliverer writes an Asterisk call file; the dialling half asks the
    policy (an outbound leg of the tenant, settled) and calls the carrier —
    here Asterisk itself, so the call comes back in as the carrier to the
    fax box's number — while the other half runs SendFAX.  The job ends
    'sent' with 2 pages, the fax box receives 2 pages, and the delivery
    report reaches the sender's aiosmtpd mailbox."""
    import smtplib
    from email.message import EmailMessage

    from aiosmtpd.controller import Controller
    from PIL import Image, ImageDraw

    from dustel.fax import mailgw, outbound, outbox
    from tests.fax_support import Mailbox
    conn = stack.conn
    tid = stack.tenant_id
    calls.run_sync(conn, calls.topup(tid, 1000, "test:10eur"))
    conn.execute("UPDATE tenants SET email = 'chef@example.org' WHERE id = %s", (tid,))
    with conn.transaction():
        targets.faxbox_add(conn, tid, "office", "office@example.org", pin="4711")
        numbers.add(conn, tid, "+492119876600")
        numbers.assign(conn, "+492119876600", "fax", "office")
    stack.settings = replace(stack.settings, carrier_host=f"127.0.0.1:{stack.sip_port}")   # the carrier: itself
    stack.restart()

    pages = []
    for n in range(2):
        im = Image.new("L", (1240, 1754), 255)                  # A4 at 150 dpi
        d = ImageDraw.Draw(im)
        d.rectangle((100, 100, 1100, 300 + 100 * n), outline=0, width=6)
        for y in range(400, 1600, 50):
            d.line((120, y, 1100, y), fill=0, width=3)
        pages.append(im)
    buf = io.BytesIO()
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:], resolution=150)
    gw_port = free_port(socket.SOCK_STREAM)
    gw = Controller(mailgw.Handler(stack.conn.info.dsn, "fax.example.net"), hostname="127.0.0.1", port=gw_port)
    gw.start()
    try:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "office@example.org", "+492119876600@fax.example.net", "PIN 4711"
        msg.set_content("Bestellung anbei")
        msg.add_attachment(buf.getvalue(), maintype="application", subtype="pdf", filename="order.pdf")
        with smtplib.SMTP("127.0.0.1", gw_port, timeout=30) as s:
            s.send_message(msg)
    finally:
        gw.stop()
    (job,) = conn.execute("SELECT * FROM fax_jobs").fetchall()
    assert (job["pages"], job["from_number"], job["report_to"]) == (2, "+492119876600", "office@example.org")
    root = stack.asterisk.root
    with conn.transaction():
        started = outbound.start_due(conn, f"{root}{stack.settings.fax_spool_dir}", stack.settings.fax_spool_dir,
                                     outbound.CallFiles(f"{root}/var/spool/asterisk/outgoing"))
    assert started == [job["id"]]
    done = wait_for(lambda: (r := conn.execute("SELECT * FROM fax_jobs").fetchone())["state"] in ("sent", "failed")
                    and r, 150, "the fax job's result")
    assert (done["state"], done["pages_sent"], done["attempts"]) == ("sent", 2, 1), done
    fax_in = conn.execute("SELECT * FROM faxes").fetchone()
    assert (fax_in["status"], fax_in["pages"], fax_in["remote_number"]) == ("received", 2, "+492119876600")
    leg = wait_for(lambda: conn.execute("SELECT * FROM calls WHERE call_id LIKE '%:leg' AND state = 'settled'")
                   .fetchone(), 20, "the fax call's leg settled")
    assert leg["destination"] == "+492119876600" and leg["billsec"] > 0
    box = Mailbox(free_port(socket.SOCK_STREAM)).start()
    try:
        outbox.deliver_due(conn, outbox.Smtp("127.0.0.1", box.port, "fax@dustel.test"))
    finally:
        box.stop()
    # the box received its own fax (a mail with the PDF) and the sender's delivery report
    assert sorted(m["Subject"] for m in box.messages if m["To"] == "office@example.org") == \
        ["Fax from +492119876600, 2 pages", "Fax to +492119876600 delivered, 2 pages"]
    report = [m for m in box.messages if m["Subject"].startswith("Fax to")]
    assert "Pages: 2 of 2" in report[0].get_content()
