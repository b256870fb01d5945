"""The rate table (F-09): per-minute prices by destination prefix, integer
cents; read from CSV (``dustel rates import``, the demo's table)."""
from __future__ import annotations

import csv
from pathlib import Path

import psycopg

from ..errors import DustelError
from . import validate as v

DEMO_RATES = Path(__file__).resolve().parents[1] / "data" / "demo_rates.csv"


def read(path: Path) -> list[tuple[str, int, str]]:
    """CSV with a header: prefix,cents_per_minute[,description]; prefix in
    E.164 digits without '+' ('' is the default rate)."""
    out: dict[str, tuple[str, int, str]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"prefix", "cents_per_minute"} <= set(reader.fieldnames):
                raise DustelError("rates", "CSV needs a header with prefix,cents_per_minute[,description]")
            for n, row in enumerate(reader, start=2):
                prefix = (row["prefix"] or "").strip().lstrip("+")
                price = (row["cents_per_minute"] or "").strip()
                if not (prefix == "" or (prefix.isascii() and prefix.isdigit() and len(prefix) <= 15)):
                    raise DustelError(f"rates line {n}", "prefix must be up to 15 digits")
                if not (price.isascii() and price.isdigit() and int(price) <= 100000):
                    raise DustelError(f"rates line {n}", "cents_per_minute must be a whole number of cents")
                if prefix in out:
                    raise DustelError(f"rates line {n}", f"prefix {prefix!r} listed twice")
                desc = v.text("description", row.get("description") or "-", max_len=100)
                out[prefix] = (prefix, int(price), desc)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DustelError("rates", f"cannot read {path}: {exc}") from None
    if not out:
        raise DustelError("rates", "no rates in the file")
    return sorted(out.values())



def store(conn: psycopg.Connection, rows: list[tuple[str, int, str]], *, replace: bool = False) -> int:
    """Upsert the rows (``replace``: drop prefixes they do not list); the
    number of rates in the table after."""
    if replace:
        conn.execute("DELETE FROM rates")
    with conn.cursor() as cur:
        cur.executemany("""INSERT INTO rates (prefix, cents_per_minute, description) VALUES (%s, %s, %s)
                           ON CONFLICT (prefix) DO UPDATE SET cents_per_minute = EXCLUDED.cents_per_minute,
                                                              description = EXCLUDED.description""", rows)
    row = conn.execute("SELECT count(*) AS n FROM rates").fetchone()
    return int(row["n"] if isinstance(row, dict) else row[0])
