"""Which tenant a rendered line belongs to (pure): ``render --diff --tenant``
shows the hunks of the *whole* render's diff that touch the tenant — what
a render would really change for it, never another tenant's unchanged
lines shown as deleted (a partial render of one tenant did that: every
other tenant's queues, agents, numbers and endpoints in the shared files).

A file is cut into blocks — an INI section, an Asterisk extension (its
priority-1 line and the ``same =>`` lines after it), a FreeSWITCH
``<extension>``, ``<queue>``, ``<agent>``, ``<user>`` or ``<domain>`` element —
and a block belongs to the tenants its markers name: the tenant variable
(``DUSTEL_TENANT=``, ``dustel_tenant``), the tenant's contexts and names
(``t<id>``, ``t<id>-…``), its account code, its SIP domain; an account's
auth and AOR sections belong where its endpoint section does.  Every line
of a hunk that changes is attributed to the block it stands in, in the
file it comes from (old for removed lines, new for added ones).
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

_START = re.compile(r"^\[|^exten => [^,]+,1,|^\s*<(extension|queue|agent|user|domain|gateway|context)\b")
_MARKERS = (re.compile(r"DUSTEL_TENANT=(\d+)\b"), re.compile(r'dustel_tenant(?:=|" value=")(\d+)\b'),
            re.compile(r"\bcontext=t(\d+)\b"), re.compile(r"^accountcode=(\d+)$"),
            re.compile(r"^\[t(\d+)(?:-[^\]]*)?\]"), re.compile(r"""(?:name|value)="t(\d+)(?:-[^"]*)?["@]"""),
            re.compile(r"\bloopback/(\d+)-"))
_SECTION = re.compile(r"^\[([^\]]+)\]")
_ACCOUNT = re.compile(r"^(000387\d{6})")


def blocks(lines: list[str]) -> list[int]:
    """The index of the block each line stands in (a block starts at a line
    that opens a section or an element; lines before the first are block 0)."""
    out, current = [], 0
    for i, line in enumerate(lines):
        if _START.search(line):
            current = i + 1
        out.append(current)
    return out


def owners(lines: list[str], domains: Mapping[str, int]) -> dict[int, set[int]]:
    """block -> the tenants its markers name."""
    idx = blocks(lines)
    found: dict[int, set[int]] = {}
    accounts: dict[str, set[int]] = {}
    names: dict[int, str] = {}
    for i, line in enumerate(lines):
        b = idx[i]
        text = line.rstrip("\n")
        if (m := _SECTION.match(text)) and (a := _ACCOUNT.match(m.group(1))):
            names[b] = a.group(1)
        for rx in _MARKERS:
            for m in rx.finditer(text):
                found.setdefault(b, set()).add(int(m.group(1)))
        for domain, tenant in domains.items():
            if domain in text:
                found.setdefault(b, set()).add(tenant)
    for b, account in names.items():           # an account's endpoint section names its tenant
        accounts.setdefault(account, set()).update(found.get(b, set()))
    for b, account in names.items():           # … and its auth and AOR sections belong there too
        found.setdefault(b, set()).update(accounts.get(account, set()))
    return found


def tenant_diff(rel: str, old: list[str], new: list[str], tenant: int, domains: Mapping[str, int],
                whole_file: int | None = None) -> str:
    """The unified diff of one file, only the hunks that touch ``tenant``
    (all of them when the file is the tenant's own: ``whole_file``)."""
    diff = list(difflib.unified_diff(old, new, f"a/{rel}", f"b/{rel}" if new else "/dev/null"))
    if whole_file is not None:
        return "".join(diff) if whole_file == tenant else ""
    old_owner, new_owner = owners(old, domains), owners(new, domains)
    old_block, new_block = blocks(old), blocks(new)
    kept: list[str] = []
    for hunk in _hunks(diff[2:]):
        o, n = _hunk_start(hunk[0])
        touched: set[int] = set()
        for line in hunk[1:]:
            if line.startswith("-"):
                touched |= old_owner.get(old_block[o], set())
                o += 1
            elif line.startswith("+"):
                touched |= new_owner.get(new_block[n], set())
                n += 1
            else:
                o, n = o + 1, n + 1
        if tenant in touched:
            kept.extend(hunk)
    return "".join(diff[:2] + kept) if kept else ""


def _hunks(lines: Iterable[str]) -> list[list[str]]:
    out: list[list[str]] = []
    for line in lines:
        if line.startswith("@@"):
            out.append([line])
        elif out:
            out[-1].append(line)
    return out


def _hunk_start(header: str) -> tuple[int, int]:
    """0-based first old and new line of a hunk (``@@ -a,b +c,d @@``)."""
    m = re.match(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", header)
    assert m is not None, header
    a, b, c, d = m.group(1), m.group(2), m.group(3), m.group(4)
    return (int(a) - (0 if b == "0" else 1), int(c) - (0 if d == "0" else 1))
