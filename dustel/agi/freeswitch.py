"""The FreeSWITCH side of the call-time decision, pure: what the outbound
Event Socket server reads from the channel data and which applications it
executes for a decision.  No gevent here (the shell is ``esl_outbound``),
so unit tests and the Asterisk side can import it.

The rendered FreeSWITCH dialplan hands every call to ``socket … async
full`` after setting ``dustel_tenant`` (and, inbound, ``dustel_target_kind``
/ ``dustel_target``; star codes ``dustel_star``).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from ..callpath import variables as V
from ..callpath.divert import Stage
from ..callpath.policy import CAUSES, REFUSALS, CallRequest, Decision, clean_caller
from ..fax.inbound import Received
from ..queue.hours import QueueState
from ..wire.esl import header_value, token
from ..wire.fetch import Overlay

Action = tuple[str, str]     # (application, argument)

# The first application of every plan, in the same write: the dialplan hands the call over with
# ``socket_resume=true`` (socket.xml.j2), so a socket that ends before the plan goes on to the refusal;
# once FreeSWITCH holds the plan, a policy server that dies while the call rings must leave it running
# (the controller settles it from its CDR) — not turn a ringing call into a 503.
RESUME_OFF: Action = ("set", f"{V.SOCKET_RESUME}=false")


# What the outbound socket subscribes to (issue 32.2).  ``myevents`` alone
# brings every event of the channel — 14 for a bridged call, 98 KB
# (recording 10b), 25 and up to 214 KB on the real engine under load — and
# a decision waits for two: the end of the application it waits on (its
# CHANNEL_EXECUTE_COMPLETE: the bridge's outcome, the answered peer as
# ``Other-Leg-Destination-Number`` (recordings 08, 10b), a queue's cause, a
# fax's result, the digits) and CHANNEL_HANGUP_COMPLETE (billsec); that the
# caller hung up is the ``linger`` disconnect notice, which is no event.
# mod_event_socket.c checks an event's type first (an array look-up),
# then the filters (each a header look-up in the event), so every type not
# needed is taken out with ``nixevent`` and the filters (ORed, recording 10)
# pick the applications.
MYEVENTS = ("CHANNEL_ANSWER", "CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE", "CHANNEL_DATA",
            "CHANNEL_DESTROY", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP",
            "CHANNEL_HANGUP_COMPLETE", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "CHANNEL_OUTGOING", "CHANNEL_PARK",
            "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_STATE", "CHANNEL_UNBRIDGE", "CHANNEL_UNPARK",
            "DETECTED_SPEECH", "DTMF", "NOTALK", "TALK")
NEEDED_EVENTS = ("CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP_COMPLETE")


def awaited_apps(data: Mapping[str, str]) -> tuple[str, ...]:
    """The applications whose end a connection's handler may wait for."""
    route = route_of(data)
    if route == V.ROUTE_AGENT:
        return ("play_and_get_digits",)
    if route == V.ROUTE_FAX_SEND:
        return ("txfax",)
    kind = data.get("variable_dustel_target_kind", "") if route == V.ROUTE_INBOUND else ""
    if kind == "queue":        # the queue; a closed queue's target; an external agent's PIN at the hotline
        return ("callcenter", "bridge", "play_and_get_digits")
    if kind == "fax":
        return ("rxfax",)
    return ("bridge",)


def subscription(data: Mapping[str, str]) -> list[str]:
    """The commands that subscribe a connection to what its decision needs
    (then ``linger``: the hangup's events still arrive), sent in one write."""
    return ["myevents",
            "nixevent " + " ".join(e for e in MYEVENTS if e not in NEEDED_EVENTS),
            "filter Event-Name CHANNEL_HANGUP_COMPLETE",
            *(f"filter Application {app}" for app in awaited_apps(data)),
            "linger"]


def answered_peer(done: Mapping[str, str]) -> str:
    """The destination a ``bridge`` put the caller through to, from its
    EXECUTE_COMPLETE (recording 08: the answering user; 10b: the carrier's
    number); '' when it connected nobody."""
    if done.get("Application") != "bridge" or done.get("variable_originate_disposition") != "SUCCESS":
        return ""
    return done.get("Other-Leg-Destination-Number", "")


def cause_name(q850: int) -> str:
    return CAUSES.get(q850, "NORMAL_UNSPECIFIED")


def route_of(data: Mapping[str, str]) -> str:
    """Which handler a socket connection belongs to."""
    if data.get("variable_dustel_star"):
        return V.ROUTE_AGENT
    # a fax job's loopback call (fax.outbound.originate): the B leg dials, the answered A leg sends
    if data.get("variable_dustel_fax_dial"):
        return V.ROUTE_FAX_OUT
    if data.get("variable_dustel_fax_send"):
        return V.ROUTE_FAX_SEND
    if data.get("variable_dustel_leg"):
        return V.ROUTE_AGENT_LEG
    if data.get("variable_dustel_target_kind"):
        return V.ROUTE_INBOUND
    return V.ROUTE_OUTBOUND


def node_of(data: Mapping[str, str]) -> str:
    """The engine node a call belongs to: FreeSWITCH's switch name (the
    controller keys its CDRs the same way)."""
    return data.get("FreeSWITCH-Switchname") or data.get("FreeSWITCH-Hostname") or "freeswitch"


def _caller(data: Mapping[str, str]) -> str:
    if data.get("Caller-Privacy-Hide-Number") == "true" or data.get("variable_privacy") in ("yes", "number"):
        return "anonymous"
    return clean_caller(data.get("Caller-Caller-ID-Number", ""))


def _tenant(data: Mapping[str, str]) -> int:
    raw = data.get("variable_dustel_tenant", "")
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"dustel_tenant: must be a tenant id (got {raw[:20]!r})")
    return int(raw)


def request_from(data: Mapping[str, str]) -> CallRequest:
    """The call request of an outbound-socket connection's channel data."""
    route = route_of(data)
    common = dict(tenant_id=_tenant(data), caller=_caller(data), engine="freeswitch", node=node_of(data),
                  call_id=data.get("Unique-ID", ""))
    if not common["call_id"]:
        raise ValueError("Unique-ID: missing from the channel data")
    if route == V.ROUTE_AGENT_LEG:
        return CallRequest(direction="out", account="", callee=data.get("variable_dustel_leg", ""),
                           **common)  # type: ignore[arg-type]
    if route in (V.ROUTE_FAX_OUT, V.ROUTE_FAX_SEND):     # the caller is the job's number, read with the job
        return CallRequest(direction="out", account="", callee=data.get("variable_dustel_fax_dial", ""),
                           **common)  # type: ignore[arg-type]
    if route == V.ROUTE_INBOUND:
        kind, target = data.get("variable_dustel_target_kind", ""), data.get("variable_dustel_target", "")
        return CallRequest(direction="in", account=target if kind == "account" else "",
                           callee=data.get("Caller-Destination-Number", ""), **common)  # type: ignore[arg-type]
    # the authenticated SIP user (sofia sets user_name on digest auth)
    # (behind the edge: set_user from the From the edge authenticated sets user_name too)
    account = data.get("variable_user_name") or data.get("variable_sip_auth_username") or ""
    edge_source = data.get(f"variable_{V.EDGE_SOURCE}", "")
    return CallRequest(direction="out", account=account, callee=data.get("Caller-Destination-Number", ""),
                       source_ip=edge_source.rsplit(":", 1)[0].strip("[]") if edge_source
                       else data.get("variable_sip_network_ip") or None,
                       secure=data.get("variable_sip_via_protocol", "").lower() in ("tls", "wss"),
                       **common)  # type: ignore[arg-type]


def ddi_number(data: Mapping[str, str]) -> str:
    """The number a call to a DDI block was dialled to, as the PBX behind gets
    it: block head + extension, or + the central answering point's digits."""
    block = data.get("variable_dustel_block", "")
    if not block:
        return ""
    ext = data.get("variable_dustel_ddi", "") or data.get("variable_dustel_central", "")
    return token(block + ext, "ddi number")


def bridge_target(d: Decision, data: Mapping[str, str]) -> str:
    if d.route in ("internal", "inbound"):
        domain = token(data.get("variable_dustel_domain") or data.get("variable_domain_name", ""), "domain")
        user = f"user/{token(d.destination, 'destination')}@{domain}"
        ddi = ddi_number(data) if d.route == "inbound" else ""
        # the PBX behind a DDI account learns the dialled extension from To
        return f"{{sip_invite_to_uri=<sip:{ddi}@{domain}>}}{user}" if ddi else user
    # external and emergency leave through the carrier gateway
    return f"sofia/gateway/carrier/{token(d.destination, 'destination')}"


def stage_bridge(stage: Stage, d: Decision, data: Mapping[str, str], legs: Mapping[str, Decision]) -> str:
    """One stage of divert.plan as a ``bridge`` argument: its accounts
    (``user/`` rings every registration, and fails at once with
    USER_NOT_REGISTERED when there is none — recording 08) and its admitted
    external legs (``legs``: E.164 → the leg's decision; each presents its
    number and is limited from its own answer) ring together (``,``) for
    the stage's time (``leg_timeout``).  '' when nothing can ring."""
    parts = []
    for a in stage.accounts:      # the called account keeps its DDI request user; a target does not
        target = bridge_target(replace(d, destination=a),
                               data if a == d.destination else {**data, "variable_dustel_block": ""})
        # a leg's own variables are [..] inside a dial string whose {..} holds the common ones
        parts.append("[" + target[1:].replace("}", "]", 1) if target.startswith("{") else target)
    for e164 in stage.externals:
        leg = legs.get(e164)
        if leg is None or not leg.admit:
            continue
        parts.append(f"[origination_caller_id_number={token(leg.caller_id or 'anonymous', 'caller id')},"
                     f"execute_on_answer='sched_hangup +{int(leg.max_seconds)} ALLOTTED_TIMEOUT']"
                     f"sofia/gateway/carrier/{token(leg.destination, 'forwarding target')}")
    return f"{{leg_timeout={int(stage.seconds)}}}" + ",".join(parts) if parts else ""


def fax_job(data: Mapping[str, str]) -> int:
    raw = data.get("variable_dustel_fax_job", "")
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"dustel_fax_job: must be a job id (got {raw[:20]!r})")
    return int(raw)


def fax_sent(done: Mapping[str, str] | None) -> tuple[str, int, str]:
    """(SUCCESS | FAILED, pages, text) of txfax's EXECUTE_COMPLETE: the same
    ``variable_fax_*`` as rxfax's in recording 09 (mod_spandsp's phase E
    handler sets them for both; pages are those transmitted).  No event
    (the call ended first): FAILED."""
    if done is None or done.get("Application") != "txfax":
        return "FAILED", 0, "the call ended before the fax"
    pages = done.get("variable_fax_document_transferred_pages", "")
    return ("SUCCESS" if done.get("variable_fax_success") == "1" else "FAILED",
            int(pages) if pages.isascii() and pages.isdigit() else 0,
            clean_text(done.get("variable_fax_result_text", "")))


def clean_text(value: str) -> str:
    """The far end's words (result text, station id) as a report may show them."""
    return "".join(c for c in value if c.isalnum() or c in " +-.,")[:80]


def fax_received(done: Mapping[str, str], data: Mapping[str, str], node: str) -> Received:
    """What rxfax's EXECUTE_COMPLETE says (recording 09: ``variable_fax_success``,
    ``fax_document_transferred_pages``, ``fax_result_text``, ``fax_transfer_rate``,
    ``fax_remote_station_id``)."""
    pages = done.get("variable_fax_document_transferred_pages", "")
    rate = done.get("variable_fax_transfer_rate", "")
    return Received(node=node, call_id=data.get("Unique-ID", ""), tenant_id=_tenant(data),
                    faxbox=data.get("variable_dustel_target", ""), caller=_caller(data),
                    success=done.get("variable_fax_success") == "1", pages=int(pages) if pages.isdigit() else 0,
                    result=done.get("variable_fax_result_text", ""), bit_rate=int(rate) if rate.isdigit() else None,
                    remote_station=done.get("variable_fax_remote_station_id", "")[:60])


def with_logo(acts: list[Action], logo: str) -> list[Action]:
    """The sound logo as early media (``pre_answer``, ``playback``) before the
    call is put through: before the first answer, bridge or queue."""
    if not logo:
        return acts
    i = next((n for n, (app, _) in enumerate(acts) if app in ("answer", "bridge", "callcenter")), None)
    if i is None:
        return acts
    return [*acts[:i], ("pre_answer", ""), ("playback", header_value(logo, "logo")), *acts[i:]]


def actions(d: Decision, data: Mapping[str, str], queue: QueueState | None = None,
            leg: Decision | None = None, stage: Stage | None = None,
            legs: Mapping[str, Decision] | None = None, fax_spool_dir: str = "/var/spool/dustel/fax") \
        -> list[Action]:
    """The applications to execute, in order, for a decision.

    Admitted: record the decision, present the caller ID, arm the time limit
    for when the call is answered (``execute_on_answer`` of ``sched_hangup``,
    so ringing does not count), then bridge.  Refused: record why and
    ``respond`` with the refusal's SIP code (``policy.REFUSALS``).  Every value is a token or a line-break-free header
    value (``protocol.token`` / ``header_value``)."""
    out: list[Action] = [("set", f"{V.ACTION.lower()}={'admit' if d.admit else 'refuse'}"),
                         ("set", f"{V.REASON.lower()}={token(d.reason, 'reason')}")]
    if not d.admit:
        # before answer, ``respond <code>`` sends exactly the SIP code of the
        # refusal table (mod_sofia hangs the channel up with it); ``hangup
        # CAUSE`` would leave as 603 whatever the reason
        out.append(("respond", str(int(d.sip_code))))
        return out
    kind = data.get("variable_dustel_target_kind", "account")
    # the presented number (policy.presented_caller_id); never what the phone sent
    out.append(("set", f"effective_caller_id_number={token(d.caller_id or 'anonymous', 'caller id')}"))
    if d.max_seconds:
        out.append(("set", f"execute_on_answer=sched_hangup +{int(d.max_seconds)} ALLOTTED_TIMEOUT"))
    if d.route == "inbound" and kind == "queue" and queue is not None and not queue.open:
        out.append(("answer", ""))
        if queue.closed_announce:
            out.append(("playback", token(queue.closed_announce, "announcement")))
        if queue.closed_target.startswith("+") and leg is not None and leg.admit:
            # an outbound leg of the tenant: its own decision's limit (from its answer) and number
            out.append(("set", "hangup_after_bridge=true"))
            out.append(("bridge", f"{{origination_caller_id_number={token(leg.caller_id or 'anonymous', 'caller id')},"
                                  f"execute_on_answer='sched_hangup +{int(leg.max_seconds)} ALLOTTED_TIMEOUT'}}"
                                  f"sofia/gateway/carrier/{token(leg.destination, 'closed target')}"))
        elif queue.closed_target.startswith("+"):
            out.append(("hangup", "NORMAL_CLEARING"))          # the leg was refused (logged)
        elif queue.closed_target:
            domain = token(data.get("variable_dustel_domain", ""), "domain")
            out.append(("bridge", f"user/{token(queue.closed_target, 'closed target')}@{domain}"))
        else:
            out.append(("hangup", "NORMAL_CLEARING"))
        return out
    if d.route == "inbound" and kind == "fax":
        # mod_spandsp writes the TIFF; its result comes as variable_fax_* on rxfax's EXECUTE_COMPLETE
        # (recording 09: the spandsp::rxfaxresult event does not reach a myevents socket)
        out.append(("answer", ""))
        out.append(("rxfax", f"{fax_spool_dir}/{token(data.get('Unique-ID', ''), 'call id')}.tif"))
        return out
    if d.route == "inbound" and kind == "queue" and queue is not None and queue.full:
        # mod_callcenter has no max callers: dustel supplies it (hours.state counts the waiting)
        out.append(("respond", str(REFUSALS["queue_full"][0])))
        return out
    if d.route == "inbound" and kind == "queue":
        out.append(("answer", ""))
        queue = token(data.get("variable_dustel_target", ""), "queue")
        out.append(("callcenter", f"{queue}@{token(data.get('variable_dustel_domain', ''), 'domain')}"))
        return out
    out.append(("set", "hangup_after_bridge=true"))
    if stage is not None:          # an account's call: the plan's first stage (a second follows on its outcome)
        out.append(("set", "continue_on_fail=true"))
        bridge = stage_bridge(stage, d, data, legs or {})
        out.append(("bridge", header_value(bridge, "bridge")) if bridge else ("respond", "480"))
        return out
    out.append(("bridge", header_value(bridge_target(d, data), "bridge")))
    return out


# ------------------------------------------------------------- the dialplan fetch (mod_xml_curl)

_TENANT_CONTEXT = re.compile(r"t([0-9]{1,18})")


def fetched_channel(form: Mapping[str, str]) -> Mapping[str, str] | None:
    """A dialplan fetch's request (``wire.fetch.Form``) for a phone's call as
    the channel data the socket would get for the same call after the
    rendered extension — or None (a carrier's call: ``fetched_number``).

    The fetch decides a phone's calls that its tenant's context (``t<id>``,
    the directory's ``user_context``) hands to the policy as outbound calls
    (``FS_OUTBOUND``): the tenant of the context, as that extension exports
    it, and the phone's domain.  Everything else stays with the static
    dialplan as rendered: emergency (its first extension, no server at
    all), star codes and speed dials (``*``: the socket and a transfer),
    and the other contexts but ``public`` — the loopback legs of agents
    and fax jobs."""
    if form.get("section") != "dialplan":
        return None
    context = form.get("Hunt-Context") or form.get("Caller-Context") or ""
    dest = form.get("Hunt-Destination-Number") or form.get("Caller-Destination-Number") or ""
    m = _TENANT_CONTEXT.fullmatch(context)
    if m is None or dest.startswith("*") or re.search(V.FS_EMERGENCY, dest) or not re.search(V.FS_OUTBOUND, dest):
        return None
    data = Overlay({"variable_dustel_tenant": m.group(1), "variable_dustel_domain": form.get("variable_domain_name")
                    or "", "Caller-Destination-Number": dest, "Caller-Context": context}, form)
    return data if route_of(data) == V.ROUTE_OUTBOUND else None


def phone_prelude(data: Mapping[str, str]) -> list[Action]:
    """What a tenant context's ``outbound`` extension sets before its socket:
    the tenant, exported so that every leg's CDR carries it, and the domain."""
    out: list[Action] = [("export", f"dustel_tenant={token(data.get('variable_dustel_tenant', ''), 'tenant')}")]
    if data.get("variable_dustel_domain"):
        out.append(("set", f"dustel_domain={token(data.get('variable_dustel_domain'), 'domain')}"))
    return out


def fetched_number(form: Mapping[str, str]) -> str | None:
    """The destination of a carrier's call (the ``public`` context) that the
    fetch may decide once it knows the number's target (``number_channel``);
    None: not a carrier's call.  Behind the SIP edge (F-14) a phone's call
    enters ``public`` too, carrying the edge's source header: the static
    ``edge-phone`` extension hands it to its tenant's context, whose fetch
    decides it (ASSUMPTION, no recording shows it: sofia copies a received
    ``X-`` header into the channel variable ``sip_h_<name>``, and mod_xml_curl
    posts every channel variable, as recording 12 shows for the others).
    Without the edge a phone that forges the header only makes the fetch
    step aside for the static dialplan, never the reverse."""
    if form.get("section") != "dialplan" or (form.get("Hunt-Context") or form.get("Caller-Context")) != "public":
        return None
    if form.get(f"variable_sip_h_{V.EDGE_SOURCE_HEADER}"):
        return None
    return form.get("Hunt-Destination-Number") or form.get("Caller-Destination-Number") or None


def number_channel(form: Mapping[str, str], prelude: list[Action], dest: str) -> Mapping[str, str]:
    """A carrier's call as the socket's channel data after the number's
    ``public`` extension: its ``prelude`` (render.context.fs_number_actions)
    applied as channel variables."""
    values = {"variable_" + data.partition("=")[0]: data.partition("=")[2] for _, data in prelude}
    return Overlay({**values, "Caller-Destination-Number": dest, "Caller-Context": "public"}, form)


def single_stage(stages: tuple[Stage, ...]) -> Stage | None:
    """The one stage of a plan that a fetched dialplan rings by itself:
    accounts only — no external leg to admit and settle, no second stage to
    read after the first (those keep the socket)."""
    if len(stages) != 1 or stages[0].externals or not stages[0].accounts:
        return None
    return stages[0]


def fetch_actions(d: Decision, data: Mapping[str, str], prelude: list[Action], stage: Stage | None = None,
                  logo: str = "") -> list[Action]:
    """The applications of a fetched dialplan document: what the rendered
    extension sets before its socket (``prelude``), then the very plan the
    socket executes for the decision (``actions``, ``with_logo``)."""
    acts = actions(d, data, stage=stage, legs={}) if stage is not None else actions(d, data)
    return [*prelude, *(with_logo(acts, logo) if logo else acts)]
