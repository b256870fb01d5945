"""A policy server as a process of its own, the way its command execs it:
its log drained (a full pipe would block it), its port read from its
``listening on 127.0.0.1:<port>`` line."""
from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable
from typing import Any


class ServerProcess:
    def __init__(self, cmd: list[str], env: dict[str, str], what: str,
                 preexec_fn: Callable[[], Any] | None = None) -> None:
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=preexec_fn)
        self.log: list[str] = []
        self._port = threading.Event()
        self.port = 0
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._port.wait(30):
            self.proc.kill()
            raise AssertionError(f"{what} did not start: " + "".join(self.log))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m and not self._port.is_set():
                self.port = int(m.group(1))
                self._port.set()

    def logged(self, pattern: str) -> list[str]:
        return [line for line in list(self.log) if re.search(pattern, line)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


SECRET_DSN = "postgresql://dustel:s3cret-pw@127.0.0.1:1/nowhere"


def served_cmdline(state_dir: str, *command: str) -> str:
    """``dustel <command> --port 0`` with a DSN holding a password: the
    command line of the server it execs, once it listens (``ps`` shows argv
    to every user: the DSN must not be there)."""
    import os
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "dustel.cli", "--state-dir", state_dir, *command, "--port", "0"],
                            env={**os.environ, "DATABASE_URL": SECRET_DSN}, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                break
        else:
            raise AssertionError(f"{' '.join(command)} did not start")
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            return f.read().decode()
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
