"""Escaping for the engines' config syntaxes (DESIGN principle 5).

XML (FreeSWITCH) goes through jinja2 autoescape; on top, ``fs_text``
removes what FreeSWITCH would *expand* inside a value (``$`` of
``${var}``/``$${global}``/``$(api)``) and control characters.

Asterisk values go through one filter, ``ast``: identifiers must already be
safe (anything else is refused: the render fails and the last good output
stays), free text is neutralised — newlines, ``;`` (comment), ``[`` ``]``
(sections), ``,`` ``|`` (argument separators), ``$`` ``(`` ``)``
(variables and functions), quotes, ``<`` ``>`` (caller-ID syntax) and
control characters are dropped.
"""
from __future__ import annotations

import re
import unicodedata

import markupsafe

from ..errors import DustelError

_AST_ID = re.compile(r"[A-Za-z0-9_.@+:/=-]{1,128}")
_PLAIN = re.compile(r"[\w .@+-]{0,64}")       # nothing to neutralise (fast path)
# ``%`` too: both engines URL-decode a display name when they build the From
# header (FreeSWITCH sent ``Empfang%0D%0AX-Evil: injected`` as a new header)
_AST_DROP = set("\r\n;[](),|$\"'\\<>{}`&%")
_FS_DROP = set("${}%\"\\")


class UnsafeValue(DustelError):
    pass


def _ranges() -> str:
    out, start = [], None
    for i in range(0x10000):
        is_c = unicodedata.category(chr(i))[0] == "C"
        if is_c and start is None:
            start = i
        elif not is_c and start is not None:
            out.append(f"\\u{start:04x}-\\u{i - 1:04x}")
            start = None
    if start is not None:
        out.append(f"\\u{start:04x}-\\uffff")
    return "".join(out)


# Unicode category C (control, format, surrogate, private use, unassigned) in the BMP
_CONTROL = re.compile(f"[{_ranges()}]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_AST_TABLE = str.maketrans({c: " " for c in _AST_DROP})
_FS_TABLE = str.maketrans({c: " " for c in _FS_DROP})


def _printable(s: str) -> str:
    if _ASTRAL.search(s):
        return "".join(ch for ch in s if unicodedata.category(ch)[0] != "C")
    return _CONTROL.sub("", s)


def ast(value: object, mode: str = "id") -> str:
    s = str(value)
    if mode == "id":
        if not _AST_ID.fullmatch(s):
            raise UnsafeValue("render", f"value {s[:40]!r} is not safe as an Asterisk identifier")
        return s
    if mode == "text":
        if _PLAIN.fullmatch(s):
            return " ".join(s.split())
        out = _printable(s).translate(_AST_TABLE)
        return " ".join(out.split())[:64]
    raise ValueError(mode)


def fs_text(value: object) -> str:
    """Free text for a FreeSWITCH XML value (autoescape handles < & " ')."""
    s = str(value)
    if _PLAIN.fullmatch(s):
        return " ".join(s.split())
    s = _printable(s).translate(_FS_TABLE)
    return " ".join(s.split())[:64]


_PREPROCESS = re.compile(r"(?i)x-pre-process")


def fs_preprocessor_safe(text: str) -> str:
    """FreeSWITCH's config preprocessor (switch_xml.c) runs *before* XML
    parsing and drops every line holding ``X-pre-process`` in any case that
    is not a real ``<X-PRE-PROCESS`` tag (a queue named
    ``fax-pre-processing`` left an unmatched closing tag: FreeSWITCH
    refused to start), and expands ``$${var}`` anywhere.  In a rendered
    value one character of each becomes an XML character reference: the
    preprocessor no longer sees the text, the XML parser restores it."""
    if "$${" in text:
        text = text.replace("$${", "&#36;${")
    if "-pre-" in text.lower():
        text = _PREPROCESS.sub(lambda m: m.group(0)[0] + "&#45;" + m.group(0)[2:], text)
    return text


def fs_xml(value: object) -> str:
    """A value printed into FreeSWITCH XML — a rendered file, or a dialplan
    document a FreeSWITCH fetch gets (mod_xml_curl parses it with
    ``switch_xml_parse_file``: the preprocessor runs on it too): XML-escaped,
    then invisible to the preprocessor."""
    return fs_preprocessor_safe(str(markupsafe.escape(value)))


def fs_id(value: object) -> str:
    s = str(value)
    if not _AST_ID.fullmatch(s):
        raise UnsafeValue("render", f"value {s[:40]!r} is not safe as a FreeSWITCH identifier")
    return s


# a value inside a double-quoted string of kamailio.cfg: printable ASCII
# without the quote, the backslash (escapes) and the cfg's own markers
_KAM_SAFE = re.compile(r"[A-Za-z0-9 !#%&'()*+,./:;<=>?@^_`{|}~\[\]-]{1,400}")


def kam(value: object) -> str:
    """A value rendered into kamailio.cfg: refused (the render fails, the
    last good output stays) unless every character is safe inside a quoted
    string — no quote, backslash, ``$`` (a pseudo-variable) or line break."""
    s = str(value)
    if not _KAM_SAFE.fullmatch(s):
        raise UnsafeValue("render", f"value {s[:40]!r} is not safe in kamailio.cfg")
    return s
