"""ESL event parsing benchmark (F-11): the events of the recorded
``03-call-events-plain`` transcript, through dustel's parser and, side by
side in the same run, through greenswitch's own ``ESLEvent``.

    .venv/bin/python bench/esl_events.py [--events 50000]

Three figures each, events/s on one core (best of 5 interleaved rounds, so
both parsers see the same machine state):

- full dict: the event body (bytes after the frame's Content-Length) to a
  dict of every header — what greenswitch's ``ESLEvent(data)`` does;
- stream: the whole byte stream (frames with Content-Length, cut into 64 KiB
  reads) to events — framing included; each event is checked (ASCII,
  Event-Name) and its headers are decoded when read (``Event.get``), which
  is how the controller uses them (greenswitch reads line by line from a
  socket file, so only dustel has this figure);
- controller: the stream parsed and reduced to the live-state operations
  the controller applies (``state.on_fs_event``), without the database.

Targets (DESIGN.md / issue 5): at least 2x greenswitch, at least 50 000
events/s."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenswitch.esl import ESLEvent  # noqa: E402

from dustel.controller import state  # noqa: E402
from dustel.wire import esl as P  # noqa: E402

TRANSCRIPT = Path(__file__).resolve().parents[1] / "tests" / "data" / "esl-transcripts" / "03-call-events-plain.jsonl"


def recorded_bodies() -> list[bytes]:
    reader = P.FrameReader()
    frames = []
    for line in TRANSCRIPT.read_text().splitlines():
        d = json.loads(line)
        if d["dir"] == "fs->client":
            frames += reader.feed(d["data"].encode())
    return [f.body for f in frames if f.content_type == "text/event-plain"]


def best(fn, n: int, rounds: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    args = ap.parse_args()
    base = recorded_bodies()
    bodies = (base * (args.events // len(base) + 1))[:args.events]
    texts = [b.decode() for b in bodies]
    stream = b"".join(b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(b) + b for b in bodies)
    n = len(bodies)

    def ours_body() -> None:
        for b in bodies:
            P.parse_plain(b).headers  # noqa: B018

    def theirs_body() -> None:
        for t in texts:
            ESLEvent(t)

    def ours_stream() -> None:
        r = P.FrameReader()
        for i in range(0, len(stream), 65536):
            for f in r.feed(stream[i:i + 65536]):
                P.parse_event(f)

    def controller() -> None:
        r = P.FrameReader()
        for i in range(0, len(stream), 65536):
            for f in r.feed(stream[i:i + 65536]):
                state.on_fs_event("fs1", P.parse_event(f))

    # correctness first: both parsers agree on every recorded event (values
    # without line breaks, where greenswitch's whole-body decoding is right)
    for b, t in zip(base, [b.decode() for b in base], strict=True):
        theirs = ESLEvent(t).headers
        assert P.parse_plain(b).headers == theirs
        lazy = P.parse_plain(b)
        assert all(lazy.get(k) == v for k, v in theirs.items())

    results: dict[str, list[float]] = {"ours_body": [], "theirs_body": [], "ours_stream": [], "controller": []}
    for _ in range(3):      # interleave so a slow moment of the machine hits both
        results["ours_body"].append(best(ours_body, n, 2))
        results["theirs_body"].append(best(theirs_body, n, 2))
        results["ours_stream"].append(best(ours_stream, n, 2))
        results["controller"].append(best(controller, n, 2))
    r = {k: max(v) for k, v in results.items()}
    print(f"ESL event parsing: {n} events of {TRANSCRIPT.name} ({len(base)} recorded, "
          f"{sum(map(len, base)) // len(base)} bytes each on average), one core, best of 6 rounds\n")
    print(f"{'':34} {'events/s':>10}")
    print(f"{'greenswitch ESLEvent (body)':34} {r['theirs_body']:>10,.0f}")
    print(f"{'dustel parse_plain, full dict':34} {r['ours_body']:>10,.0f}   {r['ours_body'] / r['theirs_body']:.2f}x "
          "greenswitch")
    print(f"{'dustel stream (framing + parse)':34} {r['ours_stream']:>10,.0f}   "
          f"{r['ours_stream'] / r['theirs_body']:.2f}x greenswitch")
    print(f"{'dustel controller (+ state ops)':34} {r['controller']:>10,.0f}   "
          f"{r['controller'] / r['theirs_body']:.2f}x greenswitch")


if __name__ == "__main__":
    main()
