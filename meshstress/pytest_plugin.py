"""pytest plugin: markers, capability skips that name what is missing, mesh fixtures.

    @pytest.mark.network
    def test_two_hops(mesh_factory):
        mesh = mesh_factory(generators.line(3), routing="static")
        assert mesh.run("n0", ["ping", "-c1", mesh.address("n2")]).returncode == 0

`network` tests need root and network namespaces on the host; `kernel` tests need
kernel features our hosts lack (batman-adv, netem, BCC headers), which the VM lab has:
`meshstress lab run -- python -m pytest -m kernel`. With MESHSTRESS_REQUIRE=1 (set by CI)
a missing capability fails the test instead of skipping it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

KERNEL_FEATURES = ("batman-adv", "netem")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "network: needs root and network namespaces on the host")
    config.addinivalue_line("markers", "lab: boots the VM lab (qemu) from the host")
    config.addinivalue_line(
        "markers",
        "kernel(*features): needs kernel features (default: batman-adv, netem) that the "
        "VM lab provides",
    )


@functools.cache
def _checks() -> dict[str, tuple[bool, str]]:
    from meshstress import doctor

    return {c.name: (c.ok, c.remedy or c.detail) for c in doctor.run_checks()}


def missing_capability(features: tuple[str, ...] = ()) -> str | None:
    """None if the host has root, netns and every feature; else a reason naming the gap."""
    if os.geteuid() != 0:
        return "needs root (network namespaces): run pytest as root"
    checks = _checks()
    for name in ("netns", "veth", *features):
        ok, remedy = checks.get(name, (False, "unknown capability"))
        if not ok:
            return f"missing capability {name}: {remedy}"
    return None


def _require() -> bool:
    return os.environ.get("MESHSTRESS_REQUIRE", "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        features: tuple[str, ...] | None = None
        kernel = item.get_closest_marker("kernel")
        if kernel is not None:
            features = tuple(kernel.args) or KERNEL_FEATURES
        elif item.get_closest_marker("network") is not None:
            features = ()
        if features is None:
            continue
        reason = missing_capability(features)
        if reason is None:
            continue
        if _require():
            item.user_properties.append(("missing", reason))
        else:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, value in item.user_properties:
        if name == "missing":
            pytest.fail(f"MESHSTRESS_REQUIRE is set and {value}", pytrace=False)


@pytest.fixture
def mesh_factory() -> Iterator[Callable[..., Any]]:
    """Build meshes for a test; every one is torn down afterwards, also on failure."""
    from meshstress import build, hostcli

    made: list[Any] = []

    def make(
        topo: Any, routing: str | None = None, wait: bool = True, timeout: float = 120.0
    ) -> build.Mesh:
        if routing is not None:
            topo.routing = routing
        st, info = hostcli.bring_up(topo, wait=wait, timeout=timeout)
        mesh = build.Mesh(st)
        mesh.info = info  # type: ignore[attr-defined]
        made.append(mesh)
        return mesh

    try:
        yield make
    finally:
        for mesh in made:
            mesh.close()
            build.teardown(mesh.state)
