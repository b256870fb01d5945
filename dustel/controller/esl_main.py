"""Entry point of the controller's FreeSWITCH process: gevent patches first.

    DUSTEL_CONTROLLER_NODES='[["fs1", "127.0.0.1", 8021, "ClueCon"]]' \
    DUSTEL_CONTROLLER_DSN=postgresql://… python -m dustel.controller.esl_main

Node secrets and the DSN come through the environment, never argv (which
every user can read in ps).
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from dustel import logs  # noqa: E402
from dustel.controller import esl_node  # noqa: E402


def main() -> None:
    logs.service(sys.stderr)
    nodes = [(str(n), str(h), int(p), str(pw)) for n, h, p, pw in json.loads(os.environ["DUSTEL_CONTROLLER_NODES"])]
    watchdog = float(os.environ.get("DUSTEL_CONTROLLER_WATCHDOG") or esl_node.WATCHDOG_SECONDS)
    esl_node.run(nodes, os.environ["DUSTEL_CONTROLLER_DSN"], watchdog)


if __name__ == "__main__":
    main()
