"""Behind the SIP edge (issue 27), pure parts."""
from __future__ import annotations

from dustel.agi.freeswitch import request_from
from dustel.callpath import variables as V
from dustel.render.engines import EDGE_EMERGENCY_RE, EMERGENCY_DIALS


def test_a_freeswitch_call_behind_the_edge_is_judged_by_the_phones_address() -> None:
    """The edge's address is every phone's; the IP rule needs the phone's own,
    which the rendered public context copies from the edge's header into a
    channel variable no phone can set (a header alone would be forgeable
    where there is no edge)."""
    data = {"Unique-ID": "u1", "variable_dustel_tenant": "7", "variable_user_name": "000387100001",
            "Caller-Destination-Number": "0211123456", "variable_sip_network_ip": "127.0.0.10",
            "FreeSWITCH-Switchname": "fs1"}
    assert request_from(data).source_ip == "127.0.0.10"
    edge = {**data, f"variable_{V.EDGE_SOURCE}": "192.0.2.7:5062"}
    r = request_from(edge)
    assert (r.source_ip, r.account, r.node) == ("192.0.2.7", "000387100001", "fs1")
    assert request_from({**data, f"variable_{V.EDGE_SOURCE}": "[2001:db8::7]:5060"}).source_ip == "2001:db8::7"
    forged = {**data, "variable_sip_h_X-Dustel-Source": "192.0.2.7:5062"}      # a header, not the variable
    assert request_from(forged).source_ip == "127.0.0.10"


def test_the_edges_emergency_pattern_takes_every_dialled_form_and_nothing_else() -> None:
    import re
    pattern = re.compile(EDGE_EMERGENCY_RE)
    assert all(pattern.match(d) for d in EMERGENCY_DIALS)
    assert not any(pattern.match(d) for d in ("1100", "0211112", "+491120", "11", "00491101", "112a"))


def test_the_fetch_leaves_a_phones_call_behind_the_edge_to_its_tenants_context() -> None:
    """Behind the edge a phone's call enters ``public`` like the carrier's;
    deciding it there as a call to a number would skip the caller's own
    policy (limits, credit, blacklist). The static edge-phone extension hands
    it to the tenant's context, whose fetch decides it as the phone's."""
    from dustel.agi.freeswitch import fetched_number
    carrier = {"section": "dialplan", "Hunt-Context": "public", "Hunt-Destination-Number": "+492115550101",
               f"variable_sip_h_{V.EDGE_MARK_HEADER}": "carrier"}
    assert fetched_number(carrier) == "+492115550101"
    phone = {**carrier, f"variable_sip_h_{V.EDGE_MARK_HEADER}": "",
             f"variable_sip_h_{V.EDGE_SOURCE_HEADER}": "192.0.2.7:5062"}
    assert fetched_number(phone) is None
    assert fetched_number({**carrier, "Hunt-Context": "t1"}) is None
