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


def test_a_reload_tries_every_edge_node_and_names_those_that_failed() -> None:
    """An edge node down at one reload must not stop the others, and must
    catch up at the next: every node is asked for every table, the failures
    are named together at the end."""
    import json
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from pathlib import Path

    import pytest

    from dustel.config import EngineNode, Settings
    from dustel.errors import DustelError
    from dustel.render import edge

    asked: list[str] = []

    class RPC(BaseHTTPRequestHandler):
        def do_POST(self) -> None:      # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append(body["method"])
            answer = json.dumps({"jsonrpc": "2.0", "result": None, "id": body["id"]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    live = HTTPServer(("127.0.0.1", 0), RPC)
    threading.Thread(target=live.serve_forever, daemon=True).start()
    gone = socket.socket()
    gone.bind(("127.0.0.1", 0))
    gone_port = gone.getsockname()[1]
    gone.close()                                   # nothing listens: refused
    s = Settings(Path("/nonexistent"), edge_nodes=(EngineNode("edge1", "127.0.0.1", 5060, "", "", rpc_port=gone_port),
                             EngineNode("edge2", "127.0.0.1", 5060, "", "", rpc_port=live.server_port)))
    with pytest.raises(DustelError) as err:
        edge.reload(s)
    live.shutdown()
    live.server_close()
    assert asked == ["dispatcher.reload", "permissions.addressReload"]          # edge2 reloaded all the same
    assert "edge node edge1" in err.value.rule and "edge2: dispatcher.reload ok" in err.value.rule
