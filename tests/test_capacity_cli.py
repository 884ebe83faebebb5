"""`meshstress up --dry-run` and `meshstress run --check`: the estimate, a warning or
(--strict) a one-line refusal with exit 3 when the host is too small, exit 2 naming a
bad calibration file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshstress.model.capacity import Calibration, packaged_default


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshstress", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def calibration(tmp_path: Path, iface_cores: float) -> str:
    base = packaged_default()
    routing = {k: dict(v) for k, v in base.routing.items()}
    routing["babeld"]["iface_cores"] = iface_cores
    # a recorder dear enough to be listed (parts under 0.0005 cores are not): the
    # packaged figure for a 9-node grid is 0.00005 cores
    costs = base.costs | {"snapshot_node_core_s": 1e-3}
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(Calibration(costs, routing).to_json()))
    return str(path)


@pytest.fixture
def grid(tmp_path: Path) -> str:
    out = cli("topo", "gen", "grid4", "4", "4")
    path = tmp_path / "g.toml"
    path.write_text(out.stdout)
    return str(path)


def test_up_dry_run_estimates_and_strict_refuses_a_host_too_small(tmp_path, grid) -> None:  # type: ignore[no-untyped-def]
    small = calibration(tmp_path, 1e-6)
    ok = cli("up", grid, "--routing", "babeld", "--dry-run", "--strict", "--calibration", small)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["namespaces"]  # the plan, as before
    assert "meshstress: estimate: " in ok.stderr and f"per-unit costs: {small}" in ok.stderr
    huge = calibration(tmp_path, 1.0)  # a core per interface: 48 cores for a 4x4 grid
    warn = cli("up", grid, "--routing", "babeld", "--dry-run", "--calibration", huge)
    assert warn.returncode == 0
    assert "warning: the scenario may saturate this host: CPU: needs 48.00 cores" in warn.stderr
    no = cli("up", grid, "--routing", "babeld", "--dry-run", "--strict", "--calibration", huge)
    assert no.returncode == 3
    last = no.stderr.strip().splitlines()[-1]
    assert last.startswith("meshstress: capacity: this host is too small for the scenario: CPU:")


def test_a_bad_calibration_file_is_exit_2_naming_it(tmp_path, grid) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "costs": {}}')
    r = cli("up", grid, "--dry-run", "--calibration", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == f"meshstress: {bad}: costs.namespace_mb: missing or not a number"


@pytest.mark.network
@pytest.mark.skipif(os.geteuid() != 0, reason="root: run --check asks the doctor")
def test_run_check_estimates_the_scenario_and_strict_refuses(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sc = tmp_path / "s.toml"
    sc.write_text(
        '[scenario]\nname = "est"\nduration = "5s"\n[mesh]\ngenerate = "grid4 3 3"\n'
        'routing = "babeld"\n[[traffic]]\nname = "cbr"\nkind = "udp"\nfrom = "n0"\n'
        'to = "n8"\nrate = "100pps"\n'
    )
    ok = cli("run", "--check", "--calibration", calibration(tmp_path, 1e-6), str(sc))
    assert ok.returncode == 0, ok.stderr
    assert "traffic" in ok.stderr and "100 pps" in ok.stderr and "recorder" in ok.stderr
    no = cli("run", "--check", "--strict", "--calibration", calibration(tmp_path, 1.0), str(sc))
    assert no.returncode == 3
    assert no.stderr.strip().splitlines()[-1].startswith("meshstress: capacity: ")


def test_a_run_in_the_lab_is_estimated_with_the_labs_costs_and_vcpus(tmp_path, grid) -> None:  # type: ignore[no-untyped-def]
    sc = tmp_path / "s.toml"
    sc.write_text(
        '[scenario]\nname = "est"\nduration = "5s"\n[mesh]\ngenerate = "grid4 3 3"\n'
        'routing = "batman-adv"\n'
    )
    lab = cli("run", "--check", "--where", "lab", str(sc))  # the host runs it in the lab
    assert lab.returncode == 0, lab.stderr
    assert "calibration-lab.json" in lab.stderr.splitlines()[0]  # stored or packaged
    assert "(VM lab: its own per-unit costs" in lab.stderr
    from meshstress.model import capacity

    cores, mem, _ = capacity.lab_capacity(capacity.load_calibration(None, "lab"))
    # the guest's vCPUs and memory as the lab's calibration recorded them, not this host's
    assert f"host: {cores} cores (0.00 in use now), {mem:.0f} MB available" in lab.stderr
    assert "routing batman-adv (no calibration" not in lab.stderr
    # inside the guest (meshstress lab run -- meshstress up ...): the lab's costs too
    env = dict(os.environ, MESHSTRESS_LAB_GUEST="1")
    inside = subprocess.run([sys.executable, "-m", "meshstress", "up", grid, "--routing",
                             "batman-adv", "--dry-run"], capture_output=True, text=True,
                            timeout=120, env=env)  # fmt: skip
    assert inside.returncode == 0, inside.stderr
    assert "calibration-lab.json" in inside.stderr
    env.pop("MESHSTRESS_LAB_GUEST")
    env.pop("MESHSTRESS_WHERE_LABEL", None)
    host = subprocess.run([sys.executable, "-m", "meshstress", "up", grid, "--dry-run"],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert "calibration-lab.json" not in host.stderr and "calibration.json" in host.stderr
