"""Live state and CDRs from engine events, pure: an event in, the SQL to
apply out (``Q``s, run in one transaction by the shell).  Both engines
reduce to the same few operations — channel seen, channel answered, leg
ended (one CDR), device registered / gone — so the tables mean the same
whichever engine a tenant is on.

Every operation is idempotent by (node, call id): a replayed event, or an
event arriving after its leg's CDR was written, changes nothing.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..callpath.calls import Q
from ..wire.esl import Event


@dataclass(frozen=True)
class Leg:
    """What is known about a channel at one event."""
    node: str
    call_id: str
    engine: str
    tenant: int | None = None
    account: str = ""
    direction: str = "leg"        # in | out (a tenant's call) | leg (other legs)
    caller: str = ""
    callee: str = ""
    channel: str = ""
    created: dt.datetime | None = None
    answered: dt.datetime | None = None


_UPSERT = """
INSERT INTO live_channels (node, call_id, engine, tenant_id, account, direction, caller, callee, channel,
                           created_at, answered_at)
SELECT %(node)s, %(call)s, %(engine)s, (SELECT id FROM tenants WHERE id = %(tenant)s), %(account)s, %(dir)s,
       %(caller)s, %(callee)s, %(channel)s, coalesce(%(created)s, now()), %(answered)s
 WHERE NOT EXISTS (SELECT 1 FROM cdrs WHERE node = %(node)s AND call_id = %(call)s)
ON CONFLICT (node, call_id) DO UPDATE SET
    tenant_id = coalesce(EXCLUDED.tenant_id, live_channels.tenant_id),
    account = CASE WHEN EXCLUDED.account <> '' THEN EXCLUDED.account ELSE live_channels.account END,
    direction = CASE WHEN EXCLUDED.direction <> 'leg' THEN EXCLUDED.direction ELSE live_channels.direction END,
    callee = CASE WHEN EXCLUDED.callee <> '' THEN EXCLUDED.callee ELSE live_channels.callee END,
    answered_at = coalesce(live_channels.answered_at, EXCLUDED.answered_at)
"""

_CDR = """
INSERT INTO cdrs (node, call_id, engine, tenant_id, account, direction, caller, callee, started_at, answered_at,
                  ended_at, billsec, hangup_cause)
SELECT %(node)s, %(call)s, %(engine)s,
       coalesce((SELECT id FROM tenants WHERE id = %(tenant)s), l.tenant_id),
       coalesce(nullif(%(account)s, ''), l.account, ''),
       CASE WHEN %(dir)s <> 'leg' THEN %(dir)s ELSE coalesce(l.direction, 'leg') END,
       %(caller)s, coalesce(nullif(%(callee)s, ''), l.callee, ''),
       coalesce(%(created)s, l.created_at, %(ended)s), coalesce(%(answered)s, l.answered_at),
       %(ended)s,
       coalesce(%(billsec)s, CASE WHEN coalesce(%(answered)s, l.answered_at) IS NULL THEN 0
                                  ELSE greatest(0, floor(extract(epoch FROM %(ended)s
                                                     - coalesce(%(answered)s, l.answered_at))))::int END),
       %(cause)s
  FROM (SELECT 1) one LEFT JOIN live_channels l ON l.node = %(node)s AND l.call_id = %(call)s
ON CONFLICT (node, call_id) DO UPDATE SET   -- the real record replaces a placeholder written at a reconnect
    answered_at = EXCLUDED.answered_at, ended_at = EXCLUDED.ended_at, billsec = EXCLUDED.billsec,
    hangup_cause = EXCLUDED.hangup_cause
 WHERE cdrs.hangup_cause = 'LOST_WHILE_DISCONNECTED'
"""

_GONE = "DELETE FROM live_channels WHERE node = %(node)s AND call_id = %(call)s"

_REGISTER = """
INSERT INTO registrations (node, username, contact, tenant_id, source, user_agent, expires_at)
SELECT %(node)s, %(user)s, %(contact)s, a.tenant_id, %(source)s, %(agent)s, %(expires)s
  FROM sip_accounts a WHERE a.username = %(user)s AND (a.tls_mode = 'off' OR %(secure)s)
ON CONFLICT (node, username, contact) DO UPDATE SET
    source = EXCLUDED.source, user_agent = EXCLUDED.user_agent, expires_at = EXCLUDED.expires_at,
    registered_at = now()
"""

_UNREGISTER = "DELETE FROM registrations WHERE node = %(node)s AND username = %(user)s AND contact LIKE %(contact)s"


def _params(leg: Leg) -> dict[str, object]:
    return {"node": leg.node, "call": leg.call_id, "engine": leg.engine, "tenant": leg.tenant,
            "account": leg.account, "dir": leg.direction, "caller": leg.caller, "callee": leg.callee,
            "channel": leg.channel, "created": leg.created, "answered": leg.answered}


def seen(leg: Leg) -> list[Q]:
    return [Q(_UPSERT, _params(leg))]


def ended(leg: Leg, ended_at: dt.datetime, billsec: int | None, cause: str) -> list[Q]:
    """One CDR for the leg (never a second), and the leg leaves the live state.
    ``billsec`` None: from the answer time the live state holds."""
    p = {**_params(leg), "ended": ended_at, "billsec": None if billsec is None else max(0, billsec), "cause": cause}
    return [Q(_CDR, p), Q(_GONE, p)]


def secure_contact(contact: str) -> bool:
    """A binding the engine reaches over TLS: the engine sends a call to
    the stored contact URI, so its scheme/transport is what counts.
    Asterisk (``rewrite_contact=yes``) stores the transport the REGISTER
    came over (none for UDP, ``;transport=TLS`` for TLS), whatever the
    phone wrote; FreeSWITCH keeps the phone's Contact — a phone that claims
    TLS over UDP is then called over TLS, which it cannot answer."""
    c = contact.lower()
    return "sips:" in c or ";transport=tls" in c or ";transport=wss" in c


# a TLS account's binding over a plain transport (F-03): never stored, and
# the shell asks the engine to drop it (see tls_refused)
TLS_ACCOUNT = "SELECT 1 AS tls FROM sip_accounts WHERE username = %(user)s AND tls_mode <> 'off'"


def tls_refused(user: str, contact: str) -> Q | None:
    """The query that tells the shell a fresh binding must be removed from
    the engine: no engine can restrict one account to one transport, so a
    TLS account's REGISTER over UDP/TCP is answered 200 by the engine and
    then dropped by the controller at once — never stored, never dialled.
    None: the binding is over TLS, nothing to check."""
    return None if not user or secure_contact(contact) else Q(TLS_ACCOUNT, {"user": user})


def registered(node: str, user: str, contact: str, source: str, agent: str,
               expires: dt.datetime | None) -> list[Q]:
    return [Q(_REGISTER, {"node": node, "user": user, "contact": contact, "source": source, "agent": agent,
                          "expires": expires, "secure": secure_contact(contact)})]


def unregistered(node: str, user: str, contact: str = "") -> list[Q]:
    like = contact.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") if contact else "%"
    return [Q(_UNREGISTER, {"node": node, "user": user, "contact": like})]


# ------------------------------------------------------------------ FreeSWITCH

def _usec(value: str) -> dt.datetime | None:
    if not value.isdigit() or value == "0":
        return None
    return dt.datetime.fromtimestamp(int(value) / 1e6, dt.UTC)


def _tenant(raw: str) -> int | None:
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


def fs_leg(node: str, ev: Event) -> Leg:
    """A FreeSWITCH channel event's leg.  The dialplan marks a tenant's
    calls: ``dustel_target_kind`` on calls to a number (in), the
    authenticated ``user_name`` on calls from a phone (out)."""
    if ev.var("dustel_target_kind"):
        direction, account = "in", ev.var("dustel_target") if ev.var("dustel_target_kind") == "account" else ""
    elif ev.var("user_name") and ev.get("Call-Direction") == "inbound":
        direction, account = "out", ev.var("user_name")
    else:
        direction, account = "leg", ""
    return Leg(node=node, call_id=ev.get("Unique-ID"), engine="freeswitch", tenant=_tenant(ev.var("dustel_tenant")),
               account=account, direction=direction, caller=ev.get("Caller-Caller-ID-Number"),
               callee=ev.get("Caller-Destination-Number"), channel=ev.get("Channel-Name"),
               created=_usec(ev.get("Caller-Channel-Created-Time")),
               answered=_usec(ev.get("Caller-Channel-Answered-Time")))


CHANNEL_EVENTS = ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_HANGUP_COMPLETE")
REGISTRATION_EVENTS = ("sofia::register", "sofia::unregister", "sofia::expire")


def on_fs_event(node: str, ev: Event) -> list[Q]:
    name = ev.name
    if name in ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE"):
        leg = fs_leg(node, ev)
        return seen(leg) if leg.call_id else []
    if name == "CHANNEL_HANGUP_COMPLETE":
        leg = fs_leg(node, ev)
        if not leg.call_id:
            return []
        end = _usec(ev.get("Caller-Channel-Hangup-Time")) or _usec(ev.get("Event-Date-Timestamp")) or \
            dt.datetime.now(dt.UTC)
        raw = ev.var("billsec", "0")
        return ended(leg, end, int(raw) if raw.isdigit() else 0, ev.get("Hangup-Cause"))
    if name == "sofia::register":
        expires = ev.get("expires")
        return registered(node, ev.get("username") or ev.get("from-user"), ev.get("contact"),
                          f"{ev.get('network-ip')}:{ev.get('network-port')}", ev.get("user-agent"),
                          dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(expires)) if expires.isdigit()
                          else None)
    if name in ("sofia::unregister", "sofia::expire"):
        # sofia::expire names the user in the header "user" (sofia_reg.c), unregister in "username"
        user = ev.get("username") or ev.get("from-user") or ev.get("user")
        return unregistered(node, user, ev.get("contact")) if user else []
    return []


def fs_rows(api_json: str) -> list[dict[str, str]]:
    """Rows of ``show channels|registrations as json`` (no ``rows`` key when
    there are none)."""
    data = json.loads(api_json or "{}")
    rows = data.get("rows") or []
    return [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows if isinstance(r, dict)]


_LOST = """
WITH lost AS (DELETE FROM live_channels WHERE node = %(node)s AND NOT (call_id = ANY(%(alive)s)) RETURNING *)
INSERT INTO cdrs (node, call_id, engine, tenant_id, account, direction, caller, callee, started_at, answered_at,
                  ended_at, billsec, hangup_cause)
SELECT node, call_id, engine, tenant_id, account, direction, caller, callee, created_at, answered_at, now(),
       CASE WHEN answered_at IS NULL THEN 0 ELSE extract(epoch FROM now() - answered_at)::int END,
       'LOST_WHILE_DISCONNECTED'
  FROM lost
ON CONFLICT (node, call_id) DO NOTHING
"""


NOW = "SELECT now() AS now"      # the database's time: when a rebuild read the engine's list


def rebuild(node: str, engine: str, legs: list[Leg], regs: list[tuple[str, str, str, str, dt.datetime | None]]) \
        -> list[Q]:
    """After a (re)connect: the engine's own list is the truth.  Legs we
    hold that the engine no longer has ended while we were away: each gets
    its CDR (cause LOST_WHILE_DISCONNECTED, unless its real CDR is there
    already) and leaves; legs the engine has are (re)stored; the node's
    registrations are replaced by the engine's."""
    ops = [Q(_LOST, {"node": node, "alive": [leg.call_id for leg in legs]})]
    for leg in legs:
        ops += seen(leg)
    ops.append(Q("DELETE FROM registrations WHERE node = %(node)s", {"node": node}))
    for user, contact, source, agent, expires in regs:
        ops += registered(node, user, contact, source, agent, expires)
    return ops


def fs_rebuild(node: str, channels_json: str, registrations_json: str,
               tenants: Mapping[str, int | None]) -> list[Q]:
    """``show channels as json`` / ``show registrations as json`` (+ each
    unknown channel's ``dustel_tenant``, fetched by the shell)."""
    legs = []
    for r in fs_rows(channels_json):
        created = dt.datetime.fromtimestamp(int(r["created_epoch"]), dt.UTC) \
            if r.get("created_epoch", "").isdigit() else None
        uuid = r.get("uuid", "")
        legs.append(Leg(node=node, call_id=uuid, engine="freeswitch", tenant=tenants.get(uuid),
                        caller=r.get("cid_num", ""), callee=r.get("dest", ""), channel=r.get("name", ""),
                        created=created, answered=created if r.get("callstate") == "ACTIVE" else None))
    regs = []
    for r in fs_rows(registrations_json):
        exp = r.get("expires", "")
        regs.append((r.get("reg_user", ""), r.get("url", ""), f"{r.get('network_ip', '')}:{r.get('network_port', '')}",
                     r.get("agent", ""), dt.datetime.fromtimestamp(int(exp), dt.UTC) if exp.isdigit() else None))
    return rebuild(node, "freeswitch", [leg for leg in legs if leg.call_id], regs)


# -------------------------------------------------------------------- Asterisk

_TENANT_CONTEXT = re.compile(r"t(\d{1,18})")


def _ami_time(msg: Mapping[str, str]) -> dt.datetime:
    ts = msg.get("Timestamp", "")
    try:
        return dt.datetime.fromtimestamp(float(ts), dt.UTC)
    except ValueError:
        return dt.datetime.now(dt.UTC)


def ami_leg(node: str, msg: Mapping[str, str]) -> Leg:
    """An Asterisk channel event's leg.  A phone's call starts in its
    tenant's context ``t<id>`` (out; the account is the PJSIP endpoint); a
    call to a number enters ``dustel-public`` (in); the dialplan sets the
    channel's account code to the tenant, which other legs inherit.  A
    channel ``Dial`` creates shares its caller's ``Linkedid``: it is a leg,
    whatever its endpoint's context is."""
    ctx = msg.get("Context", "")
    channel = msg.get("Channel", "")
    m = _TENANT_CONTEXT.fullmatch(ctx)
    tenant = int(m.group(1)) if m else _tenant(msg.get("AccountCode", ""))
    # a channel Dial created carries its caller's Linkedid: a leg, whatever its context
    dialed = msg.get("Linkedid", msg.get("Uniqueid", "")) != msg.get("Uniqueid", "")
    if dialed:
        direction, account = "leg", ""
    elif m:
        direction = "out"
        account = channel.split("/", 1)[-1].rsplit("-", 1)[0] if channel.startswith("PJSIP/") else ""
    elif ctx in ("dustel-public", "dustel-inbound") or ctx.startswith("dustel-target"):
        direction, account = "in", ""
    else:
        direction, account = "leg", ""
    return Leg(node=node, call_id=msg.get("Uniqueid", ""), engine="asterisk", tenant=tenant, account=account,
               direction=direction, caller=msg.get("CallerIDNum", "").replace("<unknown>", ""),
               callee=msg.get("Exten", msg.get("Extension", "")), channel=channel)


def on_ami_event(node: str, msg: Mapping[str, str]) -> list[Q]:
    from ..callpath.policy import CAUSES
    name = msg.get("Event", "")
    if name in ("Newchannel", "NewAccountCode", "Newstate"):
        leg = ami_leg(node, msg)
        if not leg.call_id:
            return []
        at = _ami_time(msg)
        if name == "Newchannel":
            leg = Leg(**{**leg.__dict__, "created": at})
        elif name == "Newstate":
            if msg.get("ChannelState") != "6":       # 6: Up
                return []
            leg = Leg(**{**leg.__dict__, "answered": at})
        else:
            leg = Leg(**{**leg.__dict__, "direction": "leg", "callee": "", "account": ""})
        return seen(leg)
    if name == "Hangup":
        leg = ami_leg(node, msg)
        if not leg.call_id:
            return []
        cause = msg.get("Cause", "")
        return ended(Leg(**{**leg.__dict__, "direction": "leg", "callee": "", "account": ""}), _ami_time(msg),
                     None, CAUSES.get(int(cause), cause) if cause.isdigit() else cause)
    if name == "ContactStatus":
        status = msg.get("ContactStatus", "")
        user = msg.get("EndpointName") or msg.get("AOR", "")
        if status and status != "Removed":     # Created, Updated, Reachable, Unqualified, Unreachable …: present
            return registered(node, user, msg.get("URI", ""), msg.get("ViaAddress", ""), msg.get("UserAgent", ""),
                              _reg_expire(msg.get("RegExpire", "")))
        if status == "Removed":
            return unregistered(node, user, msg.get("URI", ""))
        return []
    return []


def _reg_expire(raw: str) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(int(raw), dt.UTC) if raw.isdigit() and raw != "0" else None


def ami_rebuild(node: str, channels: list[Mapping[str, str]], contacts: list[Mapping[str, str]]) -> list[Q]:
    """``CoreShowChannels`` / ``PJSIPShowContacts`` event lists."""
    now = dt.datetime.now(dt.UTC)
    legs = []
    for c in channels:
        leg = ami_leg(node, c)
        h, _, rest = c.get("Duration", "").partition(":")
        mnt, _, sec = rest.partition(":")
        age = int(h) * 3600 + int(mnt) * 60 + int(sec) if (h + mnt + sec).isdigit() else 0
        created = now - dt.timedelta(seconds=age)
        legs.append(Leg(**{**leg.__dict__, "created": created,
                           "answered": created if c.get("ChannelState") == "6" else None}))
    regs = [(c.get("Endpoint") or c.get("Aor", ""), c.get("Uri", ""), c.get("ViaAddr", ""), c.get("UserAgent", ""),
             _reg_expire(c.get("RegExpire", c.get("ExpirationTime", "")))) for c in contacts
            if c.get("Endpoint") or c.get("Aor")]
    return rebuild(node, "asterisk", [leg for leg in legs if leg.call_id], regs)
