"""Test harnesses that other parts (tests, benchmarks) share: a real
Asterisk in a Debian sid chroot, the cluster's parts, and the one wait."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``pred`` until it is true, with a deadline: the one way tests and
    harnesses wait for another process (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)

