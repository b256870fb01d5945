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
from typing import Any

from dustel.testing import wait_for  # noqa: F401 (the tests' one wait, imported from here)
from dustel.wire import esl as P

# The recordings of real FreeSWITCH (../shared/esl-transcripts), kept in the
# repository so a fresh clone tests against them; test_esl_protocol checks
# the copy still equals the shared one where that exists.
TRANSCRIPTS = Path(__file__).resolve().parent / "data" / "esl-transcripts"
SHARED_TRANSCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "esl-transcripts"


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
        self.sessions: list[list[tuple[str, bytes]]] = [[]]
        for step in load(name):           # an empty fs->client chunk closes a session
            self.sessions[-1].append(step)
            if step == ("fs->client", b""):
                self.sessions.append([])
        self.sessions = [s for s in self.sessions if s]
        self.steps = self.sessions[0]
        self.mismatch: list[tuple[bytes, bytes]] = []
        self.done = threading.Event()

    def serve(self) -> int:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()
        return srv.getsockname()[1]

    def _accept(self, srv: socket.socket) -> None:
        for steps in self.sessions:
            conn, _ = srv.accept()
            self.steps = steps
            self.done.clear()
            self._play(conn)
        srv.close()

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


def _fax_result() -> dict[str, str]:
    """The ``variable_fax_*`` headers of rxfax's EXECUTE_COMPLETE in recording 09."""
    for f in fs_frames("09-outbound-socket-fax-receive"):
        if f.content_type == "text/event-plain":
            ev = P.parse_event(f)
            if ev.name == "CHANNEL_EXECUTE_COMPLETE" and ev.headers.get("Application") == "rxfax":
                return {k: v for k, v in ev.headers.items() if k.startswith("variable_fax_")}
    raise RuntimeError("recording 09 holds no rxfax result")


_CHANNEL, _EVENTS = _templates()
FAX_RESULT = _fax_result()
_SEQ = itertools.count(5000)
_UUIDS = itertools.count(1)


def new_uuid() -> str:
    return f"0dd5e1a0-0000-4000-8000-{next(_UUIDS):012d}"


# ------------------------------------- the real engine's event mix (recording 10b) and subscriptions
#
# What FreeSWITCH writes to an outbound socket is decided per event by
# ``event_handler`` in mod_event_socket.c: the event's type must be in the
# listener's list (``myevents`` puts MYEVENTS_TYPES there, ``nixevent`` takes
# types out); when the listener has filters, one positive filter must match
# and no negative one (``-value``) — recording 10 shows them ORed; with
# ``myevents`` only the socket's own channel's events (``Unique-ID``) pass.
# The events are those of recording 10b (the same call unfiltered), with
# their real headers and sizes: a sofia channel of the rendered config,
# 5.5–11 KB an event (recording 05's loopback events are 2.5–4.5 KB).

MYEVENTS_TYPES = frozenset((     # mod_event_socket.c, parse_command "myevents"
    "CHANNEL_ANSWER", "CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE", "CHANNEL_DATA", "CHANNEL_DESTROY",
    "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_ORIGINATE",
    "CHANNEL_UUID", "CHANNEL_OUTGOING", "CHANNEL_PARK", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA",
    "CHANNEL_STATE", "CHANNEL_UNBRIDGE", "CHANNEL_UNPARK", "DETECTED_SPEECH", "DTMF", "NOTALK", "TALK"))

# What the emulated call decides itself (its application, outcome, the
# other leg, dustel's variables): never copied from the recorded call.  Its
# bridge and hangup times are 0 until the emulator sets them.
OUTCOME_HEADERS = ("Application", "Application-Data", "Application-UUID", "Application-Response", "Hangup-Cause",
                   "Answer-State", "Channel-State", "Channel-Call-State")
OUTCOME_PREFIXES = ("Other-Leg-", "Other-Type", "variable_dustel", "variable_originate_disposition",
                    "variable_DIALSTATUS", "variable_billsec", "variable_duration", "variable_current_application",
                    "variable_cc_", "variable_fax_")
ZERO_TIMES = {"Caller-Channel-Bridged-Time": "0", "Caller-Channel-Hangup-Time": "0"}


def _real_mix() -> tuple[dict[str, str], dict[tuple[str, str], dict[str, str]]]:
    """Recording 10b: the channel data (``connect``'s reply without the reply
    headers) and each event's headers, keyed (name, application or state),
    the outcome headers left out."""
    frames = fs_frames("10b-outbound-socket-unfiltered")
    channel = {k: v for k, v in frames[0].headers.items() if k not in ("Content-Type", "Reply-Text", "Socket-Mode",
                                                                         "Control")}
    events: dict[tuple[str, str], dict[str, str]] = {}
    for f in frames:
        if f.content_type == "text/event-plain":
            ev = P.parse_event(f)
            key = (ev.name, ev.headers.get("Application", "") or ev.headers.get("Channel-State", ""))
            events.setdefault(key, {k: ZERO_TIMES.get(k, v) for k, v in ev.headers.items()
                                    if k not in OUTCOME_HEADERS and not k.startswith(OUTCOME_PREFIXES)})
            events.setdefault((ev.name, ""), events[key])
    return channel, events


REAL_CHANNEL, REAL_EVENTS = _real_mix()


def _real_other_leg() -> dict[str, str]:
    """The ``Other-Leg-*`` block a bridged channel's later events carry
    (recording 10b's bridge EXECUTE_COMPLETE; recording 08 shows the
    answering user as ``Other-Leg-Destination-Number`` there too)."""
    for f in fs_frames("10b-outbound-socket-unfiltered"):
        if f.content_type == "text/event-plain":
            ev = P.parse_event(f)
            if ev.name == "CHANNEL_EXECUTE_COMPLETE" and ev.get("Application") == "bridge":
                return {k: v for k, v in ev.headers.items() if k.startswith(("Other-Leg-", "Other-Type"))}
    raise RuntimeError("recording 10b holds no bridge result")


REAL_OTHER_LEG = _real_other_leg()
SOCKET_APP = {"Application": "socket", "Application-Data": "127.0.0.1:8084 async full",
              "Application-Response": "_none_"}


def real_event_base(name: str, detail: str = "") -> dict[str, str]:
    """The recorded headers of event ``name`` (of application / state
    ``detail``) in recording 10b, for an event the emulator builds: what it
    sets itself overrides them.  ASSUMPTION: an application 10b does not
    execute (answer, callcenter, rxfax …) brings the headers of the
    ``bridge``'s event of the same name (the channel's, not the
    application's: the application's own variables are the emulator's)."""
    return REAL_EVENTS.get((name, detail)) or REAL_EVENTS.get((name, "bridge")) or REAL_EVENTS.get((name, "")) \
        or REAL_EVENTS[("CHANNEL_STATE", "")]


@dataclass
class Subscription:
    """One outbound socket's event subscription, as mod_event_socket.c keeps
    it (``myevents``, ``nixevent``, ``filter``) and applies it
    (``event_handler``).  ``command`` answers a subscription command with
    FreeSWITCH's reply text (None: not one), ``passes`` says whether an
    event's headers reach the socket."""

    uuid: str
    types: set[str] = field(default_factory=set)
    filters: list[tuple[str, str]] = field(default_factory=list)
    myevents: bool = False

    def command(self, line: str) -> str | None:
        cmd, _, arg = line.partition(" ")
        cmd = cmd.lower()
        if cmd == "myevents":
            if self.myevents:
                return "-ERR aready enabled."          # sic (mod_event_socket.c)
            self.myevents = True
            self.types |= MYEVENTS_TYPES
            return "+OK Events Enabled"
        if cmd == "nixevent":
            # ASSUMPTION (recording 10 nixes one type): several names in one
            # command are each taken out, unknown names ignored, CUSTOM's
            # subclasses not kept here (mod_event_socket.c's nixevent loop)
            names = [n for n in arg.split(" ") if n]
            known = [n for n in names if n in MYEVENTS_TYPES or n in ("ALL", "CUSTOM")]
            if not known:
                return "-ERR no keywords supplied"
            for n in known:
                if n == "ALL":
                    self.types.clear()
                self.types.discard(n)
            return "+OK events nixed"
        if cmd == "filter":
            name, _, value = arg.lstrip(" ").partition(" ")
            if name.lower() == "delete" and value:
                name, _, value = value.partition(" ")
                if name.lower() == "all":
                    self.filters.clear()
                else:
                    self.filters = [(n, v) for n, v in self.filters
                                    if not (n.lower() == name.lower() and (not value or v == value))]
                return f"+OK filter deleted. [{name}][{value or '(null)'}]"
            if not value:
                return "-ERR invalid syntax"
            if name.lower() == "add":
                name, _, value = value.partition(" ")
            self.filters.append((name, value))
            return f"+OK filter added. [{name}]=[{value}]"
        return None

    def passes(self, headers: dict[str, str]) -> bool:
        """``event_handler`` for one listener: type, filters, own channel."""
        if headers.get("Event-Name", "") not in self.types:
            return False
        if self.filters:
            send = False
            lower = {k.lower(): v for k, v in headers.items()}     # switch_event_get_header: any case
            for name, value in self.filters:
                have = lower.get(name.lower())
                if have is None:
                    continue
                positive, comp = True, value
                while comp[:1] in ("+", "-", " "):
                    positive = comp[0] != "-" if comp[0] != " " else positive
                    comp = comp[1:]
                if send and positive:
                    continue
                if value.startswith("/"):
                    # ASSUMPTION: a /regex/ filter (switch_regex_perform, PCRE) as Python's re.search
                    import re
                    hit = re.search(comp.strip("/"), have) is not None
                else:
                    hit = have.lower() == comp.lower()            # strcasecmp
                if hit:
                    if not positive:
                        return False
                    send = True
            if not send:
                return False
        return not self.myevents or headers.get("Unique-ID") == self.uuid


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
    dtmf: list[str] = field(default_factory=list)          # what the caller keys in at each prompt
    hangup_cause: str = ""
    billsec: int = 0
    answered: bool = False
    error: str = ""
    closed_by_client: bool = False
    responded: int = 0
    talk: int = 0
    bridged_us: int = 0
    clock_us: int = 1795573675000000    # virtual time of the bridge (µs)

    queue: tuple = ("answered", 12)                          # what mod_callcenter does: answered | timeout
    phones: dict = field(default_factory=dict)   # user / number -> what that leg does (see _bridge)
    rang: list = field(default_factory=list)     # per bridge: the legs it rang
    cancelled: list = field(default_factory=list)   # legs that rang and were cancelled
    while_ringing: Any = None     # test hook: called with the bridge's number (0, 1 …) while its legs ring
    fax: tuple = (1, True)        # what rxfax receives: (pages, success)
    fax_document: bytes = b""     # the TIFF rxfax "writes" to its argument
    sent_document: int = -1       # the pages of the TIFF txfax read (0: unreadable; -1: no txfax)
    hold: bool = False            # answered queue calls: talk until ``hangup_caller()`` (else at once)
    source: str = "127.0.0.1"     # the address FreeSWITCH connects from
    # the emulated FreeSWITCH ends the session when a command starting with this arrives (see _drop)
    drop_at: str = ""
    dropped: bool = False
    later: dict = field(default_factory=dict)     # headers every later event carries (other leg, disposition)
    progressed: bool = False
    delivered: list = field(default_factory=list)   # the events the socket was sent (its subscription's)
    unparked: bool = False
    # the dialplan's actions after the ``socket`` application (socket.xml.j2: the refusal), which the
    # channel goes on with when the listener ends and ``socket_resume`` is true (see _listener_gone)
    after_socket: list = field(default_factory=list)
    resumed: bool = False         # the channel went on in the dialplan after the policy server went away
    peer_gone: bool = False       # the policy server's end of the socket closed

    def __post_init__(self) -> None:
        self.sub = Subscription(self.uuid)      # what this socket asked for (myevents, nixevent, filter)

    def start(self, sock: socket.socket | None = None) -> threading.Thread:
        """Connect to ``port`` (or play on ``sock``, one end of a socket pair) and serve the call."""
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.bridged = threading.Event()
        self.queued = threading.Event()
        t = threading.Thread(target=self._run, args=(sock,), daemon=True)
        t.start()
        return t

    def wait(self, timeout: float = 30) -> OutboundCall:
        if not self._done.wait(timeout):
            raise TimeoutError(f"call {self.uuid} still running: executed={self.executed}")
        return self

    def run_dialplan(self, actions: list[tuple[str, str]]) -> OutboundCall:
        """Run a dialplan extension's applications on this channel, with no
        socket (a fetched document, a static extension): each in turn, the
        channel's ``${var}`` expanded; a ``bridge`` that failed hangs the
        caller up with the originate's cause unless ``continue_on_fail`` is
        set or the cause is NO_ANSWER / NO_USER_RESPONSE (mod_dptools
        audio_bridge_function, switch_channel_handle_cause); the applications
        running out hang up NORMAL_CLEARING.  ASSUMPTION (read at cc93a68;
        recording 12 runs an answered bridge and a ``respond`` only)."""
        self._done, self._lock = threading.Event(), threading.Lock()
        self.bridged, self.queued = threading.Event(), threading.Event()
        self.peer_gone = True                    # no socket: events go nowhere
        for app, data in actions:
            if self.hangup_cause:
                break
            self._execute(app, expand_known(data, self.variables))
            if app == "bridge" and not self.hangup_cause:
                cause = self.variables.get("originate_disposition", "")
                if self.variables.get("continue_on_fail") != "true" and cause not in ("NO_ANSWER", "NO_USER_RESPONSE"):
                    self._hangup(cause or "NORMAL_CLEARING", {})
        if not self.hangup_cause:
            self._hangup("NORMAL_CLEARING", {})
        self._done.set()
        return self

    # --- what FreeSWITCH sends
    def channel_headers(self) -> dict[str, str]:
        h = dict(REAL_CHANNEL)        # a sofia channel of the rendered config (recording 10b)
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
        body = P.encode_plain(self._event_headers(name, **extra))
        return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body

    def _event_headers(self, name: str, **extra: str) -> dict[str, str]:
        """The event as recording 10b has it (real_event_base), with this
        call's channel, state, other leg and ``extra``."""
        base = real_event_base(name, extra.get("Application", "") or extra.get("Channel-State", ""))
        ch = self.channel_headers()
        # the recorded event's headers (connect's channel data has more: its Channel-* profile),
        # this call's values where the channel has them, and its variables where the event has any
        h = {k: ch.get(k, v) for k, v in base.items()}
        if any(k.startswith("variable_") for k in base):
            h.update({f"variable_{k}": v for k, v in self.variables.items()})
            if "Application" in extra:
                h["variable_current_application"] = extra["Application"]
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
        h.update(self.later)
        h.update(extra)
        return h

    def _reply(self, text: str) -> bytes:
        return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()

    def _run(self, sock: socket.socket | None = None) -> None:
        try:
            self._sock = sock or socket.create_connection(("127.0.0.1", self.port), source_address=(self.source, 0))
            self._serve()
        except OSError as exc:
            self.error = repr(exc)
        finally:
            self._sock.close()
            self._done.set()

    def _send(self, data: bytes) -> None:
        with self._lock:
            if self.peer_gone:
                return                     # FreeSWITCH writes nothing to a listener that is gone
            try:
                self._sock.sendall(data)
            except OSError:
                self.peer_gone = True

    def server_gone(self) -> bool:
        """Has the policy server closed its end (a crash, a stop)?  A
        non-blocking peek: EOF or a reset."""
        if self.peer_gone:
            return True
        try:
            self.peer_gone = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            self.peer_gone = True
        return self.peer_gone

    def _listener_gone(self) -> bool:
        """The listener ended while an application runs (the server crashed).
        ASSUMPTION (no recording loses a server mid-call; read in
        mod_event_socket.c at cc93a68, the end of listener_run): with the
        channel variable ``socket_resume`` true and the channel neither
        hibernating nor transferred, the listener sets the channel's state to
        CS_RESET — the running application (a ringing ``bridge``) is
        interrupted, its legs cancelled, and the channel goes on with the
        dialplan's actions after ``socket`` (``after_socket``: the refusal);
        without it the queued applications run on by themselves, and events
        go nowhere.  True when the channel resumed."""
        if not self.server_gone() or self.variables.get("socket_resume") != "true" or self.answered:
            return False
        self.resumed = True
        for app, data in self.after_socket:
            if self.hangup_cause:
                break
            self._execute(app, data)
        return True

    def _serve(self) -> None:
        buf = bytearray()
        while True:
            raw = read_command(self._sock, buf)
            if raw is None:
                return
            cmd, headers = parse_command(raw)
            self.commands.append(cmd)
            if self.drop_at and cmd.startswith(self.drop_at):
                self._drop()
                return
            answer = self.sub.command(cmd)          # myevents, nixevent, filter
            if answer is not None:
                self._send(self._reply(answer))
            elif cmd == "connect":
                h = self.channel_headers()
                h.update({"Content-Type": "command/reply", "Reply-Text": "+OK\n", "Socket-Mode": "async",
                          "Control": "full"})
                self._send(P.encode_plain(h))
            elif cmd == "linger":
                self._send(self._reply("+OK will linger"))
            elif cmd == "sendmsg":
                with self._lock:
                    gone = bool(self.hangup_cause)
                if gone:
                    self._send(self._reply("-ERR Channel hungup"))   # what FS says after hangup
                    continue
                self._send(self._reply("+OK"))
                self._execute(headers.get("execute-app-name", ""), headers.get("execute-app-arg", ""))
            elif cmd.startswith("api "):
                body = b"+OK\n"
                self._send(b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body)
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
        h = self._event_headers(name, **extra)
        if self.sub.passes(h):
            self.delivered.append(name)
            body = P.encode_plain(h)
            self._send(b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body)

    def _drop(self) -> None:
        """FreeSWITCH ends the session without a hangup: its listener was
        killed (more than 500 events queued unread, or no ``connect`` within
        25 s) or the socket failed.  ASSUMPTION (no recording drops a
        session; mod_event_socket.c listener_run's end): the disconnect
        notice of recording 05 is sent and the socket closed; the channel
        stays parked — no hangup, no events."""
        self.dropped = True
        notice = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
        self._send(b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: " + self.uuid.encode()
                   + b"\nContent-Disposition: disconnect\nContent-Length: %d\n\n" % len(notice) + notice)

    def _progress(self) -> None:
        """CHANNEL_PROGRESS, once per channel (recording 08: the second ringing
        bridge brings none; 10b: the carrier's ringing before its answer)."""
        if not self.progressed:
            self.progressed = True
            self._emit("CHANNEL_PROGRESS")

    def _execute(self, app: str, arg: str) -> None:
        self.executed.append((app, arg))
        app_h = {"Application": app, "Application-Data": arg, "Application-UUID": new_uuid()}
        self._emit("CHANNEL_EXECUTE", **app_h)
        if app == "set":
            name, _, value = arg.partition("=")
            self.variables[name] = value
        elif app == "export":
            export_variable(self.variables, *arg.partition("=")[::2])
        elif app == "answer":
            self._answer()
        elif app == "hangup":
            if self.bridged.is_set():       # cut during a queue call's bridge (what the old server did)
                self.billsec = 0
            self._hangup(arg or "NORMAL_CLEARING", app_h)
            return
        elif app == "respond":
            # ASSUMPTION (no recording refuses with respond): mod_sofia's RESPOND
            # handler with a code > 399 on an unanswered channel stores the code
            # and hangs the channel up with sofia_glue_sip_cause_to_freeswitch(code)
            # (mod_sofia.c, SWITCH_MESSAGE_INDICATE_RESPOND); the events are those
            # of a hangup.  The code is kept in ``responded`` for the tests.
            self.responded = int(arg.split()[0])
            self._hangup(SIP_TO_CAUSE.get(self.responded, "NORMAL_UNSPECIFIED"), app_h)
            return
        elif app == "bridge":
            self._bridge(app_h)
            return
        elif app == "callcenter":
            self._callcenter(app_h)
            return
        elif app == "rxfax":
            self._rxfax(app_h)
            return
        elif app == "txfax":
            self._txfax(app_h)
            return
        elif app == "pre_answer":
            # ASSUMPTION (no recording pre-answers): the application completes at once; the
            # CHANNEL_PROGRESS_MEDIA it causes is not emitted (nothing here reads it)
            pass
        elif app == "play_and_get_digits":
            var = arg.split()[7]
            self.variables[var] = self.dtmf.pop(0) if self.dtmf else ""
        self._emit("CHANNEL_EXECUTE_COMPLETE", **app_h, **{"variable_current_application": app})

    def _rxfax(self, app_h: dict[str, str]) -> None:
        """mod_spandsp's rxfax as recording 09 shows it: EXECUTE_COMPLETE with
        the result in ``variable_fax_*`` (the recording's, with ``fax`` —
        (pages, success) — applied), then the caller hangs up.  ASSUMPTION:
        the received document is written to the application's argument
        (mod_spandsp does; the recording cannot show a file), here
        ``fax_document`` (bytes), when set."""
        path = app_h["Application-Data"]
        if self.fax_document:
            with open(path, "wb") as f:
                f.write(self.fax_document)
        pages, success = self.fax
        self._fax_ended(app_h, pages, pages, success)

    def _txfax(self, app_h: dict[str, str]) -> None:
        """mod_spandsp's txfax.  ASSUMPTION (no recording sends over the
        socket; recording 09's sender ran txfax outside it): its
        EXECUTE_COMPLETE carries the same ``variable_fax_*`` as rxfax's in
        recording 09 — mod_spandsp's phase E handler sets them for both
        directions, ``fax_document_transferred_pages`` being the pages sent
        (mod_spandsp_fax.c) — then the far end hangs up.  The pages are
        those of the TIFF at the argument (read with Pillow); a file that
        cannot be read fails as mod_spandsp fails it, with nothing sent.
        ``fax`` (pages, success): success False cuts the transmission."""
        from PIL import Image
        path = app_h["Application-Data"]
        try:
            with Image.open(path) as im:
                total = im.n_frames
        except OSError:
            total = 0
        self.sent_document = total
        ok = total > 0 and self.fax[1]
        self._fax_ended(app_h, total if ok else 0, total, ok)

    def _fax_ended(self, app_h: dict[str, str], transferred: int, total: int, ok: bool) -> None:
        """rxfax / txfax completes with recording 09's ``variable_fax_*``
        (these pages and outcome applied), then the far end hangs up."""
        result = {**FAX_RESULT, "variable_fax_filename": app_h["Application-Data"],
                  "variable_fax_document_transferred_pages": str(transferred),
                  "variable_fax_document_total_pages": str(total),
                  "variable_fax_success": "1" if ok else "0",
                  "variable_fax_result_code": "0" if ok else "49",
                  "variable_fax_result_text": "OK" if ok else "The call dropped prematurely"}
        self._emit("CHANNEL_EXECUTE_COMPLETE", **app_h, **result,
                   variable_current_application=app_h["Application"])
        self.billsec = 20
        self._hangup("NORMAL_CLEARING", {})

    def _answer(self) -> None:
        if not self.answered:
            self.answered = True
            self._emit("CHANNEL_ANSWER")

    def _bridge(self, app_h: dict[str, str]) -> None:
        """``bridge`` as recording 08 shows it.  Each leg of the dial string
        (``,``: together) does what ``phones`` says for its user / number —
        else what ``callee`` says: ``("absent",)`` (not registered),
        ``("ring",)`` (rings, never answers), ``("answer", talk_seconds)``,
        ``("busy",)``, ``("noanswer",)``.  All absent: EXECUTE_COMPLETE at
        once with USER_NOT_REGISTERED; ringing only: CHANNEL_PROGRESS, then
        after ``leg_timeout`` EXECUTE_COMPLETE with NO_ANSWER, the ringing
        legs cancelled; one answers: it wins, the others are cancelled,
        CHANNEL_ANSWER, CHANNEL_BRIDGE, the talk, the caller's hangup
        (CHANNEL_HANGUP, notice, CHANNEL_UNBRIDGE, EXECUTE_COMPLETE …)."""
        dial = app_h.get("Application-Data", "")
        common = bracket_vars(dial)
        legs = split_legs(dial[dial.index("}") + 1:] if dial.startswith("{") else dial)
        self.rang.append([name for name, _ in legs])
        if self.while_ringing is not None:
            self.while_ringing(len(self.rang) - 1)
            if self._listener_gone():        # the server went away while the legs rang
                self.cancelled += [name for name, _ in legs]
                return
        outcome = [(name, own, self.phones.get(name, self.callee)) for name, own in legs]
        winner = next(((n, own, what) for n, own, what in outcome if what[0] == "answer"), None)
        ringing = [n for n, _, what in outcome if what[0] in ("ring", "noanswer") or (winner and what[0] == "answer")]
        if winner is None:
            if any(what[0] == "busy" for _, _, what in outcome):
                disposition, dialstatus = "USER_BUSY", "BUSY"
            elif ringing:
                self._progress()
                disposition, dialstatus = "NO_ANSWER", "NOANSWER"
                self.cancelled += ringing
            else:
                disposition, dialstatus = "USER_NOT_REGISTERED", "USER_NOT_REGISTERED"
            # channel variables: every later event of the channel carries them (recording 08)
            self.variables["originate_disposition"] = disposition
            self.later = {**self.later, "variable_originate_disposition": disposition,
                          "variable_DIALSTATUS": dialstatus}
            self._emit("CHANNEL_EXECUTE_COMPLETE", **app_h, variable_current_application=app_h["Application"])
            return
        name, own, what = winner
        self.cancelled += [n for n in ringing if n != name]
        talk = int(what[1])
        answered_before = self.answered
        if not answered_before:
            self._progress()
        self._answer()
        limit = None
        # the B-leg's own [execute_on_answer=…] / {…} of the dial string; the A-leg's
        # fires only with its own answer (FreeSWITCH's execute_on_answer semantics)
        on_answer = own.get("execute_on_answer") or common.get("execute_on_answer") or (
            "" if answered_before else self.variables.get("execute_on_answer", ""))
        if on_answer.startswith("sched_hangup +"):
            limit = int(on_answer.split()[1][1:])
            self.executed.append(("sched_hangup", on_answer.split(" ", 1)[1]))
        # recording 08: Other-Leg-Destination-Number is the answering user.  ASSUMPTION (no
        # recording bridges a gateway leg): for sofia/gateway/<gw>/<number> it is the number
        other = {**REAL_OTHER_LEG, "Other-Leg-Destination-Number": name, "Other-Leg-Unique-ID": new_uuid()}
        self._emit("CHANNEL_BRIDGE", **other)
        # from the bridge on, the channel's events carry the other leg and the bridge's success
        # (recordings 08, 10b: so does the bridge's EXECUTE_COMPLETE)
        self.later = {**self.later, **other, "variable_originate_disposition": "SUCCESS",
                      "variable_DIALSTATUS": "SUCCESS"}
        self.bridged_us = self.clock_us
        if limit is not None and limit < talk:
            self.billsec = limit
            self._hangup(on_answer.split()[2], app_h, unbridge=True)
        else:
            self.billsec = talk
            self._hangup("NORMAL_CLEARING", app_h, unbridge=True)

    def _callcenter(self, app_h: dict[str, str]) -> None:
        """mod_callcenter as recording 06 shows it: when an agent answers, the
        ``callcenter`` application COMPLETES (``cc_cause=answered``) and the
        socket application with it; mod_callcenter then bridges the caller to
        the agent (``uuid_bridge``, CHANNEL_BRIDGE) and the call goes on —
        here until ``hangup_caller()`` (``hold``) or at once — while the
        client's commands are still read (a ``hangup`` now cuts the call)."""
        if self.queue[0] == "wait":
            # the caller waits (music on hold) until it hangs up: hangup_caller();
            # then the callcenter application completes after the hangup
            self._waiting_app = app_h
            self.queued.set()
            return
        if self.queue[0] != "answered":
            # ASSUMPTION (no recording of a timed-out member): mod_callcenter
            # sets cc_cause=cancel and cc_cancel_reason on the member channel
            # (mod_callcenter.c, cc_member_cancel_reason2str) and the
            # application completes with the caller still up.
            self._emit("CHANNEL_EXECUTE_COMPLETE", **app_h, variable_cc_cause="cancel",
                       variable_cc_cancel_reason=self.queue[0].upper(), variable_current_application="callcenter")
            return
        agent = new_uuid()
        bridge = {"Other-Leg-Unique-ID": agent, "variable_cc_side": "member", "variable_cc_agent_uuid": agent,
                  "variable_uuid_bridge": agent, "variable_bridge_uuid": agent, "variable_cc_cause": "answered",
                  "variable_bridge_channel": "sofia/internal/agent@127.0.0.1"}
        self._emit("CHANNEL_EXECUTE_COMPLETE", **app_h, **bridge, **{"Application-Response": "_none_"})
        self._emit("CHANNEL_UNPARK", **bridge)
        self._emit("CHANNEL_EXECUTE_COMPLETE", Application="socket", **{"Application-Data": "127.0.0.1 async full"},
                   **bridge)
        self.unparked = True
        for state in ("CS_HIBERNATE", "CS_RESET", "CS_SOFT_EXECUTE"):
            self._emit("CHANNEL_STATE", **{"Channel-State": state}, **bridge)
        self._emit("CHANNEL_EXECUTE", Application="uuid_bridge", **{"Application-Data": agent}, **bridge)
        self._emit("CHANNEL_BRIDGE", **bridge)
        self.talk = int(self.queue[1])
        self.bridged.set()
        if not self.hold:
            self.hangup_caller()

    def hangup_caller(self) -> None:
        """The queue caller hangs up after talking to the agent (recording 06:
        CHANNEL_HANGUP, linger notice, CHANNEL_UNBRIDGE, states, HANGUP_COMPLETE)."""
        with self._lock:
            if not self.hangup_cause:
                self.billsec = self.talk
        waiting = getattr(self, "_waiting_app", None)
        self._hangup("NORMAL_CLEARING", waiting or {}, unbridge=waiting is None)

    def _hangup(self, cause: str, app_h: dict[str, str], unbridge: bool = False) -> None:
        with self._lock:
            if self.hangup_cause:          # the caller and the client hung up at once: one hangup
                return
            self.hangup_cause = cause
        self._emit("CHANNEL_HANGUP")
        self._send(b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: " + self.uuid.encode()
                   + b"\nContent-Disposition: linger\nChannel-Name: "
                   + self.channel_headers().get("Channel-Name", "").encode()
                   + b"\nLinger-Time: -1\nContent-Length: 0\n\n")
        if unbridge:
            self._emit("CHANNEL_UNBRIDGE")
        if app_h:
            self._emit("CHANNEL_EXECUTE_COMPLETE", **app_h)
        if not self.unparked:
            # the park loop of the socket application ends, and the application with it (05, 08, 10b)
            self.unparked = True
            self._emit("CHANNEL_UNPARK")
            self._emit("CHANNEL_EXECUTE_COMPLETE", **SOCKET_APP)
        self._emit("CHANNEL_STATE", **{"Channel-State": "CS_HANGUP"})
        self._emit("CHANNEL_STATE", **{"Channel-State": "CS_REPORTING"})
        times = {}
        if self.bridged_us:     # recording 06: bridge and hangup times (µs) in HANGUP_COMPLETE
            times = {"Caller-Channel-Bridged-Time": str(self.bridged_us),
                     "Caller-Channel-Hangup-Time": str(self.bridged_us + self.billsec * 1_000_000 + 250_000)}
        self._emit("CHANNEL_HANGUP_COMPLETE", variable_billsec=str(self.billsec),
                   variable_duration=str(self.billsec), **{"Hangup-Cause": cause}, **times)


def split_legs(dial: str) -> list[tuple[str, dict[str, str]]]:
    """The legs of a dial string (``,`` outside quotes and brackets), each as
    (its user or number, its own ``[k=v]`` variables)."""
    legs, cur, depth, quoted = [], "", 0, False
    for ch in dial + ",":
        if ch == "'":
            quoted = not quoted
        elif ch in "[{" and not quoted:
            depth += 1
        elif ch in "]}" and not quoted:
            depth -= 1
        if ch == "," and not quoted and depth == 0:
            legs.append(cur)
            cur = ""
        else:
            cur += ch
    out = []
    for leg in legs:
        own = bracket_vars("{" + leg[1:leg.index("]")] + "}") if leg.startswith("[") else {}
        target = leg[leg.index("]") + 1:] if leg.startswith("[") else leg
        name = target.split("/")[-1].split("@")[0] if target.startswith(("user/", "sofia/")) else target
        out.append((name, own))
    return out


def bracket_vars(dial: str) -> dict[str, str]:
    """The ``{k=v,k='v w'}`` channel variables in front of a dial string."""
    if not dial.startswith("{") or "}" not in dial:
        return {}
    out, key, val, quoted, cur = {}, "", "", False, ""
    for ch in dial[1:dial.index("}")] + ",":
        if ch == "'":
            quoted = not quoted
        elif ch == "," and not quoted:
            key, _, val = cur.partition("=")
            out[key] = val
            cur = ""
        else:
            cur += ch
    return out


# ASSUMPTION (the recordings hold no refusal by respond): the hangup cause
# sofia_glue_sip_cause_to_freeswitch() gives the codes of policy.REFUSALS.
SIP_TO_CAUSE = {402: "CALL_REJECTED", 403: "CALL_REJECTED", 433: "CALL_REJECTED", 484: "INVALID_NUMBER_FORMAT",
                486: "USER_BUSY", 503: "NORMAL_TEMPORARY_FAILURE", 603: "CALL_REJECTED"}


# ------------------------------------------------------------- inbound live

NOTICE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
DISCONNECT = b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n" % len(NOTICE) + NOTICE


def _inbound_templates() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for f in fs_frames("03-call-events-plain"):
        if f.content_type == "text/event-plain":
            ev = P.parse_event(f)
            out.setdefault(ev.name, ev.headers)
    return out


_IN_EVENTS = _inbound_templates()


def reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def api_response(body: str) -> bytes:
    data = body.encode()
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data


def event_frame(headers: dict[str, str], body: str = "") -> bytes:
    data = P.encode_plain(headers, body)
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(data) + data


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.authed = False
        self.events: set[str] = set()
        self.lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)

    def wants(self, name: str, subclass: str = "") -> bool:
        return self.authed and ("ALL" in self.events or name in self.events or (subclass in self.events))


class FreeSwitchEmulator:
    """FreeSWITCH's inbound Event Socket on loopback: ``auth``, ``api``,
    ``bgapi`` (+ BACKGROUND_JOB), ``event plain …`` subscriptions, events
    framed as real FreeSWITCH frames them, ``exit`` and disconnect notices.
    It keeps channels and registrations so ``show … as json`` and
    ``uuid_*`` answer from its state; ``stop()``/``start()`` is an engine
    restart on the same port (``keep_channels`` decides whether the calls
    survive it, as they do when only the socket dropped)."""

    def __init__(self, password: str = "ClueCon", switchname: str = "vm") -> None:
        self.password = password
        self.switchname = switchname
        self.port = 0
        self.channels: dict[str, dict[str, Any]] = {}
        self.registrations: list[dict[str, str]] = []
        self.flushed: list[str] = []
        self.originated: list[str] = []      # the arguments of the originates placed
        self.commands: list[str] = []
        self.clients: list[_Client] = []
        self.api_results: dict[str, str] = {}     # command prefix -> canned body (e.g. callcenter_config)
        self.sofia = SofiaGateways()              # sofia's gateways (recording 11): SofiaGateways(conf_dir)
        self._srv: socket.socket | None = None
        self._seq = itertools.count(1000)
        self._closed = threading.Condition()
        self.sessions_closed = 0

    def wait_sessions_closed(self, n: int, timeout: float = 20) -> None:
        """Wait until ``n`` client sessions have ended here (their last
        command recorded): what a test asserts on ``commands`` waits on this."""
        with self._closed:
            if not self._closed.wait_for(lambda: self.sessions_closed >= n, timeout):
                raise AssertionError(f"{self.sessions_closed} of {n} sessions closed: {self.commands[-5:]}")

    # ------------------------------------------------------------ lifecycle
    def start(self) -> int:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(16)
        self.port = srv.getsockname()[1]
        self._srv = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()
        return self.port

    def stop(self, keep_channels: bool = False) -> None:
        if self._srv is not None:
            try:
                self._srv.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._srv.close()
            self._srv = None
        for c in list(self.clients):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.sock.close()
        self.clients.clear()
        if not keep_channels:
            self.channels.clear()
            self.registrations.clear()

    def subscribed(self) -> int:
        return sum(1 for c in self.clients if c.authed and c.events)

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                sock, _ = srv.accept()
            except OSError:
                return
            c = _Client(sock)
            self.clients.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: _Client) -> None:
        buf = bytearray()
        try:
            c.send(b"Content-Type: auth/request\n\n")
            while True:
                raw = read_command(c.sock, buf)
                if raw is None:
                    return
                line, headers = parse_command(raw)
                self.commands.append(line)
                if not self._handle(c, line, headers):
                    return
        except OSError:
            return
        finally:
            c.sock.close()
            if c in self.clients:
                self.clients.remove(c)
            with self._closed:
                self.sessions_closed += 1
                self._closed.notify_all()

    def _handle(self, c: _Client, line: str, headers: dict[str, str]) -> bool:
        cmd, _, arg = line.partition(" ")
        if not c.authed:
            if cmd == "auth" and arg == self.password:
                c.authed = True
                c.send(reply("+OK accepted"))
                return True
            c.send(reply("-ERR invalid") + DISCONNECT)
            return False
        if cmd == "event":
            fmt, _, names = arg.partition(" ")
            c.events.update(names.split())
            c.send(reply(f"+OK event listener enabled {fmt}"))
        elif cmd == "api":
            c.send(api_response(self.api(arg)))
        elif cmd == "bgapi":
            job = headers.get("job-uuid") or new_uuid()
            c.send(reply(f"+OK Job-UUID: {job}")[:-1] + f"Job-UUID: {job}\n\n".encode())
            result = self.api(arg)
            self.emit({"Event-Name": "BACKGROUND_JOB", "Job-UUID": job, "Job-Command": arg.partition(" ")[0],
                       "Job-Command-Arg": arg.partition(" ")[2]}, body=result)
        elif cmd == "exit":
            c.send(reply("+OK bye") + DISCONNECT)
            return False
        else:
            c.send(reply("-ERR command not found"))
        return True

    # ------------------------------------------------------------------ api
    def api(self, arg: str) -> str:
        for prefix, body in self.api_results.items():
            if arg.startswith(prefix):
                return body
        words = arg.split()
        if arg == "show channels as json":
            rows = [ch["row"] for ch in self.channels.values()]
            return json.dumps({"row_count": len(rows), "rows": rows} if rows else {"row_count": 0}) + "\n"
        if arg == "show registrations as json":
            rows = self.registrations
            return json.dumps({"row_count": len(rows), "rows": rows} if rows else {"row_count": 0}) + "\n"
        if words[:1] == ["uuid_getvar"] and len(words) == 3:
            ch = self.channels.get(words[1])
            return "-ERR No such channel!\n" if ch is None else ch["vars"].get(words[2], "_undef_")
        if words[:1] == ["uuid_kill"] and len(words) >= 2:
            if words[1] not in self.channels:
                return "-ERR No such channel!\n"
            self.hangup(words[1], cause=words[2] if len(words) > 2 else "NORMAL_CLEARING")
            return "+OK\n"
        if words[:1] == ["uuid_transfer"]:
            return "+OK\n" if len(words) >= 3 and words[1] in self.channels else "-ERR No such channel!\n"
        if arg == "reloadxml":
            return "+OK [Success]\n"
        if words[:1] == ["sofia"] and (gateways := self.sofia.api(words)) is not None:
            return gateways
        if arg.startswith("sofia profile") and arg.endswith("rescan"):
            return "Reload XML [Success]\n+OK scan complete\n"
        if words[:1] == ["callcenter_config"]:
            return "+OK\n"
        if words[:2] == ["sofia", "profile"] and words[3:4] == ["flush_inbound_reg"] and len(words) == 5:
            # ASSUMPTION (not recorded; reply text from mod_sofia.c): flush_inbound_reg
            # <call-id | user@realm> drops the matching bindings (sofia_reg_expire_call_id)
            who = words[4]
            self.registrations = [r for r in self.registrations
                                  if who not in (r["token"], f"{r['reg_user']}@{r['realm']}")]
            self.flushed.append(who)
            return "+OK flushing all registrations matching specified call_id\n"
        if words[:1] == ["originate"]:
            # ASSUMPTION (recording 02 shows only failing originates, "-ERR <cause>"):
            # a placed call answers "+OK <uuid>" (mod_commands.c originate_function); the
            # call itself is played by the test (play_loopback_originate)
            self.originated.append(arg)
            return f"+OK {new_uuid()}\n"
        if arg == "status":
            return "UP 0 years, 0 days\nFreeSWITCH (Version 1.10 emulator) is ready\n"
        return f"-ERR {words[0] if words else ''} Command not found!\n"

    # --------------------------------------------------------------- events
    def send_raw(self, data: bytes) -> None:
        for c in list(self.clients):
            if c.authed and c.events:
                try:
                    c.send(data)
                except OSError:
                    pass

    def emit(self, headers: dict[str, str], body: str = "") -> None:
        name = headers["Event-Name"]
        base = dict(_IN_EVENTS.get(name, _IN_EVENTS["CHANNEL_STATE"])) if name.startswith("CHANNEL") else \
            {k: v for k, v in _IN_EVENTS["CHANNEL_STATE"].items() if not k.startswith(("Channel-", "Caller-",
                                                                                        "variable_", "Unique-ID",
                                                                                        "Call-", "Answer-",
                                                                                        "Presence-"))}
        if not name.startswith("CHANNEL"):
            base = {k: v for k, v in base.items() if k.startswith(("Core-UUID", "FreeSWITCH-", "Event-"))}
        base = {k: v for k, v in base.items() if not k.startswith("variable_dustel")}
        base.update({"FreeSWITCH-Switchname": self.switchname, "Event-Sequence": str(next(self._seq))})
        base.update(headers)
        frame = event_frame(base, body)
        subclass = headers.get("Event-Subclass", "")
        for c in list(self.clients):
            if c.wants(name, subclass):
                try:
                    c.send(frame)
                except OSError:
                    pass

    def _channel_headers(self, uuid: str) -> dict[str, str]:
        ch = self.channels[uuid]
        h = {"Unique-ID": uuid, "Caller-Unique-ID": uuid, "Channel-Call-UUID": uuid,
             "Call-Direction": ch["direction"], "Caller-Direction": ch["direction"],
             "Caller-Caller-ID-Number": ch["caller"], "Caller-Destination-Number": ch["callee"],
             "Channel-Name": ch["row"]["name"], "Caller-Channel-Created-Time": str(ch["created_us"]),
             "Caller-Channel-Answered-Time": str(ch["answered_us"])}
        h.update({f"variable_{k}": v for k, v in ch["vars"].items()})
        return h

    def call(self, caller: str, callee: str, variables: dict[str, str], direction: str = "inbound",
             uuid: str | None = None, t0: float | None = None) -> str:
        uuid = uuid or new_uuid()
        created = int((t0 if t0 is not None else time.time()) * 1e6)
        self.channels[uuid] = {"direction": direction, "caller": caller, "callee": callee, "vars": dict(variables),
                               "created_us": created, "answered_us": 0,
                               "row": {"uuid": uuid, "direction": direction, "created_epoch": str(created // 10**6),
                                       "name": f"sofia/internal/{caller}", "state": "CS_EXECUTE",
                                       "cid_num": caller, "dest": callee, "callstate": "RINGING"}}
        self.emit({"Event-Name": "CHANNEL_CREATE", **self._channel_headers(uuid)})
        return uuid

    def answer(self, uuid: str, at: float | None = None) -> None:
        ch = self.channels[uuid]
        ch["answered_us"] = int((at if at is not None else time.time()) * 1e6)
        ch["row"]["callstate"] = "ACTIVE"
        self.emit({"Event-Name": "CHANNEL_ANSWER", **self._channel_headers(uuid)})

    def hangup(self, uuid: str, cause: str = "NORMAL_CLEARING", at: float | None = None) -> dict[str, str]:
        h = self._channel_headers(uuid)
        ch = self.channels.pop(uuid)
        end = int((at if at is not None else time.time()) * 1e6)
        billsec = (end - ch["answered_us"]) // 10**6 if ch["answered_us"] else 0
        h.update({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Hangup-Cause": cause,
                  "Caller-Channel-Hangup-Time": str(end), "variable_billsec": str(billsec),
                  "variable_duration": str((end - ch["created_us"]) // 10**6)})
        self.emit(h)
        return h

    def register(self, user: str, realm: str, ip: str = "192.0.2.20", expires_in: int = 300,
                 transport: str = "udp") -> str:
        """A phone registers; returns its Call-ID.
        ASSUMPTION (no recording holds a registration): the headers are those
        sofia_reg.c adds to sofia::register (profile-name, from-user,
        from-host, contact, call-id, expires, network-ip, network-port,
        username, realm, user-agent); ``contact`` is the phone's Contact,
        which names its transport (``;transport=tls``) as a TLS phone's does;
        ``show registrations`` gives the Call-ID as ``token``."""
        call_id = f"reg-{user}-{len(self.registrations)}-{int(time.time() * 1000)}"
        contact = f"sip:{user}@{ip}:5060" + ("" if transport == "udp" else f";transport={transport}")
        self.registrations.append({"reg_user": user, "realm": realm, "token": call_id, "url": contact,
                                   "expires": str(int(time.time()) + expires_in), "network_ip": ip,
                                   "network_port": "5060", "network_proto": transport, "agent": "emulated phone"})
        self.emit({"Event-Name": "CUSTOM", "Event-Subclass": "sofia::register", "profile-name": "internal",
                   "from-user": user, "from-host": realm, "username": user, "realm": realm, "contact": contact,
                   "call-id": call_id, "expires": str(expires_in), "network-ip": ip, "network-port": "5060",
                   "user-agent": "emulated phone"})
        return call_id

    def unregister(self, user: str) -> None:
        self.registrations = [r for r in self.registrations if r["reg_user"] != user]
        self.emit({"Event-Name": "CUSTOM", "Event-Subclass": "sofia::unregister", "profile-name": "internal",
                   "from-user": user, "username": user, "contact": ""})


# ------------------------------------------------- dialplan and loopback calls

def dialplan_variables(xml_text: str, context: str, destination: str,
                       channel: dict[str, str] | None = None) -> dict[str, str] | None:
    """What a rendered XML dialplan sets before it hands a call to the socket:
    the first extension of ``context`` whose ``destination_number`` condition
    matches, its ``set``/``export`` actions applied in order (``$1``… from
    the match) up to ``socket``, on top of the ``channel``'s variables (an
    ``export`` appends to its ``export_vars``).  None: nothing matches or
    hands it over."""
    import re
    import xml.etree.ElementTree as ET
    for ctx in ET.fromstring(xml_text).iter("context"):
        if ctx.get("name") != context:
            continue
        for ext in ctx.iter("extension"):
            cond = ext.find("condition")
            if cond is None or cond.get("field") != "destination_number":
                continue
            m = re.search(cond.get("expression", ""), destination)
            if m is None:
                continue
            out: dict[str, str] = dict(channel or {})
            groups = (m.group(0), *m.groups())
            for act in cond.iter("action"):
                app = act.get("application")
                data = re.sub(r"\$(\d)", lambda g, gs=groups: gs[int(g.group(1))] or "", act.get("data", ""))
                data = expand_known(data, out)
                if app in ("set", "export"):
                    name, _, value = data.partition("=")
                    if app == "export":
                        export_variable(out, name, value)
                    else:
                        out[name] = value
                elif app == "socket":
                    return out
            return None
    return None


def play_loopback_originate(arg: str, port: int, dialplan: str, far_end: tuple = ("answer", 40),
                            fax_ok: bool = True) -> tuple[OutboundCall, OutboundCall | None]:
    """FreeSWITCH placing ``originate {vars}loopback/<dest>/<context> <exten>
    XML <context2>`` through the rendered dialplan ``dialplan``:

    - the B leg (``loopback/<dest>-b``) carries the ``{…}`` variables —
      mod_loopback copies the originate's variable event onto it
      (``__loopback_vars__``, mod_loopback.c; recording 03 shows the A leg
      with them) — runs ``<context>`` and reaches the socket; the far end of
      its bridge does ``far_end`` (see ``OutboundCall._bridge``);
    - when that bridge answered, the A leg is answered (mod_loopback answers
      A with B) and transferred by originate to ``<exten>`` in
      ``<context2>`` (mod_commands.c), and reaches the socket in turn.

    ASSUMPTION: the legs are played one after the other (the B leg's
    bridge, talk and hangup, then the A leg) where FreeSWITCH runs them at
    once; the server under test serves each connection on its own.
    Returns (B leg, A leg or None when the B leg never answered)."""
    import re
    words = fs_split_blank(arg)        # mod_commands.c originate_function: the api's own word split
    m = re.fullmatch(r"\{(.*)\}loopback/([^/ ]+)/(\S+)", words[1]) if len(words) == 5 and words[0] == "originate" \
        and words[3] == "XML" else None
    if m is None:
        raise AssertionError(f"not a loopback originate to an extension: {arg!r}")
    variables = fs_bracket_vars(m.group(1))
    dest, context, exten, context2 = m.group(2), m.group(3), words[2], words[4]
    caller = variables.get("origination_caller_id_number", "")
    b_vars = dialplan_variables(dialplan, context, dest, variables)
    if b_vars is None:
        raise AssertionError(f"{dest} in context {context} reaches no socket")
    b = OutboundCall(port, dest, {**b_vars, "loopback_leg": "B"}, caller=caller, callee=far_end)
    b.start()
    b.wait()
    if not b.bridged_us:
        return b, None
    a_vars = dialplan_variables(dialplan, context2, exten, variables)
    if a_vars is None:
        raise AssertionError(f"{exten} in context {context2} reaches no socket")
    a = OutboundCall(port, exten, {**a_vars, "loopback_leg": "A"}, caller=caller, answered=True,
                     fax=(0, fax_ok))
    a.start()
    a.wait()
    return b, a


# --------------------------------------- sofia's gateways: a changed gateway and its reload (recording 11)

GATEWAY_RULE = "=" * 97 + "\n"


class SofiaGateways:
    """mod_sofia's gateways as recording 11 shows them: loaded from the
    rendered ``sip_profiles/*.xml`` of ``conf_dir`` at start; ``sofia profile
    P rescan`` reads the XML again (``switch_xml_reload`` first: its ``Reload
    XML [Success]`` line) and adds the gateways it does not hold, but keeps one
    it holds even when its definition changed (``Ignoring duplicate gateway``);
    ``sofia profile P killgw G`` marks G deleted, and until the next rescan
    ``sofia status gateway G`` is ``Invalid Gateway!``; a gateway made anew
    has uptime 0 and its call counters reset.

    ASSUMPTION (read in sofia.c / sofia_reg.c / mod_sofia.c at cc93a68, not
    recorded): the rescan that follows a killgw at once loads the new
    gateway too — parse_gateways skips only a *live* duplicate, and
    sofia_reg_add_gateway takes a deleted one out of the hash (the
    recording waited 2 s between them); ``killgw`` of an unknown gateway
    answers ``-ERR no such gateway.``.  Without ``conf_dir`` there are no
    gateways and a rescan only answers as before."""

    def __init__(self, conf_dir: Path | None = None, clock: Any = time.monotonic) -> None:
        self.conf_dir, self.clock = conf_dir, clock
        self.gateways: dict[str, dict[str, Any]] = {}     # live: name -> profile, params, contact, since, calls_out
        self.commands: list[str] = []
        for profile, gateways in self._xml().items():
            for name, params in gateways.items():
                self._add(profile, name, params)

    def _xml(self) -> dict[str, dict[str, dict[str, Any]]]:
        """profile -> gateway -> its params (with the profile's contact and context)."""
        import xml.etree.ElementTree as ET
        out: dict[str, dict[str, dict[str, Any]]] = {}
        if self.conf_dir is None:
            return out
        for path in sorted((self.conf_dir / "sip_profiles").glob("*.xml")):
            root = ET.fromstring(path.read_bytes())
            settings = {p.get("name"): p.get("value") for p in root.iterfind("settings/param")}
            ip = settings.get("sip-ip", "")
            contact = f"{ip if ip and not ip.startswith('$') else '127.0.0.1'}:{settings.get('sip-port', '5060')}"
            out[root.get("name", path.stem)] = {
                g.get("name", ""): {"params": {p.get("name"): p.get("value") for p in g.iter("param")},
                                    "contact": contact, "context": settings.get("context", "default")}
                for g in root.iter("gateway")}
        return out

    def _add(self, profile: str, name: str, params: dict[str, Any]) -> None:
        self.gateways[name] = {"profile": profile, **params, "since": self.clock(), "calls_out": 0}

    def api(self, words: list[str]) -> str | None:
        """The reply to a ``sofia …`` api command this class knows, else None."""
        if words[1:3] == ["status", "gateway"] and len(words) == 4:
            self.commands.append(" ".join(words))
            gw = self.gateways.get(words[3])
            return "Invalid Gateway!\n" if gw is None else self.status(words[3], gw)
        if words[1:2] == ["profile"] and words[3:4] == ["killgw"] and len(words) == 5:
            self.commands.append(" ".join(words))
            gw = self.gateways.get(words[4])
            if gw is None or gw["profile"] != words[2]:
                return "-ERR no such gateway.\n"
            del self.gateways[words[4]]
            return "+OK gateway marked for deletion.\n"
        if words[1:2] == ["profile"] and words[3:] == ["rescan"]:
            self.commands.append(" ".join(words))
            for name, params in self._xml().get(words[2], {}).items():
                if name not in self.gateways:         # a live one is a duplicate: ignored, kept as it was
                    self._add(words[2], name, params)
            return "Reload XML [Success]\n+OK scan complete\n"
        return None

    def status(self, name: str, gw: dict[str, Any]) -> str:
        """``sofia status gateway <name>`` (mod_sofia.c), as recorded."""
        proxy = gw["params"].get("proxy", "")
        user = gw["params"].get("username", "FreeSWITCH")
        rows = [("Name    ", name), ("Profile ", gw["profile"]), ("Scheme  ", "Digest"), ("Realm   ", proxy),
                ("Username", user), ("Password", "no"), ("From    ", f"<sip:{user}@{proxy}>"),
                ("Contact ", f"<sip:gw+{name}@{gw['contact']};transport=udp;gw={name}>"), ("Exten   ", user),
                ("To      ", f"sip:{user}@{proxy}"), ("Proxy   ", f"sip:{proxy}"), ("Context ", gw["context"]),
                ("Expires ", "3600"), ("Freq    ", "3600"), ("Ping    ", "0"), ("PingFreq", "0"),
                ("PingTime", "0.00"), ("PingState", "0/0/0"), ("State   ", "NOREG"), ("Status  ", "UP"),
                ("Uptime  ", f"{int(self.clock() - gw['since'])}s"), ("CallsIN ", "0"),
                ("CallsOUT", str(gw["calls_out"])), ("FailedCallsIN", "0"), ("FailedCallsOUT", "0")]
        return GATEWAY_RULE + "".join(f"{k}\t{v}\n" for k, v in rows) + GATEWAY_RULE


# ------------------------ FreeSWITCH's variable syntax, exports to a bridged leg, the codecs that leg offers

def fs_split(text: str, delim: str) -> list[str]:
    """switch_separate_string with a delimiter that is no space (switch_utils.c,
    separate_string_char_delim + cleanup_separated_string): ``'…'`` protects
    delimiters and is dropped, ``\\`` escapes the next character."""
    parts, cur, quoted, i = [], "", False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur += ch + text[i + 1]
            i += 2
            continue
        if ch == "'" and (quoted or "'" in text[i + 1:]):
            quoted = not quoted
        elif ch == delim and not quoted:
            parts.append(cur)
            cur = ""
            i += 1
            continue
        cur += ch
        i += 1
    parts.append(cur)
    return [_fs_cleanup(p, delim) for p in parts]


def fs_split_blank(text: str) -> list[str]:
    """switch_separate_string(…, ' ') (separate_string_blank_delim): words;
    quotes protect spaces and are dropped."""
    words, cur, quoted = [], "", False
    for ch in text:
        if ch == "'":
            quoted = not quoted
        elif ch == " " and not quoted:
            if cur:
                words.append(cur)
            cur = ""
            continue
        cur += ch
    if cur:
        words.append(cur)
    return [_fs_cleanup(w, "") for w in words]


def _fs_cleanup(text: str, delim: str) -> str:
    out, quoted, i = "", False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and (text[i + 1] in "'\"\\" or (delim and text[i + 1] == delim)):
            out += text[i + 1]
            i += 2
            continue
        if ch == "'" and (quoted or "'" in text[i + 1:]):
            quoted = not quoted
        else:
            out += ch
        i += 1
    return out.strip(" ")


def fs_bracket_vars(inner: str) -> dict[str, str]:
    """The variables of a ``{…}`` (switch_event_create_brackets): separated by
    ``,`` unless the list starts ``^^<c>`` (then by ``c``)."""
    delim = ","
    if inner.startswith("^^") and len(inner) > 2:
        delim, inner = inner[2], inner[3:]
    out = {}
    for item in fs_split(inner, delim):
        name, sep, value = item.partition("=")
        if sep:
            out[name] = value
    return out


_NOLOCAL = ("nolocal:", "_nolocal_")


def export_variable(variables: dict[str, str], name: str, value: str) -> None:
    """The ``export`` application (switch_channel_export_variable_var_check):
    set (``nolocal:``/``_nolocal_`` names too, under that name) and append the
    name to ``export_vars``."""
    variables[name] = value
    variables["export_vars"] = f"{variables['export_vars']},{name}" if variables.get("export_vars") else name


def expand_known(data: str, variables: dict[str, str]) -> str:
    """``${name}`` of the channel's variables expanded, as FreeSWITCH expands
    an action's data when it runs it; a variable the emulated channel does
    not hold (the directory's, say) is left as written."""
    import re
    return re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: variables.get(m.group(1), m.group(0)), data)


def bridged_leg_variables(caller: dict[str, str]) -> dict[str, str]:
    """What the leg a ``bridge`` creates inherits of the caller's variables:
    those named in its ``export_vars``, a ``nolocal:``/``_nolocal_`` prefix
    dropped (switch_channel_process_export) — plus ``export_vars`` itself."""
    out = {"export_vars": caller["export_vars"]} if caller.get("export_vars") else {}
    for name in fs_split(caller.get("export_vars", ""), ","):
        if name in caller:
            out[next((name[len(p):] for p in _NOLOCAL if name.startswith(p)), name)] = caller[name]
    return out


def offered_codecs(leg: dict[str, str], originator_codec: str) -> str:
    """The codecs a new SIP leg offers (switch_core_media_prepare_codecs):
    its ``absolute_codec_string``, else — not yet answered, no
    ``media_mix_inbound_outbound_codecs`` — the caller's codec alone."""
    return leg.get("absolute_codec_string") or originator_codec


LOOPBACK_CODEC = "L16@8000h@20i"     # mod_loopback.c tech_init: a loopback leg's codec (no loopback_initial_codec)


# ---------------------------------- the socket application when the policy server fails (mod_event_socket.c)

@dataclass
class SocketOutcome:
    """How a call through a rendered extension ended: ``executed`` (app,
    data) in order; ``sip_code`` the SIP response a SIP caller got (0: none,
    e.g. a loopback leg); ``cause`` the hangup cause; ``stuck`` the channel
    stayed parked with nobody controlling it; ``bridged`` the dial string it
    went to."""
    executed: list[tuple[str, str]] = field(default_factory=list)
    sip_code: int = 0
    cause: str = ""
    stuck: bool = False
    bridged: str = ""
    connected: bool = False


def extension_actions(xml_text: str, context: str, destination: str,
                      variables: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The actions mod_dialplan_xml's hunt gives a call to ``destination`` in
    ``context`` (read in mod_dialplan_xml.c parse_exten / dialplan_hunt at
    cc93a68, no recording shows a hunt): each extension in order; its
    conditions in order, ``field`` either ``destination_number`` (the
    default) or a ``${var}`` expanded from ``variables`` ('' when unset);
    every condition passing adds its actions (``$1``… from the last
    ``destination_number`` match) and ends the hunt unless the extension
    says ``continue="true"``; a condition failing adds its anti-actions,
    ends that extension and the hunt goes on."""
    import re
    import xml.etree.ElementTree as ET
    variables = variables or {}
    out: list[tuple[str, str]] = []
    for ctx in ET.fromstring(xml_text).iter("context"):
        if ctx.get("name") != context:
            continue
        for ext in ctx.iter("extension"):
            acts: list[tuple[str, str]] = []
            groups: tuple[str, ...] = ()
            passed = True
            for cond in ext.findall("condition"):
                field = cond.get("field", "destination_number")
                value = destination if field == "destination_number" else \
                    re.sub(r"\$\{([^}]+)\}", lambda g: variables.get(g.group(1), ""), field)
                m = re.search(cond.get("expression", ""), value)
                if m is None:
                    acts += [(a.get("application", ""), a.get("data", "")) for a in cond.iter("anti-action")]
                    passed = False
                    break
                if field == "destination_number":
                    groups = (m.group(0), *m.groups())
                acts += [(a.get("application", ""), re.sub(r"\$(\d)", lambda g, gs=groups: gs[int(g.group(1))]
                                                           or "", a.get("data", ""))) for a in cond.iter("action")]
            out += acts
            if passed and ext.get("continue") != "true":
                return out
        return out
    return out


def run_extension(xml_text: str, context: str, destination: str, sip: bool = True,
                  connect_timeout: float = 25.0, channel: dict[str, str] | None = None) -> SocketOutcome:
    """FreeSWITCH running one extension of a rendered dialplan whose policy
    server fails: ``set``/``export`` keep variables; ``socket host:port`` tries
    a real TCP connect — refused: the application returns and the dialplan
    goes on; accepted but no ``connect`` within ``connect_timeout`` (25 s in
    FreeSWITCH: ``read_packet(listener, &ievent, 25)`` in listener_run): the
    listener ends, and the channel, parked by the async socket, goes on in
    the dialplan only with ``socket_resume`` true — otherwise it stays
    parked for good; the server sending ``connect`` is a working server
    (``connected``, nothing more is played here).  ``respond`` ends a SIP
    channel (``sip``) with that code and is nothing to a loopback leg;
    ``hangup`` ends it with the cause (a SIP caller gets mod_sofia's code
    for it); ``bridge`` goes to the dial string; the actions running out
    hang up NORMAL_CLEARING (480).

    ASSUMPTION (no recording shows a failed socket; read in
    mod_event_socket.c socket_function / listener_run, mod_sofia.c
    hangup_cause_to_sip and switch_core_state_machine.c at cc93a68)."""
    out = SocketOutcome()
    variables: dict[str, str] = dict(channel or {})
    for app, data in extension_actions(xml_text, context, destination, variables):
        out.executed.append((app, data))
        if app == "export":
            export_variable(variables, *data.partition("=")[::2])
        elif app == "set":
            name, _, value = data.partition("=")
            variables[name] = value
        elif app == "socket":
            # ASSUMPTION (no recording names several hosts; mod_event_socket.c socket_function's hosts
            # loop, FS-7603, FreeSWITCH >= 1.10): ``a:p|b:p`` — each host in turn until one connects
            sock = None
            for hostport in data.split()[0].split("|"):
                host, _, port = hostport.rpartition(":")
                try:
                    sock = socket.create_connection((host, int(port)), timeout=connect_timeout)
                    break
                except OSError:
                    continue
            if sock is None:
                continue                                   # "Socket Error!": the application returns
            with sock:
                sock.settimeout(connect_timeout)
                try:
                    first = sock.recv(64)
                except OSError:
                    first = b""
            if first.startswith(b"connect"):
                out.connected = True
                return out
            if variables.get("socket_resume") != "true":
                out.stuck = True                           # switch_ivr_park with nobody in control
                return out
        elif app == "respond" and sip:
            out.sip_code, out.cause = int(data.split()[0]), SIP_TO_CAUSE.get(int(data.split()[0]), "")
            return out
        elif app == "hangup":
            out.cause = data or "NORMAL_CLEARING"
            out.sip_code = CAUSE_TO_SIP.get(out.cause, 480) if sip else 0
            return out
        elif app == "bridge":
            out.bridged = data
            return out
    out.cause, out.sip_code = "NORMAL_CLEARING", 480 if sip else 0
    return out


# mod_sofia.c hangup_cause_to_sip (the causes the refusal table names; anything else 480)
CAUSE_TO_SIP = {"UNALLOCATED_NUMBER": 404, "USER_BUSY": 486, "NO_USER_RESPONSE": 408, "NO_ANSWER": 480,
                "CALL_REJECTED": 603, "INVALID_NUMBER_FORMAT": 484, "NORMAL_CIRCUIT_CONGESTION": 503,
                "NORMAL_TEMPORARY_FAILURE": 503, "SWITCH_CONGESTION": 503, "EXCHANGE_ROUTING_ERROR": 483,
                "RECOVERY_ON_TIMER_EXPIRE": 504, "NORMAL_CLEARING": 480}


# ------------------------------------------------- the dialplan fetch (mod_xml_curl, recordings 12 and 12b)
#
# Different format: one JSON line per whole HTTP message ({"dir": "fs->server" | "server->fs"}).  What
# FreeSWITCH does with a call when mod_xml_curl binds the dialplan section (mod_xml_curl.c,
# switch_xml.c switch_xml_locate, mod_dialplan_xml.c dialplan_hunt, switch_core_state_machine.c at cc93a68):
# one POST per routing of a channel, a new connection each (a curl handle per fetch, cleaned up after it),
# CURLOPT_TIMEOUT the binding's ``timeout`` for the whole exchange; a 200 whose document has a ``dialplan``
# section is the call's dialplan (the static one is not consulted); ``not found``, another status, no
# answer in time or a refused connection: the static dialplan.

def http_messages(name: str) -> list[tuple[str, bytes]]:
    """[(dir, whole HTTP message)] of a dialplan fetch recording."""
    path = TRANSCRIPTS / (name if name.endswith(".jsonl") else name + ".jsonl")
    return [(d["dir"], d["data"].encode()) for d in map(json.loads, path.read_text().splitlines()) if d]


def _recorded_fetch() -> tuple[list[str], list[tuple[str, str]]]:
    """Recording 12's first request: its header lines and its form fields, in order."""
    head, _, body = http_messages("12-dialplan-fetch")[0][1].partition(b"\r\n\r\n")
    from urllib.parse import unquote
    fields = [(k, unquote(v)) for k, _, v in (f.partition("=") for f in body.decode().split("&"))]
    return head.decode().split("\r\n"), fields


FETCH_HEAD, FETCH_FIELDS = _recorded_fetch()


def fetch_request(host: str, port: int, path: str, values: dict[str, str], variables: dict[str, str]) -> bytes:
    """The POST FreeSWITCH sends for a call: recording 12's request line and
    headers (Host and Content-Length this one's) and its 158 form fields in
    their order, with this call's ``values`` where it has them, and its
    channel ``variables`` as ``variable_*`` fields: a recorded one takes the
    call's value, the others come after the recorded ``variable_*`` fields
    (where FreeSWITCH writes the channel's variables, before ``Hunt-*``);
    values encoded with ``switch_url_encode``.  ASSUMPTION (recording 12 is a
    carrier call): a phone's call brings the same fields, its own values
    (its context is the directory's ``user_context``) and its variables —
    the authenticated ``user_name``, the directory user's and domain's."""
    fields = [(k, values.get(k, v)) for k, v in FETCH_FIELDS]
    last_var = max(i for i, (k, _) in enumerate(fields) if k.startswith("variable_"))
    extra = [(f"variable_{k}", v) for k, v in variables.items() if f"variable_{k}" not in dict(fields)]
    fields = [(k, variables.get(k[9:], v) if k.startswith("variable_") else v) for k, v in fields]
    fields = fields[:last_var + 1] + extra + fields[last_var + 1:]
    body = "&".join(f"{k}={P.url_encode(v)}" for k, v in fields).encode()
    head = [f"POST {path} HTTP/1.1" if line.startswith("POST ") else f"Host: {host}:{port}"
            if line.startswith("Host: ") else f"Content-Length: {len(body)}" if line.startswith("Content-Length: ")
            else line for line in FETCH_HEAD]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Binding:
    """The ``dialplan`` binding of a rendered ``xml_curl.conf.xml``."""
    host: str
    port: int
    path: str
    timeout: float


def xml_curl_binding(conf: str) -> Binding | None:
    """mod_xml_curl's do_config: the binding whose ``gateway-url`` binds the
    dialplan section (None: no such binding — the module does not fetch)."""
    import xml.etree.ElementTree as ET
    from urllib.parse import urlsplit
    for b in ET.fromstring(conf).iter("binding"):
        params = {p.get("name"): p for p in b.iter("param")}
        url = params.get("gateway-url")
        if url is None or "dialplan" not in (url.get("bindings") or "").split("|"):
            continue
        u = urlsplit(url.get("value", ""))
        timeout = params.get("timeout")
        return Binding(u.hostname or "", u.port or 80, u.path, float(timeout.get("value")) if timeout is not None
                       else 0.0)
    return None


def post(binding: Binding, request: bytes) -> tuple[int, bytes] | None:
    """One fetch: connect, send, read the whole answer, close, all within the
    binding's timeout (CURLOPT_TIMEOUT).  None: refused, reset or timed out
    (curl's error; FreeSWITCH logs ``Received HTTP error 0``, recording 12b)."""
    import http.client
    deadline = time.monotonic() + (binding.timeout or 300)
    try:
        sock = socket.create_connection((binding.host, binding.port), timeout=binding.timeout or 300)
    except OSError:
        return None
    try:
        sock.sendall(request)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        body = resp.read()
        return (resp.status, body) if time.monotonic() <= deadline else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        sock.close()


NOT_FOUND = "not found"


def fetched_actions(doc: bytes, context: str, destination: str) -> list[tuple[str, str]] | str | None:
    """What FreeSWITCH makes of a 200's document for a call routed in
    ``context``: ``NOT_FOUND`` (a ``result`` section ``not found``, or no
    ``dialplan`` section: switch_xml_locate goes on to the static
    dialplan), the actions of the first extension whose condition matches
    (``$1``… substituted), or None — the document is the dialplan but has
    neither the context (nor ``global``) nor a matching extension: no route
    (mod_dialplan_xml does not go on to the static dialplan).  ASSUMPTION
    (recording 12 shows a matching extension and ``not found`` only; read in
    switch_xml.c switch_xml_locate and mod_dialplan_xml.c at cc93a68): the
    other cases, and a document that does not parse taken as no answer."""
    import re
    import xml.etree.ElementTree as ET
    try:
        root = ET.fromstring(doc)
    except ET.ParseError:
        return NOT_FOUND             # switch_xml_locate: a parse error is logged, the next binding / static
    sections = {s.get("name"): s for s in root.iter("section")}
    result = sections.get("result")
    if result is not None and any(r.get("status", "").lower() == "not found" for r in result.iter("result")):
        return NOT_FOUND
    section = sections.get("dialplan")
    if section is None:
        return NOT_FOUND
    ctx = next((c for c in section.iter("context") if c.get("name") == context), None) or \
        next((c for c in section.iter("context") if c.get("name") == "global"), None)
    if ctx is None:
        return None
    for ext in ctx.iter("extension"):
        cond = ext.find("condition")
        if cond is None:
            continue
        m = re.search(cond.get("expression", ""), destination) if cond.get("field") == "destination_number" else None
        if m is None:
            continue
        groups = (m.group(0), *m.groups())
        return [(a.get("application", ""), re.sub(r"\$(\d)", lambda g, gs=groups: gs[int(g.group(1))] or "",
                                                  a.get("data", ""))) for a in cond.iter("action")]
    return None


def profile_dialplans(profile_xml: str) -> list[tuple[str, str]]:
    """A sofia profile's ``dialplan`` param as switch_core_standard_on_routing
    reads it: ``,``-separated dialplans, each ``name[:arg]`` (the XML
    dialplan's arg is an alternative file); mod_sofia's default ``XML``."""
    import xml.etree.ElementTree as ET
    value = next((p.get("value", "") for p in ET.fromstring(profile_xml).iter("param")
                  if p.get("name") == "dialplan"), "XML")
    return [(d.partition(":")[0], d.partition(":")[2]) for d in value.split(",") if d]


@dataclass
class FetchedCall:
    """FreeSWITCH routing one call with the rendered configuration and
    ``mod_xml_curl`` bound to the dialplan (``fs_decision = fetch``): the
    profile's dialplans in order — an ``XML:<file>`` one hunts that file
    alone (``alt_files``: its path -> text; its context, else ``global``;
    no fetch), ``XML`` fetches (``binding``) and falls back to the
    ``static`` dialplan text on ``not found``, a failed or a timed-out
    fetch — then runs the extension found on an emulated channel
    (``OutboundCall`` with no socket: the same applications, events and
    outcomes as on the outbound socket).  A static extension that hands the
    call to the socket connects to ``esl_port`` (an ``OutboundCall`` there);
    without one the socket fails and the dialplan goes on (``run_extension``).
    With ``engine`` (an inbound Event Socket emulator the controller
    follows), the channel's CHANNEL_CREATE, ANSWER and HANGUP_COMPLETE go
    there, with its variables at that time and its billsec.

    ``via``: emergency | fetch | static | socket | none; ``answer``:
    document | not found | failed (refused, error status, timeout) | none.

    ASSUMPTION (no recording routes with a dialplan list; read in
    switch_core_state_machine.c switch_core_standard_on_routing and
    mod_dialplan_xml.c dialplan_hunt at cc93a68): the profile's dialplans
    are hunted in order until one finds an extension; ``XML:<file>`` parses
    that file alone (no binding is consulted) and hunts the channel's
    context, else ``global``, and finding nothing goes on to the next."""

    destination: str
    variables: dict[str, str]
    context: str
    binding: Binding | None
    static: str
    dialplans: list = field(default_factory=lambda: [("XML", "")])
    alt_files: dict = field(default_factory=dict)
    caller: str = "000387100001"
    callee: tuple = ("answer", 30)
    phones: dict = field(default_factory=dict)
    uuid: str = field(default_factory=new_uuid)
    switchname: str = "fs1"
    source_ip: str = "192.0.2.10"
    esl_port: int | None = None
    engine: Any = None
    while_ringing: Any = None
    via: str = "none"
    answer: str = "none"
    request: bytes = b""
    fetch_seconds: float = 0.0
    channel: Any = None
    socket: Any = None

    def run(self) -> FetchedCall:
        t0 = time.time()
        if self.engine is not None:
            self.engine.call(self.caller, self.destination, dict(self.variables), uuid=self.uuid, t0=t0)
        actions = self._route()
        if actions is None:
            return self._end(t0)
        ch = OutboundCall(0, self.destination, dict(self.variables), caller=self.caller, callee=self.callee,
                          uuid=self.uuid, switchname=self.switchname, phones=self.phones,
                          while_ringing=self.while_ringing)
        ch.run_dialplan(actions)
        self.channel = ch
        return self._end(t0)

    def _route(self) -> list[tuple[str, str]] | None:
        for name, arg in self.dialplans:
            if name != "XML":
                continue
            if arg:                              # an alternative file: parsed alone, no binding consulted
                acts = fetched_actions(self.alt_files[arg].encode(), self.context, self.destination)
                if isinstance(acts, list):
                    self.via = "emergency"
                    return acts
                continue
            if self.binding is not None:
                self.request = self.fetch_request(self.binding)
                started = time.monotonic()
                got = post(self.binding, self.request)
                self.fetch_seconds = time.monotonic() - started
                if got is not None and got[0] == 200:
                    acts = fetched_actions(got[1], self.context, self.destination)
                    if acts != NOT_FOUND:
                        self.via, self.answer = "fetch", "document"
                        return acts if isinstance(acts, list) else None
                    self.answer = NOT_FOUND
                else:
                    self.answer = "failed"
            return self._static()
        return None

    def fetch_request(self, binding: Binding) -> bytes:
        """The POST mod_xml_curl sends for this call (``fetch_request``)."""
        values = {"hostname": self.switchname, "FreeSWITCH-Switchname": self.switchname}
        for k in ("Unique-ID", "Channel-Call-UUID", "Caller-Unique-ID", "Hunt-Unique-ID"):
            values[k] = self.uuid
        for k in ("Caller-Destination-Number", "Hunt-Destination-Number"):
            values[k] = self.destination
        for k in ("Caller-Caller-ID-Number", "Caller-ANI", "Caller-Username", "Hunt-Caller-ID-Number",
                  "Hunt-ANI", "Hunt-Username"):
            values[k] = self.caller
        values.update({"Caller-Context": self.context, "Hunt-Context": self.context,
                       "Caller-Network-Addr": self.source_ip, "Hunt-Network-Addr": self.source_ip})
        variables = {"uuid": self.uuid, "call_uuid": self.uuid, "sip_network_ip": self.source_ip,
                     "sip_from_user": self.caller, "sip_to_user": self.destination,
                     "sip_req_user": self.destination, **self.variables}
        return fetch_request(binding.host, binding.port, binding.path, values, variables)

    def _static(self) -> list[tuple[str, str]] | None:
        """The static dialplan: its extension's actions up to the socket run
        here; the socket is an OutboundCall to ``esl_port`` with the
        variables set so far, or fails (and the dialplan goes on)."""
        acts = extension_actions(self.static, self.context, self.destination)
        if not acts:
            return None
        if not any(app == "socket" for app, _ in acts):
            self.via = "static"
            return acts
        i = [app for app, _ in acts].index("socket")
        if self.esl_port is None:
            self.via = "static"
            return acts[:i] + acts[i + 1:]         # the socket fails at once (nothing listens): goes on
        self.via = "socket"
        variables = dialplan_variables(self.static, self.context, self.destination, self.variables) or {}
        self.socket = OutboundCall(self.esl_port, self.destination, variables, caller=self.caller,
                                   callee=self.callee, uuid=self.uuid, switchname=self.switchname, phones=self.phones,
                                   after_socket=acts[i + 1:], while_ringing=self.while_ringing)
        self.socket.start()
        self.socket.wait()
        self.channel = self.socket
        return None

    def _end(self, t0: float) -> FetchedCall:
        ch = self.channel
        if self.engine is not None:
            if ch is not None:
                self.engine.channels[self.uuid]["vars"].update(ch.variables)
                if ch.bridged_us:
                    self.engine.answer(self.uuid, at=t0 + 1)
            talk = ch.billsec if ch is not None and ch.bridged_us else 0
            self.engine.hangup(self.uuid, cause=(ch.hangup_cause if ch is not None else "") or "NO_ROUTE_DESTINATION",
                               at=t0 + 1 + talk if talk else None)
        return self
