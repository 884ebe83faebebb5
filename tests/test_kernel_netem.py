"""Kernel-dependent: netem on mesh links (runs inside the VM lab in CI)."""

from __future__ import annotations

import os

import pytest

from meshstress import topofile
from meshstress.build import Mesh

pytestmark = pytest.mark.kernel("netem")

TOPOLOGY = """
nodes = ["a", "b", "c"]
[[links]]
a = "a"
b = "b"
a_to_b = { delay = "30ms" }
[[links]]
a = "b"
b = "c"
a_to_b = { loss = "100%" }  # b -> c
"""


def rtt_min(mesh: Mesh, src: str, dst: str) -> float | None:
    return mesh.ping(src, dst).rtt_min_ms


def test_topology_impairments_are_applied_per_direction(mesh_factory) -> None:
    mesh = mesh_factory(topofile.loads_toml(TOPOLOGY, "netem.toml"))
    assert mesh.info["impaired_interfaces"] == 2
    # a -> b is delayed 30 ms one way; b -> a is ideal: the round trip shows 30 ms once
    rtt = rtt_min(mesh, "a", "b")
    assert rtt is not None and 29.0 <= rtt < 200.0, rtt
    # b -> c loses everything: neither direction's ping gets its reply
    assert rtt_min(mesh, "b", "c") is None and rtt_min(mesh, "c", "b") is None

    # the qdisc sits on a's interface toward b, and nowhere on b's side of that link
    def kinds(node: str) -> set[str]:
        sock = mesh.netlink(node)
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in sock.get_links()}
        return {
            f"{names[q['index']]}:{q.get_attr('TCA_KIND')}"
            for q in sock.get_qdiscs()
            if q["parent"] == 0xFFFFFFFF and names.get(q["index"], "").startswith(mesh.prefix)
        }

    assert {k.split(":")[1] for k in kinds("a")} >= {"netem"}
    b_if_to_a = mesh.state.interfaces["b"][0]["ifname"]
    assert f"{b_if_to_a}:netem" not in kinds("b")


def test_impaired_interfaces_have_segmentation_offloads_off(mesh_factory) -> None:
    from pyroute2.ethtool.ethtool import EthtoolFeatures
    from pyroute2.ethtool.ioctl import IoctlEthtool

    from meshstress import netns

    mesh = mesh_factory(topofile.loads_toml(TOPOLOGY, "netem.toml"))
    a_to_b = mesh.state.interfaces["a"][0]["ifname"]
    b_to_a = mesh.state.interfaces["b"][0]["ifname"]
    factory = netns.NetnsFactory()
    try:

        def features(node: str, ifname: str) -> dict[str, bool]:
            fd = os.open(netns.path(mesh.ns(node)), os.O_RDONLY)
            try:
                with factory.inside(fd):
                    io = IoctlEthtool()
            finally:
                os.close(fd)
            try:
                io.change_ifname(ifname)
                f = EthtoolFeatures.from_ioctl(
                    features=io.get_features(), offload_flags=io.get_offload_flags()
                )
                return {k: v.enable for k, v in f.features.items()}
            finally:
                io.close()

        impaired, ideal = features("a", a_to_b), features("b", b_to_a)
    finally:
        factory.close()
    assert impaired["tx-tcp-segmentation"] is False and impaired["tx-generic-segmentation"] is False
    assert ideal["tx-tcp-segmentation"] is True  # ideal interfaces keep their offloads
