"""Engine fixtures: a real Asterisk 22 in the cached Debian sid chroot.

When the chroot cannot be built (not root, no mmdebstrap, no mirror) the
engine tests skip with the reason, which pytest's -ra summary prints — CI
shows it rather than hiding it."""
from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator

import pytest

from dustel.testing.asterisk import Asterisk, Unavailable


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on loopback."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


@pytest.fixture(scope="session")
def asterisk_chroot() -> Asterisk:
    try:
        return Asterisk.ensure_built()
    except Unavailable as exc:
        pytest.skip(f"real Asterisk unavailable: {exc}")


@pytest.fixture
def asterisk(asterisk_chroot: Asterisk) -> Iterator[Asterisk]:
    yield asterisk_chroot
    asterisk_chroot.stop()


@pytest.fixture(scope="session")
def sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        pytest.skip("sipp (Debian sip-tester) is not installed: make system-deps")
    return path
