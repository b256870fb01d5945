"""Database connections: ``DATABASE_URL`` or the embedded PostgreSQL."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from .config import SYSTEM_CONFIG, Settings
from .errors import DustelError

log = logging.getLogger(__name__)


def database_url(settings: Settings, create: bool = False) -> str:
    """The configured URL, or start (or reuse) the embedded server of the
    state directory.  Only ``create`` (``dustel demo``, ``dustel db init``)
    makes a new embedded database: anything else that finds none says where
    it looked, instead of quietly starting an empty provider."""
    if settings.database_url:
        return settings.database_url
    pg = settings.state_dir / "pg"
    if not create and not (pg / "PG_VERSION").exists():
        raise DustelError("database", f"no DATABASE_URL and no embedded PostgreSQL in {pg} (state directory from "
                                      f"{settings.state_found}); `dustel demo` loads a demo provider, `dustel db "
                                      "init` makes an empty one; on an application host the Ansible role writes "
                                      f"{SYSTEM_CONFIG}")
    return embedded_url(pg)


def embedded_status(data_dir: Path) -> dict[str, object]:
    """The embedded server of ``data_dir`` as it is, started by nothing:
    whether it exists, runs, and where."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.utils import PostmasterInfo  # the reading pgserver itself does
    if not (data_dir / "PG_VERSION").exists():
        return {"data_dir": str(data_dir), "exists": False, "running": False}
    info = PostmasterInfo.read_from_pgdata(data_dir)
    running = bool(info is not None and info.is_running())
    return {"data_dir": str(data_dir), "exists": True, "running": running,
            "pid": info.pid if running and info else None, "port": info.port if running and info else None}


def embedded_stop(data_dir: Path) -> bool:
    """Stop the embedded server of ``data_dir`` (pg_ctl stop, fast); False
    when it was not running."""
    if not embedded_status(data_dir)["running"]:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    user = "pgserver" if os.geteuid() == 0 else None     # pgserver runs the server as this user under root
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
    return True


def embedded_url(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process and is reused by the
    # next command (pgserver finds it through its pid file).
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (root, CI): harmless
        warnings.simplefilter("ignore")
        import pgserver  # heavy import, only when embedded
        from pgserver.postgres_server import PostgresServer

        if not embedded_status(data_dir)["running"]:
            # pgserver keeps one handle per data directory for the process's
            # life; a server stopped since (`db stop`, elsewhere) must be started
            PostgresServer._instances.pop(data_dir.resolve(), None)
        server = pgserver.get_server(data_dir, cleanup_mode=None)
    return server.get_uri()


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL with another database name."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def single_host(url: str) -> str:
    """A URL naming several servers (libpq's host list: a primary and its
    standbys, ``target_session_attrs=read-write``) as the one that takes
    writes now — for tools that parse one host only (yoyo's migrations)."""
    parts = urlsplit(url)
    if "," not in parts.netloc:
        return url
    with psycopg.connect(url, connect_timeout=5) as conn:
        host, port = conn.info.host, conn.info.port
    userinfo = parts.netloc.rpartition("@")[0]
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("target_session_attrs="))
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{hostport}" if userinfo else hostport, query=query))


def connect(url: str, **kw: object) -> psycopg.Connection:
    return psycopg.connect(url, row_factory=dict_row, **kw)  # type: ignore[arg-type]


@contextlib.contextmanager
def transaction(url: str) -> Iterator[psycopg.Connection]:
    """One connection, one transaction: commit on success, roll back on any error."""
    with connect(url) as conn, conn.transaction():
        yield conn
