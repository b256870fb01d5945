"""Where the CLI finds its provider (issue 31 items 1 and 2): one way for
every command — --state-dir, $DUSTEL_STATE_DIR, the state_dir of the config
file (/etc/dustel/dustel.toml on an application host), ./.dustel only if it
exists; only `demo` and `db init` make a database; the embedded server can
be stopped and its state seen without starting it."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner, Result

from dustel import config, db
from dustel.cli import cli

NO_ENV = {"DATABASE_URL": None, "DUSTEL_STATE_DIR": None, "DUSTEL_CONFIG": None, "DUSTEL_SECRETS_FILE": None}


def dustel(*args: str, env: dict[str, Any] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={**NO_ENV, **(env or {})}, catch_exceptions=False)


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, and no /etc/dustel (a stand-in path)."""
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "etc" / "dustel.toml")
    return cwd


@pytest.fixture
def provider(tmp_path: Path, elsewhere: Path) -> Iterator[Path]:
    """An empty provider made by `db init` in its own state directory."""
    state = tmp_path / "state"
    r = dustel("--state-dir", str(state), "db", "init", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["applied"][-1].startswith("00")
    yield state
    db.embedded_stop(state / "pg")


def test_without_a_provider_nothing_is_made_and_the_error_says_where_it_looked(elsewhere: Path) -> None:
    """Before: `tenant list` from another directory started a new embedded
    PostgreSQL in ./.dustel/pg and advised `db migrate` - a second, empty
    platform."""
    for args in (["tenant", "list"], ["call", "list"], ["db", "migrate"], ["render", "--check"]):
        r = dustel(*args)
        assert r.exit_code == 1, (args, r.output)
        assert r.stderr.startswith("error: database: no DATABASE_URL and no embedded PostgreSQL in "), r.stderr
        assert "no --state-dir, no $DUSTEL_STATE_DIR, no state_dir in a config file" in r.stderr
        assert "`dustel demo` loads a demo provider, `dustel db init` makes an empty one" in r.stderr
    assert list(elsewhere.iterdir()) == []                       # no ./.dustel, no pg


def test_the_runbook_finds_the_provider_from_any_directory(provider: Path, elsewhere: Path) -> None:
    # the environment
    r = dustel("tenant", "list", "--json", env={"DUSTEL_STATE_DIR": str(provider)})
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    # the application host's config file, as the Ansible role writes it
    config.SYSTEM_CONFIG.parent.mkdir()
    config.SYSTEM_CONFIG.write_text(f'state_dir = "{provider}"\nagi_port = 4599\n')
    for args in (["tenant", "list"], ["call", "list"], ["db", "migrate"]):
        r = dustel(*args)
        assert r.exit_code == 0, (args, r.output)
    r = dustel("db", "status", "--json")
    st = json.loads(r.stdout)
    assert r.exit_code == 0 and st["state_dir"] == str(provider.resolve()) and st["pending"] == []
    assert st["found_by"] == f"state_dir in {config.SYSTEM_CONFIG}" and st["embedded"]["running"]
    assert list(elsewhere.iterdir()) == []


def test_db_stop_and_status_without_starting_it(provider: Path) -> None:
    """Before: embedded servers ran on after every command with no way to
    stop them but a kill."""
    pid = db.embedded_status(provider / "pg")["pid"]
    assert isinstance(pid, int)
    r = dustel("--state-dir", str(provider), "db", "stop", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["stopped"] is True
    assert not (provider / "pg" / "postmaster.pid").exists()              # a clean shutdown
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    r = dustel("--state-dir", str(provider), "db", "status")
    assert r.exit_code == 1 and "stopped" in r.stdout
    assert db.embedded_status(provider / "pg")["running"] is False          # status started nothing
    r = dustel("--state-dir", str(provider), "db", "stop")
    assert r.exit_code == 0 and "was not running" in r.stdout
    r = dustel("--state-dir", str(provider), "tenant", "list", "--json")    # the next command starts it again
    assert r.exit_code == 0 and db.embedded_status(provider / "pg")["running"] is True
    r = dustel("db", "stop", env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"})
    assert r.exit_code == 1 and "DATABASE_URL's server, which dustel does not run" in r.stderr


def test_the_system_config_brings_its_secrets_beside_it(tmp_path: Path, elsewhere: Path) -> None:
    etc = config.SYSTEM_CONFIG.parent
    etc.mkdir()
    config.SYSTEM_CONFIG.write_text(f'state_dir = "{tmp_path / "lib"}"\n')
    secrets = etc / "secrets.toml"
    secrets.write_text('esl_password = "from-etc"\ndatabase_url = "postgresql://u@db.example/dustel"\n')
    secrets.chmod(0o600)
    s = config.load_settings(env={})
    assert (s.state_dir, s.esl_password, s.database_url) == (tmp_path / "lib", "from-etc",
                                                              "postgresql://u@db.example/dustel")
    (elsewhere / ".dustel").mkdir()                                # a flag or the environment still wins
    assert config.load_settings(env={"DUSTEL_STATE_DIR": str(elsewhere / ".dustel")}).esl_password == ""
