"""Hold music and sound logos (issue 13, SPEC F-07): uploads in four formats
become mono 16-bit WAVs at 8/16/32/48 kHz, loudness-normalised; bad input
is refused with the rule and leaves nothing behind; the rendered configs
list every class at every rate."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyloudnorm
import pytest
import soundfile

from dustel.errors import DustelError
from dustel.provisioning import media
from dustel.render import service
from tests.conftest import Cli
from tests.db.test_cli import PW, provider  # noqa: F401  (the fixture)
from tests.render_fixture import GOLDEN_SETTINGS


def tone(path: Path, fmt: str, seconds: float = 2.0, rate: int = 44100, level: float = 0.05) -> Path:
    """A stereo two-tone test signal written by libsndfile in ``fmt``."""
    t = np.arange(int(seconds * rate)) / rate
    left, right = level * np.sin(2 * np.pi * 440 * t), level * np.sin(2 * np.pi * 660 * t)
    soundfile.write(path, np.stack([left, right], axis=1), rate, format=fmt)
    return path


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_every_format_becomes_mono_16_bit_at_every_rate_and_normalised(tmp_path: Path, fmt: str) -> None:
    src = tone(tmp_path / f"in.{fmt.lower()}", fmt)
    conv = media.convert(src.read_bytes(), max_bytes=10_000_000, max_seconds=60)
    assert sorted(conv.wavs) == [8000, 16000, 32000, 48000] and 1.9 < conv.seconds < 2.2
    for rate, wav in conv.wavs.items():
        info = soundfile.info(io.BytesIO(wav))
        assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 1, rate)
        y, _ = soundfile.read(io.BytesIO(wav))
        assert abs(pyloudnorm.Meter(rate).integrated_loudness(y) - media.TARGET_LUFS) < 1.0
        assert np.max(np.abs(y)) <= media.PEAK + 1e-3


def test_a_loud_file_is_limited_to_its_peak(tmp_path: Path) -> None:
    conv = media.convert(tone(tmp_path / "loud.wav", "WAV", level=0.99).read_bytes(), max_bytes=10**7,
                         max_seconds=60)
    y, _ = soundfile.read(io.BytesIO(conv.wavs[8000]))
    assert np.max(np.abs(y)) <= media.PEAK + 1e-3


@pytest.mark.parametrize(("data", "limits", "rule"), [
    (b"%PDF-1.4 not audio at all", {}, "file: is not a WAV, MP3, FLAC or OGG audio file"),
    (b"", {}, "file: is empty"),
    ("big", {"max_bytes": 1000}, "file: is 352844 bytes; at most 1000 (setting media_max_bytes)"),
    ("long", {"max_seconds": 1}, "file: plays 2 s; at most 1 s"),
    ("silent", {}, "file: is silent"),
])
def test_bad_uploads_are_refused_with_the_rule(tmp_path: Path, data: Any, limits: dict[str, int], rule: str) -> None:
    if data in ("big", "long"):
        data = tone(tmp_path / "x.wav", "WAV").read_bytes()
    elif data == "silent":
        buf = io.BytesIO()
        soundfile.write(buf, np.zeros(16000), 8000, format="WAV")
        data = buf.getvalue()
    with pytest.raises(DustelError) as exc:
        media.convert(data, **{"max_bytes": 10**7, "max_seconds": 60, **limits})
    assert str(exc.value).startswith(rule), str(exc.value)


def test_moh_upload_list_queue_and_remove_through_the_cli(run: Cli, provider: dict[str, str],  # noqa: F811
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         conn: psycopg.Connection) -> None:
    moh_dir = tmp_path / "moh"
    monkeypatch.setenv("DUSTEL_MOH_DIR", str(moh_dir))
    src = tone(tmp_path / "jazz.flac", "FLAC")
    row = json.loads(run.ok("moh", "upload", "2", "jazz", str(src), "--json").stdout)
    files = sorted(p.relative_to(moh_dir).as_posix() for p in moh_dir.rglob("*") if p.is_file())
    assert files == [f"t2-jazz/{r}/{row['name']}.wav" for r in (16000, 32000, 48000, 8000)]
    stored = conn.execute("SELECT * FROM media_files WHERE tenant_id = 2").fetchone()
    wav = (moh_dir / "t2-jazz" / "48000" / f"{row['name']}.wav").read_bytes()
    import hashlib
    assert stored["wav_sha256"]["48000"] == hashlib.sha256(wav).hexdigest()
    assert stored["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    listed = json.loads(run.ok("moh", "list", "--tenant", "2", "--json").stdout)
    assert [(r["class"], r["name"]) for r in listed] == [("jazz", row["name"])]

    # the starter tenant may not: refused, and nothing written (no file, no temporary file)
    r = run("moh", "upload", "1", "jazz", str(src))
    assert r.exit_code == 1 and "business flex" in r.stderr
    assert not (moh_dir / "t1-jazz").exists() or not any((moh_dir / "t1-jazz").rglob("*.wav*"))
    # not audio: refused before anything is written
    bad = tmp_path / "invoice.pdf"
    bad.write_bytes(b"%PDF-1.4\n")
    r = run("moh", "upload", "2", "rock", str(bad))
    assert r.exit_code == 1 and r.stderr.startswith("error: file: is not a WAV, MP3, FLAC or OGG audio file")
    assert not (moh_dir / "t2-rock").exists()

    # a queue plays it; the class cannot go while it does
    run.ok("queue", "set", "2", "support", "--moh", "jazz")
    r = run("queue", "set", "2", "support", "--moh", "blues")
    assert r.exit_code == 1 and "no hold music class 'blues'" in r.stderr
    r = run("moh", "remove", "2", "jazz")
    assert r.exit_code == 1 and "queue support plays it" in r.stderr
    with conn.transaction():
        qs = service.render_files(conn, GOLDEN_SETTINGS, ["asterisk", "freeswitch"])
    assert "[t2-jazz]" in qs["asterisk"]["musiconhold.conf"] and "musicclass=t2-jazz" in qs["asterisk"]["queues.conf"]
    ls = qs["freeswitch"]["autoload_configs/local_stream.conf.xml"]
    for rate in (8000, 16000, 32000, 48000):
        assert f'<directory name="t2-jazz/{rate}" path="{GOLDEN_SETTINGS.moh_dir}/t2-jazz/{rate}">' in ls
        assert f'<directory name="moh/{rate}" path="$${{sounds_dir}}/music/{rate}">' in ls   # the stock stream stays
    run.ok("queue", "set", "2", "support", "--moh", "default")
    run.ok("moh", "remove", "2", "jazz")
    assert not any(moh_dir.rglob("*.wav")) and json.loads(run.ok("moh", "list", "--tenant", "2", "--json").stdout) == []
