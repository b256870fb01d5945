"""The cluster's real parts on one machine (tests/cluster, bench/cluster.py):
PostgreSQL 15 primary and streaming standby (Debian's server binaries,
pg_basebackup), Kamailio 5.6 (Debian's), and dustel's own services as
processes.  Each part on its own loopback address (127.0.0.x): what a host
of the cluster would be.  Needs root (the PostgreSQL server runs as the
``postgres`` user, Asterisk in its chroot)."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import wait_for

PGBIN = Path(os.environ.get("DUSTEL_PGBIN", "/usr/lib/postgresql/15/bin"))


class Unavailable(Exception):
    """A part cannot run here (the reason)."""


def until_ready(proc: subprocess.Popen[bytes], log: Path, name: str, ready: Callable[[], bool], what: str) -> None:
    """Wait for a started process to be ``ready``; one that exits meanwhile
    fails at once with the end of its log."""
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {log.read_text(errors='replace')[-1500:]}")
        return ready()
    wait_for(up, 30, f"{name} {what}")


def terminate(proc: subprocess.Popen[bytes] | None, kill: Callable[[], Any] | None) -> None:
    """SIGTERM a started process, ``kill`` it if it has not ended 15 s later."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        if kill is not None:
            kill()
        proc.wait()


def free_port(hosts: Sequence[str] = ("127.0.0.1",)) -> int:
    """A port free for TCP and UDP on every one of ``hosts``."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for h in hosts:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((h, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Unavailable(f"{what} needs root")


# ---------------------------------------------------------------- PostgreSQL

class Postgres:
    """One PostgreSQL 15 server (primary or standby) on ``host``:``port``,
    its data in ``base``/data, run as the ``postgres`` user."""

    USER = "postgres"

    def __init__(self, base: Path, host: str, port: int, password: str) -> None:
        self.base, self.host, self.port, self.password = base, host, port, password
        self.data = base / "data"

    @staticmethod
    def check() -> None:
        require_root("a PostgreSQL server of its own")
        for prog in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
            if not (PGBIN / prog).exists():
                raise Unavailable(f"{PGBIN / prog} is missing (Debian's postgresql-15: make system-deps)")
        try:
            pwd.getpwnam(Postgres.USER)
        except KeyError:
            raise Unavailable("no 'postgres' user (Debian's postgresql-15 makes it)") from None

    def _run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
        r = subprocess.run(["runuser", "-u", self.USER, "--", *argv], capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, **(env or {})}, cwd=self.base)
        if r.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {(r.stderr or r.stdout).strip()[-500:]}")
        return r.stdout

    def _prepare(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.base, self.USER, self.USER)

    def _settings(self, extra: str = "") -> None:
        with (self.data / "postgresql.auto.conf").open("a") as f:
            f.write(f"listen_addresses = '{self.host}'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.base}'\n{extra}")

    def init_primary(self, synchronous: str = "") -> None:
        """initdb; replication and password logins from loopback."""
        self._prepare()
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        shutil.chown(pwfile, self.USER, self.USER)
        self._run(str(PGBIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        pwfile.unlink()
        with (self.data / "pg_hba.conf").open("a") as f:
            f.write("host replication all 127.0.0.0/8 scram-sha-256\n")
        self._settings("wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\nfsync = off\n"
                       "wal_log_hints = on\n"
                       + (f"synchronous_standby_names = '{synchronous}'\nsynchronous_commit = on\n"
                          if synchronous else ""))

    def init_standby(self, primary: Postgres, name: str) -> None:
        """pg_basebackup from the primary, streaming (standby.signal, primary_conninfo)."""
        self._prepare()
        self._run(str(PGBIN / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U", "postgres",
                  "-D", str(self.data), "-R", "-X", "stream", "-c", "fast",
                  env={"PGPASSWORD": primary.password, "PGAPPNAME": name})
        # the replication connection names the standby (synchronous_standby_names)
        with (self.data / "postgresql.auto.conf").open("a") as f:
            f.write(f"primary_conninfo = 'host={primary.host} port={primary.port} user=postgres "
                    f"password={primary.password} application_name={name}'\n")
        self._settings()

    def start(self) -> None:
        self._run(str(PGBIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-t", "60",
                  "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(PGBIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass

    def kill(self) -> None:
        """SIGKILL the postmaster (and so every backend): the host is gone."""
        pid_file = self.data / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _alive(pid), 10, "the killed postmaster to go")
        # its backends notice the postmaster's death and exit; new connections are refused
        wait_for(lambda: not listening(self.host, self.port), 10, "the killed server's port to close")

    def promote(self) -> None:
        self._run(str(PGBIN / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    def url(self, db: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        return f"postgresql://{user}:{password or self.password}@{self.host}:{self.port}/{db}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (our child) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def multi_host_url(servers: Sequence[Postgres], db: str, user: str = "postgres", password: str = "") -> str:
    """libpq's multi-host URL: whichever server takes writes (``target_session_attrs``)."""
    hosts = ",".join(f"{s.host}:{s.port}" for s in servers)
    return (f"postgresql://{user}:{password or servers[0].password}@{hosts}/{db}"
            "?target_session_attrs=read-write&connect_timeout=2")


# ---------------------------------------------------------------- Kamailio

class Kamailio:
    """Debian's kamailio on a rendered kamailio.cfg, in the foreground
    (``-DD -E``: no daemon, log to stderr -> ``log``)."""

    def __init__(self, cfg: Path, base: Path, env: dict[str, str] | None = None) -> None:
        self.cfg, self.base, self.env = cfg, base, env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "kamailio.log"

    @staticmethod
    def check() -> None:
        require_root("Kamailio on its own addresses")
        if shutil.which("kamailio") is None:
            raise Unavailable("kamailio is not installed (Debian's kamailio: make system-deps)")
        mods = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "kamailio-postgres-modules"],
                              capture_output=True, text=True)
        if "ok installed" not in mods.stdout:
            raise Unavailable("kamailio-postgres-modules is not installed (make system-deps)")

    def start(self, ready: Callable[[], bool]) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        run = self.base / "run"
        run.mkdir(exist_ok=True)
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            ["kamailio", "-f", str(self.cfg), "-DD", "-E", "-Y", str(run), "-P", str(run / "kamailio.pid"),
             "-w", str(self.base), "-m", "64", "-M", "8"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **self.env})
        out.close()
        until_ready(self.proc, self.log, "kamailio", ready, "to answer its JSON-RPC")

    def stop(self) -> None:
        terminate(self.proc, self.proc.kill if self.proc else None)


# ---------------------------------------------------------------- dustel's services

class Service:
    """A ``dustel`` command running in the background (a policy server, a
    controller), its output in ``log``."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, list(argv), env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool] | None = None) -> None:
        out = self.log.open("ab")
        # a session of its own: kill() takes its children too (a controller's engine processes)
        self.proc = subprocess.Popen([sys.executable, "-m", "dustel.cli", *self.argv], env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        out.close()
        if ready is not None:
            until_ready(self.proc, self.log, self.name, ready, "to be ready")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the service and its children: its host is gone."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        terminate(self.proc, lambda: os.killpg(self.proc.pid, signal.SIGKILL) if self.proc else None)


def scratch_dir(prefix: str) -> Path:
    """A directory the ``postgres`` user can reach too (pytest's are root's 0700)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    d.chmod(0o755)
    return d


def sipp_available() -> str:
    path = shutil.which("sipp")
    if path is None:
        raise Unavailable("sipp (Debian's sip-tester) is not installed: make system-deps")
    return path


def json_rpc_ready(node: Any) -> Callable[[], bool]:
    from ..render import edge

    def ready() -> bool:
        try:
            edge.rpc(node, "core.uptime", timeout=1)
            return True
        except Exception:       # noqa: BLE001 (not up yet)
            return False
    return ready
