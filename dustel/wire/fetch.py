"""FreeSWITCH's dialplan fetch (mod_xml_curl), pure: the request it POSTs and
the documents it takes back (recordings 12 and 12b).

The request: ``POST <gateway-url>``, ``Content-Type:
application/x-www-form-urlencoded``, the body
``hostname=<switchname>&section=dialplan&tag_name=&key_name=&key_value=``
followed by every header of the channel's REQUEST_PARAMS event
(``switch_event_build_param_string``: ``name=switch_url_encode(value)``,
``&`` between): about 160 fields, 5.7 KB a call (recording 12), of which a
decision reads some twenty.  ``switch_url_encode`` encodes ``&``, ``=``,
``%``, ``+``, spaces, line breaks and every byte outside printable ASCII
(SWITCH_URL_UNSAFE), so no value holds a raw ``&`` or ``=``: a field is
found by its ``&name=`` anchor on the raw body and decoded when read (the
whole form decoded took 0.4–0.6 ms of Python on this machine, the decision
itself less).  The first occurrence of a name wins: the five fields
mod_xml_curl writes itself come before the channel's.

The answer: ``200 text/xml`` with a document FreeSWITCH parses with
``switch_xml_parse_file`` — its config preprocessor runs on it, so every
value is made preprocessor-safe as in a rendered file (``escape.fs_xml``) —
holding a ``dialplan`` section whose context is the call's, or the
``result`` section ``not found``: then FreeSWITCH routes the call with its
static dialplan (switch_xml_locate), as it does when the fetch fails or
times out (12b).
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from urllib.parse import unquote_to_bytes

from ..render.escape import fs_xml

# recording 12, answer (3), byte for byte
NOT_FOUND = b'<document type="freeswitch/xml"><section name="result"><result status="not found"/></section></document>'


class Form(Mapping[str, str]):
    """A fetch request's form fields, each decoded when read."""

    __slots__ = ("raw",)

    def __init__(self, body: bytes) -> None:
        self.raw = b"&" + body

    def _find(self, key: str) -> bytes | None:
        anchor = b"&" + key.encode() + b"="
        i = self.raw.find(anchor)
        if i < 0:
            return None
        start = i + len(anchor)
        end = self.raw.find(b"&", start)
        return self.raw[start:] if end < 0 else self.raw[start:end]

    def __getitem__(self, key: str) -> str:
        raw = self._find(key)
        if raw is None:
            raise KeyError(key)
        return _decode(raw)

    def get(self, key: str, default: str | None = None) -> str | None:   # type: ignore[override]
        raw = self._find(key)
        return default if raw is None else _decode(raw)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) is not None

    def __iter__(self) -> Iterator[str]:
        seen = set()
        for part in self.raw[1:].split(b"&"):
            name = part.partition(b"=")[0].decode("utf-8", "replace")
            if name not in seen:
                seen.add(name)
                yield name

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _decode(raw: bytes) -> str:
    return unquote_to_bytes(raw).decode("utf-8", "replace") if b"%" in raw else raw.decode("utf-8", "replace")


class Overlay(Mapping[str, str]):
    """``values`` over ``base``: the channel as the rendered dialplan's
    extension would have left it (its ``set`` / ``export``) before the
    socket, read through the same functions as the socket's channel data."""

    __slots__ = ("values", "base")

    def __init__(self, values: Mapping[str, str], base: Mapping[str, str]) -> None:
        self.values, self.base = values, base

    def __getitem__(self, key: str) -> str:
        return self.values[key] if key in self.values else self.base[key]

    def get(self, key: str, default: str | None = None) -> str | None:   # type: ignore[override]
        v = self.values.get(key)
        return v if v is not None else self.base.get(key, default)

    def __iter__(self) -> Iterator[str]:
        yield from self.values
        yield from (k for k in self.base if k not in self.values)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def document(context: str, name: str, destination: str, actions: Sequence[tuple[str, str]]) -> bytes:
    """One extension in the call's context, matching its destination, with
    these applications: recording 12's answers (1) and (2)."""
    lines = ['<document type="freeswitch/xml">',
             '  <section name="dialplan" description="dustel call-time decision">',
             f'    <context name="{fs_xml(context)}">',
             f'      <extension name="{fs_xml(name)}">',
             f'        <condition field="destination_number" expression="^{fs_xml(re.escape(destination))}$">']
    lines += [f'          <action application="{fs_xml(app)}" data="{fs_xml(data)}"/>' if data else
              f'          <action application="{fs_xml(app)}"/>' for app, data in actions]
    lines += ["        </condition>", "      </extension>", "    </context>", "  </section>", "</document>", ""]
    return "\n".join(lines).encode()
