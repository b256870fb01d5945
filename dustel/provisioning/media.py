"""Uploaded audio (F-07): hold music of a class and sound logos.

An upload (WAV, MP3, FLAC or OGG, read by libsndfile through ``soundfile``)
becomes mono 16-bit PCM WAV at every rate the engines play — 8, 16, 32 and
48 kHz (FreeSWITCH's ``local_stream`` picks the directory of the channel's
rate: an opus call at 48 kHz with no 48 kHz file hears silence) —
resampled by ``soxr`` and loudness-normalised (ITU-R BS.1770 with
``pyloudnorm``) to -20 LUFS with peaks at most -1 dBFS.

Nothing is left half-written: every file is first written under a
temporary name next to its final place; the database row is written in its
own transaction; the files are renamed into place only after it committed
(``Prepared.publish``), and removed otherwise (``discard``).
"""
from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..errors import DustelError, NotFound
from . import tenants
from . import validate as v

RATES = (8000, 16000, 32000, 48000)
FORMATS = {"WAV": "WAV", "MP3": "MP3", "FLAC": "FLAC", "OGG": "OGG"}
TARGET_LUFS = -20.0
PEAK = 10 ** (-1.0 / 20)          # -1 dBFS
MIN_SECONDS = 0.5                 # the loudness meter needs at least one 400 ms block


def class_dir_name(tenant_id: int, kind: str, cls: str) -> str:
    """The directory (and engine class) name: ``t<tenant>-<class>`` for hold
    music (as render.context.moh_name), ``t<tenant>-logo-<class>`` for logos."""
    return f"t{tenant_id}-{cls}" if kind == "moh" else f"t{tenant_id}-logo-{cls}"


def file_path(root: str, tenant_id: int, kind: str, cls: str, name: str, rate: int, ext: bool = True) -> str:
    """Where a converted file lies (as the engine reads it: ``root`` is its path)."""
    return f"{root}/{class_dir_name(tenant_id, kind, cls)}/{rate}/{name}" + (".wav" if ext else "")


@dataclass
class Converted:
    seconds: float
    source_sha256: str
    source_bytes: int
    wavs: dict[int, bytes] = field(default_factory=dict)


def convert(data: bytes, *, max_bytes: int, max_seconds: int, what: str = "file") -> Converted:
    """The upload as WAVs at every rate, or a DustelError naming the rule."""
    # imported here: the call-time servers use this module's names, not its numeric stack
    import numpy as np
    import pyloudnorm
    import soundfile
    import soxr
    if not data:
        raise DustelError(what, "is empty")
    if len(data) > max_bytes:
        raise DustelError(what, f"is {len(data)} bytes; at most {max_bytes} (setting media_max_bytes)")
    try:
        info = soundfile.info(io.BytesIO(data))
        if info.format not in FORMATS:
            raise DustelError(what, f"is {info.format}; accepted: WAV, MP3, FLAC, OGG")
        if info.duration > max_seconds:
            raise DustelError(what, f"plays {info.duration:.0f} s; at most {max_seconds} s (setting "
                                    "media_max_seconds)")
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float64", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise DustelError(what, f"is not a WAV, MP3, FLAC or OGG audio file ({exc})") from None
    seconds = len(audio) / rate
    if seconds < MIN_SECONDS:
        raise DustelError(what, f"plays {seconds:.2f} s; at least {MIN_SECONDS} s")
    mono = audio.mean(axis=1)
    if not np.isfinite(mono).all():
        raise DustelError(what, "holds samples that are not numbers")
    loudness = pyloudnorm.Meter(rate).integrated_loudness(mono)
    if not np.isfinite(loudness):
        raise DustelError(what, "is silent")
    mono = mono * 10 ** ((TARGET_LUFS - loudness) / 20)
    peak = float(np.max(np.abs(mono)))
    if peak > PEAK:
        mono = mono * (PEAK / peak)
    out = Converted(seconds=round(seconds, 2), source_sha256=hashlib.sha256(data).hexdigest(), source_bytes=len(data))
    for r in RATES:
        y = soxr.resample(mono, rate, r, quality="HQ") if r != rate else mono
        buf = io.BytesIO()
        soundfile.write(buf, np.clip(y, -1.0, 1.0), r, subtype="PCM_16", format="WAV")
        out.wavs[r] = buf.getvalue()
    return out


@dataclass
class Prepared:
    """Files written under temporary names, to publish or discard."""
    pending: list[tuple[Path, Path]] = field(default_factory=list)   # (temporary, final)

    def publish(self) -> None:
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending = []

    def discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending = []


def prepare(root: str | Path, tenant_id: int, kind: str, cls: str, conv: Converted) -> tuple[Prepared, str]:
    """Write the WAVs of ``conv`` under temporary names in
    ``<root>/<class dir>/<rate>/``; returns them and the file name."""
    name = conv.source_sha256[:16]
    prepared = Prepared()
    try:
        for r, wav in conv.wavs.items():
            d = Path(root) / class_dir_name(tenant_id, kind, cls) / str(r)
            d.mkdir(parents=True, exist_ok=True, mode=0o755)
            final = d / f"{name}.wav"
            tmp = d / f".{name}.wav.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(wav)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            prepared.pending.append((tmp, final))
    except OSError as exc:
        prepared.discard()
        raise DustelError("media_dir", f"cannot write {root}: {exc.strerror}") from None
    return prepared, name


def record(conn: psycopg.Connection, tenant_id: int, kind: str, cls: str, name: str, conv: Converted) -> dict[str, Any]:
    """The database side of an upload (in the caller's transaction): the
    hold-music class (business flex only: the moh_classes trigger) and the
    file's row with its checksums."""
    tenants.get(conn, tenant_id)
    if kind == "moh":
        conn.execute("INSERT INTO moh_classes (tenant_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (tenant_id, cls))
    return conn.execute(
        """INSERT INTO media_files (tenant_id, kind, class, name, source_sha256, wav_sha256, seconds, source_bytes)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (tenant_id, kind, class, name) DO UPDATE SET uploaded_at = now()
           RETURNING id, tenant_id, kind, class, name, source_sha256, wav_sha256, seconds, source_bytes""",
        (tenant_id, kind, cls, name, conv.source_sha256,
         Jsonb({str(r): hashlib.sha256(w).hexdigest() for r, w in conv.wavs.items()}), conv.seconds,
         conv.source_bytes)).fetchone()


def upload(tx: Callable[[], AbstractContextManager[psycopg.Connection]], root: str | Path, tenant_id: int, kind: str,
           cls: str, data: bytes, *, max_bytes: int, max_seconds: int) -> dict[str, Any]:
    """Convert and write the files aside, record them in the transaction
    ``tx()`` opens, and rename them into place only after it committed
    (removed if anything failed): never a file without its row, nor a row
    without its files."""
    cls = v.slug("class", cls)
    conv = convert(data, max_bytes=max_bytes, max_seconds=max_seconds)
    prepared, name = prepare(root, tenant_id, kind, cls, conv)
    try:
        with tx() as conn:
            row = dict(record(conn, tenant_id, kind, cls, name, conv))
    except BaseException:
        prepared.discard()
        raise
    prepared.publish()
    return row


@contextmanager
def within(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """``upload``'s ``tx`` for a caller that holds a connection (not in a transaction)."""
    with conn.transaction():
        yield conn


def listing(conn: psycopg.Connection, tenant_id: int, kind: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(
        """SELECT class, name, seconds, source_bytes, source_sha256, uploaded_at FROM media_files
            WHERE tenant_id = %s AND kind = %s ORDER BY class, uploaded_at""", (tenant_id, kind))]


def remove(conn: psycopg.Connection, root: str | Path, tenant_id: int, kind: str, cls: str) -> list[Path]:
    """Remove a class (its rows; hold music: the class, unless a queue plays
    it) and return its files, to delete after the commit."""
    rows = conn.execute("DELETE FROM media_files WHERE tenant_id = %s AND kind = %s AND class = %s RETURNING name",
                        (tenant_id, kind, cls)).fetchall()
    if kind == "moh":
        used = conn.execute("SELECT name FROM queues WHERE tenant_id = %s AND moh_class = %s",
                            (tenant_id, cls)).fetchall()
        if used:
            raise DustelError("class", f"queue {used[0]['name']} plays it; set another class first "
                                       "(dustel queue set --moh)")
        gone = conn.execute("DELETE FROM moh_classes WHERE tenant_id = %s AND name = %s RETURNING name",
                            (tenant_id, cls)).fetchall()
        if not gone and not rows:
            raise NotFound("class", f"tenant {tenant_id} has no hold music class {cls!r}")
    elif not rows:
        raise NotFound("class", f"tenant {tenant_id} has no sound logo {cls!r}")
    d = Path(root) / class_dir_name(tenant_id, kind, cls)
    return [d / str(r) / f"{row['name']}.wav" for row in rows for r in RATES]


def forget(conn: psycopg.Connection, root: str | Path, tenant_id: int, kind: str, cls: str,
           names: list[str]) -> list[Path]:
    """Remove some files of a class (rows now; the files returned, to delete
    after the commit)."""
    rows = conn.execute("""DELETE FROM media_files WHERE tenant_id = %s AND kind = %s AND class = %s
                            AND name = ANY(%s) RETURNING name""", (tenant_id, kind, cls, names)).fetchall()
    d = Path(root) / class_dir_name(tenant_id, kind, cls)
    return [d / str(r) / f"{row['name']}.wav" for row in rows for r in RATES]


def set_logo(tx: Callable[[], AbstractContextManager[psycopg.Connection]], root: str | Path, tenant_id: int, cls: str,
             data: bytes, *, max_bytes: int, max_seconds: int) -> dict[str, Any]:
    """A sound logo (class ``tenant`` or a number's digits) replacing the one
    before: the new files and row first, then the old row, then (after that
    commit) the old files."""
    with tx() as conn:
        old = [r["name"] for r in listing(conn, tenant_id, "logo") if r["class"] == cls]
    row = upload(tx, root, tenant_id, "logo", cls, data, max_bytes=max_bytes, max_seconds=max_seconds)
    stale = [o for o in old if o != row["name"]]
    if stale:
        with tx() as conn:
            files = forget(conn, root, tenant_id, "logo", cls, stale)
        for f in files:
            f.unlink(missing_ok=True)
    return row


def drop(tx: Callable[[], AbstractContextManager[psycopg.Connection]], root: str | Path, tenant_id: int, kind: str,
         cls: str) -> list[Path]:
    """Remove a class: its rows in one transaction, its files after the
    commit (a failed removal leaves the rows, never stray rows)."""
    with tx() as conn:
        files = remove(conn, root, tenant_id, kind, cls)
    for f in files:
        f.unlink(missing_ok=True)
    return files


def logo_class(number: str | None) -> str:
    """The class of a sound logo: ``tenant`` (every number) or the number's digits."""
    return "tenant" if number is None else v.e164("number", number)[1:]
