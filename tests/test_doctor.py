"""`meshstress doctor`: plain words for kernel refusals, and a non-zero exit when the
default scenario can run neither on the host nor in the VM lab."""

from __future__ import annotations

import json
import os
import re

import pytest
from click.testing import CliRunner
from pyroute2 import NetlinkError

from meshstress import doctor, lab
from meshstress.cli import cli
from meshstress.doctor import Check
from meshstress.errors import plain_error

ERRNO_TUPLE = re.compile(r"\(\d+, '|\[Errno \d+\]")


def test_plain_error_words_not_errno_tuples() -> None:
    assert str(NetlinkError(95)).startswith("(95, ")  # what used to be printed
    assert plain_error(NetlinkError(95)) == "not supported by this kernel (operation not supported)"
    assert plain_error(NetlinkError(2)) == "not in this kernel (no such file or directory)"
    assert plain_error(NetlinkError(22)) == "Invalid argument"
    missing = FileNotFoundError(2, "No such file or directory", "/x/y")
    assert plain_error(missing) == "/x/y: not in this kernel (no such file or directory)"
    assert plain_error(ValueError("bad\nsecond line")) == "bad"
    assert plain_error(RuntimeError()) == "RuntimeError"


@pytest.mark.network
def test_try_netns_reports_netlink_errors_in_plain_words() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare a network namespace)")

    def refuse(ipr: object) -> str:
        raise NetlinkError(95)

    ok, detail = doctor._try_netns(refuse)
    assert not ok
    assert detail == "not supported by this kernel (operation not supported)"
    assert not ERRNO_TUPLE.search(detail)


def _checks(**failing: str) -> list[Check]:
    names = ("root", "netns", "veth", "bridge", "batman-adv", "netem", "tbf", "htb",
             "bcc+headers", "tracefs", "kprobes", "batctl", "babeld", "batmand", "qemu")  # fmt: skip
    return [Check(n, n not in failing, failing.get(n, "yes"), "a remedy" if n in failing else "")
            for n in names]  # fmt: skip


def test_doctor_exits_nonzero_when_default_scenario_runs_nowhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lacking = _checks(veth="not in this kernel (no such file or directory)")
    monkeypatch.setattr(doctor, "run_checks", lambda: lacking)
    monkeypatch.setattr(lab, "lab_available", lambda *a: (False, "qemu-system-x86_64 not installed"))
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 3, result.output
    last = result.output.strip().splitlines()[-1]
    assert last == (
        "meshstress: the default scenario (meshstress run) can run neither on this host, "
        "which lacks veth, nor in the VM lab: qemu-system-x86_64 not installed; "
        "scenarios/quick.toml needs none of that (babeld, no netem or BCC): "
        "sudo meshstress run scenarios/quick.toml"
    )
    assert not ERRNO_TUPLE.search(result.output)
    # --json: stdout stays a JSON list, the exit code says the same
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 3
    assert [c["name"] for c in json.loads(result.stdout)][:3] == ["root", "netns", "veth"]


def test_doctor_exits_zero_when_host_or_lab_can_run_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "run_checks", lambda: _checks())
    monkeypatch.setattr(lab, "lab_available", lambda *a: (False, "no qemu"))
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "the default scenario (meshstress run) can run on this host" in result.output
    # the default (the mission) needs batman-adv, netem and BCC: without them and no lab,
    # doctor says so and points at the quick scenario
    monkeypatch.setattr(doctor, "run_checks", lambda: _checks(netem="x", **{"batman-adv": "y"}))
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 3, result.output
    assert "which lacks batman-adv, netem, nor in the VM lab: no qemu" in result.output
    assert "sudo meshstress run scenarios/quick.toml" in result.output
    # the host lacks veth, but the lab can run it
    monkeypatch.setattr(doctor, "run_checks", lambda: _checks(veth="no"))
    monkeypatch.setattr(lab, "lab_available", lambda *a: (True, "cached"))
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "runs in the VM lab: this host lacks veth" in result.output
