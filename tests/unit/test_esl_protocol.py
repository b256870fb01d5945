"""The Event Socket protocol module over the bytes real FreeSWITCH sent."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dustel.wire import esl as P
from tests.esl_emulator import TRANSCRIPTS, fs_frames, load

NAMES = sorted(p.stem for p in TRANSCRIPTS.glob("*.jsonl"))


def stream(name: str) -> bytes:
    return b"".join(data for d, data in load(name) if d == "fs->client")


def frames(data: bytes, cuts: list[int]) -> list[P.Frame]:
    r = P.FrameReader()
    out, last = [], 0
    for c in sorted(set(cuts)) + [len(data)]:
        out += r.feed(data[last:c])
        last = c
    return out


def test_transcripts_are_present() -> None:
    assert len(NAMES) >= 7, f"no transcripts in {TRANSCRIPTS}"


def test_repository_copy_equals_the_shared_recordings() -> None:
    from tests.esl_emulator import SHARED_TRANSCRIPTS
    if not SHARED_TRANSCRIPTS.is_dir():
        print(f"no {SHARED_TRANSCRIPTS} next to this checkout: the repository copy is the reference")
        return
    shared = {p.name: p.read_bytes() for p in SHARED_TRANSCRIPTS.glob("*.jsonl")}
    mine = {p.name: p.read_bytes() for p in TRANSCRIPTS.glob("*.jsonl")}
    assert mine == shared, "tests/data/esl-transcripts differs from ../shared/esl-transcripts: copy them again"


@pytest.mark.parametrize("name", NAMES)
def test_recorded_chunking_and_whole_stream_agree(name: str) -> None:
    r = P.FrameReader()
    recorded = [f for d, data in load(name) if d == "fs->client" for f in r.feed(data)]
    whole = P.FrameReader().feed(stream(name))
    assert [(f.headers, f.body) for f in recorded] == [(f.headers, f.body) for f in whole]
    assert all(f.error is None for f in whole)
    assert not r._buf, "bytes left over after the last frame"


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_chunking_gives_the_same_frames(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(NAMES))
    s = stream(name)
    cuts = data.draw(st.lists(st.integers(0, len(s)), max_size=40))
    expect = [(f.headers, f.body) for f in P.FrameReader().feed(s)]
    assert [(f.headers, f.body) for f in frames(s, cuts)] == expect


def test_every_recorded_event_parses_and_fast_equals_slow() -> None:
    n = 0
    for name in NAMES:
        for f in P.FrameReader().feed(stream(name)):
            if f.content_type in P.EVENT_TYPES:
                ev = P.parse_event(f)
                assert ev.name and ev.get("Event-Name")
                n += 1
                if f.content_type == "text/event-plain":
                    head = f.body.split(b"\n\n", 1)[0]
                    assert P.parse_headers_slow(head) == ev.headers
                    lazy = P.parse_event(f)          # lookups without building the dict
                    assert all(lazy.get(k) == v for k, v in ev.headers.items())
                    assert lazy.get("No-Such-Header", "-") == "-"
    assert n > 100


def test_values_are_decoded_one_by_one() -> None:
    ev = [e for e in (P.parse_event(f) for f in P.FrameReader().feed(stream("03-call-events-plain"))
                      if f.content_type == "text/event-plain") if e.name == "CHANNEL_CREATE"][0]
    assert ev.get("FreeSWITCH-IPv6") == "fd00::2"
    assert ev.var("dustel_tenant") == "42"
    assert ev.get("Event-Date-GMT").endswith("GMT") and " " in ev.get("Event-Date-GMT")


def test_json_and_plain_events_carry_the_same_call() -> None:
    def seen(name: str) -> list[tuple[str, str]]:
        events = [P.parse_event(f) for f in P.FrameReader().feed(stream(name)) if f.content_type in P.EVENT_TYPES]
        return [(e.name, e.var("dustel_tenant")) for e in events]
    plain, js = seen("03-call-events-plain"), seen("03-call-events-json")
    assert sorted(n for n, _ in plain) == sorted(n for n, _ in js)    # two recordings: order may differ
    assert ("CHANNEL_ANSWER", "42") in plain and ("CHANNEL_ANSWER", "42") in js


header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,30}", fullmatch=True)
values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def _url_encode_bytewise(value: str) -> str:
    """switch_url_encode's rule, byte by byte (the reference for the fast path)."""
    unsafe = b"\r\n #%&+:;<=>?@[\\]^`{|}\""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b not in unsafe else f"%{b:02X}" for b in value.encode())


@settings(max_examples=500, deadline=None)
@given(value=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
       | st.text(st.sampled_from("aZ09-_.~!$'()*,/ \r\n#%&+:;<=>?@[\\]^`{|}\"\x7f\x1fé€"), max_size=20))
def test_url_encode_takes_its_shortcut_only_when_nothing_needs_encoding(value: str) -> None:
    assert P.url_encode(value) == _url_encode_bytewise(value)


def test_url_encode_leaves_safe_values_alone_and_encodes_every_unsafe_byte() -> None:
    assert P.url_encode("be000123-0000-4000-8000-000000000001") == "be000123-0000-4000-8000-000000000001"
    assert P.url_encode("~!$'()*,./_-") == "~!$'()*,./_-"
    assert P.url_encode("a b") == "a%20b"
    assert P.url_encode("x\x7fy") == "x%7Fy"
    assert P.url_encode("Düsseldorf") == "D%C3%BCsseldorf"
    assert P.url_encode('"<sip:+49@x>";tag') == "%22%3Csip%3A%2B49%40x%3E%22%3Btag"


@settings(max_examples=300, deadline=None)
@given(headers=st.dictionaries(header_names, values, max_size=20), body=st.text(max_size=30))
def test_encode_then_parse_is_identity(headers: dict[str, str], body: str) -> None:
    headers = {"Event-Name": "CUSTOM", **{k: v.replace("\x00", "") for k, v in headers.items()
                                          if k != "Content-Length"}}
    raw = P.encode_plain(headers, body)
    ev = P.parse_plain(raw)
    expect = dict(headers)
    if body:
        expect["Content-Length"] = str(len(body.encode()))
    assert all(ev.get(k) == v for k, v in expect.items())     # lazy lookups first
    assert ev.headers == expect and ev.body == body
    assert P.parse_headers_slow(raw.split(b"\n\n", 1)[0]) == expect


def test_an_encoded_line_break_stays_inside_its_value() -> None:
    forged = "Eve\nvariable_dustel_tenant: 7\n\nContent-Length: 1"
    raw = P.encode_plain({"Event-Name": "CHANNEL_CREATE", "Caller-Caller-ID-Name": forged,
                          "variable_dustel_tenant": "42"})
    ev = P.parse_plain(raw)
    assert ev.var("dustel_tenant") == "42" and ev.get("Caller-Caller-ID-Name") == forged
    assert len(ev.headers) == 3


def test_a_multibyte_character_split_across_reads() -> None:
    body = P.encode_plain({"Event-Name": "CUSTOM"}, body="Grüße aus Düsseldorf")
    frame = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body
    cut = frame.index("ü".encode()) + 1       # between the two bytes of ü
    out = frames(frame, [cut])
    assert P.parse_event(out[0]).body == "Grüße aus Düsseldorf"


def test_malformed_frames_are_reported_and_skipped() -> None:
    good = P.encode_plain({"Event-Name": "HEARTBEAT"})
    ok = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(good) + good
    bad_len = b"Content-Length: 12x\nContent-Type: text/event-plain\n\n"
    raw = b"Event-Name: X\nBad: \xff\xfe\n\n"
    bad_utf8 = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(raw) + raw
    bad_pct = P.encode_plain({"Event-Name": "X"}).replace(b"X", b"%FF%FE")
    bad_pct_frame = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(bad_pct) + bad_pct
    unknown = b"Content-Length: 5\nContent-Type: text/event-xml\n\n<a/>\n"
    r = P.FrameReader()
    out = r.feed(ok + bad_len + ok + bad_utf8 + bad_pct_frame + unknown + ok)
    events, errors = [], []
    for f in out:
        try:
            events.append(P.parse_event(f).name)
        except P.MalformedFrame as exc:
            errors.append(str(exc))
    assert events == ["HEARTBEAT", "HEARTBEAT", "HEARTBEAT"]
    assert any("Content-Length" in e for e in errors)
    assert any("UTF-8" in e for e in errors)
    assert any("event-xml" in e for e in errors)
    assert len(errors) == 4


def test_header_block_without_colon_is_an_error_not_a_crash() -> None:
    out = P.FrameReader().feed(b"garbage line\n\nContent-Type: command/reply\nReply-Text: +OK\n\n")
    assert out[0].error and out[1].reply_text == "+OK"


@pytest.mark.parametrize("value", ["a b", "a\nb", "x&y", "it's", "a,b", "{x}", "${var}", "", "a\rb", "a\x00"])
def test_tokens_refuse_what_could_add_an_argument_or_a_command(value: str) -> None:
    with pytest.raises(ValueError, match="agent"):
        P.token(value, "agent")


def test_commands_cannot_carry_a_second_command() -> None:
    with pytest.raises(ValueError, match="line break"):
        P.sendmsg("playback", "x\n\napi hupall")
    with pytest.raises(ValueError):
        P.sendmsg("playback\nexecute-app-name: hangup")
    with pytest.raises(ValueError):
        P.command("api status\n\napi hupall")
    assert P.sendmsg("set", "a=b c", uuid="abc-1") == \
        b"sendmsg abc-1\ncall-command: execute\nexecute-app-name: set\nexecute-app-arg: a=b c\n\n"
    assert P.api("uuid_kill", P.token("abc-1")) == b"api uuid_kill abc-1\n\n"
    assert P.bgapi("status", job_uuid="j-1") == b"bgapi status\nJob-UUID: j-1\n\n"


def test_client_commands_of_the_transcripts_are_what_the_builders_make() -> None:
    sent = {data for name in NAMES for d, data in load(name) if d == "client->fs"}
    assert P.command("myevents") in sent and P.command("linger") in sent and P.command("exit") in sent
    assert P.api("status") in sent
    assert P.sendmsg("answer") in sent


# ------------------------------------------- the emulator's outbound socket against recordings 10 and 10b

def emulated(name: str) -> list[P.Frame]:
    """The emulator given the ``client->fs`` side of recording ``name``
    (the same call: +49211987650, bridged to the carrier, which answers)."""
    import socket

    from tests.esl_emulator import OutboundCall
    ours, theirs = socket.socketpair()
    recorded = fs_frames(name)[0].headers          # the recorded call's channel variables, as its dialplan set them
    variables = {k[len("variable_"):]: v for k, v in recorded.items() if k.startswith("variable_dustel")}
    call = OutboundCall(0, "+49211987650", variables, caller="+492111230000", callee=("answer", 3))
    call.start(sock=theirs)
    ours.sendall(b"".join(d for direction, d in load(name) if direction == "client->fs"))
    reader, out = P.FrameReader(), []
    while not any(f.content_type == "text/event-plain" and P.parse_event(f).name == "CHANNEL_HANGUP_COMPLETE"
                  for f in out):
        data = ours.recv(65536)
        assert data, "the emulator closed the socket"
        out += reader.feed(data)
    ours.close()
    call.wait(5)
    return out


def shape(frames: list[P.Frame]) -> list[tuple[str, str, str]]:
    out = []
    for f in frames:
        if f.content_type == "text/event-plain":
            ev = P.parse_event(f)
            out.append((f.content_type, ev.name, ev.get("Application")))
        else:
            out.append((f.content_type, f.reply_text if f.content_type != "command/reply" or
                        "Event-Name" not in f.headers else "(channel data)", f.headers.get("Content-Disposition", "")))
    return out


@pytest.mark.parametrize("name", ["10-outbound-socket-filtered", "10b-outbound-socket-unfiltered"])
def test_the_emulator_sends_the_recorded_event_mix_and_sizes(name: str) -> None:
    """Issue 32.2: the emulator plays the call of recordings 10 / 10b as the
    real engine did — the same frames in the same order (the filters and
    ``nixevent`` of 10 applied, every event of 10b without them), each
    event within a tenth of its recorded size."""
    recorded = fs_frames(name)
    got = emulated(name)
    assert shape(got) == shape(recorded)
    for mine, real in zip(got, recorded, strict=True):
        if mine.content_type == "text/event-plain":
            assert abs(len(mine.body) - len(real.body)) < len(real.body) / 10, (P.parse_event(real).name,
                                                                               len(mine.body), len(real.body))


def test_a_large_header_block_decodes_when_read_and_equals_the_whole_parse() -> None:
    """Issue 32.2: the channel data after ``connect`` (169 headers) was
    decoded whole for the ~20 the server reads; it is kept raw now, and
    every header read from it equals the eager parse, on every recorded
    block of that size."""
    n = 0
    for name in NAMES:
        s = stream(name)
        for f in P.FrameReader().feed(s):
            if isinstance(f.headers, P.Event):
                n += 1
                start = s.index(f.headers._raw)  # type: ignore[union-attr]
                block = s[start:s.index(b"\n\n", start)]
                eager = P.parse_headers(block.decode())
                assert dict(f.headers) == eager
                assert all(f.headers.get(k) == v and f.headers[k] == v and k in f.headers for k, v in eager.items())
                assert f.headers.get("No-Such-Header", "-") == "-" and f.content_type == "command/reply"
    assert n >= 6       # the channel data of the outbound-socket recordings
