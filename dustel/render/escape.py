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

from ..errors import DustelError

_AST_ID = re.compile(r"[A-Za-z0-9_.@+:/=-]{1,128}")
_AST_DROP = set("\r\n;[](),|$\"'\\<>{}`&")
_FS_DROP = set("${}")


class UnsafeValue(DustelError):
    pass


def _printable(s: str) -> str:
    return "".join(ch for ch in s if unicodedata.category(ch)[0] != "C")


def ast(value: object, mode: str = "id") -> str:
    s = str(value)
    if mode == "id":
        if not _AST_ID.fullmatch(s):
            raise UnsafeValue("render", f"value {s[:40]!r} is not safe as an Asterisk identifier")
        return s
    if mode == "text":
        out = "".join(" " if ch in _AST_DROP else ch for ch in _printable(s))
        return " ".join(out.split())[:64]
    raise ValueError(mode)


def fs_text(value: object) -> str:
    """Free text for a FreeSWITCH XML value (autoescape handles < & " ')."""
    s = "".join(" " if ch in _FS_DROP else ch for ch in _printable(str(value)))
    return " ".join(s.split())[:64]


def fs_id(value: object) -> str:
    s = str(value)
    if not _AST_ID.fullmatch(s):
        raise UnsafeValue("render", f"value {s[:40]!r} is not safe as a FreeSWITCH identifier")
    return s
