"""Issue 32, the FreeSWITCH side of a reload: a changed carrier gateway
(recording 11, replayed by the emulator), the reload commands, the caps of a
node, and the variables of the fax originate as FreeSWITCH reads them."""
from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from dustel.config import EngineNode, Settings, load_settings
from dustel.errors import DustelError
from dustel.render import engines
from dustel.render.context import Provider
from dustel.wire import esl as P
from tests.esl_emulator import (
    FreeSwitchEmulator,
    SofiaGateways,
    bridged_leg_variables,
    export_variable,
    fs_bracket_vars,
    fs_split_blank,
    load,
)

SETTINGS = Settings(state_dir=Path("/srv/dustel"), sip_bind_host="127.0.0.1", carrier_host="127.0.0.1:5070",
                    esl_password="x-secret")


def _render_tree(conf: Path, s: Settings) -> dict[str, str]:
    files = engines.freeswitch_files(Provider(settings=s, tenants=[]))
    for rel, text in files.items():
        (conf / rel).parent.mkdir(parents=True, exist_ok=True)
        (conf / rel).write_text(text)
    return files


def _read_frames(sock: socket.socket, reader: P.FrameReader, n: int) -> bytes:
    """The bytes of the next ``n`` whole frames."""
    got, raw = 0, b""
    while got < n:
        data = sock.recv(65536)
        if not data:
            break
        raw += data
        got += len(reader.feed(data))
    return raw


def test_the_emulator_answers_recording_11_byte_for_byte(tmp_path: Path) -> None:
    """Recording 11: ``rescan`` keeps a changed gateway (the status still
    shows the old proxy), ``killgw`` then ``rescan`` applies it (new proxy,
    uptime 0, counters reset).  The emulator, loaded with the rendered
    ``carrier.xml`` whose proxy is changed where the recording changed it,
    answers the recorded commands with the recorded bytes."""
    conf = tmp_path / "freeswitch"
    _render_tree(conf, SETTINGS)
    now = [0.0]
    fs = FreeSwitchEmulator(password="ClueCon")
    fs.sofia = SofiaGateways(conf, clock=lambda: now[0])
    fs.sofia.gateways["carrier"]["calls_out"] = 2              # two calls went out before the recording
    fs.start()
    steps = load("11-gateway-change-reload")
    expected = b"".join(data for d, data in steps if d == "fs->client")
    received = bytearray()
    try:
        with socket.create_connection(("127.0.0.1", fs.port), timeout=10) as sock:
            reader = P.FrameReader()
            received += _read_frames(sock, reader, 1)            # auth/request
            statuses = 0
            for d, data in steps:
                if d != "client->fs":
                    continue
                if data == b"api reloadxml\n\n":                 # as recorded: the rendered proxy changed
                    _render_tree(conf, replace(SETTINGS, carrier_host="127.0.0.1:5071"))
                if data.startswith(b"api sofia status gateway"):
                    statuses += 1
                    now[0] = {1: 231.0, 2: 232.0}.get(statuses, now[0])
                sock.sendall(data)
                received += _read_frames(sock, reader, 2 if data == b"exit\n\n" else 1)
    finally:
        fs.stop()
    assert bytes(received) == expected
    assert fs.sofia.commands[-2:] == ["sofia profile carrier rescan", "sofia status gateway carrier"]


def _carrier(proxy: str, ip: str = "127.0.0.1") -> str:
    return engines.freeswitch_files(Provider(settings=replace(SETTINGS, carrier_host=proxy, sip_bind_host=ip),
                                             tenants=[]))["sip_profiles/carrier.xml"]


def test_killgw_goes_before_a_rescan_only_when_the_gateway_changed() -> None:
    """Issue 32.5a: ``render --reload`` sent ``sofia profile carrier rescan``,
    which kept the old gateway."""
    old, moved, rebound = _carrier("127.0.0.1:5070"), _carrier("127.0.0.1:5071"), _carrier("127.0.0.1:5070", "10.1.1.1")
    assert engines.changed_gateways(old, moved) == ["carrier"]
    assert engines.changed_gateways(old, rebound) == []             # the profile changed, not its gateway
    assert engines.changed_gateways(None, old) == []                # new: the rescan adds it
    assert engines.changed_gateways(old, old.replace('<gateway name="carrier">', '<gateway name="other">')) \
        == ["carrier"]                                              # gone: killed
    assert engines.changed_gateways("<not xml", moved) == ["carrier"]
    assert engines.reload_commands("freeswitch", ["sip_profiles/carrier.xml"], {"carrier": ["carrier"]}) == \
        ["reloadxml", "sofia profile carrier killgw carrier", "sofia profile carrier rescan"]
    assert engines.reload_commands("freeswitch", ["sip_profiles/carrier.xml"], {}) == \
        ["reloadxml", "sofia profile carrier rescan"]
    assert engines.reload_commands("freeswitch", ["nodes/fs1/switch.conf.xml"]) == []
    # mod_xml_curl reads its binding when it loads (issue 32.7)
    assert engines.reload_commands("freeswitch", ["autoload_configs/xml_curl.conf.xml"]) == \
        ["reloadxml", "reload mod_xml_curl"]


def test_a_full_reload_recreates_every_gateway_and_sets_each_nodes_caps() -> None:
    from dustel.wire import commands as C
    s = Settings(state_dir=Path("/srv/dustel"), fs_max_sessions=3000, fs_sessions_per_second=120,
                 esl_nodes=(EngineNode("fs1", "h1", 8021, "", "", max_sessions=9000),
                            EngineNode("fs2", "h2", 8021, "", "")))
    full = [c.decode().strip() for c in C.fs_reload()]
    assert full.index("api sofia profile carrier killgw carrier") + 1 == \
        full.index("api sofia profile carrier rescan")
    assert {k: [c.decode().strip() for c in v] for k, v in C.fs_node_reload(s).items()} == {
        "fs1": ["api fsctl max_sessions 9000", "api fsctl sps 120"],
        "fs2": ["api fsctl max_sessions 3000", "api fsctl sps 120"]}
    assert C.fs_node_reload(s, ["nodes/fs2/switch.conf.xml", "nodes/gone/switch.conf.xml"]).keys() == {"fs2"}


@pytest.mark.parametrize("node,rule", [
    ('max_sessions = 0', "esl_nodes[0].max_sessions: must be a positive integer"),
    ('sessions_per_second = "many"', "esl_nodes[0].sessions_per_second: must be a positive integer"),
    ('max_session = 100', "esl_nodes[0].max_session: unknown setting"),
])
def test_a_bad_node_cap_is_refused_naming_it(tmp_path: Path, node: str, rule: str) -> None:
    cfg = tmp_path / "dustel.toml"
    cfg.write_text(f'[[esl_nodes]]\nname = "fs1"\nhost = "h"\nport = 8021\n{node}\n')
    with pytest.raises(DustelError) as exc:
        load_settings(tmp_path, cfg, env={})
    assert str(exc.value).startswith(rule), str(exc.value)


def test_the_fax_originate_is_read_by_freeswitch_as_meant() -> None:
    """Issue 32.5b: the fax leg from the loopback channel offered only
    L16/8000.  The originate's variables, read as FreeSWITCH reads them (the
    api's word split drops quotes, then ``{^^:…}``), reach the carrier leg
    through the B leg's ``export_vars``: G.711 and, with T.38, the gateway."""
    from dustel.fax import outbound
    job = {"id": 7, "tenant_id": 3, "to_number": "+491701234567", "from_number": "+492119876601"}
    for t38 in (False, True):
        words = fs_split_blank(outbound.originate(job, t38=t38))
        assert words[0] == "originate" and words[2:] == ["fax-send", "XML", "dustel-fax-send"], words
        b_leg = fs_bracket_vars(words[1][1:words[1].index("}loopback/")])
        assert (b_leg["dustel_tenant"], b_leg["dustel_fax_job"], b_leg["ignore_early_media"]) == ("3", "7", "true")
        assert "absolute_codec_string" not in b_leg and "execute_on_answer_t38" not in b_leg   # not the loopback legs'
        export_variable(b_leg, "dustel_tenant", "3")             # the dustel-fax-out context
        carrier = bridged_leg_variables(b_leg)
        assert carrier["absolute_codec_string"] == "PCMA,PCMU"
        assert carrier["dustel_tenant"] == "3"
        if t38:
            assert (carrier["fax_enable_t38"], carrier["execute_on_answer_t38"]) == ("true", "t38_gateway self")
        else:
            assert "fax_enable_t38" not in carrier
