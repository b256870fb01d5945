"""Pure parts: validators, schedules, settings, porting transitions."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from dustel.config import load_settings
from dustel.errors import DustelError
from dustel.provisioning import numbers, schedule
from dustel.provisioning import validate as v

UTC = dt.UTC


@pytest.mark.parametrize("raw,expected", [
    ("+492111234567", "+492111234567"), ("0211 1234567", "+492111234567"), ("0049 211 1234567", "+492111234567"),
    ("0211/123-4567", "+492111234567"), ("+4930123456", "+4930123456")])
def test_e164_accepts(raw: str, expected: str) -> None:
    assert v.e164("n", raw) == expected


@pytest.mark.parametrize("raw", ["", "+", "12345", "+0211", "+49 211;ls", "٠٢١١١٢٣٤٥٦", "+4921112345678901",
                                 "0211\n123456"])
def test_e164_refuses(raw: str) -> None:
    with pytest.raises(DustelError, match="^n: "):
        v.e164("n", raw)


def test_area_code_and_money() -> None:
    assert v.area_code("a", "0211") == "211" and v.area_code("a", "30") == "30"
    for bad in ("0", "011", "0123456", "١٢٣"):
        with pytest.raises(DustelError):
            v.area_code("a", bad)
    assert v.money_cents("m", "49.9") == 4990 and v.money_cents("m", "50") == 5000
    assert v.money_cents("m", "0,05") == 5
    for bad in ("1e3", "-5", "12.345", "NaN", ""):
        with pytest.raises(DustelError):
            v.money_cents("m", bad)


def test_text_refuses_control_and_invisible_characters() -> None:
    assert v.text("t", "  Müller & Söhne <GmbH>  ", max_len=50) == "Müller & Söhne <GmbH>"
    for bad in ("a\nb", "x\x00", "a\u202eb", "\u200b", ""):
        with pytest.raises(DustelError):
            v.text("t", bad, max_len=50)


def test_screening_patterns() -> None:
    assert v.screening_pattern("p", "Anonymous") == "anonymous"
    assert v.screening_pattern("p", "0211*") == "+49211*"
    assert v.screening_pattern("p", "+44*") == "+44*"
    assert v.screening_pattern("p", "0170 1234567") == "+491701234567"
    with pytest.raises(DustelError):
        v.screening_pattern("p", "*")


def test_schedule_rules_and_holidays() -> None:
    s = schedule.build(["mon-fri 08:00-18:00", "hol 10:00-12:00"], region="NW", dates=["2026-12-24"])
    berlin = "Europe/Berlin"
    # Tuesday 2026-11-24 09:00 Berlin (08:00 UTC): active
    assert schedule.active(s, dt.datetime(2026, 11, 24, 8, 0, tzinfo=UTC), berlin)
    # 18:00 Berlin is the end of the window: not active
    assert not schedule.active(s, dt.datetime(2026, 11, 24, 17, 0, tzinfo=UTC), berlin)
    # Saturday
    assert not schedule.active(s, dt.datetime(2026, 11, 28, 9, 0, tzinfo=UTC), berlin)
    # Christmas Eve (explicit date, a Thursday): only 'hol' rules apply
    assert not schedule.active(s, dt.datetime(2026, 12, 24, 8, 0, tzinfo=UTC), berlin)
    assert schedule.active(s, dt.datetime(2026, 12, 24, 10, 30, tzinfo=UTC), berlin)
    # Corpus Christi 2026-06-04 is a holiday in NW, not in Berlin
    assert schedule.is_holiday(s, dt.date(2026, 6, 4))
    assert not schedule.is_holiday(schedule.build(["mon 00:00-24:00"], region="BE"), dt.date(2026, 6, 4))
    # summer time: 07:30 UTC is 09:30 in Berlin in July
    assert schedule.active(s, dt.datetime(2026, 7, 7, 7, 30, tzinfo=UTC), berlin)
    assert schedule.active(None, dt.datetime(2026, 7, 7, 7, 30, tzinfo=UTC), berlin)
    assert schedule.parse_rule("fri-mon 00:00-24:00")["days"] == ["mon", "fri", "sat", "sun"]


@pytest.mark.parametrize("bad", ["mon 18:00-08:00", "funday 08:00-09:00", "mon 25:00-26:00", "mon 8-9",
                                 "mon 08:00-18:00; rm"])
def test_schedule_refuses(bad: str) -> None:
    with pytest.raises(DustelError, match="^when: "):
        schedule.parse_rule(bad)


def test_porting_transitions() -> None:
    assert numbers.porting_next("requested", "confirm") == "confirmed"
    assert numbers.porting_next("confirmed", "done") == "done"
    with pytest.raises(DustelError, match="allowed: confirm, reject"):
        numbers.porting_next("requested", "done")
    with pytest.raises(DustelError, match="closed"):
        numbers.porting_next("done", "reject")


def test_settings_file_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "dustel.toml"
    cfg.write_text('agi_port = 4600\nesl_password = "fromfile"\n'
                   '[[esl_nodes]]\nname = "fs1"\nhost = "127.0.0.1"\nport = 8021\nsecret = "x"\n')
    cfg.chmod(0o644)
    with pytest.raises(DustelError, match="holds secrets: must be mode 0600"):    # issue 16.4
        load_settings(tmp_path, env={})
    cfg.chmod(0o600)
    s = load_settings(tmp_path, env={"DUSTEL_ESL_PASSWORD": "fromenv"})
    assert s.agi_port == 4600 and s.esl_password == "fromenv"
    assert s.esl_nodes[0].name == "fs1" and s.database_url is None
    cfg.write_text("agi_prot = 1\n")
    with pytest.raises(DustelError, match="agi_prot: unknown setting"):
        load_settings(tmp_path, env={})
    cfg.write_text("agi_port = [\n")
    with pytest.raises(DustelError, match="not valid TOML"):
        load_settings(tmp_path, env={})
    with pytest.raises(DustelError, match="agi_port: must be an integer"):
        load_settings(tmp_path / "nowhere", env={"DUSTEL_AGI_PORT": "http"})


def test_no_default_secret_is_rendered_or_started(tmp_path: Path) -> None:
    """Issue 16.4: ClueCon / dustel-ami were rendered when unset."""
    from dustel.config import ensure_demo_secrets, node_secret, require_secrets
    s = load_settings(tmp_path, env={})
    assert (s.esl_password, s.ami_secret) == ("", "")
    with pytest.raises(DustelError, match="esl_password: must be set"):
        require_secrets(s, "esl_password")
    with pytest.raises(DustelError, match="ami_secret: must be set"):
        require_secrets(load_settings(tmp_path, env={"DUSTEL_AMI_SECRET": "dustel-ami"}), "ami_secret")
    node = load_settings(tmp_path, env={}).esl_nodes
    assert node == ()
    assert ensure_demo_secrets(tmp_path) and not ensure_demo_secrets(tmp_path)
    secrets_file = tmp_path / "secrets.toml"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    s = load_settings(tmp_path, env={})
    assert len(s.esl_password) >= 20 and len(s.ami_secret) >= 20 and s.esl_password != s.ami_secret
    require_secrets(s, "esl_password", "ami_secret")
    cfg = tmp_path / "dustel.toml"                       # the secrets file wins over the config file
    cfg.write_text('esl_password = "from-config"\n')
    cfg.chmod(0o600)
    assert load_settings(tmp_path, env={}).esl_password == s.esl_password
    assert load_settings(tmp_path, env={"DUSTEL_ESL_PASSWORD": "from-env"}).esl_password == "from-env"
    cfg.unlink()
    secrets_file.chmod(0o640)
    with pytest.raises(DustelError, match="secrets file .*: holds secrets: must be mode 0600"):
        load_settings(tmp_path, env={})
    from dustel.config import EngineNode
    with pytest.raises(DustelError, match="node fs1.secret"):
        node_secret(load_settings(tmp_path / "x", env={}), EngineNode("fs1", "h", 1, "", ""), "freeswitch")


def test_service_logging_prints_its_format_and_skips_the_unprinted_fields() -> None:
    """The services' log lines keep their format; a record no longer looks
    up the thread or process (no format prints them, and under gevent the
    look-up was a measurable part of a call's CPU)."""
    import re
    import subprocess
    import sys

    code = ("import logging, sys\n"
            "from dustel import logs\n"
            "logs.service(sys.stdout, logs.LEVELLED)\n"
            "log = logging.getLogger('dustel.x')\n"
            "log.debug('not shown')\n"
            "log.info('call=%s admit=%s', 'c1', True)\n"
            "r = log.makeRecord('dustel.x', logging.INFO, 'f', 1, 'm', (), None)\n"
            "print(r.thread, r.threadName, r.process, r.processName)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO dustel\.x call=c1 admit=True", lines[0]), out
    assert lines[1] == "None None None None", out
