"""Queue statistics reconcile exactly with the raw events; exports are clean
CSV/JSON; one tenant's export never holds another's calls; engine events
(recorded callcenter::info format, app_queue AMI events) normalise into the
same rows, idempotently."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import random
import re
from collections import defaultdict
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from dustel.callpath.calls import run_sync
from dustel.provisioning import targets
from dustel.queue import stats
from dustel.wire import esl as P
from tests.conftest import Cli
from tests.esl_emulator import fs_frames
from tests.factories import account, tenant

BERLIN = ZoneInfo("Europe/Berlin")
DAY = dt.datetime(2026, 11, 23, tzinfo=BERLIN)


@pytest.fixture
def two(conn: psycopg.Connection) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("a", "b"):
        t = tenant(conn, name=f"T{key}", options={"acd": 1, "extra_account": 1})
        users = [account(conn, t["id"]) for _ in range(3)]
        with conn.transaction():
            q = targets.queue_add(conn, t["id"], "support", "1")
            ags = [targets.agent_add(conn, t["id"], f"Agent {i}", "1234", account=u, queues=["support"])
                   for i, u in enumerate(users)]
        out[key] = {"t": t, "q": q, "agents": ags}
    return out


def generate(conn: psycopg.Connection, org: dict[str, Any], seed: int, calls: int) -> None:
    """A randomised day: calls with every outcome, agent sessions with pauses,
    some crossing the day's edges."""
    rnd = random.Random(seed)
    rows: list[tuple[Any, ...]] = []
    tid, qid = org["t"]["id"], org["q"]["id"]
    agents = [g["id"] for g in org["agents"]]
    for i in range(calls):
        t0 = DAY - dt.timedelta(hours=1) + dt.timedelta(seconds=rnd.uniform(0, 26 * 3600))
        cid = f"{seed}-{i}"
        rows.append((tid, qid, t0, "offered", cid, None, None, None))
        r, wait = rnd.random(), rnd.randint(0, 180_000)
        if r < 0.6:
            ag = rnd.choice(agents)
            rows.append((tid, qid, t0 + dt.timedelta(milliseconds=wait), "answered", cid, ag, wait, None))
            talk = rnd.randint(1000, 900_000)
            rows.append((tid, qid, t0 + dt.timedelta(milliseconds=wait + talk), "completed", cid, ag, None, talk))
        elif r < 0.8:
            rows.append((tid, qid, t0 + dt.timedelta(milliseconds=wait), "abandoned", cid, None, wait, None))
        elif r < 0.9:
            rows.append((tid, qid, t0 + dt.timedelta(seconds=300), "timeout", cid, None, 300_000, None))
        else:
            rows.append((tid, qid, t0, "closed", cid, None, 0, None))
    for ag in agents:
        t = DAY - dt.timedelta(hours=rnd.randint(1, 3))           # the first session starts the day before
        while t < DAY + dt.timedelta(hours=25):
            rows.append((tid, qid, t, "login", "", ag, None, None))
            end = t + dt.timedelta(minutes=rnd.randint(30, 300))
            p = t + dt.timedelta(minutes=rnd.randint(5, 25))
            while p < end - dt.timedelta(minutes=10):
                rows.append((tid, qid, p, "pause", "", ag, None, None))
                u = p + dt.timedelta(minutes=rnd.randint(1, 9))
                rows.append((tid, qid, u, "unpause", "", ag, None, None))
                p = u + dt.timedelta(minutes=rnd.randint(10, 60))
            if end > DAY + dt.timedelta(hours=23, minutes=30):
                break                                           # the last session stays open
            rows.append((tid, qid, end, "logout", "", ag, None, None))
            t = end + dt.timedelta(minutes=rnd.randint(5, 90))
    with conn.cursor().copy("COPY queue_events (tenant_id, queue_id, at, kind, call_id, agent_id, wait_ms, talk_ms)"
                            " FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)


def raw(conn: psycopg.Connection, qid: int) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM queue_events WHERE queue_id = %s ORDER BY at, id", (qid,)).fetchall()


def recompute(rows: list[dict[str, Any]], start: dt.datetime, end: dt.datetime, unit: str,
              sl_s: int) -> dict[str, dict[str, Any]]:
    """Independent of the SQL: plain Python over the raw rows."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        if not (start <= r["at"] < end) or r["kind"] in ("login", "logout", "pause", "unpause"):
            continue
        local = r["at"].astimezone(BERLIN)
        b = (local.replace(minute=0, second=0, microsecond=0) if unit == "hour"
             else local.replace(hour=0, minute=0, second=0, microsecond=0))
        key = b.replace(tzinfo=None).replace(tzinfo=BERLIN).isoformat()
        d = out[key]
        d[r["kind"]] += 1
        if r["kind"] == "answered":
            d["wait_ms"] += r["wait_ms"]
            d["wait_max_ms"] = max(d["wait_max_ms"], r["wait_ms"])
            d["in_sl"] += r["wait_ms"] <= sl_s * 1000
        if r["kind"] == "abandoned":
            d["abandon_ms"] += r["wait_ms"]
        if r["kind"] == "completed":
            d["talk_ms"] += r["talk_ms"]
    return out


def ms(value: str) -> int:
    assert re.fullmatch(r"\d+\.\d{3}", value), value
    return int(value.replace(".", ""))


@pytest.mark.parametrize("unit", ["hour", "day"])
def test_exported_totals_equal_the_raw_events(run: Cli, conn: psycopg.Connection, two: dict[str, Any],
                                              unit: str) -> None:
    generate(conn, two["a"], seed=1, calls=3000)
    generate(conn, two["b"], seed=2, calls=1000)            # same queue name, other tenant
    a = two["a"]
    out = run.ok("queue", "stats", "--tenant", str(a["t"]["id"]), "--queue", "support", "--from", "2026-11-23",
                 "--to", "2026-11-24", "--by", unit, "--format", "csv").output
    assert out.splitlines()[0].startswith("start,offered,answered,abandoned,timed_out,closed,")
    rows = list(csv.DictReader(io.StringIO(out)))
    expect = recompute(raw(conn, a["q"]["id"]), DAY, DAY + dt.timedelta(days=1), unit, 20)
    assert set(expect) <= {r["start"] for r in rows}
    assert len(rows) == (24 if unit == "hour" else 1)                 # every period of the range, calls or not
    assert rows[0]["start"] == "2026-11-23T00:00:00+01:00"
    for r in rows:
        e = expect.get(r["start"], defaultdict(int))
        assert int(r["offered"]) == e["offered"] and int(r["answered"]) == e["answered"]
        assert int(r["abandoned"]) == e["abandoned"] and int(r["timed_out"]) == e["timeout"]
        assert int(r["closed"]) == e["closed"] and int(r["answered_in_sl"]) == e["in_sl"]
        assert ms(r["wait_sum_s"]) == e["wait_ms"] and ms(r["wait_max_s"]) == e["wait_max_ms"]
        assert (ms(r["wait_avg_s"]) if r["wait_avg_s"] else None) == \
            (e["wait_ms"] // e["answered"] if e["answered"] else None)          # blank: an average over nothing
        assert (ms(r["abandon_wait_avg_s"]) if r["abandon_wait_avg_s"] else None) == \
            (e["abandon_ms"] // e["abandoned"] if e["abandoned"] else None)
        assert ms(r["talk_s"]) == e["talk_ms"]
        if e["offered"]:
            sl = round(100 * e["in_sl"] / e["offered"], 1)
            assert float(r["service_level_pct"]) == pytest.approx(sl, abs=0.05)
        else:
            assert r["service_level_pct"] == ""
    total_a = sum(int(r["offered"]) for r in rows)
    assert total_a == sum(e["offered"] for e in expect.values()) > 0
    in_day_b = sum(1 for r in raw(conn, two["b"]["q"]["id"]) if r["kind"] == "offered"
                   and DAY <= r["at"] < DAY + dt.timedelta(days=1))
    assert in_day_b > 0 and total_a != total_a + in_day_b
    # the JSON export carries the same numbers
    js = json.loads(run.ok("queue", "stats", "--tenant", str(a["t"]["id"]), "--queue", "support", "--from",
                           "2026-11-23", "--to", "2026-11-24", "--by", unit, "--json").output)
    assert [(j["start"], j["offered"], round(j["talk_s"] * 1000)) for j in js] == \
        [(r["start"], int(r["offered"]), ms(r["talk_s"])) for r in rows]


def test_agent_times_reconcile(run: Cli, conn: psycopg.Connection, two: dict[str, Any], tmp_path: Any) -> None:
    generate(conn, two["a"], seed=3, calls=800)
    generate(conn, two["b"], seed=4, calls=300)
    a = two["a"]
    target = tmp_path / "agents.csv"
    run.ok("queue", "stats", "--tenant", str(a["t"]["id"]), "--queue", "support", "--from", "2026-11-23T00:00",
           "--to", "2026-11-24T00:00", "--by", "agent", "--out", str(target))
    raw_bytes = target.read_bytes()
    assert raw_bytes.count(b"\r\n") == len(raw_bytes.splitlines()) == 1 + len(two["a"]["agents"])   # CRLF rows
    rows = {r["agent_id"]: r for r in csv.DictReader(io.StringIO(raw_bytes.decode()))}
    start, end = DAY, DAY + dt.timedelta(days=1)
    events = raw(conn, a["q"]["id"])
    assert set(rows) == {str(g["id"]) for g in a["agents"]}
    for g in a["agents"]:
        mine = [e for e in events if e["agent_id"] == g["id"]]
        taken = [e for e in mine if e["kind"] == "answered" and start <= e["at"] < end]
        talk = sum(e["talk_ms"] for e in mine if e["kind"] == "completed" and start <= e["at"] < end)

        def spans(open_kind: str, close_kind: str, mine: list[dict[str, Any]] = mine) -> int:
            total, opened = 0, None
            for e in mine:
                if e["kind"] == open_kind and opened is None:
                    opened = e["at"]
                elif e["kind"] == close_kind and opened is not None:
                    s, t = max(opened, start), min(e["at"], end)
                    total += max(0, int((t - s).total_seconds() * 1000))
                    opened = None
            if opened is not None:
                total += max(0, int((end - max(opened, start)).total_seconds() * 1000))
            return total
        r = rows[str(g["id"])]
        assert int(r["calls_taken"]) == len(taken) and ms(r["talk_s"]) == talk
        assert abs(ms(r["logged_in_s"]) - spans("login", "logout")) <= 1
        assert abs(ms(r["paused_s"]) - spans("pause", "unpause")) <= 1
        assert ms(r["logged_in_s"]) > ms(r["paused_s"]) > 0


def test_an_empty_range_has_every_period_and_every_agent(run: Cli, two: dict[str, Any]) -> None:
    """Issue 31 item 8: days or hours without calls were left out, agents
    without calls missing, and an average over nothing printed 0.000."""
    args = ["queue", "stats", "--tenant", str(two["a"]["t"]["id"]), "--queue", "support", "--from", "2020-01-01",
            "--to", "2020-01-03"]
    days = list(csv.DictReader(io.StringIO(run.ok(*args, "--by", "day").output)))
    assert [(d["start"], d["offered"], d["wait_avg_s"], d["service_level_pct"]) for d in days] == \
        [("2020-01-01T00:00:00+01:00", "0", "", ""), ("2020-01-02T00:00:00+01:00", "0", "", "")]
    assert len(list(csv.DictReader(io.StringIO(run.ok(*args, "--by", "hour").output)))) == 48
    agents = list(csv.DictReader(io.StringIO(run.ok(*args, "--by", "agent").output)))
    assert sorted(a["agent_id"] for a in agents) == sorted(str(g["id"]) for g in two["a"]["agents"])
    assert {(a["calls_taken"], a["avg_wait_s"], a["logged_in_s"]) for a in agents} == {("0", "", "0.000")}
    js = json.loads(run.ok(*args, "--by", "day", "--json").output)
    assert js[0]["wait_avg_s"] is None and js[0]["offered"] == 0


@pytest.mark.parametrize("args,field", [
    (("--queue", "nosuch"), "queue"),
    (("--from", "yesterday"), "from"),
    (("--to", "2026-11-22"), "to"),
])
def test_bad_stats_requests(run: Cli, two: dict[str, Any], args: tuple[str, ...], field: str) -> None:
    base = {"--tenant": str(two["a"]["t"]["id"]), "--queue": "support", "--from": "2026-11-23", "--to": "2026-11-24"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    r = run("queue", "stats", *[x for kv in base.items() for x in kv])
    assert r.exit_code != 0 and r.stderr.startswith(f"error: {field}:")


def test_engine_queue_events_normalise_idempotently(conn: psycopg.Connection, two: dict[str, Any]) -> None:
    a = two["a"]
    tid, dom, ag = a["t"]["id"], a["t"]["sip_domain"], a["agents"][0]["id"]
    recorded = [P.parse_event(f) for f in fs_frames("04-callcenter-queue-call")
                if f.content_type == "text/event-plain"]
    ops = []
    for ev in recorded:
        h = dict(ev.headers)
        if "CC-Queue" in h:
            h["CC-Queue"] = f"t{tid}-support@{dom}"
        if "CC-Agent" in h:
            h["CC-Agent"] = f"agent-{ag}@{dom}"
        ops += stats.from_fs("fs1", P.Event(h))
    start = recorded[0].headers
    joined = int(start.get("Event-Date-Timestamp", "0")) // 10**6
    for action, extra in (("bridge-agent-start", {"CC-Agent-Answered-Time": str(joined + 12)}),
                          ("bridge-agent-end", {"CC-Agent-Answered-Time": str(joined + 12), "CC-Agent-Bridged": "true",
                                                "CC-Bridge-Terminated-Time": str(joined + 72)})):
        ops += stats.from_fs("fs1", P.Event({"Event-Name": "CUSTOM", "Event-Subclass": "callcenter::info",
                                             "CC-Action": action, "CC-Queue": f"t{tid}-support@{dom}",
                                             "CC-Agent": f"agent-{ag}@{dom}", "CC-Member-Session-UUID": "m2",
                                             "CC-Member-Joined-Time": str(joined),
                                             "Event-Date-Timestamp": str((joined + 80) * 10**6), **extra}))
    ops += stats.from_ami("ast1", {"Event": "QueueCallerJoin", "Queue": f"t{tid}-support", "Uniqueid": "u1",
                                   "Timestamp": "1795530564.5"})
    ops += stats.from_ami("ast1", {"Event": "AgentConnect", "Queue": f"t{tid}-support", "Uniqueid": "u1",
                                   "MemberName": f"agent-{ag}", "HoldTime": "7", "Timestamp": "1795530571.5"})
    ops += stats.from_ami("ast1", {"Event": "QueueCallerJoin", "Queue": f"t{two['b']['t']['id']}-support",
                                   "Uniqueid": "u9", "Timestamp": "1795530564.5"})

    def flow():  # type: ignore[no-untyped-def]
        for q in ops:
            _rows = yield q       # noqa: F841 (the rows of an INSERT: none)
    for _ in range(2):                                  # replayed: nothing doubles
        run_sync(conn, flow())
    got = [(r["kind"], r["agent_id"], r["wait_ms"], r["talk_ms"]) for r in raw(conn, a["q"]["id"])]
    assert sorted(got, key=str) == sorted([
        ("offered", None, None, None), ("abandoned", None, 7000, None),          # the recorded caller
        ("offer_failed", ag, None, None),                                       # its bridge-agent-fail
        ("answered", ag, 12000, None), ("completed", ag, None, 60000),          # the synthesised one
        ("offered", None, None, None), ("answered", ag, 7000, None),            # Asterisk
    ], key=str)
    assert len(raw(conn, two["b"]["q"]["id"])) == 1


def _recorded_07(tid: int, dom: str, ag: int) -> list[P.Event]:
    out = []
    for f in fs_frames("07-callcenter-events-answered"):
        if f.content_type != "text/event-plain":
            continue
        h = dict(P.parse_event(f).headers)
        if h.get("Event-Subclass") != "callcenter::info":
            continue
        if "CC-Queue" in h:
            h["CC-Queue"] = f"t{tid}-support@{dom}"
        if "CC-Agent" in h:
            h["CC-Agent"] = f"agent-{ag}@{dom}"
        out.append(P.Event(h))
    return out


def _store(conn: psycopg.Connection, ops: list[Any]) -> None:
    def flow():  # type: ignore[no-untyped-def]
        for q in ops:
            _rows = yield q       # noqa: F841
    run_sync(conn, flow())


def test_recorded_answered_queue_call_counts_answered_with_its_talk(conn: psycopg.Connection,
                                                                    two: dict[str, Any]) -> None:
    """Issue 15.2, recording 07 (a real answered call): answered once, with
    wait and talk from CC-Agent-Answered-Time / CC-Bridge-Terminated-Time."""
    a = two["a"]
    tid, dom, ag = a["t"]["id"], a["t"]["sip_domain"], a["agents"][0]["id"]
    events = _recorded_07(tid, dom, ag)
    assert [e.get("CC-Action") for e in events if e.get("CC-Action").startswith(("bridge", "member-queue"))] == [
        "member-queue-start", "bridge-agent-start", "bridge-agent-end", "member-queue-end"]
    _store(conn, [q for e in events for q in stats.from_fs("fs1", e)])
    got = sorted((r["kind"], r["agent_id"], r["wait_ms"], r["talk_ms"]) for r in raw(conn, a["q"]["id"]))
    assert got == sorted([("offered", None, None, None), ("answered", ag, 0, None), ("completed", ag, None, 17000)])
    day = dt.datetime(2026, 11, 25, tzinfo=BERLIN)
    _, rows = stats.report(conn, tid, "support", day, day + dt.timedelta(days=1), "day")
    assert [(r["offered"], r["answered"], r["talk_s"], r["offers_failed"]) for r in rows] == [(1, 1, 17, 0)]


def test_a_bridge_that_failed_is_no_answered_call(conn: psycopg.Connection, two: dict[str, Any]) -> None:
    """Issue 15.2: the agent answered, the caller was gone ("Failed to
    bridge"): bridge-agent-start, then bridge-agent-end with
    CC-Agent-Bridged false.  Before: exported as answered with talk 0."""
    a = two["a"]
    tid, dom, ag = a["t"]["id"], a["t"]["sip_domain"], a["agents"][0]["id"]
    events = _recorded_07(tid, dom, ag)
    ops = []
    for e in events:
        h = dict(e.headers)
        if h["CC-Action"] == "bridge-agent-end":
            h["CC-Agent-Bridged"] = "false"
        if h["CC-Action"] == "member-queue-end":
            h.update({"CC-Cause": "Cancel", "CC-Cancel-Reason": "BREAK_OUT"})
        ops += stats.from_fs("fs1", P.Event(h))
    ops += stats.from_fs("fs1", P.Event({"Event-Name": "CUSTOM", "CC-Action": "bridge-agent-fail",
                                         "CC-Queue": f"t{tid}-support@{dom}", "CC-Agent": f"agent-{ag}@{dom}",
                                         "CC-Member-Session-UUID": "m3",
                                         "Event-Date-Timestamp": events[0].get("Event-Date-Timestamp")}))
    _store(conn, ops)
    day = dt.datetime(2026, 11, 25, tzinfo=BERLIN)
    _, rows = stats.report(conn, tid, "support", day, day + dt.timedelta(days=1), "day")
    assert [(r["offered"], r["answered"], r["abandoned"], r["talk_s"], r["offers_failed"]) for r in rows] == [
        (1, 0, 1, 0, 2)]
    _, agents = stats.report(conn, tid, "support", day, day + dt.timedelta(days=1), "agent")
    assert all(r["calls_taken"] == 0 for r in agents)


def test_export_cells_cannot_carry_a_formula(conn: psycopg.Connection) -> None:
    """Issue 16.7: an agent named like a formula is exported as text."""
    t = tenant(conn, name="Formula", options={"acd": 1})
    user = account(conn, t["id"])
    with conn.transaction():
        targets.queue_add(conn, t["id"], "support", "1")
        g = targets.agent_add(conn, t["id"], "=HYPERLINK(\"http://evil\")", "1234", account=user,
                              queues=["support"])
    at = dt.datetime(2026, 11, 25, 10, tzinfo=BERLIN)
    conn.execute("""INSERT INTO queue_events (tenant_id, queue_id, at, kind, call_id, agent_id, wait_ms)
                    SELECT %s, id, %s, 'answered', 'c1', %s, 1000 FROM queues WHERE tenant_id = %s""",
                 (t["id"], at, g["id"], t["id"]))
    _, rows = stats.report(conn, t["id"], "support", at - dt.timedelta(hours=1), at + dt.timedelta(hours=1),
                           "agent")
    text = stats.to_csv(rows, "agent")
    cells = [c for line in csv.reader(io.StringIO(text)) for c in line]
    assert "'=HYPERLINK(\"http://evil\")" in cells
    assert not any(c.startswith(("=", "+", "@", "\t", "\r")) for c in cells)
    for evil in ("+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert stats.csv_cell(evil) == "'" + evil
    assert stats.csv_cell(-5) == "-5"


def test_the_repeated_hour_of_the_dst_change_is_two_buckets(conn: psycopg.Connection, two: dict[str, Any]) -> None:
    """Issue 15.19: on 2026-10-25 Berlin lives 02:00-02:59 twice (CEST, then
    CET); hourly stats merged both into one row."""
    a = two["a"]
    tid, qid = a["t"]["id"], a["q"]["id"]
    for i, utc in enumerate(("2026-10-25T00:30:00+00:00", "2026-10-25T01:30:00+00:00",
                             "2026-10-25T01:40:00+00:00")):
        conn.execute("INSERT INTO queue_events (tenant_id, queue_id, at, kind, call_id) VALUES (%s, %s, %s, "
                     "'offered', %s)", (tid, qid, dt.datetime.fromisoformat(utc), f"dst{i}"))
    start = dt.datetime(2026, 10, 25, tzinfo=BERLIN)
    _, rows = stats.report(conn, tid, "support", start, start + dt.timedelta(days=1), "hour")
    assert len(rows) == 25                                     # the day has 25 hours, each a row
    assert [(r["start"], r["offered"]) for r in rows if r["offered"]] == [("2026-10-25T02:00:00+02:00", 1),
                                                                          ("2026-10-25T02:00:00+01:00", 2)]
    _, days = stats.report(conn, tid, "support", start, start + dt.timedelta(days=1), "day")
    assert [(d["start"], d["offered"]) for d in days] == [("2026-10-25T00:00:00+02:00", 3)]


def test_a_german_spreadsheet_gets_columns_numbers_and_dates(run: Cli, conn: psycopg.Connection,
                                                             two: dict[str, Any], tmp_path: Any) -> None:
    """Issue 31 item 7: the CSV opened in one column in a German spreadsheet
    (comma separator, 12.345 read as 12 345, ISO times with offsets not read
    as dates).  Now --format csv-de and an .xlsx workbook."""
    from openpyxl import load_workbook
    generate(conn, two["a"], seed=5, calls=400)
    args = ["queue", "stats", "--tenant", str(two["a"]["t"]["id"]), "--queue", "support", "--from", "2026-11-23",
            "--to", "2026-11-24", "--by", "hour"]
    plain = list(csv.DictReader(io.StringIO(run.ok(*args).output)))
    german = run.ok(*args, "--format", "csv-de").output
    assert german.startswith("\ufeffstart;offered;answered;")
    de = list(csv.DictReader(io.StringIO(german.lstrip("\ufeff")), delimiter=";"))
    assert [d["start"] for d in de][:2] == ["23.11.2026 00:00", "23.11.2026 01:00"]
    for p, d in zip(plain, de, strict=True):
        assert d["offered"] == p["offered"] and d["talk_s"] == p["talk_s"].replace(".", ",")
        assert "." not in d["wait_sum_s"] and "," in d["wait_sum_s"]
    r = run(*args, "--format", "xlsx")
    assert (r.exit_code, r.stderr) == (1, "error: out: an .xlsx workbook is written to a file: give --out FILE.xlsx\n")
    target = tmp_path / "support.xlsx"
    run.ok(*args, "--format", "xlsx", "--out", str(target))
    ws = load_workbook(target).active
    assert ws.freeze_panes == "A2" and ws["A1"].font.bold
    header = [c.value for c in ws[1]]
    assert header == stats.COLUMNS["time"] + ["utc_offset"]
    body = list(ws.iter_rows(min_row=2, values_only=True))
    assert len(body) == 24 and body[0][0] == dt.datetime(2026, 11, 23, 0, 0) and body[0][-1] == "+0100"
    for p, x in zip(plain, body, strict=True):
        row = dict(zip(header, x, strict=True))
        assert isinstance(row["offered"], int) and row["offered"] == int(p["offered"])
        assert isinstance(row["talk_s"], float) and round(row["talk_s"] * 1000) == ms(p["talk_s"])
        assert row["wait_avg_s"] is None if p["wait_avg_s"] == "" else round(row["wait_avg_s"] * 1000) == \
            ms(p["wait_avg_s"])
    assert ws.cell(row=2, column=1).number_format == "DD.MM.YYYY HH:MM"
    # one convention: --json, as every other command (issue 31 item 6)
    assert run(*args, "--format", "json").exit_code == 2
    assert len(json.loads(run.ok(*args, "--json").output)) == 24
