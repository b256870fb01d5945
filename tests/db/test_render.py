"""Rendering (F-10): golden files, determinism, atomic writes, escaping."""
from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from dustel.errors import DustelError
from dustel.render import service, writer
from tests.conftest import Cli
from tests.render_fixture import GOLDEN_SETTINGS, load_fixture

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ENGINES = ["freeswitch", "asterisk"]


@pytest.fixture
def provider(conn: psycopg.Connection, tmp_path: Path) -> dict[str, str]:
    return load_fixture(conn, tmp_path)


def _render(conn: psycopg.Connection) -> dict[str, dict[str, str]]:
    with conn.transaction():
        return service.render_files(conn, GOLDEN_SETTINGS, ENGINES)


def test_golden_files(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    rendered = _render(conn)
    if os.environ.get("DUSTEL_UPDATE_GOLDEN"):
        for engine, files in rendered.items():
            writer.write(GOLDEN / engine, files)
    for engine, files in rendered.items():
        expected = {str(p.relative_to(GOLDEN / engine)): p.read_text()
                    for p in (GOLDEN / engine).rglob("*") if p.is_file() and p.name != writer.MANIFEST}
        assert sorted(files) == sorted(expected), engine
        for rel, text in files.items():
            assert text == expected[rel], f"{engine}/{rel} differs from the golden file " \
                                          "(DUSTEL_UPDATE_GOLDEN=1 to accept a deliberate change)"


def test_fixture_covers_the_features(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    fs, ast = (r := _render(conn))["freeswitch"], r["asterisk"]
    # all three plans' tenants, a block, a queue, a fax box, hold music, TLS/SRTP and T.38 accounts
    assert {f"directory/demo-{p}.sip.dustel.de.xml" for p in ("starter", "complete", "business")} <= set(fs)
    assert "^(?:\\+|00)?4921198765(\\d)?$" in fs["dialplan/public.xml"]
    assert "exten => _+4921198765X,1," in ast["extensions.conf"]
    assert '<queue name="t3-support@demo-business.sip.dustel.de">' in fs["autoload_configs/callcenter.conf.xml"]
    assert "[t3-support]\nstrategy=leastrecent\nmusicclass=t3-jazz" in ast["queues.conf"]
    assert "dustel_target_kind=fax" in fs["dialplan/public.xml"]
    assert '<directory name="t3-jazz/16000"' in fs["autoload_configs/local_stream.conf.xml"]
    # no TLS transport configured: no SDES keys in clear-text SDP (issue 16.3)
    assert "media_encryption=sdes" not in ast["pjsip.conf"] and "t38_udptl=yes" in ast["pjsip.conf"]
    assert 'rtp_secure_media" value="mandatory' not in fs["directory/demo-starter.sip.dustel.de.xml"]
    assert 'name="t38_passthru" value="true"' in fs["directory/demo-business.sip.dustel.de.xml"]
    # IP restriction lives in the policy (after the emergency rule), never in a SIP-layer ACL (issue 16.2)
    assert "acct-" not in fs["autoload_configs/acl.conf.xml"] and "auth-acl" not in "".join(fs.values())
    assert "permit=" not in ast["pjsip.conf"] and "deny=" not in ast["pjsip.conf"]
    # the carrier only by its address (issue 16.1)
    assert "[carrier]\ntype=endpoint\nidentify_by=ip\n" in ast["pjsip.conf"]
    assert "match=127.0.0.1/32" in ast["pjsip.conf"]
    # emergency before everything else in every tenant context, with the PSAP of the account's area
    for t in ("t1", "t2", "t3"):
        ctx = fs[f"dialplan/{t}.xml"]
        assert ctx.index('name="emergency"') < ctx.index('name="outbound"')
    assert "set_var=DUSTEL_PSAP_PREFIX=03011" in ast["pjsip.conf"]       # the Berlin account
    assert "**1,1,Goto(t3,+4921198765,1)" in ast["extensions.conf"]


def test_every_freeswitch_file_is_xml(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    files = _render(conn)["freeswitch"]
    assert len(files) == 15      # + the node's switch.conf, xml_curl.conf (issue 32)
    with conn.transaction():
        fetch = service.render_files(conn, replace(GOLDEN_SETTINGS, fs_decision="fetch"), ["freeswitch"])["freeswitch"]
    assert len(fetch) == 16      # + the emergency dialplan
    for text in (*files.values(), *fetch.values()):
        ET.fromstring(text.encode())  # raises on malformed XML


def test_golden_files_of_the_dialplan_fetch(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    """``fs_decision = fetch`` (issue 32.7): the files that differ from the
    socket's render (golden/freeswitch), each a golden file of its own."""
    with conn.transaction():
        fetch = service.render_files(conn, replace(GOLDEN_SETTINGS, fs_decision="fetch"), ["freeswitch"])["freeswitch"]
    sockets = _render(conn)["freeswitch"]
    differ = {rel: text for rel, text in fetch.items() if sockets.get(rel) != text}
    gold = GOLDEN / "freeswitch-fetch"
    if os.environ.get("DUSTEL_UPDATE_GOLDEN"):
        writer.write(gold, differ)
    expected = {str(p.relative_to(gold)): p.read_text() for p in gold.rglob("*")
                if p.is_file() and p.name != writer.MANIFEST}
    assert sorted(differ) == sorted(expected)
    for rel, text in differ.items():
        assert text == expected[rel], f"freeswitch-fetch/{rel} differs from the golden file"
    with conn.transaction():
        with pytest.raises(DustelError) as exc:
            service.render_files(conn, replace(GOLDEN_SETTINGS, fs_decision="xml"), ["freeswitch"])
    assert str(exc.value) == "fs_decision: must be socket or fetch (got 'xml')"
    with conn.transaction():
        with pytest.raises(DustelError) as exc:
            service.render_files(conn, replace(GOLDEN_SETTINGS, fs_decision="fetch", fs_dustel_dir="/etc/fs,x"),
                                 ["freeswitch"])
    assert str(exc.value).startswith("fs_dustel_dir: must be an absolute path without ','")


def test_output_is_deterministic(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    assert _render(conn) == _render(conn)


def test_write_atomic_only_changed_and_removed(conn: psycopg.Connection, provider: dict[str, str],
                                               tmp_path: Path) -> None:
    files = _render(conn)["freeswitch"]
    out = tmp_path / "fs"
    first = writer.write(out, files)
    assert sorted(first.changed) == sorted(files) and not first.unchanged
    mtimes = {rel: (out / rel).stat().st_mtime_ns for rel in files}
    second = writer.write(out, files)
    assert second.changed == [] and len(second.unchanged) == len(files)
    assert {rel: (out / rel).stat().st_mtime_ns for rel in files} == mtimes
    # one tenant's change touches that tenant's files only
    with conn.transaction():
        conn.execute("UPDATE sip_accounts SET display_name = 'Neu' WHERE username = '000387100001'")
    third = writer.write(out, _render(conn)["freeswitch"])
    assert third.changed == ["directory/demo-starter.sip.dustel.de.xml"]
    # a deleted tenant's files disappear, nothing else is removed
    (out / "unrelated.txt").write_text("keep me")
    with conn.transaction():
        conn.execute("DELETE FROM numbers WHERE tenant_id = 1")
        conn.execute("DELETE FROM tenants WHERE id = 1")
    fourth = writer.write(out, _render(conn)["freeswitch"])
    assert fourth.removed == ["dialplan/t1.xml", "directory/demo-starter.sip.dustel.de.xml"]
    assert (out / "unrelated.txt").exists()
    assert not list(out.rglob("*.tmp"))


def test_failed_render_keeps_last_good_output(conn: psycopg.Connection, provider: dict[str, str],
                                              tmp_path: Path) -> None:
    out = tmp_path / "etc"
    service.apply(_render(conn), out, write=True)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with conn.transaction():   # a value the identifier filter refuses, smuggled past the input checks
        conn.execute("ALTER TABLE speed_dials DROP CONSTRAINT speed_dials_target_check")
        conn.execute("INSERT INTO speed_dials VALUES (3, '9', '1,Hangup()')")
    with pytest.raises(DustelError, match="not safe"):
        service.apply(_render(conn), out, write=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_cli_render_diff_check(run: Cli, tmp_path: Path) -> None:
    run.ok("demo")
    out = tmp_path / "etc"
    r = run("render", "--out", str(out), "--check")
    assert r.exit_code == 1                                    # nothing there yet
    data = json.loads(run.ok("render", "--out", str(out), "--json").stdout)
    assert {d["engine"] for d in data} == {"freeswitch", "asterisk"}
    assert "reloadxml" in data[0]["reload"] and "pbx_config.so" in data[1]["reload"]
    assert run.ok("render", "--out", str(out), "--check").exit_code == 0
    assert run.ok("render", "--out", str(out), "--diff").stdout == ""
    run.ok("account", "set", "000387100001", "--name", "Anna Küche")
    d = run.ok("render", "--out", str(out), "--diff").stdout
    assert "-              <variable name=\"effective_caller_id_name\" value=\"Anna Festnetz\"/>" in d
    assert '+callerid="Anna Küche" <+492115550101>' in d
    assert run("render", "--out", str(out), "--check").exit_code == 1     # --diff wrote nothing
    r = run.ok("render", "--out", str(out), "--reload")
    assert "reload asterisk: res_pjsip.so" in r.stdout and "reload freeswitch: reloadxml" in r.stdout
    assert "pbx_config.so" not in r.stdout                                  # only what changed


def test_a_tenants_diff_shows_exactly_what_a_render_changes_for_it(run: Cli, tmp_path: Path) -> None:
    """Issue 31 item 3: `render --diff --tenant 1` rendered tenant 1 alone
    and showed every other tenant's queues, agents, numbers and endpoints as
    deleted (300+ lines) where the full --diff showed nothing."""
    run.ok("demo")
    out = tmp_path / "etc"
    run.ok("render", "--out", str(out))
    for t in ("1", "2", "3"):
        assert run.ok("render", "--out", str(out), "--diff", "--tenant", t).stdout == ""
    # a change of tenant 1 (an account renamed) and one of tenant 3 (a new number to its reception)
    run.ok("account", "set", "000387100001", "--name", "Anna Küche")
    run.ok("number", "add", "3", "+492119876700")
    run.ok("number", "assign", "+492119876700", "--account", "000387100006")
    full = run.ok("render", "--out", str(out), "--diff").stdout
    one = run.ok("render", "--out", str(out), "--diff", "--tenant", "1").stdout
    three = run.ok("render", "--out", str(out), "--diff", "--tenant", "3").stdout
    two = run.ok("render", "--out", str(out), "--diff", "--tenant", "2").stdout
    assert two == ""                                                       # nothing changes for tenant 2
    changed = [ln for ln in one.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    assert changed and all("Anna" in ln for ln in changed), changed        # only its account's name
    assert "9876700" not in one
    assert "+492119876700" in three and "Anna" not in three
    # together they are the whole render's change, line for line
    def lines(d: str) -> set[str]:
        return {ln for ln in d.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))}
    assert lines(one) | lines(three) == lines(full)
    r = run("render", "--out", str(out), "--diff", "--tenant", "99")
    assert (r.exit_code, r.stderr) == (1, "error: tenant: no tenant with id 99\n")


# ---------------------------------------------------------------- injection

INJECTION = ["<evil/>", "&amp;&", '"quoted"', "]]><x>", "${system(rm -rf /)}", "$${global}",
             "$(echo pwned)", "line\nbreak", "semi;colon", "[section]", "nul\x00byte", "x" * 3000,
             "Müller ☎ 日本", "a,b|c", "'apos'", "<!-- -->", "\r\nexten => _X.,1,System(id)"]


def _xml_shape(text: str) -> tuple[int, int]:
    root = ET.fromstring(text.encode())
    elements = list(root.iter())
    return len(elements), sum(len(e.attrib) for e in elements)


def _ast_shape(text: str) -> list[tuple[str, str]]:
    shape, section = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(";"):
            continue
        m = re.match(r"^\[([^\]]+)\]", s)
        if m:
            section = m.group(1)
            shape.append((section, "[]"))
        else:
            shape.append((section, re.split(r"\s*=>?\s*", s, maxsplit=1)[0]))
    return shape


@pytest.mark.parametrize("payload", INJECTION)
def test_injection_cannot_change_structure(conn: psycopg.Connection, provider: dict[str, str],
                                           payload: str) -> None:
    clean = _render(conn)
    with conn.transaction():
        # every free-text field that reaches a rendered file, set behind the input checks
        conn.execute("UPDATE sip_accounts SET display_name = %s", (payload.replace("\x00", "")[:64],))
        conn.execute("UPDATE tenants SET name = %s", (payload.replace("\x00", "")[:100],))
        conn.execute("UPDATE agents SET name = %s || id", (payload.replace("\x00", "")[:60],))
    dirty = _render(conn)
    for rel, text in dirty["freeswitch"].items():
        assert _xml_shape(text) == _xml_shape(clean["freeswitch"][rel]), rel
        assert "${system" not in text and "$(echo" not in text
    for rel, text in dirty["asterisk"].items():
        assert _ast_shape(text) == _ast_shape(clean["asterisk"][rel]), rel


@pytest.mark.parametrize("table,column", [
    ("queues", "name"), ("faxboxes", "name"), ("ring_groups", "name"), ("moh_classes", "name"),
    ("queues", "moh_class"), ("sip_accounts", "caller_id"), ("speed_dials", "target"),
    ("tenants", "sip_domain"), ("numbers", "e164")])
@pytest.mark.parametrize("payload", ["x]\n[evil", "a;b", "${x}", "<a/>", "a,b"])
def test_identifier_fields_refuse_injection_at_input(conn: psycopg.Connection, provider: dict[str, str],
                                                     table: str, column: str, payload: str) -> None:
    with pytest.raises(psycopg.Error) as exc:
        with conn.transaction():
            conn.execute(f"UPDATE {table} SET {column} = %s", (payload,))
    # a CHECK constraint, or a trigger rule that fires first
    assert isinstance(exc.value, psycopg.errors.CheckViolation) or exc.value.sqlstate == "DU001"


def test_freeswitch_profiles_bind_per_node_and_legs_carry_the_tenant(conn: psycopg.Connection,
                                                                     provider: dict[str, str]) -> None:
    """Issue 15.4: ``sip-ip 0.0.0.0`` is replaced by one guessed interface, and
    ``rtp-timeout-sec`` is deprecated.  Issue 15.5: the carrier leg of an
    emergency call had no tenant (``set`` does not reach bridged legs)."""
    from dataclasses import replace
    s = replace(GOLDEN_SETTINGS, sip_bind_host="0.0.0.0", sip_external_ip="node")
    with conn.transaction():
        fs = service.render_files(conn, s, ["freeswitch"])["freeswitch"]
    for profile in ("sip_profiles/internal.xml", "sip_profiles/carrier.xml"):
        params = {p.get("name"): p.get("value") for p in ET.fromstring(fs[profile]).iter("param")}
        assert params["sip-ip"] == params["rtp-ip"] == "$${local_ip_v4}"
        assert (params["ext-sip-ip"], params["ext-rtp-ip"]) == ("$${external_sip_ip}", "$${external_rtp_ip}")
        assert "rtp-timeout-sec" not in params
    assert 'name="media_timeout" value="300000"' in fs["directory/demo-starter.sip.dustel.de.xml"]
    ctx = ET.fromstring(fs["dialplan/t1.xml"])
    emergency = next(e for e in ctx.iter("extension") if e.get("name") == "emergency")
    acts = [(a.get("application"), a.get("data")) for a in emergency.iter("action")]
    assert ("export", "dustel_tenant=${dustel_tenant}") in acts
    assert acts.index(("export", "dustel_tenant=${dustel_tenant}")) < [a for a, _ in acts].index("bridge")
    for rel in ("dialplan/public.xml", "dialplan/t1.xml"):
        assert 'application="set" data="dustel_tenant=' not in fs[rel]


def test_both_engines_take_the_same_dialled_forms(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    """Issue 15.19: FreeSWITCH took inbound ``0049…``/``49…``, Asterisk hung
    up; ``*51*1*1234#`` was a star code on Asterisk, an outbound number on
    FreeSWITCH."""
    from dustel.queue import codes
    r = _render(conn)
    ext = r["asterisk"]["extensions.conf"]
    assert "exten => _0049X.,1,Goto(dustel-public,+${EXTEN:2},1)" in ext
    assert "exten => _49X.,1,Goto(dustel-public,+${EXTEN},1)" in ext
    public = ET.fromstring(r["freeswitch"]["dialplan/public.xml"])
    number = next(c.get("expression") for c in public.iter("condition") if "4921155501" in c.get("expression", ""))
    for form in ("+492115550101", "00492115550101", "492115550101"):
        assert re.fullmatch(number, form), form
    ctx = ET.fromstring(r["freeswitch"]["dialplan/t3.xml"])
    star = next(e for e in ctx.iter("extension") if e.get("name") == "star-codes").find("condition").get("expression")
    m = re.fullmatch(star, "*51*1*1234#")
    assert m and (m.group(1), m.group(2)) == ("*51", "*1*1234")
    assert codes.parse("*51*1*1234#") == codes.parse("*51*1*1234")


def test_star_codes_are_the_providers(conn: psycopg.Connection, provider: dict[str, str]) -> None:
    """Issue 15.14: star codes were hard-coded; SPEC F-06 makes them
    configurable per provider.  Both engines render the configured ones."""
    from dataclasses import replace

    from dustel.config import star_codes
    s = replace(GOLDEN_SETTINGS, star_login="*71", star_logout="*72", star_pause="*73", star_unpause="*740")
    with conn.transaction():
        r = service.render_files(conn, s, ENGINES)
    ext = r["asterisk"]["extensions.conf"]
    assert "exten => _*71*.,1,Goto(dustel-star,${EXTEN},1)" in ext and "exten => *740,1,Goto" in ext
    assert "*51" not in ext
    ctx = ET.fromstring(r["freeswitch"]["dialplan/t3.xml"])
    star = next(e for e in ctx.iter("extension") if e.get("name") == "star-codes").find("condition").get("expression")
    assert re.fullmatch(star, "*71*1*1234") and re.fullmatch(star, "*740") and not re.fullmatch(star, "*51*1")
    assert star_codes(s) == {"*71": "login", "*72": "logout", "*73": "pause", "*740": "unpause"}
    from dustel.queue import codes
    assert codes.parse("*71*1*1234", star_codes(s)).action == "login"
    with pytest.raises(DustelError, match="star_logout"):
        star_codes(replace(s, star_logout="*71"))
    with pytest.raises(DustelError, match="star_pause"):
        star_codes(replace(s, star_pause="53"))


def test_srtp_only_over_tls_and_freeswitch_reads_the_configured_certificate(conn: psycopg.Connection,
                                                                           provider: dict[str, str]) -> None:
    """Issue 16.3 (rendering part): SDES keys were offered where no TLS
    transport existed, and FreeSWITCH read its certificate from a directory
    of its own instead of the configured one."""
    from dataclasses import replace
    s = replace(GOLDEN_SETTINGS, tls_cert_file="/etc/dustel/tls/agent.pem", tls_key_file="/etc/dustel/tls/agent.pem")
    with conn.transaction():
        r = service.render_files(conn, s, ENGINES)
    pj = r["asterisk"]["pjsip.conf"]
    tls_user = pj.split("media_encryption=sdes")[0].rsplit("\n[", 1)[1].split("]")[0]
    assert "[transport-tls]" in pj and f"[{tls_user}](dustel-endpoint)" in pj
    assert pj.split(f"[{tls_user}](dustel-endpoint)")[1].split("\n\n")[0].count("transport=transport-tls") == 1
    assert 'rtp_secure_media" value="mandatory' in r["freeswitch"]["directory/demo-starter.sip.dustel.de.xml"]
    params = {p.get("name"): p.get("value") for p in ET.fromstring(r["freeswitch"]["sip_profiles/internal.xml"]).iter(
        "param")}
    assert params["tls"] == "true" and params["tls-cert-dir"] == "/etc/dustel/tls"
    with pytest.raises(DustelError, match="tls_cert_file: FreeSWITCH reads"), conn.transaction():
        service.render_files(conn, replace(s, tls_cert_file="/etc/ssl/server.crt"), ["freeswitch"])


def test_event_socket_and_ami_accept_the_configured_hosts_only(conn: psycopg.Connection,
                                                                provider: dict[str, str]) -> None:
    """esl_acl / ami_acl (the controller's hosts, set by the Ansible roles
    from the application hosts): FreeSWITCH's dustel-esl list allows them
    and denies the rest; Asterisk's manager user denies all, then permits
    each; a value that is no network is refused and nothing is rendered."""
    s = replace(GOLDEN_SETTINGS, esl_acl="192.0.2.20, 192.0.2.21/32", ami_acl="192.0.2.20,10.1.0.0/16")
    with conn.transaction():
        files = service.render_files(conn, s, ENGINES)
    manager = files["asterisk"]["manager.conf"]
    user = manager[manager.index("[dustel]"):]
    assert [ln for ln in user.splitlines() if ln.startswith(("deny=", "permit="))] == \
        ["deny=0.0.0.0/0.0.0.0", "permit=192.0.2.20/255.255.255.255", "permit=10.1.0.0/255.255.0.0"]
    acl = files["freeswitch"]["autoload_configs/acl.conf.xml"]
    esl = acl[acl.index('name="dustel-esl"'):]
    esl = esl[:esl.index("</list>")]
    assert 'default="deny"' in esl and 'cidr="192.0.2.20/32"' in esl and 'cidr="192.0.2.21/32"' in esl
    with pytest.raises(DustelError), conn.transaction():
        service.render_files(conn, replace(GOLDEN_SETTINGS, ami_acl="192.0.2.20; permit=0.0.0.0/0"), ENGINES)


# ------------------------------------------------ issue 32: the FreeSWITCH path under real load and faults

VANILLA = Path(__file__).resolve().parents[1] / "data" / "freeswitch-vanilla"
README = Path(__file__).resolve().parents[2] / "README.md"


def _params(xml_text: str) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in ET.fromstring(xml_text).iterfind("settings/param")}


def _vanilla_params(name: str) -> dict[str, str]:
    text = re.sub(r"<!--.*?-->", "", (VANILLA / name).read_text(), flags=re.S)
    text = re.sub(r"<X-PRE-PROCESS[^>]*/>", "", text)
    return _params(text)


# the params both rendered profiles must carry, and their values
PROFILE_MUST = {
    "rtp-timer-name": "soft",                  # issue 32.1: "switch_rtp.c Not using a timer"
    "inbound-late-negotiation": "true",        # the bridged leg offers the caller's codecs
    "inbound-codec-prefs": "OPUS,G722,PCMA,PCMU",
    "outbound-codec-prefs": "OPUS,G722,PCMA,PCMU",
    "context": "public",
}


def test_both_sofia_profiles_carry_the_rtp_timer_and_what_dustel_needs(conn: psycopg.Connection,
                                                                        provider: dict[str, str]) -> None:
    """Issue 32.1: no RTP timer in the rendered profiles — a channel whose
    far end sends no RTP waited up to 5 s per read (BYE answered 5 s late,
    a 3 s call billed 13 s).  Named here: the params each profile must have."""
    fs = _render(conn)["freeswitch"]
    for profile, own in (("internal", {"auth-calls": "true", "challenge-realm": "auto_from", "nonce-ttl": "60",
                                       "inbound-reg-force-matching-username": "true", "sip-port": "15060"}),
                         ("carrier", {"auth-calls": "false", "apply-inbound-acl": "dustel-carrier",
                                      "sip-port": "5080"})):
        params = _params(fs[f"sip_profiles/{profile}.xml"])
        missing = {k: v for k, v in {**PROFILE_MUST, **own}.items() if params.get(k) != v}
        assert not missing, f"{profile}: missing or different {missing}"
    # no RTP for 5 minutes ends any leg (vanilla's deprecated rtp-timeout-sec 300 / rtp-hold-timeout-sec 1800)
    core = ET.fromstring(fs["nodes/freeswitch/switch.conf.xml"])
    assert {v.get("name"): v.get("value") for v in core.iterfind("variables/variable")} == \
        {"media_timeout": "300000", "media_hold_timeout": "1800000"}


def _readme_profile_table() -> list[dict[str, str]]:
    text = README.read_text()
    section = text[text.index("### FreeSWITCH profiles against vanilla"):]
    section = section[:section.index("\n### ", 5)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            for param in re.findall(r"`([^`]+)`", cells[0]):
                rows.append({"param": param, "profile": cells[1], "vanilla": cells[2], "dustel": cells[3],
                             "why": cells[4]})
    return rows


def test_every_vanilla_profile_param_is_rendered_or_a_written_down_drop(conn: psycopg.Connection,
                                                                        provider: dict[str, str]) -> None:
    """Issue 32.1: the rendered profiles had dropped vanilla params without a
    word.  Every param of vanilla's internal/external profile has a row in
    the README table; a "—" row is not rendered (a drop, with its reason), any
    other row is rendered — with TLS and NAT on, so every param that can be
    rendered is."""
    s = replace(GOLDEN_SETTINGS, tls_cert_file="/etc/dustel/tls/agent.pem", sip_external_ip="node")
    with conn.transaction():
        fs = service.render_files(conn, s, ["freeswitch"])["freeswitch"]
    rows = _readme_profile_table()
    assert rows, "no table in README, section 'FreeSWITCH profiles against vanilla'"
    for vanilla, ours in (("internal.xml", "internal"), ("external.xml", "carrier")):
        rendered = _params(fs[f"sip_profiles/{ours}.xml"])
        for param in _vanilla_params(vanilla):
            row = next((r for r in rows if r["param"] == param and r["profile"] in (ours, "both")), None)
            assert row is not None, f"vanilla {vanilla} param {param!r}: no row for {ours} in the README table"
            if row["dustel"] == "—":
                assert param not in rendered, f"{param!r} is rendered in {ours} but the README says dropped"
                assert row["why"], f"{param!r}: a drop without a reason"
            else:
                assert param in rendered, f"{param!r}: the README says rendered in {ours}, it is not"


def test_each_node_gets_its_switch_conf_with_its_session_caps(conn: psycopg.Connection,
                                                              provider: dict[str, str]) -> None:
    """Issue 32.6: vanilla's switch.conf caps sessions-per-second at 30 and
    max-sessions at 1 000 (at 50 calls/s through the carrier, 100 sessions
    a second).  Rendered per node: the node's own caps, else the provider's;
    the rest of vanilla's switch.conf as it was."""
    from dustel.config import EngineNode
    nodes = (EngineNode("fs1", "10.0.0.11", 8021, "", "", max_sessions=12000, sessions_per_second=600),
             EngineNode("fs2.dustel.example", "10.0.0.12", 8021, "", ""))
    s = replace(GOLDEN_SETTINGS, esl_nodes=nodes, fs_max_sessions=5000, fs_sessions_per_second=300)
    with conn.transaction():
        fs = service.render_files(conn, s, ["freeswitch"])["freeswitch"]
    assert {rel for rel in fs if rel.startswith("nodes/")} == {"nodes/fs1/switch.conf.xml",
                                                               "nodes/fs2.dustel.example/switch.conf.xml"}
    vanilla = _vanilla_params("switch.conf.xml")
    assert (vanilla["max-sessions"], vanilla["sessions-per-second"]) == ("1000", "30")
    for node, caps in (("fs1", ("12000", "600")), ("fs2.dustel.example", ("5000", "300"))):
        root = ET.fromstring(fs[f"nodes/{node}/switch.conf.xml"])
        assert root.get("name") == "switch.conf"
        params = _params(fs[f"nodes/{node}/switch.conf.xml"])
        assert (params["max-sessions"], params["sessions-per-second"]) == caps
        assert {k: v for k, v in params.items() if k not in ("max-sessions", "sessions-per-second")} == \
            {k: v for k, v in vanilla.items() if k not in ("max-sessions", "sessions-per-second")}
        assert len(root.findall("cli-keybindings/key")) == 12
    with pytest.raises(DustelError, match=r"node 'fs/\.\.'\.name"), conn.transaction():
        service.render_files(conn, replace(s, esl_nodes=(EngineNode("fs/..", "h", 1, "", ""),)), ["freeswitch"])
    with pytest.raises(DustelError, match="fs_sessions_per_second: must be a positive integer"), conn.transaction():
        service.render_files(conn, replace(GOLDEN_SETTINGS, fs_sessions_per_second=0), ["freeswitch"])


def _socket_extensions() -> list[tuple[str, str, str, bool]]:
    """(file, context, a destination it takes, a SIP channel?) of every extension that hands a call to the socket."""
    return [("dialplan/public.xml", "public", "+492115550101", True),           # a number of an account
            ("dialplan/public.xml", "public", "+49305552000", True),            # a queue
            ("dialplan/public.xml", "public", "+4921198765", True),             # a DDI block
            ("dialplan/public.xml", "dustel-agent-out", "3-+491701234567", False),
            ("dialplan/public.xml", "dustel-fax-out", "+491701234567", False),
            ("dialplan/public.xml", "dustel-fax-send", "fax-send", False),
            ("dialplan/t1.xml", "t1", "+4930555123", True),                    # outbound
            ("dialplan/t3.xml", "t3", "*51*1*1234", True)]                     # a star code


def test_a_failed_or_silent_policy_server_ends_in_the_refusal_tables_cause(conn: psycopg.Connection,
                                                                            provider: dict[str, str]) -> None:
    """Issue 32.3: at 50 calls/s FreeSWITCH logged 98 ``Socket Error!`` 24 s
    after ``Trying host`` and those channels stayed in CS_EXECUTE until
    shutdown.  Every socket of the rendered dialplan goes on to a refusal
    with the table's ``internal_error`` — nobody listening (connect
    refused), or a server that takes the connection and never sends
    ``connect`` — never to a bridge, never parked for good."""
    import socket as sk

    from dustel.callpath.policy import CAUSES, REFUSALS
    from tests.esl_emulator import run_extension
    sip_code, q850 = REFUSALS["internal_error"]
    free = sk.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()                                         # nothing listens here: connect is refused
    silent = sk.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)                                    # the kernel takes the connection; nobody answers
    for name, where in (("refused", port), ("silent", silent.getsockname()[1])):
        s = replace(GOLDEN_SETTINGS, esl_outbound_port=where)
        with conn.transaction():
            fs = service.render_files(conn, s, ["freeswitch"])["freeswitch"]
        for rel, context, dest, sip in _socket_extensions():
            got = run_extension(fs[rel], context, dest, sip=sip, connect_timeout=0.3)
            assert ("socket", f"127.0.0.1:{where} async full") in got.executed, (rel, context, got.executed)
            assert not got.stuck, f"{name}: {context} {dest}: parked for good after the socket failed"
            assert not got.bridged, f"{name}: {context} {dest}: an open door: {got.bridged}"
            assert (got.sip_code, got.cause) == ((sip_code if sip else 0), CAUSES[q850]), (name, context, dest, got)
    silent.close()


def test_110_and_112_go_through_without_any_policy_server(conn: psycopg.Connection,
                                                          provider: dict[str, str]) -> None:
    """Issue 32.3: whatever bounds the socket, 110/112 must never wait for a
    policy server: the emergency extension bridges to the PSAP of the
    account's area before any socket, with nothing listening at all."""
    from tests.esl_emulator import run_extension
    fs = _render(conn)["freeswitch"]
    for t in ("t1", "t2", "t3"):
        for dialled in ("112", "110", "0112", "+49110"):
            got = run_extension(fs[f"dialplan/{t}.xml"], t, dialled, connect_timeout=0.3)
            assert not any(app == "socket" for app, _ in got.executed), (t, dialled, got.executed)
            assert got.bridged == f"sofia/gateway/carrier/${{dustel_psap_prefix}}{dialled[-3:]}", (t, dialled, got)
