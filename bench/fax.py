"""Fax conversion benchmark (F-08): a 10-page A4 document.

    .venv/bin/python bench/fax.py [--rounds 5]

Prints pages/s for PDF → fax TIFF (pypdfium2 render at 204 × 196 dpi,
Pillow 1-bit G4: what ``dustel fax send`` does) and for fax TIFF → PDF
(img2pdf, the G4 pages embedded losslessly: what every received fax goes
through), best of the rounds, plus the sizes.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dustel.fax.inbound import tiff_to_pdf  # noqa: E402
from dustel.fax.outbound import pdf_to_tiff  # noqa: E402

PAGES = 10


def document() -> bytes:
    """10 A4 pages of ruled text-like lines at 300 dpi, as an office PDF."""
    frames = []
    for n in range(PAGES):
        im = Image.new("L", (2480, 3508), 255)
        d = ImageDraw.Draw(im)
        d.rectangle((200, 200, 2280, 500), outline=0, width=8)
        for y in range(700, 3300, 60):
            d.line((220, y, 2200 - 40 * (y % 7) - 10 * n, y), fill=0, width=6)
        frames.append(im)
    buf = io.BytesIO()
    frames[0].save(buf, format="PDF", save_all=True, append_images=frames[1:], resolution=300)
    return buf.getvalue()


def best(fn, rounds: int) -> float:   # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    pdf = document()
    tiff, pages = pdf_to_tiff(pdf)
    out, back = tiff_to_pdf(tiff)
    assert pages == back == PAGES
    t_out = best(lambda: pdf_to_tiff(pdf), args.rounds)
    t_in = best(lambda: tiff_to_pdf(tiff), args.rounds)
    print(f"fax conversion, {PAGES}-page A4 document, best of {args.rounds} rounds")
    print(f"  PDF ({len(pdf) // 1024} KiB) -> fax TIFF ({len(tiff) // 1024} KiB, G4 204x196 dpi): "
          f"{PAGES / t_out:8.1f} pages/s  ({t_out * 1000:.0f} ms per document)")
    print(f"  fax TIFF -> PDF ({len(out) // 1024} KiB, lossless): "
          f"{PAGES / t_in:8.1f} pages/s  ({t_in * 1000:.0f} ms per document)")


if __name__ == "__main__":
    main()
