"""Kernel-dependent: netem on a mesh link (runs inside the VM lab in CI)."""

from __future__ import annotations

import re

import pytest

from meshstress.topology import Link, Node, Topology


@pytest.mark.kernel("netem")
def test_netem_delay_on_a_mesh_link_shows_in_the_round_trip(mesh_factory) -> None:
    mesh = mesh_factory(Topology("pair", [Node("a"), Node("b")], [Link("a", "b")]))
    sock = mesh.netlink("a")
    ifname = mesh.state.interfaces["a"][0]["ifname"]
    index = sock.link_lookup(ifname=ifname)[0]
    sock.tc("add", "netem", index=index, handle="1:", delay=30000)  # microseconds
    out = mesh.run("a", ["ping", "-n", "-c", "3", "-i", "0.2", mesh.address("b")],
                   capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rtt_min = float(re.search(r"= ([0-9.]+)/", out.stdout).group(1))  # type: ignore[union-attr]
    assert 29.0 <= rtt_min < 200.0, out.stdout
