"""VM lab tests: boot qemu from the host. Skipped (naming the gap) where the lab can't run."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshstress.lab import lab_available, runner


@functools.cache
def _missing() -> str | None:
    if Path("/run/mslab/stage2.sh").exists():
        return "already inside the VM lab (no nested labs)"
    if os.geteuid() != 0:
        return "needs root (the lab keeps its state and kernel cache in /run and /var/cache)"
    ok, why = lab_available()
    return None if ok else why


@pytest.fixture(autouse=True)
def _lab_or_skip() -> Iterator[None]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("MESHSTRESS_REQUIRE", "") not in ("", "0"):
            pytest.fail(f"MESHSTRESS_REQUIRE is set and {reason}", pytrace=False)
        pytest.skip(reason)
    yield


@pytest.fixture
def state_dir() -> Path:
    return runner.state_dir()
