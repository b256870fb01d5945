"""Outbound Event Socket server (FreeSWITCH): greenswitch in a gevent process.

Run it as ``dustel esl serve``, which execs ``python -m dustel.agi.esl_main``:
that module patches with gevent before anything else is imported (psycopg
picks its gevent-friendly wait function at import), in a process of its
own — asyncio and panoramisk never load here.

The rendered FreeSWITCH dialplan hands every call to ``socket 127.0.0.1:8084
async full``.  For each connection greenswitch sends ``connect`` and gets the
channel data; ``CallControl.run`` then subscribes to the call's events
(``myevents``), asks FreeSWITCH to ``linger`` so the hangup events still
arrive, admits the call through the same decision and money flows as the
FastAGI server (``callpath.calls``, run synchronously; psycopg cooperates with
gevent once patched), executes the applications ``agi.freeswitch.actions``
lists, and settles the call from ``CHANNEL_HANGUP_COMPLETE``'s billsec.

Sessions are greenswitch's, reading frames with ``wire.esl``
(``wire.esl_reader``: greenswitch's own reader would let an encoded
line break in a caller name forge a header).
"""
from __future__ import annotations

import datetime as dt
import logging
import resource
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import gevent
import gevent.event
import gevent.socket
import psycopg
from greenswitch.esl import OutboundESLServer, OutboundSessionHasGoneAway
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .. import logs
from ..callpath import calls, divert
from ..callpath import variables as V
from ..callpath.policy import INTERNAL_ERROR, Decision
from ..config import LISTEN_BACKLOG
from ..provisioning import media
from ..queue import agents, codes, hours, service, stats
from ..wire.esl import command, header_value
from ..wire.esl_reader import DustelSession, ESLMessage
from . import freeswitch as fs
from .workers import Service, parser, this_process

log = logging.getLogger("dustel.esl")


class Batch:
    """Calls that arrive while the worker greenlet is busy share the next
    transaction (as in the FastAGI server): ``flow(items)`` returns one
    result or exception per item; a failing batch is run again one by one,
    so one bad request never fails its neighbours; with the database
    unreachable every waiting request fails at once."""

    def __init__(self, flow: Any, max_batch: int = 64) -> None:
        self.flow, self.max_batch = flow, max_batch
        self._pending: list[tuple[Any, gevent.event.AsyncResult]] = []
        self._wake = gevent.event.Event()
        self._worker: Any = None

    def submit(self, item: Any) -> Any:
        if self._worker is None:
            self._worker = gevent.spawn(self._loop)
        result = gevent.event.AsyncResult()
        self._pending.append((item, result))
        self._wake.set()
        return result.get()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            if not self._pending:
                self._wake.clear()
            if batch:
                self._run(batch)

    def _run(self, batch: list[tuple[Any, gevent.event.AsyncResult]]) -> None:
        try:
            results = Runtime.run_steps(self.flow([item for item, _ in batch]))
        except psycopg.OperationalError as exc:
            waiting, self._pending = batch + self._pending, []
            self._wake.clear()
            for _, r in waiting:
                r.set_exception(exc)
            return
        except Exception as exc:     # noqa: BLE001 — the worker must outlive any request
            if len(batch) > 1:
                for one in batch:
                    self._run([one])
                return
            results = [exc]
        for (_, r), res in zip(batch, results, strict=True):
            if isinstance(res, Exception):
                r.set_exception(res)
            else:
                r.set(res)


class Runtime:
    """Process-wide: the database pool, the tariff cache, the batches."""

    pool: ConnectionPool | None = None
    tariffs = calls.TariffCache()
    star_codes: dict[str, str] = dict(codes.ACTIONS)
    logo_dir = "/var/lib/dustel/logo"        # settings.logo_dir ($DUSTEL_LOGO_DIR)
    fax_spool_dir = "/var/spool/dustel/fax"  # settings.fax_spool_dir: where FreeSWITCH writes received faxes
    fax_read_dir = "/var/spool/dustel/fax"   # settings.fax_read_dir: where this server reads them
    admissions = Batch(lambda reqs: calls.admit_many(reqs, Runtime.tariffs))
    settlements = Batch(calls.settle_many)

    @classmethod
    def run(cls, flow: calls.Flow) -> Any:
        assert cls.pool is not None
        with cls.pool.connection() as conn:
            return calls.run_sync(conn, flow)

    @classmethod
    def run_steps(cls, flow: calls.Flow) -> Any:
        """Admission and settlement: one round trip per step (calls.run_steps_sync)."""
        assert cls.pool is not None
        with cls.pool.connection() as conn:
            return calls.run_steps_sync(conn, flow)


TONE_OK = "tone_stream://%(150,100,880);loops=2"
TONE_ERROR = "tone_stream://%(400,200,425);loops=3"
# min max tries timeout terminators prompt error-prompt variable regexp digit-timeout
PROMPT = "1 8 1 6000 # tone_stream://%(100,0,880) silence_stream://250 dustel_digits \\d+ 3000"


def queue_answered(done: Mapping[str, str]) -> bool:
    """Did ``callcenter`` end because an agent answered?  mod_callcenter then
    bridges the caller to the agent itself (recording 06: EXECUTE_COMPLETE
    of ``callcenter`` with ``cc_cause=answered``, then ``uuid_bridge``): the
    call goes on until the caller's hangup and must not be cut here."""
    return done.get("Application") == "callcenter" and done.get("variable_cc_cause") == "answered"


def bridged_seconds(hangup: Mapping[str, str]) -> int:
    """Whole seconds from the bridge to the hangup (recording 06:
    ``Caller-Channel-Bridged-Time`` / ``-Hangup-Time``, microseconds)."""
    b, h = hangup.get("Caller-Channel-Bridged-Time", "0"), hangup.get("Caller-Channel-Hangup-Time", "0")
    if not (b.isascii() and b.isdigit() and h.isascii() and h.isdigit()) or int(b) == 0 or int(h) < int(b):
        return 0
    return (int(h) - int(b)) // 1_000_000


class CallControl:
    """One call on the outbound socket: decide, execute, settle."""

    def __init__(self, session: DustelSession) -> None:
        self.session = session
        self.hangup_complete: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self.bridge_done: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self.hung_up = gevent.event.Event()
        self.settles_call = True            # the call of this channel has a reservation to settle
        self.legs: list[str] = []           # and so do the legs dustel placed for it (<call id>:leg)
        self.staged = False                 # a call to an account / ring group: divert's stages follow
        self.admitted = False               # this channel's call holds a reservation (and lines)
        self.plan_reached = False           # FreeSWITCH acknowledged the applications of the decision
        self.routing: divert.Routing | None = None
        self.bridged_to = ""                # the destination of the leg the caller was bridged to
        # the connection subscribes to these two events only (freeswitch.subscription)
        session.register_handle("CHANNEL_HANGUP_COMPLETE", self._on_hangup_complete)
        session.register_handle("CHANNEL_EXECUTE_COMPLETE", self._on_execute_complete)
        session.register_handle("DISCONNECT", self._on_disconnect)

    def _on_hangup_complete(self, event: ESLMessage) -> None:
        self.hung_up.set()
        self.hangup_complete.set(event.headers)
        if not self.bridge_done.ready():       # an application's result that came first is kept
            self.bridge_done.set(None)

    def _on_execute_complete(self, event: ESLMessage) -> None:
        self.session.on_event(event)      # greenswitch's blocking call_command waits on this event too
        app = event.headers.get("Application")
        if app == "bridge":
            self.bridged_to = fs.answered_peer(event.headers) or self.bridged_to
        if app in ("bridge", "callcenter", "rxfax", "txfax"):
            self.bridge_done.set(event.headers)

    def _on_disconnect(self, event: ESLMessage) -> None:
        if event.headers.get("Content-Disposition") == "linger":
            self.hung_up.set()       # FreeSWITCH sends it when the channel hangs up (recordings 05-10)
        else:
            self.hangup_complete.set(None)
            if not self.bridge_done.ready():
                self.bridge_done.set(None)

    def node(self, data: Mapping[str, str]) -> str:
        """The configured name of the node this connection came from, else
        the switch's own name (loopback demo)."""
        return getattr(self.session, "dustel_node", "") or fs.node_of(data)

    def decide(self, data: dict[str, str]) -> Decision:
        route = fs.route_of(data)
        req = replace(fs.request_from(data), node=self.node(data))
        d: Decision = Runtime.admissions.submit(req)
        self.admitted = d.admit
        log.info("%s call=%s tenant=%s account=%s callee=%s admit=%s reason=%s max=%s", route, req.call_id,
                 req.tenant_id, req.account, req.callee, d.admit, d.reason, d.max_seconds)
        return d

    def run(self) -> None:
        s = self.session
        data: Mapping[str, str] = s.session_data if s.session_data is not None else {}   # (a lazy Event: no len())
        d = INTERNAL_ERROR
        try:
            s.send_all([command(c) for c in fs.subscription(data)])     # one write, the replies in order
            if fs.route_of(data) == V.ROUTE_AGENT_LEG:
                d = self.agent_leg(data)
                return
            if fs.route_of(data) == V.ROUTE_FAX_OUT:
                d = self.fax_dial(data)
                return
            if fs.route_of(data) == V.ROUTE_FAX_SEND:
                self.fax_send(data)
                return
            if fs.route_of(data) == V.ROUTE_AGENT:
                try:
                    self.star(data)
                except psycopg.Error as exc:
                    log.warning("agent call=%s failed: %s", data.get("Unique-ID"), exc)
                    self._tone(False)
                return
            try:
                if data.get("variable_dustel_target_kind") == "queue":
                    req = fs.request_from(data)
                    if Runtime.run(agents.is_external_agent(req.tenant_id, req.caller)):
                        self.hotline(data, req.tenant_id, req.caller)
                        return
                d = self.decide(data)
                try:
                    plan = self.plan(d, data)
                except (ValueError, psycopg.Error):
                    if d.admit:      # admitted, but nothing can be executed: give its line and money back
                        self.settle(data, {"variable_billsec": "0", "Hangup-Cause": "NORMAL_TEMPORARY_FAILURE"})
                    raise
            except (ValueError, calls.UnknownAccount, psycopg.Error) as exc:
                log.warning("call=%s refused: %s: %s", data.get("Unique-ID"), type(exc).__name__, exc)
                d, plan = INTERNAL_ERROR, fs.actions(INTERNAL_ERROR, {})
            if not d.admit:
                log.info("call=%s refused reason=%s sip=%s", data.get("Unique-ID"), d.reason, d.sip_code)
            queued = any(app == "callcenter" for app, _ in plan)
            if queued:     # counted among the queue's waiting callers until callcenter ends
                self.queue_waiting(data, True)
            try:
                replies = s.execute_all([fs.RESUME_OFF, *plan])      # one write: the plan can no longer resume
                self.plan_reached = all(str(r.data).startswith("+OK") for r in replies)
                if not d.admit:
                    return
                done = self.bridge_done.get()
            finally:
                if queued:
                    self.queue_waiting(data, False)
            if done is not None and self.staged and not self.hung_up.is_set() and not queue_answered(done):
                # stage 1 ended unanswered: the plan is read again (a change made while it rang applies)
                bridge = self.next_stage(d, data, done.get("variable_originate_disposition", ""))
                if bridge:
                    self.bridge_done = gevent.event.AsyncResult()
                    s.call_command("bridge", bridge)
                    done = self.bridge_done.get()
            if done is not None and done.get("Application") == "rxfax":
                self.fax_in(data, done)
            if done is not None and queue_answered(done):
                log.info("queue call=%s answered by agent leg=%s", data.get("Unique-ID"),
                         done.get("variable_cc_agent_uuid", ""))
            elif done is not None and not self.hung_up.is_set():
                # the far end never answered (busy, no answer, queue timeout): end the call with its cause
                cause = done.get("variable_originate_disposition", "")
                s.call_command("hangup", cause if cause in fs.CAUSES.values() else "NORMAL_CLEARING")
            self.settle(data, self.hangup_complete.get())
        except (OutboundSessionHasGoneAway, OSError) as exc:
            if not self.plan_reached and (self.admitted or self.legs):
                # the socket died (or the caller left) before FreeSWITCH took the decision's
                # applications: nothing of it can run, so nothing is held — not until the expiry
                log.warning("call=%s: the socket ended before the plan (%s): reservation released",
                            data.get("Unique-ID"), type(exc).__name__)
                self.settle(data, {"variable_billsec": "0", "Hangup-Cause": "NORMAL_TEMPORARY_FAILURE"})
                return
            # lingering after a hangup, or the socket closed: the hangup event may still be on its way
            self.hangup_complete.wait(5)
            if self.admitted or self.legs:
                self.settle(data, self.hangup_complete.value if self.hangup_complete.ready() else None)

    def plan(self, d: Decision, data: dict[str, str]) -> list[fs.Action]:
        kind = data.get("variable_dustel_target_kind", "")
        self.routing = self.read_routing(data) if d.admit and d.route == "inbound" and kind in divert.LOGO_KINDS \
            else None
        acts = self._plan(d, data)
        if self.routing is not None and self.routing.logo:
            # FreeSWITCH resamples a file to the channel's rate: the 48 kHz one loses nothing
            acts = fs.with_logo(acts, media.file_path(Runtime.logo_dir, fs.request_from(data).tenant_id, "logo",
                                                      *self.routing.logo, 48000))
        return acts

    @staticmethod
    def read_routing(data: dict[str, str]) -> divert.Routing:
        """The call's stages and sound logo as the database says now (read
        again for each stage: a change made while a phone rings applies)."""
        return Runtime.run_steps(divert.routing(fs.request_from(data).tenant_id,
                                                data.get("variable_dustel_target_kind", ""),
                                                data.get("variable_dustel_target", ""),
                                                data.get("Caller-Destination-Number", ""), dt.datetime.now(dt.UTC)))

    def _plan(self, d: Decision, data: dict[str, str]) -> list[fs.Action]:
        qs = None
        if d.admit and data.get("variable_dustel_target_kind") == "queue":
            tenant = fs.request_from(data).tenant_id
            queue = hours.queue_of(data.get("variable_dustel_target", ""), tenant)
            now = dt.datetime.now(dt.UTC)
            qs = Runtime.run(hours.state(tenant, queue, now))
            if not qs.open or qs.full:     # no engine event will tell the statistics
                Runtime.run(calls.execute(stats.not_queued(self.node(data), tenant, queue, data.get("Unique-ID", ""),
                                                           now)))
            if not qs.open and qs.closed_target.startswith("+"):
                return fs.actions(d, data, qs, self.leg(data, qs.closed_target))
        if d.admit and d.route == "inbound" and data.get("variable_dustel_target_kind", "account") in ("account",
                                                                                                        "group"):
            return self.stages(d, data)
        return fs.actions(d, data, qs, fax_spool_dir=Runtime.fax_spool_dir)

    def stage_legs(self, data: dict[str, str], stage: divert.Stage, account: str | None) -> dict[str, Decision]:
        """The external legs of a stage, decided and reserved as it starts."""
        return {e164: self.leg(data, e164, account=account, suffix=calls.leg_suffix(len(self.legs)))
                for e164 in stage.externals}

    def stages(self, d: Decision, data: dict[str, str]) -> list[fs.Action]:
        """A call to an account or a ring group: divert's first stage; each
        external target an outbound leg of the tenant with the forwarding
        account's settings (a group's: the main account's)."""
        r = self.routing if self.routing is not None else self.read_routing(data)
        self.staged = True
        stage = r.stages[0] if r.stages else divert.Stage((), (), 0)
        return fs.actions(d, data, stage=stage, legs=self.stage_legs(data, stage, r.leg_account))

    def next_stage(self, d: Decision, data: dict[str, str], disposition: str) -> str:
        """The bridge of stage 2 when the plan, read now, has one that this
        outcome of stage 1 starts (divert.goes_on); '' none."""
        try:
            r = self.read_routing(data)
            outcome = divert.OUTCOMES["freeswitch"].get(disposition, "failed")
            if len(r.stages) < 2 or not divert.goes_on(r.stages[1].after, outcome):
                return ""
            bridge = fs.stage_bridge(r.stages[1], d, data, self.stage_legs(data, r.stages[1], r.leg_account))
        except (ValueError, psycopg.Error) as exc:
            log.warning("call=%s: no next stage: %s: %s", data.get("Unique-ID"), type(exc).__name__, exc)
            return ""
        log.info("call=%s next stage after %s: %s", data.get("Unique-ID"), disposition, bridge or "nothing to ring")
        return header_value(bridge, "bridge") if bridge else ""

    def fax_in(self, data: dict[str, str], done: dict[str, str]) -> None:
        """rxfax ended: the fax to e-mail (fax.inbound), read from fax_read_dir."""
        from ..fax import inbound as fax_in
        r = fs.fax_received(done, data, self.node(data))
        try:
            with open(f"{Runtime.fax_read_dir}/{r.call_id}.tif", "rb") as f:
                tiff: bytes | None = f.read()
        except OSError:
            tiff = None
        try:
            assert Runtime.pool is not None
            with Runtime.pool.connection() as conn, conn.transaction():
                res = fax_in.received(conn, r, tiff)
        except (psycopg.Error, LookupError) as exc:
            log.warning("fax call=%s not recorded: %s: %s", r.call_id, type(exc).__name__, exc)
            return
        log.info("fax call=%s tenant=%s box=%s status=%s pages=%s", r.call_id, r.tenant_id, r.faxbox,
                 res["status"], res["pages"])

    def queue_waiting(self, data: dict[str, str], joined: bool) -> None:
        tenant = fs.request_from(data).tenant_id
        queue = hours.queue_of(data.get("variable_dustel_target", ""), tenant)
        try:
            Runtime.run(hours.waiting(self.node(data), data.get("Unique-ID", ""), tenant, queue, joined))
        except psycopg.Error as exc:     # a missed count is no reason to drop the call
            log.warning("call=%s queue waiting count not updated: %s", data.get("Unique-ID"), exc)

    def agent_leg(self, data: dict[str, str]) -> Decision:
        """mod_callcenter rings an agent on an external number through
        ``loopback/<tenant>-<number>/dustel-agent-out``: an outbound leg of the
        tenant, decided, limited and settled (``<uuid>:leg``) like any other."""
        s = self.session
        self.settles_call = False       # this channel is only the leg: no call of its own to settle
        try:
            d = self.leg(data, data.get("variable_dustel_leg", ""))
            plan = fs.actions(d, data) if d.admit else \
                [("set", f"{V.REASON.lower()}={d.reason}"), ("hangup", fs.cause_name(d.q850))]
        except (ValueError, psycopg.Error) as exc:
            log.warning("leg call=%s refused: %s: %s", data.get("Unique-ID"), type(exc).__name__, exc)
            d, plan = INTERNAL_ERROR, [("hangup", fs.cause_name(INTERNAL_ERROR.q850))]
        for app, arg in [fs.RESUME_OFF, *plan]:     # a loopback leg: no SIP response, a hangup cause instead
            s.call_command(app, arg or None)
        self.plan_reached = True
        if d.admit:
            self.bridge_done.get()
            self.settle(data, self.hangup_complete.get())
        return d

    def fax_dial(self, data: dict[str, str]) -> Decision:
        """The B leg of a fax job's loopback call (``dustel-fax-out``): an
        outbound leg of the tenant presenting the job's number, decided,
        limited and settled like an agent's leg, bridged to the carrier.
        Refused or unanswered, the job hears it now (fax.outbound.result:
        retried or final); answered, the A leg sends and reports."""
        from ..fax import outbound as fax_out
        s = self.session
        self.settles_call = False
        d = INTERNAL_ERROR
        try:
            req = replace(fs.request_from(data), node=self.node(data))
            job_id = fs.fax_job(data)
            job = Runtime.run(fax_out.sending_job(req.tenant_id, job_id))
            if job is None or job["to_number"] != req.callee:
                raise ValueError(f"fax job {job_id} of tenant {req.tenant_id} to {req.callee} is not being sent")
            leg, d = Runtime.run_steps(calls.admit_leg(replace(req, caller=job["from_number"]), job["to_number"],
                                                 Runtime.tariffs))
            log.info("fax job=%s leg=%s tenant=%s callee=%s admit=%s reason=%s max=%s", job_id, leg.call_id,
                     req.tenant_id, req.callee, d.admit, d.reason, d.max_seconds)
            if d.admit:
                self.legs.append(leg.call_id)
                plan = fs.actions(replace(d, caller_id=job["from_number"]), data)
            else:
                self._fax_result(job_id, "REFUSED", d.reason)
                plan = [("set", f"{V.REASON.lower()}={d.reason}"), ("hangup", fs.cause_name(d.q850))]
        except (ValueError, psycopg.Error) as exc:
            log.warning("fax leg call=%s refused: %s: %s", data.get("Unique-ID"), type(exc).__name__, exc)
            if d.admit:     # admitted, but nothing can be executed: its line and money back
                self.settle(data, {"variable_billsec": "0", "Hangup-Cause": "NORMAL_TEMPORARY_FAILURE"})
            s.call_command("hangup", fs.cause_name(INTERNAL_ERROR.q850))
            return INTERNAL_ERROR
        for app, arg in [fs.RESUME_OFF, *plan]:
            s.call_command(app, arg or None)
        self.plan_reached = True
        if d.admit:
            done = self.bridge_done.get()
            if not self.bridged_to:          # never answered: busy, no answer, congestion …
                status = (done or {}).get("variable_originate_disposition", "") or "NO_ANSWER"
                self._fax_result(job_id, "DIAL", status)
                if not self.hung_up.is_set():    # the A leg's originate fails with the same cause
                    s.call_command("hangup", status if status in fs.CAUSES.values() else "NORMAL_CLEARING")
            self.settle(data, self.hangup_complete.get())
        return d

    def fax_send(self, data: dict[str, str]) -> None:
        """The A leg of a fax job's call, answered when the far end answered
        (``dustel-fax-send``): ``txfax`` of the attempt's file, the result
        from ``variable_fax_*`` on its EXECUTE_COMPLETE to the job."""
        from ..fax import outbound as fax_out
        s = self.session
        self.settles_call = False           # the B leg carries the money
        try:
            req = fs.request_from(data)
            job_id = fs.fax_job(data)
            job = Runtime.run(fax_out.sending_job(req.tenant_id, job_id))
            if job is None:
                raise ValueError(f"fax job {job_id} of tenant {req.tenant_id} is not being sent")
        except (ValueError, psycopg.Error) as exc:
            log.warning("fax send call=%s refused: %s: %s", data.get("Unique-ID"), type(exc).__name__, exc)
            s.call_command("hangup", "NORMAL_CLEARING")
            return
        s.call_command("txfax", fax_out.fax_send_path(Runtime.fax_spool_dir, job_id, int(job["attempts"])))
        status, pages, text = fs.fax_sent(self.bridge_done.get())
        self._fax_result(job_id, "FAX", status, pages, text)
        if not self.hung_up.is_set():
            s.call_command("hangup", "NORMAL_CLEARING")

    def _fax_result(self, job_id: int, kind: str, status: str, pages: int = 0, text: str = "") -> None:
        from ..fax import outbound as fax_out
        try:
            assert Runtime.pool is not None
            with Runtime.pool.connection() as conn, conn.transaction():
                state = fax_out.result(conn, job_id, kind, status, pages, text)
        except psycopg.Error as exc:        # the deliverer counts a job with no result as a failed attempt
            log.warning("fax job=%s result %s %s not recorded: %s", job_id, kind, status, exc)
            return
        log.info("fax job=%s %s %s pages=%s -> %s", job_id, kind, status, pages, state)

    def leg(self, data: dict[str, str], target: str, account: str | None = None, suffix: str = calls.LEG) \
            -> Decision:
        """A leg dustel places for this call (a closed queue's external target,
        an agent's number): an outbound call of the tenant, decided and
        reserved as ``<call id>:leg`` (calls.admit_leg), settled with the
        call from the bridge to the hangup."""
        req = replace(fs.request_from(data), node=self.node(data))
        leg, d = Runtime.run_steps(calls.admit_leg(req, target, Runtime.tariffs, account=account, suffix=suffix))
        log.info("leg call=%s tenant=%s callee=%s admit=%s reason=%s max=%s", leg.call_id, req.tenant_id, target,
                 d.admit, d.reason, d.max_seconds)
        if d.admit:
            self.legs.append(leg.call_id)
        return d

    def star(self, data: dict[str, str]) -> None:
        """The agent star codes (*51–*54): store, apply to mod_callcenter with
        ``callcenter_config`` over this socket, confirm with a tone, hang up.
        A missing queue or PIN is prompted once each."""
        s = self.session
        dialed = data.get("variable_dustel_star", "") + data.get("variable_dustel_star_args", "")
        account = data.get("variable_user_name", "")
        try:
            tenant = fs.request_from(data).tenant_id
            req = codes.parse(dialed, Runtime.star_codes)
        except ValueError as exc:
            log.info("agent call=%s refused: %s", data.get("Unique-ID"), exc)
            self._tone(False)
            return
        s.call_command("answer")
        out = Runtime.run(agents.star(tenant, account, "", req))
        for _ in range(2):
            if out.reason not in ("need_queue", "need_pin"):
                break
            entered = self._digits()
            if entered is None:
                break
            req = replace(req, queue=entered) if out.reason == "need_queue" else replace(req, pin=entered)
            out = Runtime.run(agents.star(tenant, account, "", req))
        for change in out.changes:
            for cmd in service.fs_commands(change):
                s.send(cmd.decode()[:-2])
        log.info("agent tenant=%s account=%s action=%s queue=%s ok=%s reason=%s agent=%s", tenant, account,
                 req.action, req.queue, out.ok, out.reason, out.agent_id)
        self._tone(out.ok)

    def _digits(self) -> str | None:
        ev = self.session.call_command("play_and_get_digits", PROMPT, block=True, response_timeout=30)
        entered = ev.headers.get("variable_dustel_digits", "") if ev is not None else ""
        return entered if entered.isascii() and entered.isdigit() else None

    def hotline(self, data: dict[str, str], tenant: int, caller: str) -> None:
        """An agent's external number called its queue's hotline: PIN prompt,
        then login (or logout when logged in), a tone, hang up."""
        self.session.call_command("answer")
        pin = self._digits()
        out = agents.Outcome(False, "no_pin")
        queue = hours.queue_of(data.get("variable_dustel_target", ""), tenant)
        if pin is not None:
            out = Runtime.run(agents.hotline(tenant, queue, caller, pin))
            for change in out.changes:
                for cmd in service.fs_commands(change):
                    self.session.send(cmd.decode()[:-2])
        log.info("agent hotline tenant=%s queue=%s caller=%s ok=%s reason=%s changes=%s", tenant, queue, caller,
                 out.ok, out.reason, ",".join(c.op for c in out.changes))
        self._tone(out.ok)

    def _tone(self, ok: bool) -> None:
        self.session.call_command("playback", TONE_OK if ok else TONE_ERROR)
        self.session.call_command("hangup", "NORMAL_CLEARING")

    def settle(self, data: dict[str, str], hangup: dict[str, str] | None) -> None:
        call_id = data.get("Unique-ID", "")
        if hangup is None:
            log.warning("call=%s: no hangup event; the controller settles it from its CDR, else it expires", call_id)
            return
        raw = hangup.get("variable_billsec", "0")
        billsec = int(raw) if raw.isascii() and raw.isdigit() else 0
        # the call from its answer; the legs dustel placed for it: the one bridged, from the bridge to the
        # hangup, the others (rang, never answered) for 0
        node = self.node(data)
        try:
            done = [(call_id, Runtime.settlements.submit((node, call_id, billsec)))] if self.settles_call else []
            if len(self.legs) == 1 and not self.bridged_to:    # a closed queue's / agent's one leg
                done.append((self.legs[0], Runtime.settlements.submit((node, self.legs[0], bridged_seconds(hangup)))))
            elif self.legs:
                done += Runtime.run(calls.settle_legs(node, call_id, bridged_seconds(hangup), self.bridged_to))
        except psycopg.Error as exc:
            log.warning("call=%s settle failed (reservation expires): %s", call_id, exc)
            return
        for cid, st in done:
            log.info("hangup call=%s billsec=%s cause=%s status=%s charged=%s", cid, st.billsec,
                     hangup.get("Hangup-Cause"), st.status, st.charged_cents)


class DustelESLServer(OutboundESLServer):
    """greenswitch's server, accepting at once (its ``listen`` polls every
    100 ms) and creating ``DustelSession``s; port 0 picks a free port."""

    reuse_port = False      # a worker: every worker listens on the same port (SO_REUSEPORT)
    worker = 0

    def listen(self, ready: gevent.event.Event | None = None) -> None:
        self.server = gevent.socket.socket()
        self.server.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            self.server.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEPORT, 1)
        self.server.bind((self.bind_address, self.bind_port[0]))
        self.bound_port = self.server.getsockname()[1]
        self.server.listen(LISTEN_BACKLOG)
        self._running = True
        log.info("outbound event socket listening on %s:%s worker=%s max_calls=%s", self.bind_address,
                 self.bound_port, self.worker, self.max_connections)
        if ready is not None:
            ready.set()
        while self._running:
            sock, address = self.server.accept()
            ip = str(address[0])
            if ip not in self.nodes:
                log.warning("outbound connection from %s refused: not a configured engine node", ip)
                sock.close()
                continue
            session = DustelSession(address, sock)
            session.dustel_node = self.nodes[ip]     # type: ignore[attr-defined]
            gevent.spawn(self._serve, session)

    nodes: dict[str, str] = {}

    def _accept_call(self, session: DustelSession) -> None:     # type: ignore[override]
        if self.connection_count >= self.max_connections:      # greenswitch says so at INFO on the root logger
            log.warning("call turned away: the server is at full capacity (%s calls, esl_max_calls)",
                        self.connection_count)
        super()._accept_call(session)

    def _serve(self, session: DustelSession) -> None:
        try:
            self._accept_call(session)
        except OutboundSessionHasGoneAway:
            log.info("FreeSWITCH hung up before connect")
        except Exception:    # a bad connection must never stop the server
            log.exception("outbound connection failed")
            session.sock.close()


FD_HEADROOM = 256     # descriptors besides the calls' sockets: the database pool, logs, accept bursts


def open_files_for(max_calls: int) -> int:
    """Raise this process's soft limit of open files so that ``max_calls``
    sockets fit (systemd starts services with a soft limit of 1 024, which
    would fail the thousandth call's accept, not turn it away); returns
    the soft limit afterwards.  The hard limit is never raised."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_calls + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):     # above the kernel's fs.nr_open: the soft limit stays (serve warns)
            pass
    return soft


def serve(dsn: str, host: str, port: int, nodes: dict[str, str], max_connections: int = 20000,
          worker: int | None = None) -> None:
    """``nodes``: source address -> node name of the FreeSWITCH nodes that may
    connect ('' name: the node is the call's ``FreeSWITCH-Switchname``).
    ``max_connections``: calls held at once (settings.esl_max_calls); each
    call holds its socket while it lasts, so at 1 000 new calls a second of
    three minutes each a node needs 180 000 — a server turns away what is
    over its limit (greenswitch answers such a call ``connect`` and closes)."""
    soft = open_files_for(max_connections)
    if soft != resource.RLIM_INFINITY and soft < max_connections + FD_HEADROOM:
        log.warning("open files limited to %s: fewer than esl_max_calls=%s calls fit (raise LimitNOFILE)",
                    soft, max_connections)
    Runtime.pool = ConnectionPool(dsn, min_size=1, max_size=8,
                                 kwargs={"row_factory": dict_row, "autocommit": True, **calls.POOL_KWARGS}, open=True)
    server = DustelESLServer(bind_address=host, bind_port=port, application=CallControl,
                             max_connections=max_connections)
    server.nodes = dict(nodes)
    server.reuse_port, server.worker = worker is not None, worker or 0
    expire = gevent.spawn(_expire_loop) if not worker else None     # one sweep per server is enough
    try:
        server.listen()
    finally:
        if expire is not None:
            expire.kill()
        Runtime.pool.close()


def _expire_loop() -> None:
    while True:
        gevent.sleep(60)
        try:
            n = Runtime.run(calls.expire())
            if n:
                log.info("expired %s stale reservations", n)
        except psycopg.Error as exc:
            log.warning("expire failed: %s", exc)


SERVICE = Service("dustel esl serve", "dustel.agi.esl_main", "outbound event socket", "DUSTEL_ESL", 8084,
                  "esl_workers")


def main(argv: list[str] | None = None) -> None:
    import json
    import os
    import sys
    ap = parser(SERVICE)
    ap.add_argument("--max-calls", type=int, default=20000, help="calls held at once (settings: esl_max_calls)")
    args = ap.parse_args(argv)
    if args.max_calls < 1:
        ap.error("--max-calls: must be at least 1")
    logs.service(sys.stderr)
    # greenswitch logs three INFO lines a call on the root logger ("Call from …
    # ended", "Waiting for … greenlet exit"): dustel's own lines are the log
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("dustel").setLevel(logging.INFO)
    mine = this_process(SERVICE, ap, args, list(argv if argv is not None else sys.argv[1:]))
    if mine is None:
        return
    dsn, nodes = mine
    Runtime.star_codes = json.loads(os.environ.get("DUSTEL_STAR_CODES") or "{}") or dict(codes.ACTIONS)
    Runtime.logo_dir = os.environ.get("DUSTEL_LOGO_DIR") or Runtime.logo_dir
    Runtime.fax_spool_dir = os.environ.get("DUSTEL_FAX_SPOOL_DIR") or Runtime.fax_spool_dir
    Runtime.fax_read_dir = os.environ.get("DUSTEL_FAX_READ_DIR") or Runtime.fax_spool_dir
    serve(dsn, args.host, args.port, nodes, args.max_calls, args.worker)
