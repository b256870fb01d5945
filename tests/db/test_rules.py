"""Every provisioning rule, accepted and refused, against real PostgreSQL."""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from dustel.errors import DustelError, db_errors
from dustel.provisioning import accounts, features, numbers, targets, tenants
from tests.factories import PASSWORD, account, tenant


def ok(conn: psycopg.Connection, fn: Callable[[], Any]) -> Any:
    with db_errors(), conn.transaction():
        return fn()


def refused(conn: psycopg.Connection, fn: Callable[[], Any], field: str, words: str) -> DustelError:
    with pytest.raises(DustelError) as exc:
        with db_errors(), conn.transaction():
            fn()
    assert exc.value.field == field, str(exc.value)
    assert words in exc.value.rule, str(exc.value)
    return exc.value


# ---------------------------------------------------------------- plans

def test_plan_facts_are_seeded_in_cents(conn: psycopg.Connection) -> None:
    plans = {r["code"]: r for r in conn.execute("SELECT * FROM plans")}
    assert plans["starter"]["payment"] == "prepaid" and plans["starter"]["accounts_max"] == 5
    assert plans["starter"]["new_number_once_cents"] == 990 and plans["starter"]["new_number_yearly_cents"] == 490
    assert plans["starter"]["start_credit_seconds"] == 30 * 60
    assert plans["complete"]["base_fee_cents"] == 790 and not plans["complete"]["prices_net"]
    assert plans["complete"]["min_term_months"] == 12 and plans["complete"]["accounts_max"] == 10
    assert plans["business_flex"]["base_fee_cents"] == 720 and plans["business_flex"]["prices_net"]
    assert plans["business_flex"]["number_monthly_cents"] == 42
    assert plans["business_flex"]["number_monthly_large_cents"] == 36
    opts = {(r["plan"], r["option"]): r for r in conn.execute("SELECT * FROM plan_options")}
    assert opts[("business_flex", "acd")]["price_cents"] == 832
    assert opts[("business_flex", "clip_no_screening")]["price_cents"] == 420
    assert opts[("business_flex", "clip_no_screening")]["requires_agreement"]
    assert opts[("business_flex", "extra_line")]["price_cents"] == 84
    assert opts[("business_flex", "extra_account")]["price_cents"] == 42
    assert opts[("business_flex", "flat_de_mobile")]["price_cents"] == 1672
    assert opts[("complete", "flat_de_fixed")]["included"] == 1
    assert opts[("complete", "flat_de_fixed")]["price_cents"] == 490
    assert all(p["lines_in"] == 2 and p["lines_out"] == 2 for p in plans.values())


def test_customer_type_per_plan(conn: psycopg.Connection) -> None:
    tenant(conn, plan="complete", customer_type="private")
    tenant(conn, plan="starter", customer_type="business")
    tenant(conn, plan="business_flex", customer_type="public_body")
    refused(conn, lambda: tenants.add(conn, name="ACME GmbH", customer_type="business", plan="complete"),
            "customer_type", "complete: private only")
    refused(conn, lambda: tenants.add(conn, name="Hans", customer_type="private", plan="business_flex"),
            "customer_type", "not allowed")
    refused(conn, lambda: tenants.add(conn, name="X", customer_type="private", plan="platinum"),
            "plan", "must be one of")
    # a plan change is checked the same way
    t = tenant(conn, plan="starter", customer_type="business")
    refused(conn, lambda: tenants.set_fields(conn, t["id"], plan="complete"), "customer_type", "private only")


def test_sixth_account_on_starter_refused(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="starter")
    for _ in range(5):
        account(conn, t["id"])
    refused(conn, lambda: accounts.add(conn, t["id"], password=PASSWORD), "account", "at most 5")
    assert conn.execute("SELECT count(*) AS n FROM sip_accounts").fetchone()["n"] == 5


def test_complete_allows_ten_accounts(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="complete")
    for _ in range(10):
        account(conn, t["id"])
    refused(conn, lambda: accounts.add(conn, t["id"], password=PASSWORD), "account", "at most 10")


def test_business_flex_extra_accounts_must_be_booked(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="business_flex")
    account(conn, t["id"])
    account(conn, t["id"])
    refused(conn, lambda: accounts.add(conn, t["id"], password=PASSWORD), "account", "extra_account")
    ok(conn, lambda: tenants.set_option(conn, t["id"], "extra_account", 1))
    account(conn, t["id"])
    # cannot cancel the extra account while it is in use
    refused(conn, lambda: tenants.set_option(conn, t["id"], "extra_account", 0), "quantity", "fewer extra")


def test_options_only_on_their_plan_and_within_max(conn: psycopg.Connection) -> None:
    s = tenant(conn, plan="starter")
    refused(conn, lambda: tenants.set_option(conn, s["id"], "acd", 1), "option", "not available on plan starter")
    ok(conn, lambda: tenants.set_option(conn, s["id"], "per_minute_billing", 1))
    assert tenants.limits(conn, s["id"])["billing_increment"] == 60
    c = tenant(conn, plan="complete")
    assert tenants.limits(conn, c["id"])["flat_de_fixed"] == 1   # one included
    ok(conn, lambda: tenants.set_option(conn, c["id"], "flat_de_fixed", 1))
    assert tenants.limits(conn, c["id"])["flat_de_fixed"] == 2
    refused(conn, lambda: tenants.set_option(conn, c["id"], "flat_de_fixed", 2), "quantity", "at most 1")
    b = tenant(conn, plan="business_flex", options={"extra_line": 3})
    assert tenants.limits(conn, b["id"])["lines_in"] == 5


def test_acd_needs_option(conn: psycopg.Connection) -> None:
    b = tenant(conn, plan="business_flex")
    refused(conn, lambda: targets.queue_add(conn, b["id"], "support", "1"), "queue", "needs the acd option")
    ok(conn, lambda: tenants.set_option(conn, b["id"], "acd", 1))
    ok(conn, lambda: targets.queue_add(conn, b["id"], "support", "1"))
    refused(conn, lambda: tenants.set_option(conn, b["id"], "acd", 0), "option", "while the tenant has queues")
    c = tenant(conn, plan="complete")
    refused(conn, lambda: tenants.set_option(conn, c["id"], "acd", 1), "option", "not available")


def test_clip_no_screening_needs_option_and_agreement(conn: psycopg.Connection) -> None:
    b = tenant(conn, plan="business_flex")
    ok(conn, lambda: numbers.add(conn, b["id"], "+492111234567"))
    user = account(conn, b["id"])
    # own number: fine without the option
    ok(conn, lambda: accounts.set_fields(conn, user, caller_id="+492111234567"))
    # foreign caller ID without the option
    refused(conn, lambda: accounts.set_fields(conn, user, caller_id="+4940999999"), "caller_id",
            "not one of the tenant's own numbers")
    # the option without an agreement on file
    refused(conn, lambda: tenants.set_option(conn, b["id"], "clip_no_screening", 1), "option",
            "signed agreement")
    ok(conn, lambda: tenants.set_fields(conn, b["id"], clip_agreement_on=dt.date(2026, 1, 15)))
    ok(conn, lambda: tenants.set_option(conn, b["id"], "clip_no_screening", 1))
    ok(conn, lambda: accounts.set_fields(conn, user, caller_id="+4940999999"))
    # the agreement cannot be withdrawn while booked, nor the option while used
    refused(conn, lambda: tenants.set_fields(conn, b["id"], clip_agreement_on=None), "clip_agreement",
            "cannot be withdrawn")
    refused(conn, lambda: tenants.set_option(conn, b["id"], "clip_no_screening", 0), "option", "in use")
    # on other plans the option does not exist
    c = tenant(conn, plan="complete")
    refused(conn, lambda: tenants.set_option(conn, c["id"], "clip_no_screening", 1), "option", "not available")


def test_caller_id_inside_own_block_is_own(conn: psycopg.Connection) -> None:
    b = tenant(conn, plan="business_flex")
    ok(conn, lambda: numbers.add(conn, b["id"], "+4921155555", block_size=10))
    user = account(conn, b["id"])
    ok(conn, lambda: accounts.set_fields(conn, user, caller_id="+49211555557"))
    refused(conn, lambda: accounts.set_fields(conn, user, caller_id="+492115555570"), "caller_id", "not one of")


def test_plan_change_must_fit(conn: psycopg.Connection) -> None:
    c = tenant(conn, plan="starter", customer_type="private")
    for _ in range(5):
        account(conn, c["id"])
    ok(conn, lambda: tenants.set_fields(conn, c["id"], plan="complete"))   # 5 <= 10
    for _ in range(5):
        account(conn, c["id"])
    refused(conn, lambda: tenants.set_fields(conn, c["id"], plan="starter"), "plan", "minimum term")
    conn.execute("UPDATE tenants SET plan_since = current_date - 400 WHERE id = %s", (c["id"],))  # term served
    refused(conn, lambda: tenants.set_fields(conn, c["id"], plan="starter"), "plan", "allows 5")
    s = tenant(conn, plan="starter")
    ok(conn, lambda: tenants.set_option(conn, s["id"], "per_minute_billing", 1))
    refused(conn, lambda: tenants.set_fields(conn, s["id"], plan="complete"), "plan", "per_minute_billing")


# ---------------------------------------------------------------- accounts

def test_username_format_and_uniqueness(conn: psycopg.Connection) -> None:
    a = tenant(conn, plan="starter")
    b = tenant(conn, plan="starter")
    assert account(conn, a["id"], username="000387123456") == "000387123456"
    refused(conn, lambda: accounts.add(conn, b["id"], password=PASSWORD, username="000387123456"),
            "username", "already taken platform-wide")
    refused(conn, lambda: accounts.add(conn, b["id"], password=PASSWORD, username="000388123456"),
            "username", "000387 followed by 6 digits")
    auto = account(conn, b["id"])
    assert auto.startswith("000387") and len(auto) == 12


def test_password_stored_only_as_ha1(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="starter", domain="acme.sip.dustel.de")
    user = account(conn, t["id"], password="Very-Secret-2026")
    row = conn.execute("SELECT ha1 FROM sip_accounts WHERE username = %s", (user,)).fetchone()
    import hashlib
    assert row["ha1"] == hashlib.md5(f"{user}:acme.sip.dustel.de:Very-Secret-2026".encode()).hexdigest()
    cols = [r["column_name"] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'sip_accounts'")]
    assert not any("pass" in c for c in cols)
    refused(conn, lambda: accounts.add(conn, t["id"], password="short1"), "password", "12 to 128")
    refused(conn, lambda: accounts.add(conn, t["id"], password="no digits at all!"), "password",
            "printable ASCII without spaces")
    refused(conn, lambda: accounts.add(conn, t["id"], password="nodigitsatallhere"), "password", "a digit")
    # the realm is fixed once HA1s exist
    refused(conn, lambda: conn.execute("UPDATE tenants SET sip_domain = 'x.sip.dustel.de' WHERE id = %s",
                                       (t["id"],)), "domain", "cannot change")


def test_tls_t38_and_ip_restriction(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="starter")
    user = account(conn, t["id"], tls_mode="tls_srtp", t38="passthrough",
                   allowed_nets=["192.0.2.10", "2001:db8::/32", "198.51.100.0/24"])
    acc = accounts.get(conn, user)
    assert acc["tls_mode"] == "tls_srtp" and acc["t38"] == "passthrough"
    assert acc["allowed_nets"] == ["192.0.2.10/32", "198.51.100.0/24", "2001:db8::/32"]
    refused(conn, lambda: accounts.set_fields(conn, user, tls_mode="ssl"), "tls", "must be one of")
    refused(conn, lambda: accounts.set_fields(conn, user, t38="yes"), "t38", "must be one of")
    refused(conn, lambda: accounts.set_fields(conn, user, allowed_nets=["192.0.2.1/24"]), "allowed_ip",
            "host bits must be zero")
    refused(conn, lambda: accounts.set_fields(conn, user, allowed_nets=["300.1.1.1"]), "allowed_ip", "not an IP")
    ok(conn, lambda: accounts.set_fields(conn, user, tls_mode="tls_only", allowed_nets=[]))
    assert accounts.get(conn, user)["allowed_nets"] == []


def test_emergency_location_must_be_an_address(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="starter", area="0211")
    user = account(conn, t["id"])
    assert accounts.get(conn, user)["location_area_code"] == "211"
    refused(conn, lambda: accounts.set_fields(conn, user, location="030"), "location", "not an address")
    ok(conn, lambda: tenants.add_address(conn, t["id"], kind="branch", street="Unter den Linden 1",
                                         postcode="10117", city="Berlin", area_code="030"))
    ok(conn, lambda: accounts.set_fields(conn, user, location="030"))


# ---------------------------------------------------------------- numbers

def test_number_outside_area_codes_refused(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="starter", area="0211")
    ok(conn, lambda: numbers.add(conn, t["id"], "0211 123456"))
    err = refused(conn, lambda: numbers.add(conn, t["id"], "+4930123456"), "number", "outside the tenant's area")
    assert "0211" in err.rule
    # non-geographic numbers are not area-bound
    ok(conn, lambda: numbers.add(conn, t["id"], "+4932212345678"))
    # a second residence in Berlin makes Berlin numbers possible
    ok(conn, lambda: tenants.add_address(conn, t["id"], kind="second_residence", street="Weg 2",
                                         postcode="10115", city="Berlin", area_code="030"))
    ok(conn, lambda: numbers.add(conn, t["id"], "+4930123456"))


def test_moving_away_with_a_number_refused(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="starter", area="0211")
    ok(conn, lambda: numbers.add(conn, t["id"], "+49211777777"))
    addr = conn.execute("SELECT id FROM addresses WHERE tenant_id = %s", (t["id"],)).fetchone()["id"]
    refused(conn, lambda: tenants.remove_address(conn, t["id"], addr), "address", "bound to area code 0211")
    refused(conn, lambda: conn.execute("UPDATE addresses SET area_code = '30' WHERE id = %s", (addr,)),
            "address", "moving away is not allowed")


def test_block_is_never_split(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="business_flex", number_quota=20)
    user = account(conn, t["id"])
    ok(conn, lambda: numbers.add(conn, t["id"], "+4921144444", block_size=10, central_ddi="0"))
    for op in (lambda: numbers.remove(conn, "+49211444447"),
               lambda: numbers.assign(conn, "+49211444447", "account", user),
               lambda: numbers.port_out(conn, "+49211444447", carrier="Telekom")):
        refused(conn, op, "number", "a block is never split")
    # a member cannot be added on its own either
    refused(conn, lambda: numbers.add(conn, t["id"], "+49211444447"), "number", "overlaps +4921144444")
    ok(conn, lambda: numbers.assign(conn, "+4921144444", "account", user))
    ok(conn, lambda: numbers.remove(conn, "+4921144444"))
    assert numbers.list_for(conn, t["id"]) == []
    refused(conn, lambda: numbers.add(conn, t["id"], "+4921144444", block_size=10, central_ddi="10"),
            "central", "not in the block")
    refused(conn, lambda: numbers.add(conn, t["id"], "+4921144444", block_size=15), "block_size", "must be one of")


def test_number_quotas(conn: psycopg.Connection) -> None:
    c = tenant(conn, plan="complete")
    for i in range(10):
        ok(conn, lambda i=i: numbers.add(conn, c["id"], f"+4921110000{i:02d}"))
    refused(conn, lambda: numbers.add(conn, c["id"], "+492111000099"), "number", "allows 10")
    b = tenant(conn, plan="business_flex", number_quota=20)
    ok(conn, lambda: numbers.port_in(conn, b["id"], "+4921120000", block_size=10, carrier="Telekom"))
    ok(conn, lambda: numbers.add(conn, b["id"], "+4921130000", block_size=10))
    refused(conn, lambda: numbers.add(conn, b["id"], "+492114000000"), "number", "allows 20")
    # a larger quota makes room; shrinking below what is held is refused
    ok(conn, lambda: tenants.set_fields(conn, b["id"], number_quota=30))
    ok(conn, lambda: numbers.add(conn, b["id"], "+492114000000"))
    refused(conn, lambda: tenants.set_fields(conn, b["id"], number_quota=20), "number_quota", "21 numbers held")
    refused(conn, lambda: tenants.set_fields(conn, c["id"], number_quota=20), "number_quota", "only business flex")


def test_routing_targets_stay_inside_the_tenant(conn: psycopg.Connection) -> None:
    a = tenant(conn, plan="business_flex", options={"acd": 1})
    b = tenant(conn, plan="business_flex")
    ua = account(conn, a["id"])
    ub = account(conn, b["id"])
    ok(conn, lambda: numbers.add(conn, a["id"], "+492116666666"))
    refused(conn, lambda: numbers.assign(conn, "+492116666666", "account", ub), "account", "has no account")
    ok(conn, lambda: numbers.assign(conn, "+492116666666", "account", ua))
    ok(conn, lambda: targets.queue_add(conn, a["id"], "support", "1"))
    ok(conn, lambda: numbers.assign(conn, "+492116666666", "queue", "support"))
    ok(conn, lambda: targets.faxbox_add(conn, a["id"], "office", "fax@example.org"))
    ok(conn, lambda: numbers.assign(conn, "+492116666666", "fax", "office"))
    ok(conn, lambda: targets.ring_group_add(conn, a["id"], "sales", [ua]))
    ok(conn, lambda: numbers.assign(conn, "+492116666666", "group", "sales"))
    row = numbers.list_for(conn, a["id"])[0]
    assert (row["target_kind"], row["target"]) == ("group", "sales")
    # the database itself refuses a cross-tenant reference
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        with conn.transaction():
            conn.execute("UPDATE numbers SET target_kind = 'account', group_id = NULL,"
                         " account_id = (SELECT id FROM sip_accounts WHERE username = %s)", (ub,))
    # routing to a queue without ACD
    ok(conn, lambda: numbers.add(conn, b["id"], "+492117777777"))
    refused(conn, lambda: numbers.assign(conn, "+492117777777", "queue", "support"), "queue", "has no queue")


def test_porting_state_machine(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="starter", area="0211")
    order = ok(conn, lambda: numbers.port_in(conn, t["id"], "+49211888888", carrier="Telekom"))
    assert numbers.find(conn, "+49211888888")["status"] == "porting_in"
    refused(conn, lambda: numbers.port_event(conn, order["id"], "done"), "state", "cannot be doneed"
            if False else "requested porting order cannot be")
    refused(conn, lambda: numbers.port_event(conn, order["id"], "confirm"), "date", "porting date")
    ok(conn, lambda: numbers.port_event(conn, order["id"], "confirm", port_date=dt.date.today()
                                        + dt.timedelta(days=14)))
    ok(conn, lambda: numbers.port_event(conn, order["id"], "done"))
    assert numbers.find(conn, "+49211888888")["status"] == "active"
    refused(conn, lambda: numbers.port_event(conn, order["id"], "reject", reason="late"), "state", "closed")
    # port-in keeps the area binding
    refused(conn, lambda: numbers.port_in(conn, t["id"], "+4989123456", carrier="Vodafone"), "number",
            "outside the tenant's area")
    # port-out, rejected -> active again; done -> ported out and unrouted
    out = ok(conn, lambda: numbers.port_out(conn, "+49211888888", carrier="1&1"))
    refused(conn, lambda: numbers.port_out(conn, "+49211888888", carrier="1&1"), "number", "porting_out")
    ok(conn, lambda: numbers.port_event(conn, out["id"], "reject", reason="wrong customer name"))
    assert numbers.find(conn, "+49211888888")["status"] == "active"
    out = ok(conn, lambda: numbers.port_out(conn, "+49211888888", carrier="1&1"))
    ok(conn, lambda: numbers.port_event(conn, out["id"], "confirm", port_date=dt.date.today()))
    ok(conn, lambda: numbers.port_event(conn, out["id"], "done"))
    assert numbers.find(conn, "+49211888888")["status"] == "ported_out"
    # a rejected port-in frees the number again
    o2 = ok(conn, lambda: numbers.port_in(conn, t["id"], "+49211999999", carrier="O2"))
    ok(conn, lambda: numbers.port_event(conn, o2["id"], "reject", reason="contract not cancelled"))
    with pytest.raises(DustelError, match="not provisioned"):
        numbers.find(conn, "+49211999999")


def test_porting_fee_rule() -> None:
    starter = {"porting_fee_since": dt.date(2023, 7, 1), "porting_fee_yearly_cents": 500, "porting_fee_covers": 10}
    assert tenants.porting_fee_cents(starter, dt.date(2023, 6, 30), 3) == 0        # old tariff exempt
    assert tenants.porting_fee_cents(starter, dt.date(2023, 7, 1), 0) == 0
    assert tenants.porting_fee_cents(starter, dt.date(2023, 7, 1), 1) == 500
    assert tenants.porting_fee_cents(starter, dt.date(2024, 1, 1), 10) == 500
    assert tenants.porting_fee_cents(starter, dt.date(2024, 1, 1), 11) == 1000
    free = {"porting_fee_since": None, "porting_fee_yearly_cents": 0, "porting_fee_covers": None}
    assert tenants.porting_fee_cents(free, dt.date(2024, 1, 1), 50) == 0


def test_porting_fee_shown_for_tenant(conn: psycopg.Connection) -> None:
    new = tenant(conn, plan="starter", created_on=dt.date(2024, 3, 1))
    old = tenant(conn, plan="starter", created_on=dt.date(2022, 3, 1))
    for t, n in ((new, "+492111212121"), (old, "+492111313131")):
        ok(conn, lambda t=t, n=n: numbers.port_in(conn, t["id"], n, carrier="Telekom"))
    assert tenants.show(conn, new["id"])["porting_fee_yearly_cents"] == 500
    assert tenants.show(conn, old["id"])["porting_fee_yearly_cents"] == 0


def test_complete_ports_in_at_most_ten(conn: psycopg.Connection) -> None:
    c = tenant(conn, plan="complete")
    for i in range(10):
        ok(conn, lambda i=i: numbers.port_in(conn, c["id"], f"+4921150000{i:02d}", carrier="Telekom"))
    refused(conn, lambda: numbers.port_in(conn, c["id"], "+492115000099", carrier="Telekom"), "number", "allows 10")


# ---------------------------------------------------------------- forwarding

def _accounts(conn: psycopg.Connection, n: int) -> tuple[dict[str, Any], list[str]]:
    t = tenant(conn, plan="business_flex", options={"extra_account": n})
    return t, [account(conn, t["id"]) for _ in range(n)]


def test_forwarding_target_counts(conn: psycopg.Connection) -> None:
    _, users = _accounts(conn, 12)
    src, others = users[0], users[1:]
    ok(conn, lambda: features.set_diversion(conn, src, kind="forward", mode="immediate", targets=others[:10]))
    assert len(features.show_diversion(conn, src)["targets"]) == 10
    refused(conn, lambda: features.set_diversion(conn, src, kind="forward", mode="immediate", targets=others[:11]),
            "targets", "at most 10")
    ok(conn, lambda: features.set_diversion(conn, src, kind="forward", mode="no_answer", timeout=15,
                                            targets=[others[0], "+4917011111111", "+4917022222222"]))
    refused(conn, lambda: features.set_diversion(
        conn, src, kind="forward", mode="no_answer",
        targets=["+4917011111111", "+4917022222222", "+4917033333333"]), "targets", "at most 2 external")
    # refused input left the previous forwarding intact
    d = features.show_diversion(conn, src)
    assert d["mode"] == "no_answer" and d["timeout_seconds"] == 15 and len(d["targets"]) == 3


def test_database_also_holds_the_target_counts(conn: psycopg.Connection) -> None:
    _, users = _accounts(conn, 2)
    aid = conn.execute("SELECT id, tenant_id FROM sip_accounts WHERE username = %s", (users[0],)).fetchone()
    insert = ("INSERT INTO diversion_targets (account_id, tenant_id, position, external_e164)"
              " VALUES (%s, %s, %s, %s)")
    ok(conn, lambda: features.set_diversion(conn, users[0], kind="forward", mode="immediate",
                                            targets=["+4917011111111"]))
    refused(conn, lambda: conn.execute(insert, (aid["id"], aid["tenant_id"], 11, "+4917033333333")),
            "targets", "at most 10")
    ok(conn, lambda: conn.execute(insert, (aid["id"], aid["tenant_id"], 2, "+4917022222222")))
    refused(conn, lambda: conn.execute(insert, (aid["id"], aid["tenant_id"], 3, "+4917033333333")),
            "targets", "at most 2 external")


def test_no_forwarding_behind_forwarding(conn: psycopg.Connection) -> None:
    _, (a, b, c) = _accounts(conn, 3)
    ok(conn, lambda: features.set_diversion(conn, b, kind="forward", mode="unregistered", targets=[c]))
    # a target that has its own forwarding
    refused(conn, lambda: features.set_diversion(conn, a, kind="forward", mode="immediate", targets=[b]),
            "targets", "has a forwarding or group call of its own")
    # the reverse: c is b's target, so c cannot get a forwarding or group call
    refused(conn, lambda: features.set_diversion(conn, c, kind="forward", mode="immediate", targets=[a]),
            "account", "is a forwarding/group target")
    refused(conn, lambda: features.set_diversion(conn, c, kind="group", targets=[a]),
            "account", "is a forwarding/group target")
    # no mixes on one account
    refused(conn, lambda: features.set_diversion(conn, b, kind="group", targets=[c]), "account", "no mixes")
    # a group call's target with its own forwarding, too
    refused(conn, lambda: features.set_diversion(conn, a, kind="group", targets=[b]), "targets", "of its own")
    # forwarding to itself
    refused(conn, lambda: features.set_diversion(conn, a, kind="forward", mode="immediate", targets=[a]),
            "targets", "cannot forward to itself")
    # after clearing, the chain is possible the other way round
    ok(conn, lambda: features.clear_diversion(conn, b, "forward"))
    ok(conn, lambda: features.set_diversion(conn, c, kind="group", targets=[a, b]))


def test_an_own_number_is_never_an_external_target(conn: psycopg.Connection) -> None:
    """Issue 26 item 19: forwarding to one of the tenant's own numbers as an
    "external" target was accepted and looped through the carrier."""
    t = tenant(conn, plan="business_flex", number_quota=50, options={"extra_account": 2, "acd": 1})
    a, b = account(conn, t["id"]), account(conn, t["id"])
    ok(conn, lambda: numbers.add(conn, t["id"], "+492115550100"))
    ok(conn, lambda: numbers.add(conn, t["id"], "+4921155511", block_size=10))
    for target in ("+492115550100", "+49211555117"):            # a single number, a member of a block
        refused(conn, lambda target=target: features.set_diversion(conn, a, kind="forward", mode="no_answer",
                                                                   targets=[target]),
                "targets", "is a number of this tenant; name the SIP account")
        refused(conn, lambda target=target: features.set_diversion(conn, a, kind="group", targets=[b, target]),
                "targets", "is a number of this tenant")
    refused(conn, lambda: targets.ring_group_add(conn, t["id"], "desk", [a], fallback="+492115550100"),
            "fallback", "is a number of this tenant")
    ok(conn, lambda: targets.queue_add(conn, t["id"], "hotline", "5"))
    refused(conn, lambda: targets.queue_hours(conn, t["id"], "hotline", ["mon-fri 08:00-18:00"],
                                              closed_target="+49211555113"),
            "closed_target", "+49211555113 (block +4921155511 of 10) is a number of this tenant")
    # another tenant's number is a real external target; one that becomes ours later is refused as a number
    ok(conn, lambda: features.set_diversion(conn, a, kind="forward", mode="no_answer", targets=["+49211555026"]))
    refused(conn, lambda: numbers.add(conn, t["id"], "+49211555026"), "number",
            "+49211555026 is an external forwarding, group call, fallback or closed-queue target of this tenant")
    refused(conn, lambda: numbers.add(conn, t["id"], "+4921155502", block_size=10), "number",
            "+49211555026 is an external forwarding")


def test_an_own_number_set_before_the_rule_is_never_dialled_at_call_time(conn: psycopg.Connection) -> None:
    """Issue 26 item 19, at call time: a target stored before the database
    refused it (or the called number itself) never becomes an outbound leg."""
    from dustel.callpath import calls, divert
    t = tenant(conn, plan="business_flex", number_quota=20, options={"acd": 1})
    a = account(conn, t["id"])
    ok(conn, lambda: numbers.add(conn, t["id"], "+492115550100"))
    ok(conn, lambda: numbers.add(conn, t["id"], "+492115550101"))
    ok(conn, lambda: numbers.assign(conn, "+492115550100", "account", a))
    ok(conn, lambda: features.set_diversion(conn, a, kind="forward", mode="immediate", targets=["+4917011111111"]))
    row = conn.execute("SELECT id, tenant_id FROM sip_accounts WHERE username = %s", (a,)).fetchone()
    conn.execute("ALTER TABLE diversion_targets DISABLE TRIGGER diversion_targets_check")
    conn.execute("""INSERT INTO diversion_targets (account_id, tenant_id, position, external_e164)
                    VALUES (%s, %s, 2, '+492115550101'), (%s, %s, 3, '+492115550100')""",
                 (row["id"], row["tenant_id"], row["id"], row["tenant_id"]))
    conn.execute("ALTER TABLE diversion_targets ENABLE TRIGGER diversion_targets_check")
    now = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)
    r = calls.run_sync(conn, divert.routing(t["id"], "account", a, "+492115550100", now))
    assert r.stages == (divert.Stage((), ("+4917011111111",), divert.RING_SECONDS),)
    # the same for a block member, a ring group's fallback and a closed queue's target (helper-4's upgrade run)
    from dustel.queue import hours
    ok(conn, lambda: numbers.add(conn, t["id"], "+4921155531", block_size=10))
    ok(conn, lambda: targets.ring_group_add(conn, t["id"], "desk", [a], fallback="+4930123456"))
    triggers = (("diversion_targets", "diversion_targets_check"), ("ring_groups", "ring_groups_own_number"),
                ("queues", "queues_own_number"))
    for table, trigger in triggers:
        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
    conn.execute("UPDATE diversion_targets SET external_e164 = '+49211555317' WHERE position = 2")
    conn.execute("UPDATE ring_groups SET fallback_e164 = '+492115550101'")
    conn.execute("""INSERT INTO queues (tenant_id, name, code, opening_hours, closed_target)
                    VALUES (%s, 'hotline', '7', '{"rules": []}', '+49211555315')""", (t["id"],))
    for table, trigger in triggers:
        conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
    r = calls.run_sync(conn, divert.routing(t["id"], "account", a, "+492115550100", now))
    assert r.stages == (divert.Stage((), ("+4917011111111",), divert.RING_SECONDS),)
    g = calls.run_sync(conn, divert.routing(t["id"], "group", "desk", "+492115550101", now))
    assert len(g.stages) == 1                               # no fallback stage through the carrier
    assert calls.run_sync(conn, hours.state(t["id"], "hotline", now)).closed_target == ""
    from dustel import health
    counts = {c.name: c.count for c in health.checks(conn)}
    assert counts["own_number_targets"] == 4                # shown to a person: 2 targets, a fallback, a queue


def test_forwarding_internal_targets_are_usernames_of_the_tenant(conn: psycopg.Connection) -> None:
    t, (a,) = _accounts(conn, 1)
    other = tenant(conn, plan="starter")
    foreign = account(conn, other["id"])
    refused(conn, lambda: features.set_diversion(conn, a, kind="forward", mode="immediate", targets=[foreign]),
            "targets", "not a SIP account of this tenant")
    refused(conn, lambda: features.set_diversion(conn, a, kind="forward", mode="immediate", targets=["sales"]),
            "targets", "E.164")
    refused(conn, lambda: features.set_diversion(conn, a, kind="forward", mode="sometimes", targets=["+4917011111111"]),
            "mode", "must be one of")
    refused(conn, lambda: features.set_diversion(conn, a, kind="forward", mode="immediate", timeout=10,
                                                 targets=["+4917011111111"]), "timeout", "only forwarding on no answer")


def test_time_controlled_only_on_business_flex(conn: psycopg.Connection) -> None:
    _, (a, b) = _accounts(conn, 2)
    d = ok(conn, lambda: features.set_diversion(conn, a, kind="group", targets=[b],
                                                when=["mon-fri 08:00-18:00"], holiday_region="NW"))
    assert d["schedule"] == ["mon,tue,wed,thu,fri 08:00-18:00", "holidays of DE-NW"]
    s = tenant(conn, plan="starter")
    u1, u2 = account(conn, s["id"]), account(conn, s["id"])
    refused(conn, lambda: features.set_diversion(conn, u1, kind="forward", mode="immediate", targets=[u2],
                                                 when=["mon-fri 08:00-18:00"]), "schedule", "need business flex")
    ok(conn, lambda: features.set_diversion(conn, u1, kind="forward", mode="immediate", targets=[u2]))


# ---------------------------------------------------------------- limits, zones, lists

def test_limits_zones_lists_speed_dials(conn: psycopg.Connection) -> None:
    t = tenant(conn, plan="starter")
    u = account(conn, t["id"])
    lim = ok(conn, lambda: features.set_limits(conn, t["id"], credit_limit_cents=4990, max_call_seconds=1800))
    assert lim["monthly_credit_limit_cents"] == 4990 and lim["max_call_seconds"] == 1800
    ok(conn, lambda: features.set_limits(conn, t["id"], account=u, max_call_seconds=600))
    assert features.show_limits(conn, t["id"])["accounts"] == [{"username": u, "max_call_seconds": 600}]
    refused(conn, lambda: features.set_limits(conn, t["id"], max_call_seconds=0), "max_call_seconds", "1 to 86400")
    z = ok(conn, lambda: features.set_zones(conn, u, preset="germany_no_0137", allow=["de_premium"]))
    assert z["zones"] == ["de_fixed", "de_freephone", "de_mobile", "de_premium", "de_public"]
    refused(conn, lambda: features.set_zones(conn, u, preset="mars", allow=None), "preset", "must be one of")
    refused(conn, lambda: features.set_zones(conn, u, preset=None, allow=["moon"]), "allow", "unknown zone")
    for p in ("anonymous", "+49211*", "0170 1234567"):
        ok(conn, lambda p=p: features.list_add(conn, u, "black", p))
    assert features.list_show(conn, u, "black") == ["+491701234567", "+49211*", "anonymous"]
    refused(conn, lambda: features.list_add(conn, u, "black", "+49211*"), "pattern", "already on the list")
    refused(conn, lambda: features.list_add(conn, u, "white", "12;DROP"), "pattern", "E.164")
    ok(conn, lambda: features.list_remove(conn, u, "black", "anonymous"))
    ok(conn, lambda: features.speed_dial_set(conn, t["id"], "1", "+4921112345"))
    ok(conn, lambda: features.speed_dial_set(conn, t["id"], "2", u))
    refused(conn, lambda: features.speed_dial_set(conn, t["id"], "1234", "+4921112345"), "code", "1 to 3 digits")
    refused(conn, lambda: features.speed_dial_set(conn, t["id"], "3", "sales"), "target", "E.164")
    assert [d["code"] for d in features.speed_dial_list(conn, t["id"])] == ["1", "2"]
