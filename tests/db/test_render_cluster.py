"""The cluster's rendering (issue 27): kamailio.cfg per edge node, the
edge's tables, Asterisk nodes behind the edge, policy-server fallback."""
from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from dustel.agi.fastagi import node_of
from dustel.cli import cli as run_cli
from dustel.config import EngineNode
from dustel.errors import DustelError
from dustel.render import engines, service, writer
from tests.render_fixture import CLUSTER_SETTINGS, GOLDEN_SETTINGS, load_fixture

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "cluster"
NAMES = ["freeswitch", "asterisk", "kamailio"]


@pytest.fixture
def provider(conn: psycopg.Connection, tmp_path: Path) -> dict[str, str]:
    return load_fixture(conn, tmp_path)


def _render(conn: psycopg.Connection, settings=CLUSTER_SETTINGS) -> dict[str, dict[str, str]]:
    with conn.transaction():
        return service.render_files(conn, settings, NAMES)


def test_cluster_golden_files(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    rendered = _render(conn)
    if os.environ.get("DUSTEL_UPDATE_GOLDEN"):
        for name, files in rendered.items():
            writer.write(GOLDEN / name, files)
    for name, files in rendered.items():
        expected = {str(p.relative_to(GOLDEN / name)): p.read_text()
                    for p in (GOLDEN / name).rglob("*") if p.is_file() and p.name != writer.MANIFEST}
        assert sorted(files) == sorted(expected), name
        for rel, text in files.items():
            assert text == expected[rel], f"{name}/{rel} differs from the golden file " \
                                          "(DUSTEL_UPDATE_GOLDEN=1 to accept a deliberate change)"


def test_a_request_names_its_node_only_among_the_nodes_at_its_address() -> None:
    # two Asterisk nodes on one host (the cluster test's loopback): the request names its own
    assert node_of(("ast1", "ast2"), "node=ast2") == "ast2"
    assert node_of(("ast1", "ast2"), "") is None                 # ambiguous: refused
    assert node_of(("ast1",), "node=ast2") is None                # a node elsewhere: refused
    assert node_of(("ast1",), "") == "ast1" == node_of(("ast1",), "node=")   # one node: its address says it


def test_the_edge_tables_follow_the_settings_and_reload_only_what_changed(run, tmp_path: Path) -> None:
    run.ok("demo")
    cfg = tmp_path / "cluster.toml"
    cfg.write_text('agi_servers = "127.0.0.4:4573,127.0.0.5:4573"\ncarrier_match = "192.0.2.0/24, 198.51.100.7"\n'
                   '[[edge_nodes]]\nname = "edge1"\nhost = "127.0.0.10"\nport = 5060\nrpc_port = 5081\n'
                   '[[ami_nodes]]\nname = "ast1"\nhost = "127.0.0.2"\nport = 5038\nsip = "127.0.0.2:5060"\n'
                   '[[ami_nodes]]\nname = "ast2"\nhost = "127.0.0.3"\nport = 5038\n')
    env = {"DUSTEL_KAMAILIO_DB_URL": "postgres://kamailio:k-secret@127.0.0.1:5432/dustel"}
    out = tmp_path / "etc"

    def render(*args: str):
        return run.runner.invoke(run_cli, ["--state-dir", run.state_dir, "--config", str(cfg), "render", "--out",
                                           str(out), *args], env={"DATABASE_URL": run.url, **env},
                                 catch_exceptions=False)
    r = render("--json")
    assert r.exit_code == 0, r.output
    kam = next(d for d in json.loads(r.stdout) if d["engine"] == "kamailio")
    assert kam["changed"] == ["nodes/edge1/kamailio.cfg"] and kam["tables"] == ["dispatcher", "address"]
    with psycopg.connect(run.url) as c:
        assert c.execute("SELECT setid, destination, flags, description FROM kamailio.dispatcher ORDER BY 1, 2"
                         ).fetchall() == [
            (1, "sip:127.0.0.2:5060", 0, "ast1"), (1, "sip:127.0.0.3:5060", 0, "ast2"),    # ast2: host, sip_port
            (2, "sip:127.0.0.2:5060", 4, "ast1"), (2, "sip:127.0.0.3:5060", 4, "ast2")]    # never probed
        assert c.execute("SELECT ip_addr, mask FROM kamailio.address ORDER BY 1").fetchall() == [
            ("192.0.2.0", 24), ("198.51.100.7", 32)]
    assert render("--check").exit_code == 0
    cfg.write_text(cfg.read_text().replace('sip = "127.0.0.2:5060"', 'sip = "127.0.0.2:5070"'))
    assert render("--check").exit_code == 1                  # a node moved: the table differs
    assert render("--check").exit_code == 1                  # --check wrote nothing
    r = render("--engine", "kamailio", "--reload")           # no edge listens: the RPC's failure is named
    assert r.exit_code == 1 and "edge node edge1" in r.stderr and "dispatcher.reload" in r.stderr
    assert render("--engine", "kamailio", "--check").exit_code == 0   # the table was written before the reload
    cfg.write_text(cfg.read_text().replace('sip = "127.0.0.2:5070"', 'sip = "example.org:5060"'))
    r = render()
    assert r.exit_code == 1 and "node ast1.sip" in r.stderr


def test_the_edge_refuses_what_it_cannot_render_safely(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    bad_url = replace(CLUSTER_SETTINGS, kamailio_db_url='postgres://k:x"y@h/db')
    with pytest.raises(DustelError, match="kamailio_db_url"):
        _render(conn, bad_url)
    no_rpc = replace(CLUSTER_SETTINGS, edge_nodes=(EngineNode("edge1", "127.0.0.10", 5060, "", ""),))
    with pytest.raises(DustelError, match="rpc_port"):
        _render(conn, no_rpc)
    by_name = replace(CLUSTER_SETTINGS, edge_nodes=(EngineNode("e", "edge.example", 5060, "", "", rpc_port=1),))
    with pytest.raises(DustelError, match="must be an IP address"):
        _render(conn, by_name)
    with pytest.raises(DustelError, match="agi_servers"):
        _render(conn, replace(CLUSTER_SETTINGS, agi_servers="127.0.0.4:4573/x,y"))
    with pytest.raises(DustelError, match="esl_outbound_servers"):      # no app data rides along
        _render(conn, replace(CLUSTER_SETTINGS, esl_outbound_servers="127.0.0.4:8084 async full|x:1"))


def test_one_box_rendering_is_unchanged_by_the_cluster_settings_it_does_not_use(
        conn: psycopg.Connection, provider: dict[str, str]) -> None:
    one = _render(conn, replace(GOLDEN_SETTINGS, kamailio_db_url=CLUSTER_SETTINGS.kamailio_db_url))
    assert one["kamailio"] == {}
    ext = one["asterisk"]["extensions.conf"]
    assert "AGISTATUS" not in ext and "?node=" not in ext and "PJSIP_DIAL_CONTACTS" in ext


def test_each_policy_server_is_asked_in_turn_at_every_agi_step(conn: psycopg.Connection,
                                                              provider: dict[str, str]) -> None:
    ext = _render(conn)["asterisk"]["extensions.conf"]
    firsts = re.findall(r"AGI\(agi://127\.0\.0\.4:4573/(\w+)\?node=\$\{SYSTEMNAME\}(.*)\)$", ext, re.M)
    seconds = re.findall(r'ExecIf\(\$\["\$\{AGISTATUS\}" = "FAILURE"\]\?AGI\(agi://127\.0\.0\.5:4573/(\w+)'
                         r'\?node=\$\{SYSTEMNAME\}(.*)\)\)$', ext, re.M)
    assert len(firsts) == 19 and firsts == seconds           # the same step, the same arguments
    # 110/112 never wait for a policy server
    emergency = ext.split("[dustel-emergency]")[1].split("\n[")[0]
    assert "AGI" not in emergency and "@carrier" in emergency


def test_engines_behind_the_edge_take_sip_only_from_it(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    ast = _render(conn)["asterisk"]
    pjsip = ast["pjsip.conf"]
    acl = pjsip.split("[edge-only]")[1].split("\n\n")[0]
    assert acl.splitlines()[2:] == ["deny=0.0.0.0/0.0.0.0", "permit=127.0.0.10/255.255.255.255",
                                    "permit=127.0.0.11/255.255.255.255"]
    assert "md5_cred" not in pjsip and "type=auth" not in pjsip            # the edge authenticates
    assert "match_header=X-Dustel-Edge: carrier" in pjsip and "transport-udp" not in pjsip
    assert "bind=127.0.0.3:5060" in ast["nodes/ast2/pjsip_node.conf"]
    assert "bindaddr=127.0.0.3" in ast["nodes/ast2/manager.conf"] and "manager.conf" not in ast
    kam = _render(conn)["kamailio"]["nodes/edge2/kamailio.cfg"]
    assert "listen=udp:127.0.0.11:5060" in kam and 'remove_hf("X-Dustel-Edge")' in kam
    assert engines.reload_commands("asterisk", ["nodes/ast1/manager.conf"]) == ["manager"]


def test_the_edges_role_sees_the_ha1_view_and_writes_locations_nothing_else(run, conn: psycopg.Connection,
                                                                          provider: dict[str, str]) -> None:
    """The SIP edge reads usernames, realms and HA1s through dustel's view —
    no password column exists — and may write only its locations."""
    name = f"kam_{os.getpid()}"
    conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'x'")
    try:
        assert run("db", "grant-edge", "no-such role").exit_code == 1
        r = run("db", "grant-edge", "nosuchrole")
        assert r.exit_code == 1 and "role: nosuchrole does not exist" in r.stderr
        run.ok("db", "grant-edge", name)
        run.ok("db", "grant-edge", name)                                  # idempotent
        with conn.transaction():
            conn.execute(f"SET LOCAL ROLE {name}")
            conn.execute("SET LOCAL search_path = kamailio")
            cols = [d.name for d in conn.execute("SELECT * FROM subscriber LIMIT 1").description]
            assert cols == ["id", "username", "domain", "ha1", "ha1b"]
            row = conn.execute("SELECT * FROM subscriber WHERE username = '000387100001'").fetchone()
            assert re.fullmatch(r"[0-9a-f]{32}", row["ha1"]) and row["domain"] == "demo-starter.sip.dustel.de"
            conn.execute("INSERT INTO location (ruid, username, contact) VALUES ('r1', 'u', 'sip:u@192.0.2.1')")
        for forbidden in ("SELECT * FROM public.sip_accounts", "DELETE FROM kamailio.dispatcher",
                          "SELECT * FROM public.calls"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(f"SET LOCAL ROLE {name}")
                conn.execute(forbidden)
    finally:
        conn.execute(f"DROP OWNED BY {name}")
        conn.execute(f"DROP ROLE {name}")


def _params(xml: str, tag: str = "param") -> dict[str, str]:
    return {e.get("name"): e.get("value") for e in ET.fromstring(xml).iter(tag)}


def test_freeswitch_behind_the_edge_authenticates_nobody_and_refuses_everyone_else(
        conn: psycopg.Connection, provider: dict[str, str]) -> None:
    """The edge holds the HA1: a FreeSWITCH node behind it has no credentials
    (a user without them would authenticate with any answer: sofia_reg.c's
    allow_empty_password defaults to true), takes calls only from the edge's
    addresses (the inbound ACL counts as authentication, auth-calls-acl-only
    refuses the rest with 403 instead of a challenge), reaches phones and
    the carrier through the edge, and its dialplan asks each policy server."""
    fs = _render(conn)["freeswitch"]
    acl = ET.fromstring(fs["autoload_configs/acl.conf.xml"])
    edge = acl.find(".//list[@name='dustel-edge']")
    assert edge.get("default") == "deny"
    assert [(n.get("type"), n.get("cidr")) for n in edge] == [("allow", "127.0.0.10/32"), ("allow", "127.0.0.11/32")]
    internal = _params(fs["sip_profiles/internal.xml"])
    assert (internal["apply-inbound-acl"], internal["auth-calls-acl-only"], internal["auth-calls"]) == \
        ("dustel-edge", "true", "true")
    carrier = ET.fromstring(fs["sip_profiles/carrier.xml"])
    assert _params(ET.tostring(carrier.find("settings"), encoding="unicode"))["apply-inbound-acl"] == "dustel-edge"
    assert _params(ET.tostring(carrier.find(".//gateway"), encoding="unicode"))["outbound-proxy"] == "127.0.0.10:5060"
    for name, xml in fs.items():
        if name.startswith("directory/"):
            root = ET.fromstring(xml)
            domain = _params(ET.tostring(root.find("domain/params"), encoding="unicode"))
            assert domain["allow-empty-password"] == "false"
            assert domain["dial-string"].endswith("sofia/internal/${dialed_user}@127.0.0.10:5060")
            users = root.findall(".//user")
            assert users and not [p for u in users for p in u.iter("param")
                                  if p.get("name") in ("password", "a1-hash", "allow-empty-password")]
    sockets = [a.get("data") for name, xml in fs.items() if name.startswith("dialplan/")
               for a in ET.fromstring(xml).iter("action") if a.get("application") == "socket"]
    assert sockets and set(sockets) == {"127.0.0.4:8084|127.0.0.5:8084 async full"}
    public = ET.fromstring(fs["dialplan/public.xml"]).find("context[@name='public']")
    first = public.find("extension")         # a phone's call (no carrier mark): its tenant's context, first
    assert first.get("name") == "edge-phone"
    mark, who = first.findall("condition")
    assert re.match(mark.get("expression"), "") and not re.match(mark.get("expression"), "carrier")
    assert re.match(mark.get("expression"), "carrierX")
    assert [a.get("application") for a in who.findall("action")] == ["set_user", "set", "transfer"]
    assert [a.get("application") for a in who.findall("anti-action")] == ["respond", "hangup"]
    assert not re.match(who.get("expression"), "x${y}@d") and re.match(who.get("expression"), "000387100001@a.b")


def test_one_box_freeswitch_keeps_its_credentials_and_one_socket(conn: psycopg.Connection,
                                                                  provider: dict[str, str]) -> None:
    fs = _render(conn, replace(GOLDEN_SETTINGS, kamailio_db_url=CLUSTER_SETTINGS.kamailio_db_url))["freeswitch"]
    assert "dustel-edge" not in fs["autoload_configs/acl.conf.xml"] + fs["sip_profiles/internal.xml"]
    assert "a1-hash" in fs["directory/demo-starter.sip.dustel.de.xml"]
    assert "edge-phone" not in fs["dialplan/public.xml"]
    sockets = re.findall(r'application="socket" data="([^"]*)"', fs["dialplan/public.xml"])
    assert sockets and set(sockets) == {"127.0.0.1:8084 async full"}


def test_freeswitch_asks_the_next_policy_server_when_one_is_gone(conn: psycopg.Connection,
                                                                  provider: dict[str, str]) -> None:
    """Two policy servers for FreeSWITCH (``esl_outbound_servers``): with the
    first dead the socket connects to the second; with the first dying
    while it holds the call (it took the connection, then its process
    ended before any plan) the channel resumes into the second ``socket``,
    which finds the first gone and the second there; with both gone, the
    refusal table's cause — never a bridge, never parked for good."""
    import socket as sk
    import threading

    from dustel.callpath.policy import CAUSES, REFUSALS
    from tests.esl_emulator import run_extension

    def listener() -> sk.socket:
        s = sk.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        return s

    def port_of(s: sk.socket) -> int:
        return s.getsockname()[1]

    def serving(s: sk.socket) -> None:             # a live server: it takes the call ("connect")
        def run() -> None:
            while True:
                try:
                    c, _ = s.accept()
                except OSError:
                    return
                c.sendall(b"connect\n\n")
                c.close()
        threading.Thread(target=run, daemon=True).start()

    def dying(s: sk.socket) -> None:               # takes one call, then its process ends
        def run() -> None:
            c, _ = s.accept()
            s.close()
            c.close()
        threading.Thread(target=run, daemon=True).start()

    def dial(first: int, second: int):
        settings = replace(CLUSTER_SETTINGS, esl_outbound_servers=f"127.0.0.1:{first},127.0.0.1:{second}")
        with conn.transaction():
            fs = service.render_files(conn, settings, ["freeswitch"])["freeswitch"]
        return run_extension(fs["dialplan/public.xml"], "public", "+492115550101", connect_timeout=1,
                             channel={"sip_h_X-Dustel-Edge": "carrier"})     # the carrier's call, as marked

    dead = listener()
    dead_port = port_of(dead)
    dead.close()                                   # nothing listens: refused at once
    live = listener()
    serving(live)
    got = dial(dead_port, port_of(live))
    assert got.connected and sum(app == "socket" for app, _ in got.executed) == 1, got.executed

    first = listener()
    dying(first)
    got = dial(port_of(first), port_of(live))
    assert got.connected and sum(app == "socket" for app, _ in got.executed) == 2, got.executed

    live.close()
    silent = listener()                            # the kernel takes the connection, nobody answers
    got = dial(dead_port, port_of(silent))
    silent.close()
    sip_code, q850 = REFUSALS["internal_error"]
    assert not got.stuck and not got.bridged and sum(app == "socket" for app, _ in got.executed) == 2
    assert (got.sip_code, got.cause) == (sip_code, CAUSES[q850]), got


def test_behind_the_edge_a_phones_call_goes_to_its_tenants_context_and_the_carriers_to_the_number(
        conn: psycopg.Connection, provider: dict[str, str]) -> None:
    """The public context's hunt (the emulator's, mod_dialplan_xml's rules):
    a call without the carrier's mark runs the phone's path (set_user from
    the From the edge authenticated, then its tenant's context) even to a
    number of the provider, a malformed From is refused, and the carrier's
    marked call reaches the number's extension and the policy server."""
    from tests.esl_emulator import extension_actions
    fs = _render(conn)["freeswitch"]
    public = fs["dialplan/public.xml"]
    phone = {"sip_from_user": "000387100001", "sip_from_host": "demo-starter.sip.dustel.de",
             "sip_h_X-Dustel-Source": "192.0.2.7:5062"}
    acts = extension_actions(public, "public", "+492115550101", phone)
    assert acts == [("set_user", "${sip_from_user}@${sip_from_host}"),
                    ("set", "dustel_edge_source=${sip_h_X-Dustel-Source}"),
                    ("transfer", "${destination_number} XML ${user_context}")]
    forged = extension_actions(public, "public", "+492115550101", {**phone, "sip_from_user": "${x}"})
    assert forged == [("respond", "403"), ("hangup", "CALL_REJECTED")] + \
        extension_actions(public, "public", "+492115550101", {"sip_h_X-Dustel-Edge": "carrier"})
    carrier = extension_actions(public, "public", "+492115550101", {"sip_h_X-Dustel-Edge": "carrier"})
    assert ("set", "dustel_target=000387100001") in carrier and carrier[-1][0] == "hangup"
    assert any(app == "socket" for app, _ in carrier)


def test_the_engines_reach_the_edge_by_edge_proxy_so_no_edge_node_is_a_single_point(
        conn: psycopg.Connection, provider: dict[str, str]) -> None:
    """Without ``edge_proxy`` every engine sends calls to phones, the carrier
    and 110/112 through the first edge node; with it through a name or
    floating address every edge node answers — and takes as its own."""
    named = replace(CLUSTER_SETTINGS, edge_proxy="sip-edge.dustel.example")
    files = _render(conn, named)
    pjsip, ext = files["asterisk"]["pjsip.conf"], files["asterisk"]["extensions.conf"]
    assert "outbound_proxy=sip:sip-edge.dustel.example\\;lr" in pjsip and "127.0.0.10" not in \
        pjsip.split("outbound_proxy")[1].splitlines()[0]
    assert "PJSIP/edge/sip:${a}@sip-edge.dustel.example)" in ext
    fs = files["freeswitch"]
    assert 'name="outbound-proxy" value="sip-edge.dustel.example"' in fs["sip_profiles/carrier.xml"]
    assert "@sip-edge.dustel.example" in fs["directory/demo-starter.sip.dustel.de.xml"]
    for cfg in files["kamailio"].values():
        assert 'alias="sip-edge.dustel.example"' in cfg
    assert "alias=" not in _render(conn)["kamailio"]["nodes/edge1/kamailio.cfg"]
    for bad in ("sip-edge.example;lr", "a b", 'x"y', "edge:5060:1"):
        with pytest.raises(DustelError, match="edge_proxy"):
            _render(conn, replace(CLUSTER_SETTINGS, edge_proxy=bad))


def test_kamailio_accepts_every_rendered_edge_config(conn: psycopg.Connection, provider: dict[str, str],
                                                    tmp_path: Path) -> None:
    """``kamailio -c``: the rendered file parses and its modules' functions
    exist with these parameters (Debian's kamailio, installed by
    system-deps)."""
    import shutil
    import subprocess
    binary = shutil.which("kamailio") or ("/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)
    if binary is None:
        pytest.skip("kamailio is not installed (make system-deps installs it)")
    for settings in (CLUSTER_SETTINGS, replace(CLUSTER_SETTINGS, edge_proxy="sip-edge.dustel.example:5060")):
        for name, text in _render(conn, settings)["kamailio"].items():
            cfg = tmp_path / name.replace("/", "-")
            cfg.write_text(text)
            r = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and "config file ok" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


def test_no_srtp_keys_cross_the_edges_plain_hop(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    """SDES keys travel in the SDP: SRTP only where the signalling is TLS
    (F-03).  Behind the edge the phone's hop is not TLS, so an account with
    tls_srtp gets none there — on one box with a certificate it does."""
    conn.execute("UPDATE sip_accounts SET tls_mode = 'tls_srtp' WHERE username = '000387100001'")
    cert, key = "/etc/dustel/tls/agent.pem", "/etc/dustel/tls/agent.key"
    one = _render(conn, replace(GOLDEN_SETTINGS, tls_cert_file=cert, tls_key_file=key,
                                kamailio_db_url=CLUSTER_SETTINGS.kamailio_db_url))
    assert "media_encryption=sdes" in one["asterisk"]["pjsip.conf"]
    assert "rtp_secure_media\" value=\"mandatory" in one["freeswitch"]["directory/demo-starter.sip.dustel.de.xml"]
    edge = _render(conn, replace(CLUSTER_SETTINGS, tls_cert_file=cert, tls_key_file=key))
    assert "media_encryption=sdes" not in edge["asterisk"]["pjsip.conf"]
    assert "rtp_secure_media\" value=\"mandatory" not in edge["freeswitch"]["directory/demo-starter.sip.dustel.de.xml"]
