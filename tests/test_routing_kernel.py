"""batman-adv in the VM lab (stock kernel):
`meshstress lab run -- .venv/bin/python -m pytest -m kernel tests/test_routing_kernel.py`.

Emulated and slow: few, lean tests. A missing batman-adv skips with the capability named
(fails under MESHSTRESS_REQUIRE=1, as in CI)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from meshstress.build import Mesh
from meshstress.model import generators
from meshstress.routing import snapshot, wait_reroute
from meshstress.routing.batman_adv import BatmanAdvBackend
from meshstress.routing.probe import ping_pairs
from meshstress.routing.static import neighbour_interfaces
from meshstress.routing.testing import Routed, missing_handler, routed_meshes

pytestmark = pytest.mark.kernel("batman-adv")


@pytest.fixture
def routed() -> Iterator[Callable[..., Routed]]:
    with routed_meshes(missing_handler(pytest.skip, pytest.fail)) as make:
        yield make


def ping(mesh: Mesh, src: str, dst: str) -> bool:
    return mesh.ping(src, dst, count=2, wait=2).ok


def complete_tables(mesh: Mesh, backend: BatmanAdvBackend) -> dict[str, set[str]]:
    owners = backend.mac_owners(mesh)
    return {
        n: {owners[o.orig] for o in backend.originators(mesh, n) if o.best and o.orig in owners}
        for n in mesh.nodes
    }


@pytest.mark.parametrize("algorithm", ["BATMAN_IV", "BATMAN_V"])
def test_line_ends_ping_over_two_hops(routed, algorithm: str) -> None:
    mesh, backend, result = routed(generators.line(3), "batman-adv", {"algorithm": algorithm})
    assert isinstance(backend, BatmanAdvBackend)
    assert result.converged, str(result)
    print(f"\nbatman-adv {algorithm}: line3 {result}")
    assert backend.use_genl  # tables came over generic netlink, not a batctl per poll
    tables = complete_tables(mesh, backend)
    assert tables == {"n0": {"n1", "n2"}, "n1": {"n0", "n2"}, "n2": {"n0", "n1"}}
    owners = backend.mac_owners(mesh)
    # n0 hears only n1; its route to n2 goes through n1
    assert {owners[n.address] for n in backend.neighbours(mesh, "n0")} == {"n1"}
    assert backend.routes(mesh, "n0")["n2"].next_hop == "n1"
    assert backend.routes(mesh, "n2")["n0"].next_hop == "n1"
    assert ping(mesh, "n0", "n2") and ping(mesh, "n2", "n0")
    # the settings reached the kernel (batctl reads them back over netlink)
    out = mesh.run("n1", ["batctl", "meshif", "bat0", "bl"], capture_output=True, text=True)
    assert out.stdout.strip() == "disabled"
    # the mesh runs the algorithm asked for: bat0's, read in the node's namespace (in the
    # host namespace there is no bat0, and `batctl ra` lists both algorithms as available)
    ra = mesh.run("n1", ["batctl", "ra"], capture_output=True, text=True).stdout
    assert re.findall(r"^\s*\*\s*bat0:\s*(\S+)\s*$", ra, re.M) == [algorithm], ra


def test_grid_5x5_converges(routed) -> None:
    t0 = time.monotonic()
    mesh, backend, result = routed(generators.grid4(5, 5), "batman-adv", timeout=120)
    assert result.converged, str(result)
    print(
        f"\nbatman-adv BATMAN_IV: grid 5x5 {result} "
        f"(build+start+converge {time.monotonic() - t0:.1f} s)"
    )
    assert all(len(v) == 24 for v in complete_tables(mesh, backend).values())
    snap_route = backend.routes(mesh, "n0")["n24"]
    assert snap_route.next_hop in ("n1", "n5")
    assert not ping_pairs(mesh, [("n0", "n24"), ("n24", "n0")], timeout=3)


def test_grid_3x3_reroutes_around_a_cut_middle_link(routed) -> None:
    """BATMAN_V on a 3x3 grid: cut the second link of the n0 -> n8 path (not n0's own
    first interface: batman-adv's primary interface going down strands the node for
    minutes, a known behaviour); the path must avoid it and pings cross again."""
    mesh, backend, result = routed(generators.grid4(3, 3), "batman-adv", {"algorithm": "BATMAN_V"})
    assert result.converged, str(result)
    before = snapshot(mesh, backend).path("n0", "n8")
    assert before is not None and len(before) == 5, before
    a, b = before[1], before[2]
    ipr = mesh.netlink(a)
    index = ipr.link_lookup(ifname=neighbour_interfaces(mesh)[(a, b)])[0]
    cut = time.monotonic()
    ipr.link("set", index=index, state="down")
    rr = wait_reroute(mesh, backend, "n0", "n8", (a, b), cut, before, timeout=60)
    assert rr.seconds is not None, f"no reroute around {a}-{b} within 60 s (path {rr.after})"
    print(f"\nbatman-adv BATMAN_V: grid 3x3 {result}; reroute around {a}-{b}: {rr.seconds:.2f} s")
    assert rr.after is not None and (a, b) not in zip(rr.after, rr.after[1:], strict=False)
