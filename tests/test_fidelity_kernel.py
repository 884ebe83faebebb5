"""Fidelity: each configured impairment against what the mesh measurably does.

The netem cases run once for the whole file (one mesh, meshstress.fidelity's topology:
one link per case, fixed counts of numbered UDP datagrams, see docs/fidelity.md), then
each test checks its rows: the measurement lies inside the accepted interval of its own
setting (99% binomial intervals for counts, the stated tolerances for delay, jitter,
bursts and rates) and outside that of every neighbouring setting, so that 5% could
not pass as 10%. The rate cases need only tbf and run on the host.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshstress import fidelity
from meshstress.build import bringup
from meshstress.fidelity import Row
from meshstress.pytest_plugin import require_capabilities


def check(row: Row) -> None:
    d = row.as_dict()
    print(
        f"{row.check}: configured {row.configured:g}, measured {d['measured']}, n {row.n}, "
        f"count {row.count}, accepted {d['accept']}; neighbours {d['neighbours']}; {row.extra}"
    )
    assert not row.errors, row.errors
    assert row.ok, f"{row.check}: measured {row.measured} outside {row.accept}"
    assert row.neighbours, "a check without a neighbouring setting proves nothing"
    for (value, band), passes in zip(row.neighbours, row.neighbour_ok(), strict=True):
        assert not passes, f"{row.check}: {row.measured} would also pass as {value:g} ({band})"


@pytest.fixture(scope="module")
def netem(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Row]]:
    from meshstress import build

    up = bringup.bring_up(fidelity.netem_topology(), wait=False)
    try:
        with build.Mesh(up.state) as mesh:
            rows, _ = fidelity.measure_netem(mesh, str(tmp_path_factory.mktemp("fidelity")))
    finally:
        build.teardown(up.state)
    yield {r.check: r for r in rows}


def rows_of(netem: dict[str, Row], prefix: str) -> list[Row]:
    found = [r for name, r in netem.items() if name.startswith(prefix)]
    assert found, f"no check {prefix!r} among {list(netem)}"
    return found


@pytest.mark.kernel("netem")
@pytest.mark.parametrize("loss", fidelity.LOSS, ids=lambda p: f"{p * 100:g}%")
def test_loss_inside_its_binomial_interval(netem: dict[str, Row], loss: float) -> None:
    (row,) = rows_of(netem, f"loss {loss * 100:g}%")
    assert row.n >= 2000
    check(row)


@pytest.mark.kernel("netem")
def test_gilbert_elliott_mean_burst_length(netem: dict[str, Row]) -> None:
    (row,) = rows_of(netem, "burst")
    # the 99% interval of the mean of this many geometric bursts fits inside +-20%
    lo, hi = row.extra["stat_interval99"]
    assert row.accept[0] <= lo and hi <= row.accept[1], (row.extra, row.accept)
    check(row)


@pytest.mark.kernel("netem")
@pytest.mark.parametrize("delay", fidelity.DELAYS_MS, ids=lambda d: f"{d:g}ms")
def test_added_delay(netem: dict[str, Row], delay: float) -> None:
    (row,) = rows_of(netem, f"delay {delay:g} ms")
    assert row.extra["lost"] == 0
    check(row)


@pytest.mark.kernel("netem")
@pytest.mark.parametrize("jitter", fidelity.JITTERS_MS, ids=lambda j: f"{j:g}ms")
def test_jitter_standard_deviation(netem: dict[str, Row], jitter: float) -> None:
    (row,) = rows_of(netem, f"jitter {jitter:g} ms")
    check(row)


@pytest.mark.kernel("netem")
@pytest.mark.parametrize("what", ["reorder", "duplicate", "corrupt"])
def test_reorder_duplicate_corrupt(netem: dict[str, Row], what: str) -> None:
    (row,) = rows_of(netem, what)
    assert row.n >= 2000
    check(row)


@pytest.mark.kernel("netem")
def test_directions_are_independent(netem: dict[str, Row]) -> None:
    """a->b loses 20% and is not delayed; b->a is delayed 50 ms and loses nothing: each
    direction passes as its own setting and fails as the other's."""
    rows = rows_of(netem, "dir ")
    assert len(rows) == 4
    for row in rows:
        check(row)


@pytest.mark.network
@pytest.mark.parametrize("rate", fidelity.RATES_MBIT, ids=lambda r: f"{r:g}mbit")
def test_tbf_rate(mesh_factory, tmp_path, rate: float) -> None:
    """tbf alone (no netem), so the host runs it: offered at 1.5 times the rate, the
    gaps between arrivals while tbf holds a backlog give the rate within 5%, and not
    the neighbouring rate (a tenth, ten times)."""
    mesh = mesh_factory(fidelity.rate_topology((rate,)))
    row, stream = fidelity.measure_rate(mesh, rate, str(tmp_path))
    if any(e.startswith("infeasible") for e in row.errors):
        # a starved sender (a loaded machine) never outran tbf: nothing to measure
        msg = f"missing capability: a sender that outruns {rate:g} Mbit/s: {row.errors}"
        if require_capabilities():
            pytest.fail(f"MESHSTRESS_REQUIRE is set and {msg}", pytrace=False)
        pytest.skip(msg)
    row.neighbours = [(q, fidelity.stats.relative_band(q, fidelity.RATE_TOLERANCE))
                      for q in (rate / 10, rate * 10)]  # fmt: skip
    check(row)
