"""Socket helpers shared by the tests of servers (policy servers, mail)."""
from __future__ import annotations

import selectors
import socket
import time


def free_port() -> int:
    """A TCP port on loopback nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connect_burst(port: int, n: int, wait: float = 10.0) -> tuple[list[socket.socket], int]:
    """Open ``n`` connections to ``port`` without yielding to anything (the
    caller holds the server: its own event loop, or SIGSTOP) and wait until
    each handshake has completed — which the kernel does for a listening
    socket only while its backlog has room.  Returns the sockets (non-
    blocking) and how many were established; only a failing run waits
    ``wait`` seconds."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE)
        socks.append(s)
    established = 0
    deadline = time.monotonic() + wait
    while established < n and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(timeout=left):
            sel.unregister(key.fileobj)
            if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:  # type: ignore[union-attr]
                established += 1
    sel.close()
    return socks, established
