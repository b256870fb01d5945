"""Database connections: ``DATABASE_URL`` or the embedded PostgreSQL."""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from .config import Settings

log = logging.getLogger(__name__)


def database_url(settings: Settings) -> str:
    """The configured URL, or start (or reuse) the embedded server."""
    if settings.database_url:
        return settings.database_url
    return embedded_url(settings.state_dir / "pg")


def embedded_url(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process and is reused by the
    # next command (pgserver finds it through its pid file).
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (root, CI): harmless
        warnings.simplefilter("ignore")
        import pgserver  # heavy import, only when embedded

        server = pgserver.get_server(data_dir, cleanup_mode=None)
    return server.get_uri()


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL with another database name."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def connect(url: str, **kw: object) -> psycopg.Connection:
    return psycopg.connect(url, row_factory=dict_row, **kw)  # type: ignore[arg-type]


@contextlib.contextmanager
def transaction(url: str) -> Iterator[psycopg.Connection]:
    """One connection, one transaction: commit on success, roll back on any error."""
    with connect(url) as conn, conn.transaction():
        yield conn
