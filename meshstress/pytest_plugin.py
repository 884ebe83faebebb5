"""pytest plugin: markers, capability skips that name what is missing, mesh fixtures.

    @pytest.mark.network
    def test_two_hops(mesh_factory):
        mesh = mesh_factory(generators.line(3), routing="static")
        r = mesh.ping("n0", "n2", count=5)
        assert r.loss == 0 and r.ttl == 63  # one router between the ends

`network` tests need root and network namespaces on the host; `kernel` tests need
kernel features our hosts lack (batman-adv, netem, BCC headers), which the VM lab has.
Where they run is `--meshstress-where` (or MESHSTRESS_WHERE):
- auto (default): on the host when it has what they need; otherwise, if the VM lab can
  run here, all such tests run in one lab boot at the end of the session (and the plugin
  says so); otherwise they are skipped with the missing capability named;
- host: never the lab (skip what the host lacks);
- lab: every kernel test runs in the lab.
With MESHSTRESS_REQUIRE=1 (set by CI) a missing capability fails the test instead of
skipping it, and so does every other skip, unless the test is on the allow-list named by
the ini option `meshstress_allowed_skips` (a file: one `NODEID-GLOB  # REASON` a line,
the reason required; this project's is tests/ci-skips.txt).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

KERNEL_FEATURES = ("batman-adv", "netem")


WHERE_CHOICES = ("auto", "host", "lab")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("meshstress")
    group.addoption(
        "--meshstress-where",
        choices=WHERE_CHOICES,
        default=None,
        help="where kernel-dependent tests run: auto (lab when the host lacks a feature), "
        "host, or lab [env MESHSTRESS_WHERE; default auto]",
    )
    parser.addini(
        ALLOWED_SKIPS_INI,
        "file (relative to the rootdir) of the skips allowed under MESHSTRESS_REQUIRE=1: "
        "one 'NODEID-GLOB  # REASON' a line",
        default="",
    )


ALLOWED_SKIPS_INI = "meshstress_allowed_skips"


def _where(config: pytest.Config) -> str:
    value = config.getoption("--meshstress-where") or os.environ.get("MESHSTRESS_WHERE", "auto")
    if value not in WHERE_CHOICES:
        raise pytest.UsageError(f"MESHSTRESS_WHERE={value!r}: choose one of {WHERE_CHOICES}")
    return str(value)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "network: needs root and network namespaces on the host")
    config.addinivalue_line("markers", "lab: boots the VM lab (qemu) from the host")
    config.addinivalue_line(
        "markers",
        "kernel(*features): needs kernel features (default: batman-adv, netem) that the "
        "VM lab provides",
    )
    if require_capabilities():
        _allowed_skips(config)  # a bad allow-list is a usage error before any test runs


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


def require_capabilities() -> bool:
    """MESHSTRESS_REQUIRE is set: a missing capability is a failure, not a skip."""
    return os.environ.get("MESHSTRESS_REQUIRE", "") not in ("", "0")


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only what will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    where = _where(config)
    to_lab: list[pytest.Item] = []
    lab_reason = ""
    for item in items:
        features: tuple[str, ...] | None = None
        kernel = item.get_closest_marker("kernel")
        if kernel is not None:
            features = _features(item)
        elif item.get_closest_marker("network") is not None:
            features = ()
        if features is None:
            continue
        reason = missing_capability(features)
        if kernel is not None and where != "host" and (reason is not None or where == "lab"):
            ok, lab_reason = _lab_available()
            if ok:
                to_lab.append(item)
                continue
            reason = f"{reason or 'lab requested'}; and the VM lab cannot run: {lab_reason}"
        if reason is None:
            continue
        if require_capabilities():
            item.user_properties.append(("missing", reason))
        else:
            item.add_marker(pytest.mark.skip(reason=reason))
    if to_lab:
        config.hook.pytest_deselected(items=to_lab)
        items[:] = [i for i in items if i not in to_lab]
        config.stash[_LAB_ITEMS] = [i.nodeid for i in to_lab]
        lacking = sorted({f for i in to_lab for f in _features(i) if not _has(f)})
        config.stash[_LAB_WHY] = (
            f"the host lacks {', '.join(lacking)}" if lacking else "--meshstress-where=lab"
        )


def _features(item: pytest.Item) -> tuple[str, ...]:
    marker = item.get_closest_marker("kernel")
    return (tuple(marker.args) or KERNEL_FEATURES) if marker is not None else ()


def _has(feature: str) -> bool:
    return os.geteuid() == 0 and _checks().get(feature, (False, ""))[0]


_LAB_ITEMS = pytest.StashKey[list[str]]()
_LAB_WHY = pytest.StashKey[str]()


@functools.cache
def _lab_available() -> tuple[bool, str]:
    from meshstress.lab import lab_available

    return lab_available()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Run the tests the host could not, in one VM lab boot, and fold in the result."""
    nodeids = session.config.stash.get(_LAB_ITEMS, [])
    if not nodeids:
        return
    import sys

    from meshstress.lab import run_in_lab

    why = session.config.stash.get(_LAB_WHY, "")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    say(f"meshstress: {why}; running {len(nodeids)} kernel test(s) in the VM lab")
    env = dict(os.environ, MESHSTRESS_WHERE="host", MESHSTRESS_REQUIRE="1")
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", *nodeids]
    rc = run_in_lab(argv, cwd=str(session.config.rootpath), env=env)
    say(f"meshstress: VM lab run of {len(nodeids)} kernel test(s) exited {rc}")
    if rc != 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK  # they all ran, in the lab


def read_allowed_skips(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(nodeid glob, reason) pairs from an allow-list file; a line without a reason, or a
    missing file, is a usage error naming the file and line."""
    allowed = []
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as exc:
        raise pytest.UsageError(f"{path}: cannot read the allowed skips: {exc}") from None
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, _, reason = line.partition(" #")
        if not pattern.strip() or not reason.strip():
            raise pytest.UsageError(f"{path}:{no}: want 'NODEID-GLOB  # REASON', got {line!r}")
        allowed.append((pattern.strip(), reason.strip()))
    return allowed


_ALLOWED = pytest.StashKey[list[tuple[str, str]]]()


def _allowed_skips(config: pytest.Config) -> list[tuple[str, str]]:
    if _ALLOWED not in config.stash:
        name = str(config.getini(ALLOWED_SKIPS_INI) or "")
        config.stash[_ALLOWED] = read_allowed_skips(config.rootpath / name) if name else []
    return config.stash[_ALLOWED]


def skip_allowed(nodeid: str, allowed: list[tuple[str, str]]) -> str | None:
    """The allow-list's reason for this test's skip, or None if it is not allowed."""
    import fnmatch

    for pattern, reason in allowed:
        if fnmatch.fnmatchcase(nodeid, pattern):
            return reason
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Under MESHSTRESS_REQUIRE, a skip not on the allow-list is a failure."""
    outcome = yield
    if not require_capabilities():
        return
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    if skip_allowed(item.nodeid, _allowed_skips(item.config)) is not None:
        return
    longrepr = report.longrepr
    why = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    why = why.removeprefix("Skipped: ")
    where = item.config.getini(ALLOWED_SKIPS_INI) or f"no {ALLOWED_SKIPS_INI} file is set"
    report.outcome = "failed"
    report.longrepr = (
        f"MESHSTRESS_REQUIRE is set and this test skipped ({why}); "
        f"it is not on the allowed skips ({where})"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, value in item.user_properties:
        if name == "missing":
            pytest.fail(f"MESHSTRESS_REQUIRE is set and {value}", pytrace=False)


@pytest.fixture
def mesh_factory() -> Iterator[Callable[..., Any]]:
    """Build meshes for a test; every one is torn down afterwards, also on failure."""
    from meshstress import build
    from meshstress.build import bringup
    from meshstress.stress.live import LiveMesh

    made: list[Any] = []

    def make(
        topo: Any,
        routing: str | None = None,
        settings: dict[str, Any] | None = None,
        wait: bool | None = None,
        timeout: float = 120.0,
    ) -> LiveMesh:
        """Build `topo` (routing and its settings override the topology's); the mesh
        carries .info (summary), .backend and .result (convergence, when waited), and
        the stress context managers of meshstress.stress.live (docs/pytest.md)."""
        if routing is not None:
            topo.routing = routing
        if settings is not None:
            topo.routing_settings = settings
        brought = bringup.bring_up(topo, wait=wait, timeout=timeout)
        mesh = LiveMesh(brought.state, topo, brought.backend)
        mesh.info = brought.info  # type: ignore[attr-defined]
        mesh.result = brought.result  # type: ignore[attr-defined]
        made.append(mesh)
        return mesh

    try:
        yield make
    finally:
        for mesh in made:
            mesh.close()
            build.teardown(mesh.state)


@pytest.fixture
def run_scenario(tmp_path: Any) -> Callable[..., dict[str, Any]]:
    """Run a scenario on this kernel and return its results dict (results.json):

        @pytest.mark.network
        def test_survives_partition(run_scenario):
            r = run_scenario("scenarios/partition.toml")
            assert r["passed"], r["checks"]
            assert r["flows"]["cbr"]["delivery_ratio"] > 0.5

    The argument is a scenario file or scenario TOML text (relative topology paths then
    resolve from the current directory); `duration=` overrides the scenario's. A scenario
    needing what this kernel lacks is skipped naming it (failed with MESHSTRESS_REQUIRE);
    mark such tests `@pytest.mark.kernel(...)` so `auto` runs them in the VM lab.
    Everything the run built is torn down before the fixture returns."""
    from pathlib import Path

    from meshstress import runner
    from meshstress.model import scenario

    count = 0

    def run(source: str | Path, duration: float | None = None) -> dict[str, Any]:
        nonlocal count
        count += 1
        if isinstance(source, Path) or "\n" not in source:
            sc = scenario.load(source)
        else:
            sc = scenario.loads(source, f"<scenario {count}>", base=Path.cwd())
        if duration is not None:
            sc.duration = duration
            scenario.check_times(sc)
        missing = runner.missing_here(sc)
        if missing:
            msg = f"missing capability {'; '.join(missing)}"
            if require_capabilities():
                pytest.fail(f"MESHSTRESS_REQUIRE is set and {msg}", pytrace=False)
            pytest.skip(msg)
        return runner.run(sc, Path(tmp_path) / f"run{count}")

    return run
