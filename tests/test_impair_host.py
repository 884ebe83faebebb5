"""Host tests (root, namespaces): a rate-only direction is shaped by tbf on a kernel
without netem; `impair.replace` swaps and removes chains; bring_up names missing qdiscs."""

from __future__ import annotations

import pytest
from impair_traffic import tcp_goodput

from meshstress.build import Mesh, bringup, impair
from meshstress.doctor import has_netem
from meshstress.errors import CapabilityError
from meshstress.model import topofile
from meshstress.model.topology import Impairment

pytestmark = pytest.mark.network

RATE_ONLY = """
nodes = ["a", "b"]
[[links]]
a = "a"
b = "b"
a_to_b = { rate = "4mbit" }
"""

SIZE = 1_500_000  # 3 s at 4 Mbit/s


def root_qdiscs(mesh: Mesh, node: str, ifname: str) -> list[tuple[str, int, int]]:
    """(kind, handle, parent) of every qdisc on `ifname` in `node`."""
    sock = mesh.netlink(node)
    index = sock.link_lookup(ifname=ifname)[0]
    return [
        (q.get_attr("TCA_KIND"), q["handle"], q["parent"])
        for q in sock.get_qdiscs(index=index)
        if q["index"] == index
    ]


def test_rate_only_direction_is_shaped_by_tbf_on_this_host(mesh_factory) -> None:
    mesh = mesh_factory(topofile.loads_toml(RATE_ONLY, "rate.toml"))
    assert mesh.info["impaired_interfaces"] == 1
    a_if = mesh.state.interfaces["a"][0]["ifname"]
    b_if = mesh.state.interfaces["b"][0]["ifname"]
    assert ("tbf", 0x10000, impair.TC_H_ROOT) in root_qdiscs(mesh, "a", a_if)
    assert not any(kind == "tbf" for kind, _, _ in root_qdiscs(mesh, "b", b_if))

    shaped = tcp_goodput(mesh, "a", "b", SIZE)
    print(f"a->b (rate 4mbit): {shaped / 1e6:.2f} Mbit/s")
    # tbf carried the stream and held it back (its counters), and no more than the rate
    # got through; how much less a loaded host manages is no concern of this test
    sock = mesh.netlink("a")
    index = sock.link_lookup(ifname=a_if)[0]
    (tbf,) = [q for q in sock.get_qdiscs(index=index)
              if q["index"] == index and q.get_attr("TCA_KIND") == "tbf"]  # fmt: skip
    stats = tbf.get_attr("TCA_STATS")
    assert stats["bytes"] >= SIZE and stats["overlimits"] > 0, stats
    assert shaped <= 4.6e6, shaped


def test_replace_swaps_the_chain_and_ideal_restores_the_default(mesh_factory) -> None:
    mesh = mesh_factory(topofile.loads_toml(RATE_ONLY, "rate.toml"))
    a_if = mesh.state.interfaces["a"][0]["ifname"]
    sock = mesh.netlink("a")
    index = sock.link_lookup(ifname=a_if)[0]

    def tbf_rate() -> int | None:
        for q in sock.get_qdiscs(index=index):
            if q["index"] == index and q.get_attr("TCA_KIND") == "tbf":
                return int(q.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["rate"])
        return None

    assert tbf_rate() == 500_000  # bytes/s
    impair.replace(sock, index, Impairment(rate=8_000_000))
    assert tbf_rate() == 1_000_000
    assert [k for k, _, p in root_qdiscs(mesh, "a", a_if) if p == impair.TC_H_ROOT] == ["tbf"]
    impair.replace(sock, index, Impairment())
    kinds = [k for k, _, p in root_qdiscs(mesh, "a", a_if) if p == impair.TC_H_ROOT]
    assert "tbf" not in kinds and "netem" not in kinds, kinds
    assert impair.remove(sock, index) is False  # nothing of ours left: not an error
    impair.replace(sock, index, Impairment())  # ideal over the default: still fine
    # shaped again after a replace from the default
    impair.replace(sock, index, Impairment(rate=4_000_000))
    assert tbf_rate() == 500_000


def test_replace_with_the_same_qdiscs_changes_them_in_place(mesh_factory) -> None:
    # a sweep step changes a rate (or a loss) on a chain of the same qdiscs: `tc change`,
    # no delete and add (which waits for an RCU grace period: slow under emulation)
    mesh = mesh_factory(topofile.loads_toml(RATE_ONLY, "rate.toml"))
    a_if = mesh.state.interfaces["a"][0]["ifname"]
    sock = mesh.netlink("a")
    index = sock.link_lookup(ifname=a_if)[0]

    def tbf() -> tuple[int, int]:
        (q,) = [q for q in sock.get_qdiscs(index=index)
                if q["index"] == index and q.get_attr("TCA_KIND") == "tbf"]  # fmt: skip
        rate = int(q.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["rate"])
        return rate, int(q.get_attr("TCA_STATS")["bytes"])

    tcp_goodput(mesh, "a", "b", 200_000)
    rate, sent = tbf()
    assert rate == 500_000 and sent >= 200_000
    impair.replace(sock, index, Impairment(rate=2_000_000))
    # the same qdisc (its byte counter kept), at the new rate
    assert tbf() == (250_000, sent)
    # the caller says what it put there: changed without a dump, still in place
    impair.replace(sock, index, Impairment(rate=1_000_000), was=Impairment(rate=2_000_000))
    assert tbf() == (125_000, sent)
    # told wrong (netem is not there): it looks, finds the same tbf, changes it in place
    impair.replace(sock, index, Impairment(rate=4_000_000), was=Impairment(rate=1, delay=0.01))
    assert tbf() == (500_000, sent)
    assert [k for k, _, p in root_qdiscs(mesh, "a", a_if) if p == impair.TC_H_ROOT] == ["tbf"]


def test_bring_up_names_the_missing_qdisc() -> None:
    if has_netem():
        pytest.skip("this kernel has netem: nothing is missing")

    topo = topofile.loads_toml(
        'nodes = ["a", "b"]\n[[links]]\na = "a"\nb = "b"\nrate = "1mbit"\n'
        'a_to_b = { delay = "5ms" }\n',
        "mixed.toml",
    )
    with pytest.raises(CapabilityError) as err:
        bringup.bring_up(topo)
    text = str(err.value)
    # one of the two directions needs netem; tbf is there, so it is not named
    assert "mixed.toml: 1 impaired interfaces need the netem qdisc" in text, text
    assert "sch_netem" in text and "tbf" not in text and "--ideal" in text
