"""The fixture provider for render tests: the demo provider with fixed
passwords (so HA1s, and therefore golden files, are stable)."""
from __future__ import annotations

import itertools
from pathlib import Path

import psycopg

from dustel.config import Settings
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
