"""Shared fixtures: a real PostgreSQL (DATABASE_URL or embedded pgserver),
a migrated template database, and one fresh database per test cloned from
it (CREATE DATABASE … TEMPLATE: fast and fully isolated)."""
from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg.rows import dict_row

from dustel import db
from dustel.cli import cli
from dustel.provisioning import migrate

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    import pgserver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="session")
def template_url(pg_url: str) -> Iterator[str]:
    name = f"dustel_tpl_{os.getpid()}"
    with _admin(pg_url) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    url = db.with_dbname(pg_url, name)
    migrate.migrate(url)
    yield url
    with _admin(pg_url) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_url: str, template_url: str) -> Iterator[str]:
    name = f"dustel_t_{os.getpid()}_{next(_counter)}"
    tpl = urlsplit(template_url).path.lstrip("/")
    with _admin(pg_url) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"')
    yield db.with_dbname(pg_url, name)
    with _admin(pg_url) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """Autocommit connection: each domain call below runs in its own
    ``with conn.transaction()`` in the tests, as the CLI does."""
    with psycopg.connect(db_url, row_factory=dict_row, autocommit=True) as c:
        yield c


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: to prove that a refused command wrote nothing."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(url) as c:
        tables = [r[0] for r in c.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        for t in tables:
            out[t] = sorted(c.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
        out["_sequences"] = [tuple(r) for r in c.execute(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1")]
    return out


class Cli:
    """Runs the real click command against a test database."""

    def __init__(self, url: str, state_dir: str) -> None:
        self.url = url
        self.state_dir = state_dir
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(cli, ["--state-dir", self.state_dir, *args], input=input,
                                  env={"DATABASE_URL": self.url}, catch_exceptions=False)

    def ok(self, *args: str, input: str | None = None) -> Result:
        r = self(*args, input=input)
        assert r.exit_code == 0, (args, r.output, r.stderr)
        return r


@pytest.fixture
def run(db_url: str, tmp_path: Any) -> Cli:
    return Cli(db_url, str(tmp_path / "state"))
