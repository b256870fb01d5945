"""The cluster test's fixture: the cluster of harness.py, started once per
module; a part that cannot run here (not root, a package missing) skips
the module with the reason (pytest -ra prints it)."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from dustel.testing.asterisk import Unavailable as AsteriskUnavailable
from dustel.testing.cluster import Unavailable, scratch_dir
from tests.cluster import harness


@pytest.fixture(scope="module")
def cluster() -> Iterator[harness.Cluster]:
    try:
        sipp, chroot = harness.check()
    except (Unavailable, AsteriskUnavailable) as exc:
        pytest.skip(f"cluster parts unavailable: {exc}")
    base = scratch_dir("dustel-cluster-")
    started: list[Any] = []
    try:
        yield harness.start(base, sipp, chroot, started)
    finally:
        harness.stop(started)
        if os.environ.get("DUSTEL_KEEP_CLUSTER"):
            print(f"cluster files kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
