"""Safe as root, on the host (root, namespaces): teardown removes only what carries the
run's prefix, however its state file was tampered with; `sudo meshstress run` leaves
its results to the user who ran sudo."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from meshstress import build
from meshstress.build import bringup, netns, plan, state
from meshstress.model.topology import Link, Node, Topology

pytestmark = pytest.mark.network


def _host_links() -> set[str]:
    with IPRoute(groups=0) as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


@contextlib.contextmanager
def decoys(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Objects a tampered state file could name: a namespace and a host link without any
    ms- prefix (so no sweep of another worker touches them), and a directory with a file."""
    tag = secrets.token_hex(3)
    ns, link = f"msdecoy{tag}", f"msdecoy{tag}"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    with netns.NetnsFactory() as factory:
        fd = factory.create(ns)
    try:
        with IPRoute(groups=0) as ipr:
            ipr.link("add", ifname=link, kind="veth", peer={"ifname": "d0", "net_ns_fd": fd})
        yield ns, link, victim
    finally:
        os.close(fd)
        with IPRoute(groups=0) as ipr:
            for index in ipr.link_lookup(ifname=link):
                ipr.link("del", index=index)
        netns.delete(ns)


def test_teardown_of_a_tampered_state_file_removes_only_the_runs_own(tmp_path: Path) -> None:
    topo = Topology("pair", [Node("a"), Node("b")], [Link("a", "b")])
    with decoys(tmp_path) as (ns, link, victim):
        up = bringup.bring_up(topo, wait=False)
        st = up.state
        pre = plan.run_prefix(st.run_id)
        try:
            # what an attacker who could write the state file would add
            st.namespaces += [ns, f"../../netns/{ns}"]
            st.host_links += [link]
            st.files += [str(victim), str(victim / ".." / "victim"), "/etc/meshstress-nothing"]
            st.save()
            loaded = state.load(st.run_id)
            assert loaded is not None
            problems = build.teardown(loaded, timeout=30)
        finally:
            build.teardown(st, timeout=30)  # if the first one raised
        assert netns.exists(ns), "a namespace without the run's prefix was removed"
        assert link in _host_links(), "a host link without the run's prefix was removed"
        assert (victim / "precious").read_text() == "keep me"
        refused = [p for p in problems if p.startswith("refusing")]
        assert len(refused) == 6, problems
        assert any(ns in p for p in refused) and any(link in p for p in refused)
        # the run's own objects are gone all the same
        assert not [n for n in netns.list_names() if n.startswith(pre)]
        assert not [n for n in _host_links() if n.startswith(pre)]
        assert state.load(st.run_id) is None


SCENARIO = """
[scenario]
name = "giveback"
duration = "2s"
warmup = "0.2s"

[mesh]
generate = "line 2"
routing = "static"

[[traffic]]
name = "echo"
kind = "ping"
from = "n0"
to = "n1"
rate = "10pps"
"""


def test_sudo_run_leaves_results_to_the_user(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(SCENARIO)
    env = dict(os.environ, SUDO_UID="4321", SUDO_GID="4322", SUDO_USER="someone")
    res = subprocess.run(
        [sys.executable, "-m", "meshstress.cli", "run", "--where", "host", "s.toml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode in (0, 1, 4), res.stdout + res.stderr  # 4: a busy host; ownership still
    results = tmp_path / "results"
    entries = [results, *results.rglob("*")]
    names = {p.name for p in entries}
    assert {"results.json", "summary.txt", "junit.xml", "raw", "echo.ping.txt"} <= names, names
    owners = {p.relative_to(tmp_path): (os.lstat(p).st_uid, os.lstat(p).st_gid) for p in entries}
    assert set(owners.values()) == {(4321, 4322)}, owners
    assert os.lstat(tmp_path / "s.toml").st_uid == 0  # nothing outside results/
