"""Assertions over results: parsing, units, lookups, pass and fail."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshstress.judge import verdict

RESULTS = {
    "mesh": {"converged": True, "convergence_s": 2.5},
    "flows": {
        "udp-n0-n8": {"delivery_ratio": 0.93, "latency_ms": {"p99": 12.0}, "goodput_bps": None},
        "cbr": {"delivery_ratio": 0.5, "throughput_bps": 150_000},
    },
    "events": [{"recovery_s": {"cbr": 3.2}}, {"recovery_s": {"cbr": None}}],
}


@pytest.mark.parametrize(
    "text, path, op, value",
    [
        ("flows.cbr.delivery_ratio >= 95%", ("flows", "cbr", "delivery_ratio"), ">=", 0.95),
        ("flows.cbr.delivery_ratio>=0.9", ("flows", "cbr", "delivery_ratio"), ">=", 0.9),
        ("events[0].recovery_s.cbr <= 8s", ("events", 0, "recovery_s", "cbr"), "<=", 8.0),
        ("events[1].recovery_s.cbr < 500ms", ("events", 1, "recovery_s", "cbr"), "<", 0.5),
        ("flows.a.latency_ms.p99 < 20ms", ("flows", "a", "latency_ms", "p99"), "<", 20.0),
        ("flows.a.latency_ms.p99 < 1s", ("flows", "a", "latency_ms", "p99"), "<", 1000.0),
        ("flows.a.throughput_bps > 2mbit", ("flows", "a", "throughput_bps"), ">", 2e6),
        ("mesh.converged == true", ("mesh", "converged"), "==", True),
        ("flows.udp-n0-n8.sent != 0", ("flows", "udp-n0-n8", "sent"), "!=", 0.0),
    ],
)
def test_parse(text: str, path: tuple, op: str, value: float) -> None:
    a = verdict.parse_assertion(text)
    assert (a.path, a.op, a.value) == (path, op, value)
    assert a.metric == verdict.format_path(path)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("flows.cbr.delivery_ratio", "METRIC OP VALUE"),
        ("flows.cbr.delivery_ratio => 3", "METRIC OP VALUE"),
        ("flows..x >= 1", "bad metric path"),
        ("flows.x >= lots", "not a number"),
        ("mesh.converged > true", "only with == or !="),
        ("flows.x >= nan", "finite"),
    ],
)
def test_parse_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        verdict.parse_assertion(text)


def test_judge_passes_fails_and_explains_missing_metrics() -> None:
    texts = [
        "flows.udp-n0-n8.delivery_ratio >= 90%",  # 0.93: pass
        "flows.cbr.delivery_ratio >= 90%",  # 0.5: fail
        "events[0].recovery_s.cbr <= 5s",  # 3.2: pass
        "events[1].recovery_s.cbr <= 5s",  # never recovered (null): fail
        "events[2].recovery_s.cbr <= 5s",  # no such event
        "flows.cbr.jitter_ms < 3",  # no such metric
        "flows.udp-n0-n8.latency_ms.p99 < 20ms",  # 12 ms: pass
        "mesh.converged == true",
        "flows.cbr.throughput_bps >= 1mbit",  # 150 kbit/s: fail
    ]
    checks = verdict.judge([verdict.parse_assertion(t) for t in texts], RESULTS)
    assert [c["passed"] for c in checks] == [
        True,
        False,
        True,
        False,
        False,
        False,
        True,
        True,
        False,
    ]
    assert checks[1]["actual"] == 0.5
    assert "null" in checks[3]["error"]
    assert "2 items" in checks[4]["error"]
    assert "no 'jitter_ms'" in checks[5]["error"] and "delivery_ratio" in checks[5]["error"]


# The comparisons, written out here: the test must not take its expected results from
# verdict.OPS, the table it checks.
COMPARE = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


@pytest.mark.parametrize(
    "op, actual, expected",
    # against the value 5: below, equal, above
    [
        (">=", 4, False), (">=", 5, True), (">=", 6, True),
        ("<=", 4, True), ("<=", 5, True), ("<=", 6, False),
        ("==", 4, False), ("==", 5, True), ("==", 6, False),
        ("!=", 4, True), ("!=", 5, False), ("!=", 6, True),
        (">", 4, False), (">", 5, False), (">", 6, True),
        ("<", 4, True), ("<", 5, False), ("<", 6, False),
    ],
)  # fmt: skip
def test_each_operator_against_five(op: str, actual: float, expected: bool) -> None:
    a = verdict.parse_assertion(f"flows.f.v {op} 5")
    assert verdict.check(a, {"flows": {"f": {"v": actual}}})["passed"] is expected


def test_every_operator_is_covered() -> None:
    assert set(verdict.OPS) == set(COMPARE)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False), st.sampled_from(sorted(COMPARE)))
def test_numbers_compare_like_python(x: float, op: str) -> None:
    a = verdict.parse_assertion(f"flows.f.v {op} {x!r}")
    for actual in (x, x + 1.0, x - 1.0):
        check = verdict.check(a, {"flows": {"f": {"v": actual}}})
        assert check["passed"] is COMPARE[op](actual, x)
