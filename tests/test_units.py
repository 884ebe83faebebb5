"""Unit parsing and formatting: values, refusals, exact round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshstress.model import units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("250us", 250e-6),
        ("10 ms", 0.01),
        ("2min", 120.0),
        ("1h", 3600.0),
        ("0", 0.0),
        (0, 0.0),
        ("5e-3s", 0.005),
        ("100NS", 100e-9),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert units.parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10", "needs a unit"),
        (10, "needs a unit"),
        ("-5ms", "expected a duration"),
        (-5, "must not be negative"),
        ("5 parsecs", "needs a unit"),
        ("fast", "expected a duration"),
        (True, "boolean"),
        ([1], "got list"),
        (float("inf"), "finite"),
        ("1e999s", "finite"),
        (10**400, "too large"),
    ],
)
def test_parse_duration_refuses(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        units.parse_duration(value)


@pytest.mark.parametrize(
    ("value", "fraction"),
    [
        ("5%", 0.05),
        ("100%", 1.0),
        ("0%", 0.0),
        (0.25, 0.25),
        ("0.5", 0.5),
        (1, 1.0),
        ("12.5 %", 0.125),
    ],
)
def test_parse_fraction(value: object, fraction: float) -> None:
    assert units.parse_fraction(value) == pytest.approx(fraction)


@pytest.mark.parametrize(
    ("value", "reason"),
    [("101%", "above 100%"), (5, "above 100%"), ("5pct", "must end in %"), ("-1%", "percentage")],
)
def test_parse_fraction_refuses(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        units.parse_fraction(value)


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("10mbit", 10_000_000),
        ("1kbit", 1000),
        ("2gbit", 2 * 10**9),
        ("100bit", 100),
        ("1mbps", 8_000_000),
        ("1.5mbit", 1_500_000),
    ],
)
def test_parse_rate(text: str, bits: int) -> None:
    assert units.parse_rate(text) == bits


@pytest.mark.parametrize(
    ("value", "reason"),
    [("0mbit", "must be positive"), ("10", "needs a unit"), ("10furlongs", "unknown rate unit")],
)
def test_parse_rate_refuses(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        units.parse_rate(value)


def test_parse_size() -> None:
    assert units.parse_size("32kb") == 32 * 1024
    assert units.parse_size(1500) == 1500
    assert units.parse_size("1mb") == 1024**2
    with pytest.raises(ValueError, match="unknown size unit"):
        units.parse_size("3 parsecs")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.02, "20ms"),
        (1.0, "1s"),
        (0.0, "0ms"),
        (250e-6, "250us"),
        (1.5, "1500ms"),
        (0.0025, "2500us"),
        (4e-6, "4us"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert units.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("fraction", "text"), [(0.05, "5%"), (1.0, "100%"), (0.0, "0%"), (0.125, "12.5%")]
)
def test_format_fraction(fraction: float, text: str) -> None:
    assert units.format_fraction(fraction) == text


def test_format_rate() -> None:
    assert units.format_rate(10_000_000) == "10mbit"
    assert units.format_rate(1500) == "1500bit"
    assert units.format_rate(3000) == "3kbit"
    with pytest.raises(ValueError):
        units.format_rate(0)


def test_format_is_exact_where_the_old_one_lost_digits() -> None:
    # regression: formatting used 6-10 significant digits, so values did not survive a
    # write and read back (e.g. a meshnet-lab tq of 0.75686276 gives this loss)
    loss = 1 - 0.75686276
    assert units.parse_fraction(units.format_fraction(loss)) == loss
    delay = 0.0123456789
    assert units.parse_duration(units.format_duration(delay)) == delay


durations = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
fractions = st.floats(min_value=0, max_value=1, allow_nan=False)


@given(durations)
def test_duration_round_trip(seconds: float) -> None:
    text = units.format_duration(seconds)
    assert units.parse_duration(text) == seconds


@given(fractions)
def test_fraction_round_trip(fraction: float) -> None:
    assert units.parse_fraction(units.format_fraction(fraction)) == fraction


@given(st.integers(min_value=1, max_value=10**15))
def test_rate_round_trip(bits: int) -> None:
    assert units.parse_rate(units.format_rate(bits)) == bits


@given(st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans(), st.none()))
def test_parsers_raise_only_value_error(value: object) -> None:
    for parse in (units.parse_duration, units.parse_fraction, units.parse_rate, units.parse_size):
        try:
            out = parse(value)
        except ValueError:
            continue
        assert isinstance(out, int | float)
        assert math.isfinite(out) and out >= 0
