"""The FreeSWITCH Event Socket protocol, pure: bytes in, frames and events out,
and the commands going the other way.  No sockets, no gevent, no asyncio:
the controller (greenswitch, gevent), the outbound-socket server and the
tests all use the same code.

Framing (mod_event_socket.c): a frame is a block of ``Name: value`` lines
ended by an empty line; when the block has ``Content-Length: N`` the next N
bytes are its body.  Event bodies (``text/event-plain``) are themselves
header blocks whose values are URL-encoded (``switch_url_encode``), possibly
followed by their own ``Content-Length`` body.  Headers are split first and
each value decoded alone, so an encoded line break inside a value (a caller
name, a SIP header) can never forge a header — greenswitch's ``ESLEvent``
decodes the whole block before splitting, which is why it is not used for
parsing here.
"""
from __future__ import annotations

import json
import re
from binascii import a2b_qp
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

MAX_HEADER_BYTES = 256 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024

EVENT_TYPES = ("text/event-plain", "text/event-json")


class MalformedFrame(ValueError):
    """A frame or event that cannot be read; the reader skips it and goes on."""


@dataclass(slots=True)
class Frame:
    headers: Mapping[str, str]          # a dict, or a large block's lazy Event (FrameReader)
    body: bytes = b""
    error: str | None = None        # set on a frame the reader had to skip

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        return self.headers.get("Reply-Text", "")

    @property
    def ok(self) -> bool:
        if self.content_type == "api/response":
            return not self.body.startswith(b"-ERR")
        return self.reply_text.startswith("+OK")


class Event(Mapping[str, str]):
    """An event.  A plain event keeps its raw header block and decodes a
    header only when asked (``get``/``var``): the controller reads a dozen
    of an event's ~80 headers.  It is a read-only mapping of its headers
    (iterating it decodes them all).  A lookup is anchored at a line start and
    ends at the line break, on the raw bytes where FreeSWITCH has encoded
    every line break inside values, so it finds exactly what the full parse
    (``headers``) finds.  ``headers`` builds the whole dict once."""

    __slots__ = ("_raw", "_headers", "body", "format", "raw_length")

    def __init__(self, headers: dict[str, str] | None = None, body: str = "", format: str = "plain",
                 raw_length: int = 0, raw: bytes | None = None) -> None:
        self._headers = headers
        self._raw = raw
        self.body = body
        self.format = format
        self.raw_length = raw_length

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            assert self._raw is not None
            self._headers = _fast_headers(self._raw) or parse_headers_slow(self._raw)
        return self._headers

    def get(self, key: str, default: str = "") -> str:
        if self._headers is not None:
            return self._headers.get(key, default)
        raw = self._raw
        assert raw is not None
        k = key.encode()
        i = raw.rfind(b"\n" + k + b": ")       # the last one, as in the dict
        if i >= 0:
            start = i + len(k) + 3
        elif raw.startswith(k + b": "):
            start = len(k) + 2
        else:
            return default
        end = raw.find(b"\n", start)
        return _decode_raw(raw[start:end] if end >= 0 else raw[start:])

    def __getitem__(self, key: str) -> str:
        value = self.get(key, "\x00")
        if value == "\x00":
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, "\x00") != "\x00"

    def __iter__(self) -> Iterator[str]:
        return iter(self.headers)

    def __len__(self) -> int:
        return len(self.headers)

    @property
    def name(self) -> str:
        n = self.get("Event-Name")
        return self.get("Event-Subclass", n) if n == "CUSTOM" else n

    def var(self, name: str, default: str = "") -> str:
        return self.get("variable_" + name, default)

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {len(self.headers)} headers)"


def _decode_raw(value: bytes) -> str:
    """One raw header value: percent-decoded, strict UTF-8."""
    try:
        if b"%" in value:
            value = a2b_qp(value.replace(b"=", b"=3D").replace(b"%", b"="))
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFrame(f"bad value encoding: {exc}") from None


def parse_headers(block: str) -> dict[str, str]:
    """``Name: value`` lines, each value URL-decoded on its own."""
    out: dict[str, str] = {}
    for line in block.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            if line.endswith(":"):          # "Name:" with an empty value
                key, value = line[:-1], ""
            else:
                raise MalformedFrame(f"header line without ': ' ({line[:40]!r})")
        out[key] = _decode_value(value)
    return out


# A header block longer than this — the channel data FreeSWITCH sends after
# ``connect`` (169 headers, 6.4 KB: recording 10b) — is kept raw and decoded
# header by header when read (an Event): the outbound-socket server reads
# about 20 of them.  Shorter blocks (replies, an event's own frame head)
# are decoded whole at once.
LAZY_BLOCK_BYTES = 1024


class FrameReader:
    """Turns any chunking of the byte stream into the same frames.

    ``feed`` returns the frames completed by the new bytes.  A frame that
    cannot be read comes back with ``error`` set instead of stopping the
    stream: a bad ``Content-Length`` drops only its header block (the body
    that follows is then read as a frame of unknown type and skipped too).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._head: dict[str, str] | None = None
        self._need = 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while True:
            if self._head is not None:
                if len(self._buf) < self._need:
                    break
                body = bytes(self._buf[:self._need])
                del self._buf[:self._need]
                out.append(Frame(self._head, body))
                self._head = None
                continue
            # FreeSWITCH never sends blank lines between frames, but a peer might
            while self._buf[:1] == b"\n":
                del self._buf[:1]
            end = self._buf.find(b"\n\n")
            if end < 0:
                if len(self._buf) > MAX_HEADER_BYTES:
                    out.append(Frame({}, bytes(self._buf[:200]), error="header block too long"))
                    self._buf.clear()
                break
            block = bytes(self._buf[:end])
            del self._buf[:end + 2]
            headers: Mapping[str, str]
            try:
                if len(block) > LAZY_BLOCK_BYTES and block.isascii() and b"\r" not in block:
                    headers = Event(raw=block)
                    length = headers.get("Content-Length") or None
                else:
                    headers = parse_headers(block.decode("utf-8"))
                    length = headers.get("Content-Length")
            except (UnicodeDecodeError, MalformedFrame) as exc:
                out.append(Frame({}, block[:200], error=f"bad header block: {exc}"))
                continue
            if length is None:
                out.append(Frame(headers))
                continue
            if not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY_BYTES:
                out.append(Frame(headers, error=f"bad Content-Length {length[:20]!r}"))
                continue
            self._head, self._need = headers, int(length)
        return out


def _decode_value(value: str) -> str:
    """One header value, percent-decoded, strict UTF-8."""
    if "%" not in value:
        return value
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedFrame(f"bad URL encoding: {exc}") from None


def parse_headers_slow(head: bytes) -> dict[str, str]:
    """The plain definition: split lines, split each at ': ', decode each
    value alone.  ``parse_plain`` must always agree with it (property test)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFrame(f"event is not UTF-8: {exc}") from None
    headers: dict[str, str] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(": ")
        if not sep:
            raise MalformedFrame(f"event header line without ': ' ({line[:40]!r})")
        headers[key] = _decode_value(value)
    return headers


_KEYS: dict[bytes, list[str]] = {}     # header-name blocks seen before -> their names


def _fast_headers(head: bytes) -> dict[str, str] | None:
    """``parse_headers_slow`` in a few C-level passes, or None when the block
    is not shaped the way FreeSWITCH writes it (then the slow path decides).

    FreeSWITCH encodes ``:``, space, ``%``, ``=``-free-of-meaning and line
    breaks in every value (SWITCH_URL_UNSAFE), so the raw block splits exactly
    on ``\\n`` and ``": "``.  The values are joined and decoded together by
    binascii's quoted-printable decoder (``%`` -> ``=``, literal ``=`` escaped
    first) with encoded line breaks held back as NUL, which FreeSWITCH's C
    strings can never contain; so no decoded value can split into headers.
    """
    parts = head.replace(b"\n", b": ").split(b": ")
    if len(parts) != 2 * (head.count(b"\n") + 1) or b"\x00" in head or b"\r" in head:
        return None
    kb = b"\n".join(parts[0::2])
    keys = _KEYS.get(kb)
    if keys is None:
        if len(_KEYS) > 4096:
            _KEYS.clear()
        try:
            keys = _KEYS[kb] = kb.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            return None
    vb = b"\n".join(parts[1::2])
    held = False
    if b"%" in vb:
        if b"%\n" in vb or vb.endswith(b"%"):
            return None        # "=\n" is a soft line break to the QP decoder
        if b"%0" in vb:
            vb = vb.replace(b"%0A", b"\x00").replace(b"%0a", b"\x00")
            held = True
        if b"=" in vb:
            vb = vb.replace(b"=", b"=3D")
        vb = a2b_qp(vb.replace(b"%", b"="))
    try:
        text = vb.decode("utf-8")
    except UnicodeDecodeError:
        return None
    values = text.split("\n")
    if len(values) != len(keys):
        return None
    if held and "\x00" in text:
        values = [v.replace("\x00", "\n") for v in values]
    return dict(zip(keys, values, strict=True))


def parse_plain(body: bytes) -> Event:
    """A ``text/event-plain`` body: header lines (decoded when read), then an
    optional ``Content-Length`` body of the event itself."""
    end = body.find(b"\n\n")
    if end < 0:
        head, rest = body.rstrip(b"\n"), b""
    else:
        head, rest = body[:end], body[end + 2:]
    ev = Event(raw=head, raw_length=len(body))
    if not head.isascii():     # FreeSWITCH encodes every non-ASCII byte: check such a block whole, now
        ev.headers             # noqa: B018  (raises MalformedFrame)
    if not ev.get("Event-Name"):
        raise MalformedFrame("event without Event-Name")
    if rest:
        n = ev.get("Content-Length")
        if n:
            if not (n.isascii() and n.isdigit()):
                raise MalformedFrame(f"bad event Content-Length {n[:20]!r}")
            try:
                ev.body = rest[:int(n)].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedFrame(f"event body is not UTF-8: {exc}") from None
    return ev


def parse_json(body: bytes) -> Event:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedFrame(f"bad JSON event: {exc}") from None
    if not isinstance(obj, dict) or "Event-Name" not in obj:
        raise MalformedFrame("JSON event without Event-Name")
    event_body = obj.pop("_body", "")
    headers = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
    return Event(headers, event_body if isinstance(event_body, str) else "", "json", len(body))


def parse_event(frame: Frame) -> Event:
    if frame.error:
        raise MalformedFrame(frame.error)
    ct = frame.content_type
    if ct == "text/event-plain":
        return parse_plain(frame.body)
    if ct == "text/event-json":
        return parse_json(frame.body)
    raise MalformedFrame(f"not an event: Content-Type {ct!r}")


# ------------------------------------------------------------------ commands

_TOKEN = re.compile(r"[A-Za-z0-9_.@+:*#/=\-]+")


def token(value: object, field_name: str = "value") -> str:
    """One word of an ESL command built from data (a uuid, an agent, a queue,
    a contact): no whitespace, quote, comma, brace, ``&``, ``$`` or line
    break, so it can add neither an argument, a channel variable nor a
    second command."""
    s = str(value)
    if not s or len(s) > 512 or not _TOKEN.fullmatch(s):
        raise ValueError(f"{field_name}: must be 1-512 characters of letters, digits and _ . @ + : * # / = - "
                         f"(got {s[:40]!r})")
    return s


def header_value(value: object, field_name: str = "value") -> str:
    """A header value of a command (``sendmsg`` argument, ``set`` value): free
    text, but never a line break that would start another header."""
    s = str(value)
    if any(c in s for c in "\r\n\x00"):
        raise ValueError(f"{field_name}: must not contain a line break")
    return s


def command(line: str) -> bytes:
    """A whole command frame.  ``line`` is built from constants and ``token``s."""
    if "\n" in line or "\r" in line:
        raise ValueError("command: must be one line")
    return line.encode() + b"\n\n"


def api(*words: str) -> bytes:
    return command("api " + " ".join(words))


def bgapi(*words: str, job_uuid: str | None = None) -> bytes:
    line = "bgapi " + " ".join(words)
    if job_uuid:
        return (line + "\nJob-UUID: " + token(job_uuid, "job uuid")).encode() + b"\n\n"
    return command(line)


def sendmsg(app: str, arg: str | None = None, *, uuid: str | None = None, lock: bool = False) -> bytes:
    lines = ["sendmsg " + token(uuid, "uuid") if uuid else "sendmsg", "call-command: execute",
             "execute-app-name: " + token(app, "application")]
    if arg is not None:
        lines.append("execute-app-arg: " + header_value(arg, "application argument"))
    if lock:
        lines.append("event-lock: true")
    return ("\n".join(lines)).encode() + b"\n\n"


# switch_utils.c: SWITCH_URL_UNSAFE, plus every byte below ' ' or above '~'
_UNSAFE = frozenset(b"\r\n #%&+:;<=>?@[\\]^`{|}\"")


# the same rule on characters: anything outside ' '..'~' (every non-ASCII
# character is bytes above '~') or one of the unsafe ones
_NEEDS_ENCODING = re.compile(r'[^\x20-\x7e]|[\r\n #%&+:;<=>?@\[\\\]^`{|}"]')


def url_encode(value: str) -> str:
    """``switch_url_encode`` as FreeSWITCH applies it to event header values.
    Most values need nothing: one regex search finds that (the byte-by-byte
    test cost the benchmark's FreeSWITCH clients most of their time)."""
    if not _NEEDS_ENCODING.search(value):
        return value
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b not in _UNSAFE else f"%{b:02X}" for b in value.encode())


def header_lines(headers: Mapping[str, str], quote: Callable[[str], str] = url_encode) -> dict[str, str]:
    """name -> the header's line as an event carries it (``Name: value``,
    the value URL-encoded); Content-Length is the body's, never copied."""
    return {k: f"{k}: {quote(v)}" for k, v in headers.items() if k != "Content-Length"}


def plain_block(lines: Iterable[str], body: str = "") -> bytes:
    """An event from its header lines (``header_lines``) and its body."""
    out = list(lines)
    if body:
        out.append(f"Content-Length: {len(body.encode())}")
    return ("\n".join(out) + "\n\n" + body).encode()


def encode_plain(headers: dict[str, str], body: str = "", quote: Callable[[str], str] = url_encode) -> bytes:
    """An event as FreeSWITCH serialises it (``switch_event_serialize``): used
    by the emulator and the benchmark, and to check parse(encode(x)) == x.
    ``quote``: ``url_encode`` or a memo of it (the benchmark's clients send
    the same values in every call, and keep a call's lines: ``header_lines``)."""
    return plain_block(header_lines(headers, quote).values(), body)
