"""The fixture provider for render tests: the demo provider with fixed
passwords (so HA1s, and therefore golden files, are stable)."""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import psycopg

from dustel.config import EngineNode, Settings
from dustel.provisioning import demo

GOLDEN_SETTINGS = Settings(state_dir=Path("/srv/dustel"), sip_bind_host="127.0.0.1", sip_port=15060,
                           ami_port=15038, esl_port=18021, carrier_host="127.0.0.1:5070",
                           esl_password="golden-esl-secret", ami_secret="golden-ami-secret")


def load_fixture(conn: psycopg.Connection, tmp: Path) -> dict[str, str]:
    """Load the provider; return username -> password."""
    counter = itertools.count(1)
    passwords: list[str] = []

    def pw() -> str:
        p = f"Fixture-Passw0rd-{next(counter):02d}"
        passwords.append(p)
        return p

    with conn.transaction():
        demo.load(conn, tmp / "creds.txt", password=pw)
        conn.execute("INSERT INTO moh_classes (tenant_id, name) VALUES (3, 'jazz')")
        conn.execute("UPDATE queues SET moh_class = 'jazz' WHERE name = 'support'")
    lines = [ln.split() for ln in (tmp / "creds.txt").read_text().splitlines() if not ln.startswith("#")]
    return {ln[0].split("@")[0]: ln[1] for ln in lines}


# a cluster (issue 27): two edge nodes, two Asterisk nodes, two policy servers
CLUSTER_SETTINGS = replace(
    GOLDEN_SETTINGS,
    edge_nodes=(EngineNode("edge1", "127.0.0.10", 5060, "", "", rpc_port=5081),
                EngineNode("edge2", "127.0.0.11", 5060, "", "", rpc_port=5081)),
    ami_nodes=(EngineNode("ast1", "127.0.0.2", 5038, "dustel", "", sip="127.0.0.2:5060"),
               EngineNode("ast2", "127.0.0.3", 5038, "dustel", "", sip="127.0.0.3:5060")),
    esl_nodes=(EngineNode("fs1", "127.0.0.6", 8021, "", "", sip="127.0.0.6:5060"),
               EngineNode("fs2", "127.0.0.7", 8021, "", "", sip="127.0.0.7:5060")),
    agi_servers="127.0.0.4:4573,127.0.0.5:4573", esl_outbound_servers="127.0.0.4:8084,127.0.0.5:8084",
    kamailio_db_url="postgres://kamailio:golden-kamailio-secret@127.0.0.21,127.0.0.22:5432/dustel")
