"""Worker processes of a policy server on one port: what ``dustel esl serve``
and ``dustel xmlcurl serve`` share (no event loop here: a supervisor only
starts, restarts and stops processes)."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

log = logging.getLogger("dustel.workers")


@dataclass(frozen=True)
class Service:
    """A policy server's process: ``python -m <module>``, its DSN and engine
    nodes in ``<env>_DSN`` / ``<env>_NODES`` (never argv)."""
    prog: str          # the command that execs it
    module: str
    what: str          # for the log
    env: str
    port: int
    setting: str       # the setting of its worker processes


def parser(svc: Service) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=svc.prog,
                                 description=f"DSN in ${svc.env}_DSN, engine nodes in ${svc.env}_NODES (JSON "
                                             "{address: name}; default: loopback only)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=svc.port)
    ap.add_argument("--workers", type=int, default=1,
                    help=f"worker processes on the one port (settings: {svc.setting}; 0: one per core)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)      # set by the supervisor for its workers
    return ap


def this_process(svc: Service, ap: argparse.ArgumentParser, args: argparse.Namespace,
                 argv: list[str]) -> tuple[str, dict[str, str]] | None:
    """With several workers wanted and this the supervisor: supervise them
    (None when they were stopped); else what this server process serves
    with: the DSN and the engine nodes (source address -> node name; none
    configured: loopback, named by the engine itself)."""
    import json
    import os

    from ..config import LOOPBACK
    if args.workers < 0:
        ap.error("--workers: must be 0 (one per core) or more")
    workers = args.workers or os.cpu_count() or 1
    if args.worker is None and workers > 1:
        supervise(svc.module, svc.what, args.host, args.port, workers, argv)
        return None
    dsn = os.environ.get(f"{svc.env}_DSN", "")
    if not dsn:
        ap.error(f"{svc.env}_DSN: must name the database (never on the command line)")
    return dsn, json.loads(os.environ.get(f"{svc.env}_NODES") or "{}") or {ip: "" for ip in LOOPBACK}


def supervise(module: str, what: str, host: str, port: int, workers: int, argv: list[str]) -> None:
    """One worker process per core (``python -m <module> … --worker i``), each a
    whole server listening on the same port with SO_REUSEPORT, so the kernel
    spreads the calls over them and no single process is the limit (issue
    32.2).  This process
    only holds the port (bound with SO_REUSEPORT, not listening: port 0
    becomes one port for all), starts the workers with its own environment,
    starts again one that dies, and stops them on SIGTERM."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    port = holder.getsockname()[1]

    def start(i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", module, *_strip(argv, ("--port", "--workers")),
                                 "--port", str(port), "--worker", str(i)])

    log.info("%s on %s:%s: %s worker processes", what, host, port, workers)
    procs = [start(i) for i in range(workers)]
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    try:
        while not stopping:
            time.sleep(0.5)
            for i, p in enumerate(procs):
                if p.poll() is not None and not stopping:
                    log.warning("worker %s ended with status %s; starting it again", i, p.returncode)
                    procs[i] = start(i)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        holder.close()


def _strip(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without ``options`` (``--opt value`` and ``--opt=value``)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not a.startswith(tuple(o + "=" for o in options)):
            out.append(a)
    return out

