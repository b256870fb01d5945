"""Schema migrations: versioned plain-SQL files applied with yoyo-migrations.

Each file in ``migrations/`` is one version, applied in its own transaction
(PostgreSQL has transactional DDL), recorded in yoyo's ``_yoyo_migration``
table; applying again is a no-op.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from yoyo import get_backend, read_migrations

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# yoyo logs every step at INFO; keep our output to the summary.
logging.getLogger("yoyo").setLevel(logging.WARNING)


@dataclass(frozen=True)
class MigrationStatus:
    applied: list[str]
    pending: list[str]


def _yoyo_uri(url: str) -> str:
    # yoyo picks its driver from the scheme: psycopg 3 is "postgresql+psycopg".
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _backend(url: str):  # type: ignore[no-untyped-def]
    from ..db import single_host  # yoyo parses one host: the writable one of a list
    return get_backend(_yoyo_uri(single_host(url)))


def status(url: str) -> MigrationStatus:
    backend = _backend(url)
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR))
        pending = [m.id for m in backend.to_apply(migrations)]
        applied = [m.id for m in migrations if m.id not in pending]
        return MigrationStatus(applied=applied, pending=pending)
    finally:
        backend.connection.close()


def migrate(url: str) -> list[str]:
    """Apply what is pending; return the ids applied now (empty: up to date)."""
    backend = _backend(url)
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR))
        with backend.lock():
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
        return [m.id for m in todo]
    finally:
        backend.connection.close()
