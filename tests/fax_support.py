"""Test helpers for fax: a fax document as Pillow writes it, and a real
SMTP server (aiosmtpd) that keeps what it receives."""
from __future__ import annotations

import email
import email.policy
import io
from email.message import EmailMessage
from typing import Any

import psycopg
from aiosmtpd.controller import Controller
from PIL import Image, ImageDraw

from dustel.provisioning import numbers
from tests.factories import tenant


def fax_pdf(pages: int = 1) -> bytes:
    """A plain PDF of blank A4 pages (150 dpi), as a customer sends one."""
    frames = [Image.new("L", (1240, 1754), 255) for _ in range(pages)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PDF", save_all=True, append_images=frames[1:], resolution=150)
    return buf.getvalue()


def fax_tiff(pages: int = 2) -> bytes:
    """A fax document: A4 at fax fine resolution (1728 x 2292 px, 204 x 196
    dpi), 1 bit, CCITT G4 — what SendFAX takes."""
    frames = []
    for n in range(pages):
        im = Image.new("1", (1728, 2292), 1)
        d = ImageDraw.Draw(im)
        d.rectangle((100, 100 + 40 * n, 1600, 400 + 40 * n), outline=0, width=8)
        for y in range(600, 2100, 60):
            d.line((150, y, 1500 - 30 * n, y), fill=0, width=4)
        frames.append(im)
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", compression="group4", dpi=(204, 196), save_all=True, append_images=frames[1:])
    return buf.getvalue()


class Mailbox:
    """An aiosmtpd server on loopback that keeps every message it accepts."""

    def __init__(self, port: int) -> None:
        self.messages: list[EmailMessage] = []
        self.port = port
        self.controller = Controller(self, hostname="127.0.0.1", port=port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:   # noqa: N802 (aiosmtpd's name)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"

    def start(self) -> Mailbox:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def fax_customer(conn: psycopg.Connection) -> dict[str, Any]:
    """A business tenant with an address for reports and a number to fax from."""
    t = tenant(conn)
    conn.execute("UPDATE tenants SET email = 'chef@example.org' WHERE id = %s", (t["id"],))
    with conn.transaction():
        numbers.add(conn, t["id"], "+492119876601")
    return t
