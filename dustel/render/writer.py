"""Write rendered files atomically, touching only what changed.

A manifest (``.dustel-rendered``) lists what the last render wrote, so files
of a deleted tenant are removed and nothing else in the directory is."""
from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = ".dustel-rendered"


@dataclass
class Plan:
    changed: list[str] = field(default_factory=list)    # new or different
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)    # rendered before, not now

    @property
    def differs(self) -> bool:
        return bool(self.changed or self.removed)


def _previous(out: Path) -> set[str]:
    m = out / MANIFEST
    return set(m.read_text().split("\n")) - {""} if m.exists() else set()


def plan(out: Path, files: dict[str, str]) -> Plan:
    p = Plan()
    for rel in sorted(files):
        path = out / rel
        data = files[rel].encode()
        if path.exists() and path.read_bytes() == data:
            p.unchanged.append(rel)
        else:
            p.changed.append(rel)
    p.removed = sorted(r for r in _previous(out) - set(files) if (out / r).exists())
    return p


def diff(out: Path, files: dict[str, str]) -> str:
    """A unified diff of ``out`` against ``files`` (the whole tree; one
    tenant's part of it: service.tenant_diff)."""
    chunks = []
    pl = plan(out, files)
    for rel in pl.changed:
        old = (out / rel).read_text().splitlines(keepends=True) if (out / rel).exists() else []
        chunks.extend(difflib.unified_diff(old, files[rel].splitlines(keepends=True), f"a/{rel}", f"b/{rel}"))
    for rel in pl.removed:
        old = (out / rel).read_text().splitlines(keepends=True)
        chunks.extend(difflib.unified_diff(old, [], f"a/{rel}", "/dev/null"))
    return "".join(chunks)


def _atomic_write(path: Path, data: bytes, owner: str = "", group: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)
        if owner or group:     # the engine's user (or group) reads the files, nobody else
            shutil.chown(tmp, owner or None, group or None)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write(out: Path, files: dict[str, str], owner: str = "", group: str = "") -> Plan:
    pl = plan(out, files)
    for rel in pl.changed:
        _atomic_write(out / rel, files[rel].encode(), owner, group)
    for rel in pl.removed:
        (out / rel).unlink()
    manifest = "".join(f"{r}\n" for r in sorted(files))
    if not (out / MANIFEST).exists() or (out / MANIFEST).read_text() != manifest:
        _atomic_write(out / MANIFEST, manifest.encode(), owner, group)
    return pl
