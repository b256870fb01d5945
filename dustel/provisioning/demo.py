"""The demo provider: one tenant per plan, with accounts, numbers, a
block, forwarding, a group call, a queue with agents and a day of its
traffic, a fax box.

Loading is idempotent: a second run finds the demo tenants and changes
nothing.  Passwords are random, stored as HA1 only, and handed to the
operator once in a 0600 file in the state dir — never printed."""
from __future__ import annotations

import datetime as dt
import os
import random
import secrets
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from ..wire.esl import Event
from . import accounts, features, numbers, rates, targets, tenants

DEMO_MARKER_DOMAIN = "demo-starter.sip.dustel.de"


def _password() -> str:
    alphabet = string.ascii_letters + string.digits
    while True:
        pw = "".join(secrets.choice(alphabet) for _ in range(16))
        if any(c.isdigit() for c in pw) and any(c.isalpha() for c in pw):
            return pw


def is_loaded(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM tenants WHERE sip_domain = %s",
                        (DEMO_MARKER_DOMAIN,)).fetchone() is not None


def load(conn: psycopg.Connection, credentials_file: Path,
         password: Callable[[], str] = _password) -> bool:
    """Load the demo provider; False when it was there already."""
    if is_loaded(conn):
        return False
    creds: list[tuple[str, str, str]] = []

    def account(tid: int, name: str, **kw: Any) -> str:
        pw = password()
        acc = accounts.add(conn, tid, password=pw, display_name=name, **kw)
        creds.append((acc["username"], acc["sip_domain"], pw))
        return acc["username"]

    # starter: prepaid, private, Düsseldorf
    s = tenants.add(conn, name="Anna Schmitz", customer_type="private", plan="starter",
                    domain=DEMO_MARKER_DOMAIN, email="anna.schmitz@example.org")
    tenants.add_address(conn, s["id"], kind="residence", street="Lindenstraße 12", postcode="40233",
                        city="Düsseldorf", area_code="0211")
    s1 = account(s["id"], "Anna Festnetz")
    s2 = account(s["id"], "Anna Büro", tls_mode="tls_srtp")
    numbers.add(conn, s["id"], "+492115550101")
    numbers.assign(conn, "+492115550101", "account", s1)
    accounts.set_fields(conn, s1, caller_id="+492115550101")
    features.set_zones(conn, s2, preset="germany_no_0137", allow=[])
    features.set_limits(conn, s["id"], max_call_seconds=3600)

    # complete: postpaid, private, Köln; forwarding on no answer
    c = tenants.add(conn, name="Familie Becker", customer_type="private", plan="complete",
                    domain="demo-complete.sip.dustel.de", email="becker@example.org")
    tenants.add_address(conn, c["id"], kind="residence", street="Aachener Straße 5", postcode="50674",
                        city="Köln", area_code="0221")
    c1 = account(c["id"], "Wohnzimmer")
    c2 = account(c["id"], "Arbeitszimmer")
    c3 = account(c["id"], "Fax", t38="enable")
    for n in ("+492214440101", "+492214440102"):
        numbers.add(conn, c["id"], n)
    numbers.assign(conn, "+492214440101", "account", c1)
    numbers.assign(conn, "+492214440102", "account", c3)
    accounts.set_fields(conn, c1, caller_id="+492214440101")
    features.set_diversion(conn, c1, kind="forward", mode="no_answer", timeout=20,
                           targets=[c2, "+4917012345678"])
    features.list_add(conn, c1, "black", "anonymous")
    features.set_limits(conn, c["id"], credit_limit_cents=5000)

    # business flex: Düsseldorf seat + Berlin branch, ACD, block with DDI
    b = tenants.add(conn, name="Rheinwerk Maschinenbau GmbH", customer_type="business",
                    plan="business_flex", domain="demo-business.sip.dustel.de",
                    email="it@rheinwerk.example", number_quota=20)
    tenants.add_address(conn, b["id"], kind="seat", street="Königsallee 1", postcode="40212",
                        city="Düsseldorf", area_code="0211")
    tenants.add_address(conn, b["id"], kind="branch", street="Friedrichstraße 100", postcode="10117",
                        city="Berlin", area_code="030")
    for opt, qty in (("acd", 1), ("extra_account", 3), ("flat_de_fixed", 2), ("extra_line", 2)):
        tenants.set_option(conn, b["id"], opt, qty)
    b_recv = account(b["id"], "Empfang", allowed_nets=["127.0.0.0/8", "192.0.2.0/24"])
    b_a1 = account(b["id"], "Agent Meyer")
    b_a2 = account(b["id"], "Agent Yilmaz")
    b_ber = account(b["id"], "Berlin", location="030")
    b_fax = account(b["id"], "Faxgerät", t38="passthrough")
    numbers.add(conn, b["id"], "+4921198765", block_size=10, central_ddi="0")
    numbers.assign(conn, "+4921198765", "account", b_recv)
    numbers.add(conn, b["id"], "+49305552000")
    targets.queue_add(conn, b["id"], "support", "1", strategy="longest_idle", max_wait=180,
                      max_callers=20, wrapup=15)
    numbers.assign(conn, "+49305552000", "queue", "support")
    targets.agent_add(conn, b["id"], "Petra Meyer", "4711", account=b_a1, queues=["support"])
    targets.agent_add(conn, b["id"], "Cem Yilmaz", "0815", account=b_a2, queues=["support"])
    targets.agent_add(conn, b["id"], "Jan Homeoffice", "2468", external="+4915112345678", queues=["support"])
    numbers.add(conn, b["id"], "+492119876600")
    targets.faxbox_add(conn, b["id"], "office", "fax@rheinwerk.example", pin="1357")
    numbers.assign(conn, "+492119876600", "fax", "office")
    targets.ring_group_add(conn, b["id"], "sales", [b_a1, b_a2])
    accounts.set_fields(conn, b_recv, caller_id="+49211987650")
    accounts.set_fields(conn, b_ber, caller_id="+49305552000")
    features.set_diversion(conn, b_recv, kind="group", targets=[b_a1, b_a2], timeout=25,
                           when=["mon-fri 08:00-18:00"], holiday_region="NW")
    features.set_diversion(conn, b_ber, kind="forward", mode="unregistered", targets=[b_fax])
    features.speed_dial_set(conn, b["id"], "1", "+4921198765")
    features.speed_dial_set(conn, b["id"], "2", b_ber)
    features.set_limits(conn, b["id"], credit_limit_cents=50000)
    queue_day(conn, b["id"], "support", b["sip_domain"])
    # the Kundencenter's users of the business tenant, one per role
    from ..portal import users as portal_users
    portal: list[tuple[str, str]] = []
    for login, role, agent in (("rheinwerk-admin", "admin", None), ("rheinwerk-supervisor", "supervisor", None),
                               ("petra.meyer", "agent", "Petra Meyer")):
        pw = password()
        portal_users.add(conn, b["id"], login, role, pw, agent)
        portal.append((login, pw))
    # a small realistic rate table, so a newcomer's first non-flat call is rated, not refused no_rate
    if conn.execute("SELECT count(*) AS n FROM rates").fetchone()["n"] == 0:
        rates.store(conn, rates.read(rates.DEMO_RATES))

    credentials_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# demo SIP credentials (username@domain password); shown nowhere else\n")
        for user, dom, pw in creds:
            f.write(f"{user}@{dom} {pw}\n")
        f.write("# Kundencenter (dustel portal serve) logins of the business tenant: login password\n")
        for login, pw in portal:
            f.write(f"{login} {pw}\n")
    return True


QUEUE_DAY = dt.date(2026, 11, 30)          # a Monday: the demo's day of queue traffic


def _cc_event(**headers: object) -> Event:
    """A mod_callcenter ``callcenter::info`` event as FreeSWITCH sends it
    (recording 07): the controller's input."""
    return Event({"Event-Name": "CUSTOM", "Event-Subclass": "callcenter::info",
                  **{k.replace("_", "-"): str(v) for k, v in headers.items()}})


def queue_day(conn: psycopg.Connection, tenant_id: int, queue: str, domain: str, day: dt.date = QUEUE_DAY) -> int:
    """A working day of a queue (08:00-18:00 in Berlin) made the way the
    controller records one: mod_callcenter's events through
    ``stats.from_fs`` (a caller enters, an agent answers and talks, a
    caller gives up, a caller reaches the queue's maximum wait, an offer
    fails), plus the agents' logins, lunch pauses and logouts as the star
    codes store them.  Deterministic, idempotent (the events' own
    references).  Returns the events stored."""
    from ..queue import stats
    zone = ZoneInfo("Europe/Berlin")
    rnd = random.Random(f"{day}:{tenant_id}:{queue}")
    q = conn.execute("SELECT id, max_wait_seconds FROM queues WHERE tenant_id = %s AND name = %s",
                     (tenant_id, queue)).fetchone()
    agents = [r["agent_id"] for r in conn.execute(
        """SELECT m.agent_id FROM queue_members m JOIN agents g ON g.id = m.agent_id
            WHERE m.queue_id = %s AND g.contact_account_id IS NOT NULL ORDER BY m.agent_id""", (q["id"],))]
    name = f"t{tenant_id}-{queue}@{domain}"

    def at(hour: float) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), zone) + dt.timedelta(hours=hour)

    stored = 0
    for a in agents:                          # what *51 / *53 / *54 / *52 store, at the day's times
        for kind, hour in (("login", 8), ("pause", 12 + 0.25 * (a % 2)), ("unpause", 12.5 + 0.25 * (a % 2)),
                           ("logout", 18)):
            stored += conn.execute(
                """INSERT INTO queue_events (tenant_id, queue_id, at, kind, agent_id, source_ref)
                   VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (source_ref) DO NOTHING""",
                (tenant_id, q["id"], at(hour), kind, a, f"demo:{day}:{a}:{kind}")).rowcount
    ops = []
    t = at(8).timestamp()
    for n in range(400):
        t += rnd.expovariate(1 / 90)         # a caller every 90 s on average
        if t >= at(18).timestamp():
            break
        call = f"demo-{day:%Y%m%d}-{n:04d}"
        joined = int(t)

        def event(action: str, when: float, call: str = call, joined: int = joined, **more: object) -> None:
            ops.extend(stats.from_fs("demo", _cc_event(
                CC_Action=action, CC_Queue=name, CC_Member_Session_UUID=call, CC_Member_Joined_Time=joined,
                Event_Date_Timestamp=int(when * 1_000_000), **more)))

        event("member-queue-start", t)
        fate = rnd.random()
        if fate < 0.12:                         # gives up waiting
            left = t + rnd.randint(10, 90)
            event("member-queue-end", left, CC_Cause="Cancel", CC_Cancel_Reason="BREAK_OUT",
                  CC_Member_Leaving_Time=int(left))
        elif fate < 0.16 or not agents:         # waits out the queue's maximum
            left = t + q["max_wait_seconds"]
            event("member-queue-end", left, CC_Cause="Cancel", CC_Cancel_Reason="TIMEOUT",
                  CC_Member_Leaving_Time=int(left))
        else:
            agent = f"agent-{rnd.choice(agents)}@{domain}"
            answered = t + rnd.randint(3, 75)
            if fate < 0.19:                     # the first offer fails, the next agent answers
                event("bridge-agent-fail", answered - 2, CC_Agent=agent)
            ended = answered + rnd.randint(40, 420)
            event("bridge-agent-end", ended, CC_Agent=agent, CC_Agent_Bridged="true",
                  CC_Agent_Answered_Time=int(answered), CC_Bridge_Terminated_Time=int(ended))
            event("member-queue-end", ended, CC_Cause="Terminated", CC_Member_Leaving_Time=int(ended))
    for op in ops:
        stored += conn.execute(op.sql, op.params).rowcount
    return stored


def summary(conn: psycopg.Connection) -> dict[str, Any]:
    plans = conn.execute(
        """SELECT t.plan, count(*) AS tenants,
                  sum((SELECT count(*) FROM sip_accounts a WHERE a.tenant_id = t.id))::int AS accounts,
                  sum(dustel_number_count(t.id))::int AS numbers
             FROM tenants t GROUP BY t.plan ORDER BY t.plan""").fetchall()
    tenant_rows = tenants.list_all(conn)
    return {
        "plans": plans,
        "tenants": tenant_rows,
        "queues": conn.execute("SELECT count(*) AS n FROM queues").fetchone()["n"],
        "agents": conn.execute("SELECT count(*) AS n FROM agents").fetchone()["n"],
        "diversions": conn.execute("SELECT count(*) AS n FROM diversions").fetchone()["n"],
        "queue_events": conn.execute("SELECT count(*) AS n FROM queue_events").fetchone()["n"],
        "queue_day": QUEUE_DAY.isoformat(),
    }
