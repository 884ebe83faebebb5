"""The pytest plugin sends kernel tests the host cannot run to the VM lab, in one boot."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from meshstress.pytest_plugin import missing_capability

pytestmark = pytest.mark.lab

TESTS = textwrap.dedent(
    """
    import subprocess
    import pytest

    @pytest.mark.kernel("batman-adv")
    def test_batadv_exists():
        r = subprocess.run(["ip", "link", "add", "b9", "type", "batadv"], capture_output=True)
        assert r.returncode == 0

    @pytest.mark.kernel("netem")
    def test_fails_on_purpose():
        assert False, "this failure must reach the host's exit code"

    def test_on_the_host():
        assert True
    """
)


def test_auto_runs_what_the_host_lacks_in_the_lab_and_keeps_failures(tmp_path) -> None:
    if missing_capability(("batman-adv",)) is None:
        pytest.skip("this host has batman-adv: auto would not pick the lab")
    (tmp_path / "test_k.py").write_text(TESTS)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_k.py",
         "--meshstress-where=auto"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    out = r.stdout + r.stderr
    assert "running 2 kernel test(s) in the VM lab" in out, out
    assert "the host lacks batman-adv, netem" in out, out
    assert "1 failed, 1 passed" in out, out  # inside the lab
    assert "VM lab run of 2 kernel test(s) exited 1" in out, out
    assert r.returncode == 1, out


def test_host_only_skips_naming_the_capability(tmp_path) -> None:
    if missing_capability(("batman-adv",)) is None:
        pytest.skip("this host has batman-adv")
    (tmp_path / "test_k.py").write_text(TESTS)
    # without MESHSTRESS_REQUIRE (CI sets it): then a missing capability is a skip
    env = {k: v for k, v in os.environ.items() if k != "MESHSTRESS_REQUIRE"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "test_k.py",
         "--meshstress-where=host"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert "SKIPPED" in r.stdout and "missing capability batman-adv" in r.stdout, r.stdout
    assert "kernel test(s) in the VM lab" not in r.stdout
    assert r.returncode == 0, r.stdout
    # with it, the same missing capability fails the test
    env["MESHSTRESS_REQUIRE"] = "1"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "test_k.py",
         "--meshstress-where=host"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert "MESHSTRESS_REQUIRE is set and missing capability batman-adv" in r.stdout, r.stdout
    assert "2 error" in r.stdout and "1 passed" in r.stdout and r.returncode == 1, r.stdout
