"""greenswitch sessions with dustel's frame reader (gevent processes only).

greenswitch's ``ESLEvent`` URL-decodes a whole event before splitting it
into lines, so an encoded line break in any value (a caller name, a SIP
header copied into a variable) would forge a header.  ``DustelReader``
replaces greenswitch's reading loop with ``protocol.FrameReader`` and keeps
everything else of greenswitch: commands and their replies, handlers,
expected events, linger and disconnect handling."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import gevent.event
from greenswitch.esl import InboundESL, NotConnectedError, OutboundSession, OutboundSessionHasGoneAway

from . import esl as P

log = logging.getLogger("dustel.esl")


class ESLMessage:
    """What greenswitch's handlers expect of an event: ``headers`` and ``data``."""

    def __init__(self, headers: dict[str, str], data: Any = None) -> None:
        self.headers = headers
        self.data = data


class DustelReader:
    sock: Any
    _run: bool
    connected: bool
    _commands_sent: list[Any]
    _esl_event_queue: Any
    _auth_request_event: Any
    _lingering: bool
    malformed = 0
    closed_level = logging.INFO     # a lost connection to FreeSWITCH is news

    def receive_events(self) -> None:
        reader = P.FrameReader()
        while self._run:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._gone("socket closed")
                break
            for frame in reader.feed(data):
                try:
                    self._dispatch(frame)
                except P.MalformedFrame as exc:
                    self.malformed += 1
                    log.warning("skipped a malformed frame: %s", exc)

    def _gone(self, why: str) -> None:
        self.connected = False
        self._run = False
        log.log(self.closed_level, "event socket closed: %s", why)
        for pending in self._commands_sent:
            pending.set_exception(OutboundSessionHasGoneAway(why))
        self._commands_sent.clear()
        self._auth_request_event.set()
        self._esl_event_queue.put(ESLMessage({"Content-Type": "text/disconnect-notice",
                                              "Content-Disposition": "disconnect"}))

    def _dispatch(self, frame: P.Frame) -> None:
        if frame.error:
            raise P.MalformedFrame(frame.error)
        ct = frame.content_type
        if ct == "auth/request":
            self._auth_request_event.set()
        elif ct in ("command/reply", "api/response"):
            if not self._commands_sent:
                raise P.MalformedFrame(f"{ct} without a command waiting for it")
            data = frame.reply_text if ct == "command/reply" else frame.body.decode("utf-8", "replace")
            self._commands_sent.pop(0).set(ESLMessage(frame.headers, data))
        elif ct == "text/disconnect-notice":
            if frame.headers.get("Content-Disposition") == "linger":
                self._lingering = True
            else:
                self.connected = False
            self._esl_event_queue.put(ESLMessage(frame.headers))
        elif ct == "text/rude-rejection":
            self.connected = False
            self._auth_request_event.set()
        elif ct in P.EVENT_TYPES:
            ev = P.parse_event(frame)
            # greenswitch's handlers only call headers.get(): the event's lazy lookups serve that
            self._esl_event_queue.put(ESLMessage(ev, ev))  # type: ignore[arg-type]
        else:
            raise P.MalformedFrame(f"unexpected Content-Type {ct!r}")

    def send(self, data: str) -> Any:
        if "\n\n" in data or "\r" in data:
            raise ValueError("command: a value must not contain a line break")
        return super().send(data)  # type: ignore[misc]


class DustelSession(DustelReader, OutboundSession):
    """An outbound-socket call (FreeSWITCH connected to us)."""

    # every call's socket closes once the call is over, and its hangup line
    # says so: a third log line per call at INFO only cost CPU
    closed_level = logging.DEBUG

    def send_all(self, commands: Sequence[bytes]) -> list[Any]:
        """Several whole commands (each ending in its blank line) in one
        write, their replies awaited in order.  FreeSWITCH reads a socket's
        commands one after another (mod_event_socket's ``read_packet`` takes
        a byte at a time) and answers each in turn: one round trip instead
        of one per command."""
        if not self.connected:
            raise NotConnectedError()
        waits = [gevent.event.AsyncResult() for _ in commands]
        self._commands_sent.extend(waits)      # before the write: the replies may come at once
        self.sock.sendall(b"".join(commands))
        return [w.get() for w in waits]

    def execute_all(self, actions: Sequence[tuple[str, str]]) -> list[Any]:
        """Queue the applications on the channel, in order, with one write:
        in async mode FreeSWITCH answers a ``sendmsg execute`` as soon as the
        application is queued, so this is one ``call_command`` after
        another without waiting for each reply.  Every argument is checked
        (``esl.sendmsg``: no line breaks).  Like ``call_command``, refuses
        once the caller has hung up (OutboundSessionHasGoneAway)."""
        if self._lingering:
            raise OutboundSessionHasGoneAway()
        return self.send_all([P.sendmsg(app, arg or None) for app, arg in actions])


class DustelInbound(DustelReader, InboundESL):
    """A connection to FreeSWITCH's event socket (we connected to it)."""
