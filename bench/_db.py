"""Benchmark database: DATABASE_URL's server or an embedded one in
.dustel/bench-pg; a fresh, migrated database per benchmark."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dustel import db  # noqa: E402
from dustel.provisioning import migrate  # noqa: E402


def fresh_database(name: str) -> str:
    server = os.environ.get("DATABASE_URL") or db.embedded_url(Path(".dustel/bench-pg").resolve())
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    url = db.with_dbname(server, name)
    migrate.migrate(url)
    return url
