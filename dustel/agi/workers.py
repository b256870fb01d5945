"""Worker processes of a policy server on one port: what ``dustel esl serve``
and ``dustel xmlcurl serve`` share (no event loop here: a supervisor only
starts, restarts and stops processes)."""
from __future__ import annotations

import logging

log = logging.getLogger("dustel.workers")


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

