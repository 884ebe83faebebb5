"""Under MESHSTRESS_REQUIRE=1 a skip fails unless the allow-list names the test (with a
reason); without it skips stay skips. Runs pytest on a small test file (no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = """
import pytest

def test_skips_inside():
    pytest.skip("no frobnicator here")

@pytest.mark.skip(reason="marked away")
def test_marked():
    pass

def test_allowed():
    pytest.skip("allowed by the list")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_xfails():
    assert False

def test_passes():
    pass
"""


def run(tmp_path: Path, allowed: str, require: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_s.py").write_text(TESTS)
    (tmp_path / "skips.txt").write_text(allowed)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmeshstress_allowed_skips = skips.txt\n")
    env = {k: v for k, v in os.environ.items() if k != "MESHSTRESS_REQUIRE"}
    if require:
        env["MESHSTRESS_REQUIRE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "test_s.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


ALLOWED = "# comment\n\ntest_s.py::test_allow*  # the frobnicator is never in CI\n"


def test_require_fails_every_skip_not_on_the_list(tmp_path: Path) -> None:
    r = run(tmp_path, ALLOWED, require=True)
    out = r.stdout
    assert r.returncode == 1, out
    assert "FAILED test_s.py::test_skips_inside" in out, out
    assert "ERROR test_s.py::test_marked" in out, out  # a skip marker fails in setup
    assert "SKIPPED [1] test_s.py" in out and "allowed by the list" in out, out
    assert "XFAIL test_s.py::test_xfails" in out and "PASSED test_s.py::test_passes" in out
    assert "this test skipped (no frobnicator here); it is not on the allowed skips" in out
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in out, out


def test_without_require_skips_stay_skips(tmp_path: Path) -> None:
    r = run(tmp_path, ALLOWED, require=False)
    assert r.returncode == 0, r.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in r.stdout, r.stdout


@pytest.mark.parametrize("line", ["test_s.py::test_allowed\n", "test_s.py::test_allowed  #  \n"])
def test_an_entry_without_a_reason_is_a_usage_error(tmp_path: Path, line: str) -> None:
    r = run(tmp_path, line, require=True)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "skips.txt:1: want 'NODEID-GLOB  # REASON'" in r.stderr, r.stderr


def test_the_project_allow_list_parses_and_gives_every_entry_a_reason() -> None:
    from meshstress.pytest_plugin import read_allowed_skips

    path = Path(__file__).parent / "ci-skips.txt"
    for pattern, reason in read_allowed_skips(path):
        assert pattern.startswith("tests/") and len(reason) >= 10, (pattern, reason)
