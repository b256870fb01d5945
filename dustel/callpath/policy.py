"""The call-time decision (F-04): a pure function from a call request and a
snapshot of the caller's / callee's settings to a decision.  No I/O; the
FastAGI and outbound-ESL shells load the snapshot, call ``decide`` and apply
the result.  Both engines obey this one function."""
from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import rating

EMERGENCY = frozenset({"110", "112"})
# What a phone may put in front of 110/112: trunk prefix, international
# prefix, country code.
_EMERGENCY_PREFIXES = ("0049", "+49", "00", "0")
ANONYMOUS = frozenset({"", "anonymous", "unknown", "restricted", "private", "unavailable"})


@dataclass(frozen=True)
class CallRequest:
    direction: str             # "out" (from an account) or "in" (to a number of the tenant)
    tenant_id: int
    account: str               # calling account (out) / called account (in)
    caller: str                # the caller's number as signalled ('' or 'anonymous' when withheld)
    callee: str                # dialed digits (out) / called E.164 (in)
    source_ip: str | None = None
    engine: str = "asterisk"
    node: str = ""
    call_id: str = ""
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    # a leg dustel itself places for the tenant (a closed queue's external
    # target): an outbound call of the tenant like any other — zones, rate,
    # money, lines — but from no device, so the IP rule does not apply; it
    # presents the tenant's number, or the original caller with CLIP no
    # screening (F-05)
    leg: bool = False
    secure: bool = False       # signalling over TLS (Asterisk CHANNEL(pjsip,secure), FS sip_via_protocol)


@dataclass(frozen=True)
class Snapshot:
    """The settings the rules read, loaded by the shell in one transaction."""
    tenant_id: int
    account: str
    area_code: str                       # of the account's location: local dialing, emergency
    psap_prefix: str
    max_call_seconds: int
    lines_in: int = 2
    lines_out: int = 2
    active_in: int = 0
    active_out: int = 0
    allowed_nets: tuple[str, ...] = ()
    caller_id: str = ""                  # the account's configured number ('' none)
    clip_no_screening: bool = False
    zones: frozenset[str] = frozenset()
    blacklist: tuple[str, ...] = ()
    whitelist: tuple[str, ...] = ()
    available_cents: int | None = None   # None: no money limit (postpaid without cap)
    increment: int = 1
    flats: Mapping[str, int] = field(default_factory=dict)          # zone -> flat channels
    flats_in_use: Mapping[str, int] = field(default_factory=dict)   # zone -> calls using them
    free_seconds: int = 0                # start credit (DE fixed) left
    callee_account: str | None = None    # out: the callee is this account of the tenant
    tls_required: bool = False           # the account is TLS+SRTP or TLS only (F-03)


@dataclass(frozen=True)
class Tariff:
    zones: Mapping[str, str]      # E.164 digits prefix (no '+') -> zone; '' default
    rates: Mapping[str, int]      # prefix -> cents per minute
    version: int = 0              # tariff_version it was loaded at


@dataclass(frozen=True)
class Decision:
    admit: bool
    reason: str                    # machine-readable reason code
    sip_code: int = 200
    q850: int = 16
    route: str = ""                # emergency | internal | external | inbound
    destination: str = ""          # E.164, PSAP route, or SIP username
    caller_id: str = ""
    max_seconds: int = 0           # 0: no limit (emergency)
    zone: str = ""
    cents_per_minute: int = 0
    increment: int = 1
    flat_zone: str | None = None   # a flat channel this call occupies
    free_seconds: int = 0          # start credit this call may use
    reserve_cents: int = 0         # money to hold until the call settles


# THE table of refusals (SPEC F-04): reason -> (SIP response code, Q.850
# cause).  Both engines send exactly this SIP code for the reason —
# FreeSWITCH with ``respond <code>``, Asterisk with ``PJSIPHangup(<code>)`` —
# and log the reason; the Q.850 cause goes with it (Reason header, CDR).
REFUSALS: Mapping[str, tuple[int, int]] = {
    "ip_not_allowed": (403, 21),
    "zone_blocked": (403, 21),
    "no_rate": (403, 21),
    "insufficient_credit": (402, 21),
    "invalid_number": (484, 28),
    "line_limit": (503, 34),          # outbound lines of the tenant in use
    "line_limit_in": (486, 17),       # inbound lines of the tenant in use: busy
    "blacklisted": (603, 21),
    "not_whitelisted": (603, 21),
    "anonymous_rejected": (433, 21),  # RFC 5079 Anonymity Disallowed
    "internal_error": (503, 41),      # the policy failed: fail closed, temporarily
    "call_conflict": (482, 25),       # the call id of another admitted call (SIP Loop Detected)
    "tls_required": (403, 21),        # a TLS account calling over a plain transport
    "queue_full": (486, 17),          # the queue holds max_callers waiting callers
    "no_account": (403, 21),          # a leg for a tenant without an account to decide it with
}


# Hangup causes are stored with FreeSWITCH's names on both engines (CDRs, refusals):
# Q.850 cause code -> FreeSWITCH cause name (switch_types.h, switch_channel.c)
CAUSES = {
    1: "UNALLOCATED_NUMBER", 16: "NORMAL_CLEARING", 17: "USER_BUSY", 18: "NO_USER_RESPONSE",
    19: "NO_ANSWER", 21: "CALL_REJECTED", 27: "DESTINATION_OUT_OF_ORDER", 28: "INVALID_NUMBER_FORMAT",
    31: "NORMAL_UNSPECIFIED", 34: "NORMAL_CIRCUIT_CONGESTION", 38: "NETWORK_OUT_OF_ORDER",
    41: "NORMAL_TEMPORARY_FAILURE", 42: "SWITCH_CONGESTION", 57: "BEARERCAPABILITY_NOTAUTH",
    102: "RECOVERY_ON_TIMER_EXPIRE",
}

def refuse(reason: str, **kw: object) -> Decision:
    sip_code, q850 = REFUSALS[reason]
    return Decision(admit=False, reason=reason, sip_code=sip_code, q850=q850, **kw)  # type: ignore[arg-type]


INTERNAL_ERROR = refuse("internal_error")


def emergency_number(dialed: str) -> str | None:
    """110 or 112 if that is what was dialed, with any prefix a phone may add."""
    d = dialed.strip().rstrip("#")
    if d in EMERGENCY:
        return d
    for p in _EMERGENCY_PREFIXES:
        if d.startswith(p) and d[len(p):] in EMERGENCY:
            return d[len(p):]
    return None


# National short codes, dialled without a prefix anywhere in Germany: 115
# (public administration), 116xxx (harmonised EU services), 118xx/118xxx
# (directory enquiries) — recognised before local expansion, which would
# turn them into subscriber numbers of the caller's area.
_SHORT_CODE = re.compile(r"115|116[0-9]{3}|118[0-9]{2,3}")


def normalize(dialed: str, area_code: str) -> str | None:
    """Dialed digits to E.164: national short codes, +…, 00… international,
    0… national, else a local number in the caller's area.  None when it is
    no number."""
    d = dialed.strip()
    if _SHORT_CODE.fullmatch(d):
        return "+49" + d
    if d.startswith("+"):
        digits = d[1:]
    elif d.startswith("00"):
        digits = d[2:]
    elif d.startswith("0"):
        digits = "49" + d[1:]
    else:
        digits = "49" + area_code + d if area_code else ""
    if not digits.isascii() or not digits.isdigit() or not 7 <= len(digits) <= 15 or digits[0] == "0":
        return None
    return "+" + digits


def clean_caller(raw: str) -> str:
    """The caller's number as signalled, made harmless: SIP allows almost
    anything in a user part (``!~%,;`` and spaces included), an engine
    command or dialplan value allows none of it.  Keeps a leading ``+`` and
    the digits; a withheld or unusable number becomes ``anonymous``.  The
    call goes on either way — a hostile caller ID is cleaned, not refused."""
    text = raw.strip()
    if is_anonymous(text):
        return "anonymous" if text else ""
    digits = "".join(c for c in text if c.isascii() and c.isdigit())
    if not digits:
        return "anonymous"
    return ("+" if text.startswith("+") else "") + digits[:32]


def is_anonymous(caller: str) -> bool:
    return caller.strip().lower() in ANONYMOUS


def caller_e164(caller: str) -> str:
    """A signalled caller number in E.164, as screening patterns are stored:
    carriers send ``+49211…``, ``0049211…``, ``49211…`` or ``0211…`` for the
    same caller."""
    c = caller.strip()
    if c[:1].isdigit() and not c.startswith("0"):     # 49211…: international without the +
        c = "+" + c
    return normalize(c, "") or c


def matches(pattern: str, caller: str) -> bool:
    if pattern == "anonymous":
        return is_anonymous(caller)
    if is_anonymous(caller):
        return False
    number = caller_e164(caller)
    if pattern.endswith("*"):
        return number.startswith(pattern[:-1])
    return number == pattern


def _ip_allowed(source_ip: str | None, nets: tuple[str, ...]) -> bool:
    if not nets:
        return True
    if not source_ip:
        return False
    try:
        ip = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n) for n in nets)


def presented_caller_id(req: CallRequest, snap: Snapshot) -> str:
    """The tenant's own number, or the signalled one with CLIP no screening."""
    if snap.clip_no_screening and req.caller.startswith("+") and req.caller[1:].isdigit():
        return req.caller
    return snap.caller_id


def decide(req: CallRequest, snap: Snapshot, tariff: Tariff) -> Decision:
    return _outbound(req, snap, tariff) if req.direction == "out" else _inbound(req, snap)


def _outbound(req: CallRequest, snap: Snapshot, tariff: Tariff) -> Decision:
    caller_id = presented_caller_id(req, snap)
    # 1. Emergency: always, before and regardless of every other rule.
    em = emergency_number(req.callee)
    if em is not None:
        return Decision(admit=True, reason="emergency", route="emergency", destination=snap.psap_prefix + em,
                        caller_id=caller_id, max_seconds=0)
    # 2. TLS accounts only over TLS (F-03); a leg dustel places has no device.
    if snap.tls_required and not req.secure and not req.leg:
        return refuse("tls_required")
    # 3. IP restriction (of a device; a leg dustel places has none).
    if not req.leg and not _ip_allowed(req.source_ip, snap.allowed_nets):
        return refuse("ip_not_allowed")
    # 4. Internal calls: no trunk line, no money.
    if snap.callee_account is not None:
        return Decision(admit=True, reason="internal", route="internal", destination=snap.callee_account,
                        caller_id=caller_id, max_seconds=snap.max_call_seconds)
    # 5. Lines out, live.
    if snap.active_out >= snap.lines_out:
        return refuse("line_limit")
    # 6. Number and zone.
    e164 = normalize(req.callee, snap.area_code)
    if e164 is None:
        return refuse("invalid_number")
    digits = e164[1:]
    zkey = rating.longest_match(tariff.zones, digits)
    zone = tariff.zones[zkey] if zkey is not None else "world"
    if zone not in snap.zones:
        return refuse("zone_blocked", zone=zone)
    rkey = rating.longest_match(tariff.rates, digits)
    if rkey is None:
        return refuse("no_rate", zone=zone)
    rate = tariff.rates[rkey]
    # 7. Money and time.
    common = {"route": "external", "destination": e164, "caller_id": caller_id, "zone": zone,
              "increment": snap.increment}
    if snap.flats.get(zone, 0) > snap.flats_in_use.get(zone, 0):
        return Decision(admit=True, reason="flat", max_seconds=snap.max_call_seconds, cents_per_minute=0,
                        flat_zone=zone, **common)  # type: ignore[arg-type]
    if rate == 0 or snap.available_cents is None:
        return Decision(admit=True, reason="ok", max_seconds=snap.max_call_seconds, cents_per_minute=rate,
                        **common)  # type: ignore[arg-type]
    free = min(snap.free_seconds, snap.max_call_seconds) if zone == "de_fixed" else 0
    paid = rating.affordable_seconds(snap.available_cents, rate, snap.increment)
    max_seconds = min(snap.max_call_seconds, free + paid)
    if max_seconds <= 0:
        return refuse("insufficient_credit", zone=zone, cents_per_minute=rate)
    reserve = rating.cost_cents(max_seconds - free, rate, snap.increment)
    return Decision(admit=True, reason="ok", max_seconds=max_seconds, cents_per_minute=rate, free_seconds=free,
                    reserve_cents=reserve, **common)  # type: ignore[arg-type]


def _inbound(req: CallRequest, snap: Snapshot) -> Decision:
    if any(matches(p, req.caller) for p in snap.blacklist):
        return refuse("blacklisted")
    if snap.whitelist and not any(matches(p, req.caller) for p in snap.whitelist):
        return refuse("anonymous_rejected" if is_anonymous(req.caller) else "not_whitelisted")
    if snap.active_in >= snap.lines_in:
        return refuse("line_limit_in")
    return Decision(admit=True, reason="ok", route="inbound", destination=snap.account,
                    caller_id=req.caller, max_seconds=snap.max_call_seconds)
