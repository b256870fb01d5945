"""Logging of the long-running services: one set-up for all of them.

The policy servers log a line or two per call, so a log record's cost is
part of a decision's: records skip the thread, process and
multiprocessing fields (``logging.logThreads`` and friends, the standard
library's documented switches) that no format here prints — under gevent
``threading.current_thread`` alone was a quarter of the outbound ESL
server's logging time (py-spy at 600 calls/s, bench/esl_policy.py)."""
from __future__ import annotations

import logging
from typing import TextIO

PLAIN = "%(asctime)s %(name)s %(message)s"
LEVELLED = "%(asctime)s %(levelname)s %(name)s %(message)s"


def service(stream: TextIO, fmt: str = PLAIN, level: int = logging.INFO) -> None:
    """Log to ``stream`` in ``fmt`` (PLAIN or LEVELLED) from ``level`` up."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(stream=stream, level=level, format=fmt)
