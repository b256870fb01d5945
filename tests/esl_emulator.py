"""A FreeSWITCH Event Socket emulator that speaks the wire protocol.

Two modes, both on loopback with ephemeral ports, synchronised on bytes
and events, never on sleeps:

- ``Replayer``: replays a recorded transcript (``../shared/esl-transcripts``)
  byte for byte — for each ``client->fs`` message it expects the same bytes
  and answers with exactly the recorded ``fs->client`` chunks.
- ``OutboundCall``: plays FreeSWITCH's side of one ``socket … async full``
  connection live: it connects to the server under test, answers
  ``connect`` with the channel data, ``myevents``/``linger``/``sendmsg``
  with FreeSWITCH's replies, executes the applications (recording them),
  and sends the events real FreeSWITCH sends, built from the recorded
  events of transcript 05 with this call's values.
"""
from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dustel.controller import protocol as P

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "esl-transcripts"


def load(name: str) -> list[tuple[str, bytes]]:
    """[(dir, bytes)] of a transcript, in order."""
    path = TRANSCRIPTS / (name if name.endswith(".jsonl") else name + ".jsonl")
    return [(d["dir"], d["data"].encode()) for d in map(json.loads, path.read_text().splitlines()) if d]


def fs_frames(name: str) -> list[P.Frame]:
    reader = P.FrameReader()
    return [f for d, data in load(name) if d == "fs->client" for f in reader.feed(data)]


def read_command(sock: socket.socket, buf: bytearray) -> bytes | None:
    """One client command (bytes up to and including the blank line)."""
    while True:
        end = buf.find(b"\n\n")
        if end >= 0:
            cmd = bytes(buf[:end + 2])
            del buf[:end + 2]
            return cmd
        data = sock.recv(65536)
        if not data:
            return None
        buf += data


def parse_command(raw: bytes) -> tuple[str, dict[str, str]]:
    first, _, rest = raw.decode().strip("\n").partition("\n")
    headers = {}
    for line in rest.split("\n"):
        k, sep, v = line.partition(": ")
        if sep:
            headers[k.lower()] = v
    return first, headers


class Replayer:
    """Replays one transcript.  ``serve()`` for inbound transcripts (the
    client connects to us), ``connect(port)`` for the outbound one (we
    connect to the client's server, as FreeSWITCH does)."""

    def __init__(self, name: str) -> None:
        self.steps = load(name)
        self.mismatch: list[tuple[bytes, bytes]] = []
        self.done = threading.Event()

    def serve(self) -> int:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()
        return srv.getsockname()[1]

    def _accept(self, srv: socket.socket) -> None:
        conn, _ = srv.accept()
        srv.close()
        self._play(conn)

    def connect(self, port: int) -> threading.Thread:
        sock = socket.create_connection(("127.0.0.1", port))
        t = threading.Thread(target=self._play, args=(sock,), daemon=True)
        t.start()
        return t

    def _play(self, sock: socket.socket) -> None:
        buf = bytearray()
        try:
            for direction, data in self.steps:
                if direction == "fs->client":
                    if data:
                        sock.sendall(data)
                    else:
                        sock.shutdown(socket.SHUT_WR)
                        break
                else:
                    got = read_command(sock, buf)
                    if got != data:
                        self.mismatch.append((data, got or b""))
                        break
        except OSError as exc:
            self.mismatch.append((b"", repr(exc).encode()))
        finally:
            sock.close()
            self.done.set()


# ------------------------------------------------------------- outbound live

def _templates() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    frames = fs_frames("05-outbound-socket")
    channel = dict(frames[0].headers)
    for k in ("Content-Type", "Reply-Text", "Socket-Mode", "Control"):
        channel.pop(k, None)
    events: dict[str, dict[str, str]] = {}
    for f in frames:
        if f.content_type == "text/event-plain":
            ev = P.parse_event(f)
            events.setdefault(ev.name, ev.headers)
    return channel, events


_CHANNEL, _EVENTS = _templates()
_SEQ = itertools.count(5000)
_UUIDS = itertools.count(1)


def new_uuid() -> str:
    return f"0dd5e1a0-0000-4000-8000-{next(_UUIDS):012d}"


@dataclass
class OutboundCall:
    """One call handed to the socket.  ``variables`` are the channel
    variables the dialplan set (``dustel_tenant`` …); ``callee`` decides what
    the far end does when bridged: ``("answer", talk_seconds)``, ``("busy",)``
    or ``("noanswer",)``.  Time is virtual: a scheduled hangup ends the call
    at its second without waiting."""

    port: int
    destination: str
    variables: dict[str, str]
    caller: str = "4921199999"
    callee: tuple = ("answer", 30)
    uuid: str = field(default_factory=new_uuid)
    switchname: str = "vm"
    executed: list[tuple[str, str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    hangup_cause: str = ""
    billsec: int = 0
    answered: bool = False
    error: str = ""
    closed_by_client: bool = False

    def start(self) -> threading.Thread:
        self._done = threading.Event()
        t = threading.Thread(target=self._run, daemon=True)
        t.start()
        return t

    def wait(self, timeout: float = 30) -> OutboundCall:
        if not self._done.wait(timeout):
            raise TimeoutError(f"call {self.uuid} still running: executed={self.executed}")
        return self

    # --- what FreeSWITCH sends
    def channel_headers(self) -> dict[str, str]:
        h = dict(_CHANNEL)
        for k in [k for k in h if k.startswith("variable_dustel")]:
            del h[k]
        for k in ("Unique-ID", "Channel-Call-UUID", "Caller-Unique-ID", "variable_uuid", "variable_call_uuid"):
            h[k] = self.uuid
        for k in ("Channel-Destination-Number", "Caller-Destination-Number"):
            h[k] = self.destination
        for k in ("Channel-Caller-ID-Number", "Caller-Caller-ID-Number", "Caller-ANI", "Channel-ANI"):
            h[k] = self.caller
        h["FreeSWITCH-Switchname"] = self.switchname
        h.update({f"variable_{k}": v for k, v in self.variables.items()})
        return h

    def _event(self, name: str, **extra: str) -> bytes:
        h = self.channel_headers()
        tpl = _EVENTS.get(name, _EVENTS["CHANNEL_STATE"])
        for k in ("Event-Name", "Event-Calling-Function", "Event-Calling-Line-Number", "Answer-State",
                  "Channel-State", "Channel-Call-State"):
            if k in tpl:
                h[k] = tpl[k]
        h["Event-Name"] = name
        h["Event-Sequence"] = str(next(_SEQ))
        if self.answered:
            h["Answer-State"] = "answered"
        if self.hangup_cause:
            h["Hangup-Cause"] = self.hangup_cause
            h["Answer-State"] = "hangup"
        h.update(extra)
        body = P.encode_plain(h)
        return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body

    def _reply(self, text: str) -> bytes:
        return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()

    def _run(self) -> None:
        try:
            self._sock = socket.create_connection(("127.0.0.1", self.port))
            self._serve()
        except OSError as exc:
            self.error = repr(exc)
        finally:
            self._sock.close()
            self._done.set()

    def _send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def _serve(self) -> None:
        buf = bytearray()
        self.events_on = False
        while True:
            raw = read_command(self._sock, buf)
            if raw is None:
                return
            cmd, headers = parse_command(raw)
            self.commands.append(cmd)
            if cmd == "connect":
                h = self.channel_headers()
                h.update({"Content-Type": "command/reply", "Reply-Text": "+OK\n", "Socket-Mode": "async",
                          "Control": "full"})
                self._send(P.encode_plain(h))
            elif cmd == "myevents":
                self.events_on = True
                self._send(self._reply("+OK Events Enabled"))
            elif cmd == "linger":
                self._send(self._reply("+OK will linger"))
            elif cmd == "sendmsg":
                if self.hangup_cause:
                    self._send(self._reply("-ERR Channel hungup"))   # what FS says after hangup
                    continue
                self._send(self._reply("+OK"))
                self._execute(headers.get("execute-app-name", ""), headers.get("execute-app-arg", ""))
            elif cmd == "exit":
                self.closed_by_client = True
                self._send(self._reply("+OK bye"))
                notice = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
                self._send(b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: "
                           + self.uuid.encode() + b"\nContent-Disposition: disconnect\nContent-Length: %d\n\n"
                           % len(notice) + notice)
                return
            else:
                self._send(self._reply("-ERR command not found"))

    def _emit(self, name: str, **extra: str) -> None:
        if self.events_on:
            self._send(self._event(name, **extra))

    def _execute(self, app: str, arg: str) -> None:
        self.executed.append((app, arg))
        app_h = {"Application": app, "Application-Data": arg, "Application-UUID": new_uuid()}
        self._emit("CHANNEL_EXECUTE", **app_h)
        if app == "set":
            name, _, value = arg.partition("=")
            self.variables[name] = value
        elif app == "answer":
            self._answer()
        elif app == "hangup":
            self._hangup(arg or "NORMAL_CLEARING", app_h)
            return
        elif app in ("bridge", "callcenter"):
            self._bridge(app_h)
            return
        self._emit("CHANNEL_EXECUTE_COMPLETE", **app_h, **{"variable_current_application": app})

    def _answer(self) -> None:
        if not self.answered:
            self.answered = True
            self._emit("CHANNEL_ANSWER")

    def _bridge(self, app_h: dict[str, str]) -> None:
        what = self.callee[0]
        if what != "answer":
            cause = {"busy": "USER_BUSY", "noanswer": "NO_ANSWER"}[what]
            self._emit("CHANNEL_EXECUTE_COMPLETE", **app_h, variable_originate_disposition=cause,
                       variable_current_application=app_h["Application"])
            return
        talk = int(self.callee[1])
        self._answer()
        limit = None
        on_answer = self.variables.get("execute_on_answer", "")
        if on_answer.startswith("sched_hangup +"):
            limit = int(on_answer.split()[1][1:])
            self.executed.append(("sched_hangup", on_answer.split(" ", 1)[1]))
        self._emit("CHANNEL_BRIDGE")
        if limit is not None and limit < talk:
            self.billsec = limit
            self._hangup(on_answer.split()[2], app_h)
        else:
            self.billsec = talk
            self._emit("CHANNEL_UNBRIDGE")
            self._hangup("NORMAL_CLEARING", app_h)

    def _hangup(self, cause: str, app_h: dict[str, str]) -> None:
        self.hangup_cause = cause
        self._emit("CHANNEL_HANGUP")
        self._send(b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: " + self.uuid.encode()
                   + b"\nContent-Disposition: linger\nChannel-Name: loopback/7777-b\nLinger-Time: -1\n"
                   b"Content-Length: 0\n\n")
        self._emit("CHANNEL_EXECUTE_COMPLETE", **app_h)
        self._emit("CHANNEL_STATE", **{"Channel-State": "CS_HANGUP"})
        self._emit("CHANNEL_STATE", **{"Channel-State": "CS_REPORTING"})
        self._emit("CHANNEL_HANGUP_COMPLETE", variable_billsec=str(self.billsec),
                   variable_duration=str(self.billsec), **{"Hangup-Cause": cause})


def wait_for(pred, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll a predicate on shared state (database rows): the one place tests
    wait, with a deadline instead of a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
