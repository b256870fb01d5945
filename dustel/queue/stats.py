"""Queue statistics: engine queue events normalised into ``queue_events``
(raw, one row per happening, idempotent by ``source_ref``), aggregated per
hour / day / agent in the tenant's time zone (every period and every agent
of the range, zero rows included), exported as CSV (plain or German),
.xlsx or JSON.

Definitions (per queue, per bucket; a call counts in the bucket of the
event that concerns it):

- offered: callers that entered the queue;
- offers_failed: an agent answered but the bridge failed (the caller had
  gone), or the offer failed (mod_callcenter ``bridge-agent-fail``);
- answered / abandoned (caller hung up waiting) / timed_out (max wait
  reached) / closed (queue closed or full, sent elsewhere);
- wait: of answered calls — sum, average, max; abandon_wait_avg: how long
  abandoning callers waited;
- talk: of completed calls (agent and caller talked);
- service_level: answered within the queue's N seconds / offered, in %;
- per agent: calls_taken, talk, logged-in and paused time (sessions from
  the star codes, cut to the range; a session still open counts until the
  range's end or now, whichever is earlier).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from ..callpath.calls import Q
from ..wire.esl import Event

_INSERT = """
INSERT INTO queue_events (tenant_id, queue_id, at, kind, call_id, agent_id, wait_ms, talk_ms, source_ref)
SELECT q.tenant_id, q.id, %(at)s, %(kind)s, %(call)s,
       (SELECT g.id FROM agents g WHERE g.tenant_id = q.tenant_id AND g.id = %(agent)s), %(wait)s, %(talk)s, %(ref)s
  FROM queues q WHERE q.tenant_id = %(t)s AND q.name = %(q)s
ON CONFLICT (source_ref) DO NOTHING
"""


def _queue(engine_name: str) -> tuple[int, str] | None:
    """t<tenant>-<queue>[@domain] -> (tenant, queue name)."""
    name = engine_name.split("@", 1)[0]
    head, sep, queue = name.partition("-")
    if not sep or not head.startswith("t") or not head[1:].isdigit() or not queue:
        return None
    return int(head[1:]), queue


def _agent(name: str) -> int | None:
    n = name.split("@", 1)[0]
    return int(n[6:]) if n.startswith("agent-") and n[6:].isdigit() else None


def _row(node: str, queue: str, kind: str, at: dt.datetime, call: str, agent: int | None = None,
         wait_ms: int | None = None, talk_ms: int | None = None) -> list[Q]:
    tq = _queue(queue)
    if tq is None:
        return []
    return [Q(_INSERT, {"t": tq[0], "q": tq[1], "at": at, "kind": kind, "call": call, "agent": agent,
                        "wait": None if wait_ms is None else max(0, wait_ms),
                        "talk": None if talk_ms is None else max(0, talk_ms),
                        "ref": f"{node}:{call}:{kind}:{agent or ''}"})]


def _epoch(v: str) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(int(v), dt.UTC) if v.isdigit() and v != "0" else None


def from_fs(node: str, ev: Event) -> list[Q]:
    """mod_callcenter's ``callcenter::info`` events (epoch seconds)."""
    action, queue = ev.get("CC-Action"), ev.get("CC-Queue")
    call = ev.get("CC-Member-Session-UUID") or ev.get("CC-Member-UUID")
    now = dt.datetime.fromtimestamp(int(ev.get("Event-Date-Timestamp", "0") or 0) / 1e6, dt.UTC)
    joined = _epoch(ev.get("CC-Member-Joined-Time"))
    if action == "member-queue-start":
        return _row(node, queue, "offered", now, call)
    # bridge-agent-start fires the moment the agent answers, *before*
    # mod_callcenter checks that the caller is still there: it counts nothing.
    # A call is answered only when the bridge happened: bridge-agent-end with
    # CC-Agent-Bridged true (recording 07); false, or bridge-agent-fail, is a
    # failed offer.
    if action == "bridge-agent-end":
        agent = _agent(ev.get("CC-Agent"))
        answered, ended = _epoch(ev.get("CC-Agent-Answered-Time")), _epoch(ev.get("CC-Bridge-Terminated-Time"))
        if ev.get("CC-Agent-Bridged") != "true":
            return _row(node, queue, "offer_failed", ended or now, call, agent)
        answered = answered or now
        wait = int((answered - joined).total_seconds() * 1000) if joined else None
        talk = int((ended - answered).total_seconds() * 1000) if ended else None
        return (_row(node, queue, "answered", answered, call, agent, wait_ms=wait)
                + _row(node, queue, "completed", ended or now, call, agent, talk_ms=talk))
    if action == "bridge-agent-fail":
        return _row(node, queue, "offer_failed", now, call, _agent(ev.get("CC-Agent")))
    if action == "member-queue-end" and ev.get("CC-Cause") == "Cancel":
        left = _epoch(ev.get("CC-Member-Leaving-Time")) or now
        wait = int((left - joined).total_seconds() * 1000) if joined else None
        reason = ev.get("CC-Cancel-Reason")
        kind = {"BREAK_OUT": "abandoned", "TIMEOUT": "timeout", "NO_AGENT_TIMEOUT": "timeout"}.get(reason, "closed")
        return _row(node, queue, kind, left, call, wait_ms=wait)
    return []


def not_queued(node: str, tenant_id: int, queue: str, call_id: str, at: dt.datetime) -> list[Q]:
    """A caller the queue did not take (closed, or full): offered and
    ``closed`` — the policy shells record it (no engine queue event exists)."""
    name = f"t{tenant_id}-{queue}"
    return _row(node, name, "offered", at, call_id) + _row(node, name, "closed", at, call_id, wait_ms=0)


# app_queue's QUEUESTATUS after Queue() returned with the caller still there
QUEUE_STATUS = {"TIMEOUT": "timeout", "FULL": "closed", "JOINEMPTY": "closed", "LEAVEEMPTY": "closed",
                "JOINUNAVAIL": "closed", "LEAVEUNAVAIL": "closed"}


def queue_result(node: str, tenant_id: int, queue: str, call_id: str, status: str, wait_seconds: int,
                 at: dt.datetime) -> list[Q]:
    """What Asterisk's dialplan reports after ``Queue()`` (app_queue raises
    no AMI event for a timeout or a full queue): timed out after its wait, or
    not taken (full: never joined, so offered too)."""
    kind = QUEUE_STATUS.get(status)
    if kind is None:
        return []
    if status == "FULL" or status.startswith("JOIN"):
        return not_queued(node, tenant_id, queue, call_id, at)
    return _row(node, f"t{tenant_id}-{queue}", kind, at, call_id, wait_ms=max(0, wait_seconds) * 1000)


def from_ami(node: str, msg: Mapping[str, str]) -> list[Q]:
    """app_queue's AMI events (HoldTime / TalkTime in seconds)."""
    name, queue, call = msg.get("Event", ""), msg.get("Queue", ""), msg.get("Uniqueid", "")
    try:
        at = dt.datetime.fromtimestamp(float(msg.get("Timestamp", "")), dt.UTC)
    except ValueError:
        at = dt.datetime.now(dt.UTC)

    def secs(key: str) -> int | None:
        v = msg.get(key, "")
        return int(v) * 1000 if v.isdigit() else None
    if name == "QueueCallerJoin":
        return _row(node, queue, "offered", at, call)
    if name == "AgentConnect":
        return _row(node, queue, "answered", at, call, _agent(msg.get("MemberName", "")), wait_ms=secs("HoldTime"))
    if name == "AgentComplete":
        return _row(node, queue, "completed", at, call, _agent(msg.get("MemberName", "")),
                    talk_ms=secs("TalkTime"))
    if name == "QueueCallerAbandon":
        return _row(node, queue, "abandoned", at, call, wait_ms=secs("HoldTime"))
    return []


# ------------------------------------------------------------------ reports

def moment(name: str, value: str, tz: str) -> dt.datetime:
    """An ISO date or date-time of a report's range; without an offset it is
    the tenant's local time."""
    from ..errors import DustelError
    try:
        t = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise DustelError(name, "must be an ISO date or date-time (2026-11-01 or 2026-11-01T08:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=ZoneInfo(tz))


_BUCKETS = """
WITH q AS (SELECT q.id, q.service_level_seconds AS sl, t.timezone
             FROM queues q JOIN tenants t ON t.id = q.tenant_id
            WHERE q.tenant_id = %(t)s AND q.name = %(q)s)
SELECT date_trunc(%(unit)s, e.at AT TIME ZONE q.timezone) AS bucket,
       -- hours: the UTC offset too, so the hour repeated at the end of
       -- summer time is two buckets (02:00+02:00 and 02:00+01:00), not one
       CASE WHEN %(unit)s = 'hour' THEN (e.at AT TIME ZONE q.timezone) - (e.at AT TIME ZONE 'UTC')
            ELSE interval '0' END AS off,
       count(*) FILTER (WHERE kind = 'offered') AS offered,
       count(*) FILTER (WHERE kind = 'answered') AS answered,
       count(*) FILTER (WHERE kind = 'abandoned') AS abandoned,
       count(*) FILTER (WHERE kind = 'timeout') AS timed_out,
       count(*) FILTER (WHERE kind = 'closed') AS closed,
       count(*) FILTER (WHERE kind = 'offer_failed') AS offers_failed,
       count(*) FILTER (WHERE kind = 'answered' AND wait_ms <= q.sl * 1000) AS answered_in_sl,
       coalesce(sum(wait_ms) FILTER (WHERE kind = 'answered'), 0)::bigint AS wait_ms,
       coalesce(max(wait_ms) FILTER (WHERE kind = 'answered'), 0)::bigint AS wait_max_ms,
       coalesce(sum(wait_ms) FILTER (WHERE kind = 'abandoned'), 0)::bigint AS abandon_wait_ms,
       count(*) FILTER (WHERE kind = 'completed') AS completed,
       coalesce(sum(talk_ms) FILTER (WHERE kind = 'completed'), 0)::bigint AS talk_ms
  FROM queue_events e JOIN q ON e.queue_id = q.id
 WHERE e.at >= %(from)s AND e.at < %(to)s AND e.kind NOT IN ('login', 'logout', 'pause', 'unpause')
 GROUP BY 1, 2 ORDER BY 1, 2 DESC
"""

_AGENTS = """
WITH q AS (SELECT q.id FROM queues q WHERE q.tenant_id = %(t)s AND q.name = %(q)s),
calls AS (
    SELECT e.agent_id, count(*) FILTER (WHERE kind = 'answered') AS calls_taken,
           coalesce(sum(talk_ms) FILTER (WHERE kind = 'completed'), 0)::bigint AS talk_ms,
           coalesce(sum(wait_ms) FILTER (WHERE kind = 'answered'), 0)::bigint AS wait_ms
      FROM queue_events e JOIN q ON e.queue_id = q.id
     WHERE e.at >= %(from)s AND e.at < %(to)s AND e.kind IN ('answered', 'completed') AND e.agent_id IS NOT NULL
     GROUP BY e.agent_id),
marks AS (
    SELECT e.agent_id, e.kind, e.at,
           lead(e.at) OVER w AS next_at, lead(e.kind) OVER w AS next_kind,
           CASE WHEN e.kind IN ('login', 'logout') THEN 'session' ELSE 'pause' END AS track
      FROM queue_events e JOIN q ON e.queue_id = q.id
     WHERE e.at < %(to)s AND e.kind IN ('login', 'logout', 'pause', 'unpause')
    WINDOW w AS (PARTITION BY e.agent_id, CASE WHEN e.kind IN ('login', 'logout') THEN 0 ELSE 1 END
                 ORDER BY e.at, e.id)),
spans AS (
    SELECT agent_id, track,
           greatest(at, %(from)s) AS s,
           least(CASE WHEN next_kind IN ('logout', 'unpause') THEN next_at ELSE least(%(to)s, now()) END,
                 %(to)s) AS e
      FROM marks WHERE kind IN ('login', 'pause')),
times AS (
    SELECT agent_id,
           coalesce(sum(extract(epoch FROM e - s) * 1000) FILTER (WHERE track = 'session' AND e > s), 0)::bigint
               AS logged_in_ms,
           coalesce(sum(extract(epoch FROM e - s) * 1000) FILTER (WHERE track = 'pause' AND e > s), 0)::bigint
               AS paused_ms
      FROM spans GROUP BY agent_id)
SELECT g.id AS agent_id, g.name AS agent, coalesce(c.calls_taken, 0) AS calls_taken,
       coalesce(c.talk_ms, 0) AS talk_ms, coalesce(c.wait_ms, 0) AS wait_ms,
       coalesce(ti.logged_in_ms, 0) AS logged_in_ms, coalesce(ti.paused_ms, 0) AS paused_ms
  FROM agents g
  LEFT JOIN calls c ON c.agent_id = g.id
  LEFT JOIN times ti ON ti.agent_id = g.id
 WHERE g.tenant_id = %(t)s
   AND (c.agent_id IS NOT NULL OR ti.agent_id IS NOT NULL      -- took calls or was logged in, or is a member
        OR EXISTS (SELECT 1 FROM queue_members m JOIN q ON m.queue_id = q.id WHERE m.agent_id = g.id))
 ORDER BY g.name, g.id
"""


def _sec(ms: int) -> Decimal:
    return (Decimal(int(ms)) / 1000).quantize(Decimal("0.001"))


def _avg(total_ms: int, n: int) -> Decimal | None:
    """An average over nothing is no number (blank), not 0.000."""
    return _sec(total_ms // n) if n else None


def periods(start: dt.datetime, end: dt.datetime, zone: ZoneInfo, by: str) -> list[dt.datetime]:
    """Every hour or day of [start, end) in the tenant's time zone, each as
    its aware local start — a supervisor's table has them all, calls or
    not.  Hours step in UTC, so the hour a DST change repeats is two."""
    first = start.astimezone(zone)
    out: list[dt.datetime] = []
    if by == "hour":
        t = first.replace(minute=0, second=0, microsecond=0).astimezone(dt.UTC)
        while t < end:
            out.append(t.astimezone(zone))
            t += dt.timedelta(hours=1)
        return out
    day = first.date()
    while (t := dt.datetime.combine(day, dt.time(), zone)) < end:
        out.append(t)
        day += dt.timedelta(days=1)
    return out


_EMPTY = {"offered": 0, "answered": 0, "abandoned": 0, "timeout": 0, "closed": 0, "offers_failed": 0,
          "answered_in_sl": 0, "wait_ms": 0, "wait_max_ms": 0, "abandon_wait_ms": 0, "completed": 0, "talk_ms": 0}


def report(conn: psycopg.Connection[Any], tenant_id: int, queue: str, start: dt.datetime, end: dt.datetime,
           by: str) -> tuple[str, list[dict[str, Any]]]:
    """(time zone, rows) of one queue over [start, end): every hour or day of
    the range (zero rows where nothing happened), or every agent of the
    queue (and any other that took its calls); averages over nothing are
    None (blank in the exports)."""
    from ..errors import DustelError
    meta = conn.execute("""SELECT t.timezone FROM queues q JOIN tenants t ON t.id = q.tenant_id
                            WHERE q.tenant_id = %s AND q.name = %s""", (tenant_id, queue)).fetchone()
    if meta is None:
        raise DustelError("queue", f"tenant {tenant_id} has no queue {queue!r}")
    tz = meta["timezone"] if isinstance(meta, dict) else meta[0]
    if end <= start:
        raise DustelError("to", "must be after --from")
    params = {"t": tenant_id, "q": queue, "from": start, "to": end}
    if by == "agent":
        rows = conn.execute(_AGENTS, params).fetchall()
        return tz, [{"agent": r["agent"], "agent_id": r["agent_id"], "calls_taken": r["calls_taken"],
                     "talk_s": _sec(r["talk_ms"]), "avg_wait_s": _avg(r["wait_ms"], r["calls_taken"]),
                     "logged_in_s": _sec(r["logged_in_ms"]), "paused_s": _sec(r["paused_ms"])} for r in rows]
    if by not in ("hour", "day"):
        raise DustelError("by", "must be hour, day or agent")
    if by == "hour" and end - start > dt.timedelta(days=366):
        raise DustelError("to", "at most a year of hours (--by day for longer ranges)")
    zone = ZoneInfo(tz)
    found: dict[dt.datetime, dict[str, Any]] = {}
    for r in conn.execute(_BUCKETS, {**params, "unit": by}).fetchall():
        if by == "hour":
            key = (r["bucket"] - r["off"]).replace(tzinfo=dt.UTC)
        else:
            key = r["bucket"].replace(tzinfo=zone).astimezone(dt.UTC)
        found[key] = dict(r, timeout=r["timed_out"])
    out = []
    for local in periods(start, end, zone, by):
        r = found.get(local.astimezone(dt.UTC), _EMPTY)
        answered, offered, abandoned = r["answered"], r["offered"], r["abandoned"]
        out.append({
            "start": local.isoformat(), "offered": offered, "answered": answered,
            "abandoned": abandoned, "timed_out": r["timeout"], "closed": r["closed"],
            "wait_sum_s": _sec(r["wait_ms"]), "wait_avg_s": _avg(r["wait_ms"], answered),
            "wait_max_s": _sec(r["wait_max_ms"]), "abandon_wait_avg_s": _avg(r["abandon_wait_ms"], abandoned),
            "talk_s": _sec(r["talk_ms"]), "answered_in_sl": r["answered_in_sl"],
            "service_level_pct": (Decimal(100 * r["answered_in_sl"]) / offered).quantize(Decimal("0.1"))
            if offered else None,
            "offers_failed": r["offers_failed"],
        })
    return tz, out


COLUMNS = {
    "time": ["start", "offered", "answered", "abandoned", "timed_out", "closed", "wait_sum_s", "wait_avg_s",
             "wait_max_s", "abandon_wait_avg_s", "talk_s", "answered_in_sl", "service_level_pct", "offers_failed"],
    "agent": ["agent", "agent_id", "calls_taken", "talk_s", "avg_wait_s", "logged_in_s", "paused_s"],
}
FORMATS = ("csv", "csv-de", "xlsx")


def to_csv(rows: list[dict[str, Any]], by: str = "day", dialect: str = "csv") -> str:
    """A header row (also when there is nothing to report), then one row
    each.  ``csv``: comma, decimal point, ISO times with their offset;
    ``csv-de`` (what a German spreadsheet opens in columns): semicolon,
    decimal comma, local times as TT.MM.JJJJ hh:mm, a UTF-8 byte order
    mark.  A blank cell is an average over nothing."""
    german = dialect == "csv-de"
    buf = io.StringIO()
    if german:
        buf.write("\ufeff")
    w = csv.DictWriter(buf, fieldnames=COLUMNS["agent" if by == "agent" else "time"], lineterminator="\r\n",
                       delimiter=";" if german else ",")
    w.writeheader()
    for r in rows:
        w.writerow({k: _german(k, v) if german else csv_cell(v) for k, v in r.items()})
    return buf.getvalue()


def _german(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "start":
        return dt.datetime.fromisoformat(value).strftime("%d.%m.%Y %H:%M")
    if isinstance(value, Decimal):
        return str(value).replace(".", ",")
    return csv_cell(value)


def to_xlsx(rows: list[dict[str, Any]], by: str = "day", title: str = "queue") -> bytes:
    """The report as an .xlsx workbook (openpyxl): a bold header row, frozen
    below it; counts as whole numbers, seconds and percentages as numbers
    with their format, period starts as real date cells in the tenant's
    local time (a spreadsheet has no time zones; the offset column says
    which local time); blank cells for averages over nothing."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    ws.title = title[:31]
    cols = COLUMNS["agent" if by == "agent" else "time"]
    header = cols + (["utc_offset"] if by != "agent" else [])
    ws.append(header)
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for r in rows:
        line: list[Any] = []
        for k in cols:
            v = r[k]
            if k == "start":
                local = dt.datetime.fromisoformat(v)
                v = local.replace(tzinfo=None)
            elif isinstance(v, Decimal):
                v = float(v)
            line.append(v)
        if by != "agent":
            line.append(dt.datetime.fromisoformat(r["start"]).strftime("%z"))
        ws.append(line)
    for i, k in enumerate(header, start=1):
        fmt = ("DD.MM.YYYY HH:MM" if k == "start" else "0.000" if k.endswith("_s")
               else "0.0" if k.endswith("_pct") else None)
        if fmt:
            for (cell,) in ws.iter_rows(min_row=2, min_col=i, max_col=i):
                cell.number_format = fmt
        ws.column_dimensions[get_column_letter(i)].width = max(12, len(k) + 2)
    ws.freeze_panes = "A2"
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet shows as text: a string that starts like a
    formula (``= + - @``, tab, CR — an agent named ``=HYPERLINK(…)``) gets a
    leading apostrophe (OWASP CSV injection).  Numbers stay numbers."""
    if value is None:
        return ""                       # an average over nothing: blank
    text = str(value)
    if isinstance(value, str) and text.startswith(_FORMULA):
        return "'" + text
    return text


def to_json(rows: list[dict[str, Any]]) -> str:
    """null for an average over nothing."""
    return json.dumps([{k: float(v) if isinstance(v, Decimal) else v for k, v in r.items()} for r in rows],
                      ensure_ascii=False)
