"""Typed, validated units: durations ("20ms"), fractions ("5%"), rates ("10mbit"), sizes ("32kb").

Every parser takes the raw value and returns plain SI numbers (seconds, fraction 0..1,
bits per second, bytes); it raises ValueError with a short reason, which callers wrap
into an InputError naming the file and field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

_NUM = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_NUM_UNIT = re.compile(rf"^\s*({_NUM})\s*([a-zA-Z%]*)\s*$")

_DURATION = {
    "": None,  # bare numbers are refused for durations: "10" is ambiguous
    "ns": 1e-9,
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}

# tc's conventions: "bit" units are bits per second, "bps" units are bytes per second.
_RATE = {
    "bit": 1,
    "kbit": 1_000,
    "mbit": 1_000_000,
    "gbit": 1_000_000_000,
    "tbit": 1_000_000_000_000,
    "bps": 8,
    "kbps": 8_000,
    "mbps": 8_000_000,
    "gbps": 8_000_000_000,
}

_SIZE = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
}


def _split(value: object, what: str) -> tuple[float, str]:
    if isinstance(value, bool):
        raise ValueError(f"expected a {what}, got a boolean")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"{what} {value!r} is too large") from None
        unit = ""
    elif isinstance(value, str):
        m = _NUM_UNIT.match(value)
        if not m:
            raise ValueError(f"expected a {what} like {_EXAMPLES[what]}, got {value!r}")
        number = float(m.group(1))
        unit = m.group(3).lower()
    else:
        raise ValueError(f"expected a {what}, got {type(value).__name__}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite {what}, got {value!r}")
    if number < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return number, unit


_EXAMPLES = {
    "duration": '"20ms"',
    "percentage": '"5%"',
    "rate": '"10mbit"',
    "size": '"32kb"',
}


def parse_duration(value: object) -> float:
    """'20ms' -> 0.02 seconds. A bare 0 is accepted; other bare numbers are ambiguous."""
    number, unit = _split(value, "duration")
    if unit == "" and number == 0:
        return 0.0
    factor = _DURATION.get(unit)
    if factor is None:
        raise ValueError(f"duration {value!r} needs a unit (ns, us, ms, s, min, h)")
    return number * factor


def parse_fraction(value: object) -> float:
    """'5%' -> 0.05; a bare number is a fraction from 0 to 1 (0.05 means 5%)."""
    number, unit = _split(value, "percentage")
    if unit == "%":
        number /= 100.0
    elif unit != "":
        raise ValueError(f"percentage {value!r} must end in % (or be a fraction 0..1)")
    if number > 1.0:
        raise ValueError(f"percentage {value!r} is above 100%")
    return number


def parse_rate(value: object) -> int:
    """'10mbit' -> 10_000_000 bits per second (tc's units: bit/kbit/mbit, bps = bytes/s)."""
    number, unit = _split(value, "rate")
    if unit == "":
        raise ValueError(f"rate {value!r} needs a unit (bit, kbit, mbit, gbit, bps, kbps, mbps)")
    factor = _RATE.get(unit)
    if factor is None:
        raise ValueError(f"unknown rate unit {unit!r} in {value!r} (use kbit, mbit, gbit, ...)")
    bits = round(number * factor)
    if bits <= 0:
        raise ValueError(f"rate {value!r} must be positive")
    return bits


def parse_size(value: object) -> int:
    """'32kb' -> 32768 bytes; a bare number is bytes."""
    number, unit = _split(value, "size")
    factor = _SIZE.get(unit)
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} in {value!r} (use b, kb, mb, gb)")
    return round(number * factor)


def _shortest(candidates: list[str], parse: Callable[[str], float], value: float) -> str:
    """The first candidate that parses back to exactly `value`."""
    for text in candidates:
        try:
            if parse(text) == value:
                return text
        except ValueError:
            continue
    raise ValueError(f"cannot spell {value!r} exactly")


def _num(x: float) -> str:
    """A number as text: integral values without '.0', others as repr (exact)."""
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def format_duration(seconds: float) -> str:
    """0.02 -> '20ms': the shortest spelling that parse_duration reads back exactly."""
    if seconds == 0:
        return "0ms"
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}")
    candidates = [
        f"{_num(seconds / factor)}{unit}"
        for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))
    ]
    # a whole number of up to 6 digits in the largest unit, else the shortest text
    whole = [
        f"{round(seconds / factor)}{unit}"
        for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))
        if 1 <= round(seconds / factor) < 10**6
    ]
    ordered = whole + sorted(candidates, key=len) + [f"{seconds!r}s"]
    return _shortest(ordered, parse_duration, seconds)


def format_fraction(fraction: float) -> str:
    """0.05 -> '5%': a spelling that parse_fraction reads back exactly."""
    if not math.isfinite(fraction) or not 0 <= fraction <= 1:
        raise ValueError(f"cannot format fraction {fraction!r}")
    pct = fraction * 100
    candidates = [f"{_num(round(pct, digits))}%" for digits in range(16)] + [f"{_num(pct)}%"]
    return _shortest([*candidates, _num(fraction), repr(fraction)], parse_fraction, fraction)


def format_rate(bits: int) -> str:
    """10_000_000 -> '10mbit'."""
    if bits <= 0:
        raise ValueError(f"cannot format rate {bits!r}: rates are positive")
    for unit, factor in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits % factor == 0:
            return f"{bits // factor}{unit}"
    return f"{bits}bit"
