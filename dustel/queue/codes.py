"""Star codes, pure: what a dialed string asks for."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..callpath import variables as V

ACTIONS = {V.STAR_LOGIN: "login", V.STAR_LOGOUT: "logout", V.STAR_PAUSE: "pause", V.STAR_UNPAUSE: "unpause"}
MAX_DIGITS = 8
_CODE = re.compile(r"\*[0-9]{1,4}")


def table(login: str, logout: str, pause: str, unpause: str) -> dict[str, str]:
    """The provider's star codes (settings ``star_login`` …): ``*`` and 1-4
    digits each, all different, none a prefix of another followed by ``*``."""
    out = {}
    for action, code in (("login", login), ("logout", logout), ("pause", pause), ("unpause", unpause)):
        if not _CODE.fullmatch(code):
            raise ValueError(f"star_{action}: must be * and 1-4 digits (got {code[:10]!r})")
        if code in out:
            raise ValueError(f"star_{action}: {code} is already the {out[code]} code")
        out[code] = action
    return out


@dataclass(frozen=True)
class StarRequest:
    action: str                 # login | logout | pause | unpause
    queue: str | None = None    # queue code
    pin: str | None = None


def parse(dialed: str, codes: dict[str, str] | None = None) -> StarRequest:
    """``*51``, ``*51*<queue>``, ``*51*<queue>*<pin>`` (and ``*52``–``*54``,
    optionally with a queue; a phone's closing ``#`` is dropped, as on
    both engines' dialplans).  Refuses anything else with a ValueError."""
    table = codes or ACTIONS
    dialed = dialed.removesuffix("#")
    for prefix, action in table.items():
        if dialed == prefix or dialed.startswith(prefix + "*"):
            rest = dialed[len(prefix) + 1:] if len(dialed) > len(prefix) else ""
            parts = rest.split("*") if rest else []
            if len(parts) > 2 or any(not (p.isascii() and p.isdigit()) or len(p) > MAX_DIGITS for p in parts):
                raise ValueError(f"star code: {dialed[:20]!r} is not {prefix}[*queue[*pin]] with up to "
                                 f"{MAX_DIGITS} digits each")
            if parts[1:] and action != "login":
                raise ValueError(f"star code: {prefix} takes no PIN")
            return StarRequest(action, parts[0] if parts else None, parts[1] if len(parts) > 1 else None)
    raise ValueError(f"star code: {dialed[:20]!r} is not an agent code")
