"""Entry point of the controller's Asterisk process (asyncio).

    DUSTEL_CONTROLLER_NODES='[["ast1", "127.0.0.1", 5038, "dustel", "secret"]]' \\
    DUSTEL_CONTROLLER_DSN=postgresql://… python -m dustel.controller.ami_main
"""
import asyncio
import json
import os
import sys

from dustel import logs
from dustel.controller import ami_node


def main() -> None:
    logs.service(sys.stderr)
    nodes = [(str(n), str(h), int(p), str(u), str(s))
             for n, h, p, u, s in json.loads(os.environ["DUSTEL_CONTROLLER_NODES"])]
    asyncio.run(ami_node.run(nodes, os.environ["DUSTEL_CONTROLLER_DSN"]))


if __name__ == "__main__":
    main()
