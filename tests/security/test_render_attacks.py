"""Attacks through tenant-controlled values that reach rendered engine
configs (issue 16.10, 16.11): each test failed on the code before the fix."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import psycopg

from dustel.cli import cli
from dustel.provisioning import accounts, targets
from dustel.render import service
from tests.conftest import Cli
from tests.factories import tenant
from tests.render_fixture import GOLDEN_SETTINGS

PREPROCESS = re.compile(r"(?i)x-pre-process")


def _render(conn: psycopg.Connection) -> dict[str, dict[str, str]]:
    with conn.transaction():
        return service.render_files(conn, GOLDEN_SETTINGS, ["freeswitch", "asterisk"])


def test_x_pre_process_in_any_value_never_reaches_the_preprocessor(conn: psycopg.Connection) -> None:
    """FreeSWITCH's preprocessor drops every line that holds ``X-pre-process``
    (any case) and is no real tag; a queue named ``fax-pre-processing`` made
    a real FreeSWITCH refuse to start.  No rendered line may hold the text
    raw, and the XML must parse to the intended values."""
    t = tenant(conn, options={"acd": 1})
    with conn.transaction():
        targets.queue_add(conn, t["id"], "fax-pre-processing", "7")
        targets.queue_add(conn, t["id"], "x-pre-process", "8")
        targets.faxbox_add(conn, t["id"], "x-pre-process-box", "fax@example.org")
        accounts.add(conn, t["id"], password="Secret-Passw0rd-1", display_name="Büro X-pre-process $${evil}")
    fs = _render(conn)["freeswitch"]
    for rel, text in fs.items():
        for n, line in enumerate(text.splitlines(), 1):
            assert not PREPROCESS.search(line), f"{rel}:{n}: {line}"
            assert "$${evil" not in line, f"{rel}:{n}: {line}"
    cc = ET.fromstring(fs["autoload_configs/callcenter.conf.xml"])
    names = {q.get("name") for q in cc.iter("queue")}
    assert f"t{t['id']}-fax-pre-processing@{t['sip_domain']}" in names
    assert f"t{t['id']}-x-pre-process@{t['sip_domain']}" in names
    directory = ET.fromstring(fs[f"directory/{t['sip_domain']}.xml"])
    shown = [v.get("value") for v in directory.iter("variable") if v.get("name") == "effective_caller_id_name"]
    assert shown == ["Büro X-pre-process evil"], shown          # $ { } dropped as before, the text itself intact


def test_display_names_cannot_smuggle_sip_headers(conn: psycopg.Connection) -> None:
    """FreeSWITCH URL-decodes the caller name when it builds ``From``:
    ``Empfang%0D%0AX-Evil: injected`` became a header on a real engine.
    ``%``, ``"``, ``\\`` and control characters leave every display name on
    both engines."""
    t = tenant(conn)
    with conn.transaction():
        user = accounts.add(conn, t["id"], password="Secret-Passw0rd-1",
                            display_name='Empfang%0D%0AX-Evil: injected "\\q')["username"]
    r = _render(conn)
    directory = ET.fromstring(r["freeswitch"][f"directory/{t['sip_domain']}.xml"])
    shown = [v.get("value") for v in directory.iter("variable") if v.get("name") == "effective_caller_id_name"]
    assert shown == ["Empfang 0D 0AX-Evil: injected q"]
    line = next(ln for ln in r["asterisk"]["pjsip.conf"].splitlines()
                if ln.startswith("callerid=") and user in ln or ln.startswith('callerid="Empfang'))
    assert line.startswith('callerid="Empfang 0D 0AX-Evil: injected q" <'), line
    for text in (shown[0], line):
        assert "%" not in text and "\\" not in text


def test_rendered_fixture_has_no_preprocessor_text(conn: psycopg.Connection, tmp_path: Path) -> None:
    from tests.render_fixture import load_fixture
    load_fixture(conn, tmp_path)
    for text in _render(conn)["freeswitch"].values():
        assert not PREPROCESS.search(text)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_tenant_never_writes_a_partial_tree(run: Cli, tmp_path: Path) -> None:
    """Issue 16.8: ``render --tenant N`` overwrote the live configuration
    with one tenant and deleted the others' FreeSWITCH files."""
    run.ok("demo")
    out = tmp_path / "live"
    run.ok("render", "--out", str(out))
    before = _tree(out)
    assert len([k for k in before if k.startswith("freeswitch/directory/")]) == 3
    r = run("render", "--out", str(out), "--tenant", "1")
    assert r.exit_code == 1 and r.stderr.startswith("error: tenant: only with --diff")
    assert _tree(out) == before
    run.ok("account", "set", "000387100001", "--name", "Anna Neu")
    d = run.ok("render", "--out", str(out), "--tenant", "1", "--diff").stdout
    assert "+" in d and "Anna Neu" in d and "/dev/null" not in d            # no other tenant "removed"
    assert _tree(out) == before


def test_rendered_files_belong_to_the_configured_owner_and_group(run: Cli, tmp_path: Path) -> None:
    """Issue 16.9: files are 0640 and owned by whom the operator says (the
    engine's group), not only by the rendering user."""
    import grp
    import os
    group = "nogroup" if os.geteuid() == 0 else grp.getgrgid(os.getegid()).gr_name
    run.ok("demo")
    out = tmp_path / "etc"
    r = run.runner.invoke(cli, ["--state-dir", run.state_dir, "render", "--out", str(out)],
                          env={"DATABASE_URL": run.url, "DUSTEL_CONFIG_GROUP": group}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(grp.getgrgid(p.stat().st_gid).gr_name == group for p in files)
    assert all(p.stat().st_mode & 0o777 == 0o640 for p in files)
