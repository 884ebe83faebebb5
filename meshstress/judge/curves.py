"""Degradation curves: one metric over a stress sweep, and checks on its shape (pure).

A `Curve` holds the stress at each step of a sweep (in SI: a fraction for "10%", seconds
for "20ms", bit/s, bytes, or plain numbers) and the metric measured there, optionally
with a confidence interval per step, or the counts k of n behind a ratio (then the
interval is Clopper-Pearson, `stats.clopper_pearson`). `better` says which way is good:
"higher" (delivery ratio) or "lower" (latency); "worse" below means lower or higher.

Checks (each returns a `CheckResult`: passed, one line with the numbers, the offending
steps); the exact rules are in docs/degradation.md:
- `floor(curve, f, up_to)`: every step with stress <= up_to measured >= f;
  `ceiling(curve, c, up_to)`: <= c. Point values; up_to beyond the sweep fails.
- `no_cliff(curve, max_drop, relative=False)`: between neighbouring steps the metric
  gets worse by at most max_drop (absolute, in the metric's unit), or with
  relative=True by at most max_drop times the earlier step's value.
- `monotone(curve)`: some non-increasing curve (non-decreasing if lower is better)
  passes through every step's interval; a step i fails if its interval lies wholly on
  the better side of an earlier step j's: lo_i > hi_j (hi_i < lo_j).
- `knee(curve, after=None)`: the stress at which the metric first falls below half its
  baseline (the first step's value; rises above twice it if lower is better), linear
  between the two steps around the crossing; None if never. Passes unless `after` is
  given and the knee is at or before it.

`evaluate("curve.flows.cbr.delivery_ratio floor 90% up_to loss=10%", curves)` judges the
assertion form used in a scenario's [verdict]; `assert_graceful` is for pytest.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from meshstress.judge import stats, verdict
from meshstress.model import units

Better = Literal["higher", "lower"]
_clopper_pearson = functools.lru_cache(maxsize=4096)(stats.clopper_pearson)
AXIS_UNITS = ("fraction", "seconds", "bit/s", "bytes", "")
CHECKS = ("floor", "ceiling", "no_cliff", "monotone", "knee")

Stress = float | str | None  # a number in the axis's SI unit, or "10%" / "loss=10%"


def parse_stress(text: object) -> tuple[float, str | None]:
    """'10%' -> (0.1, 'fraction'), '20ms' -> (0.02, 'seconds'), '2mbit' -> (2e6, 'bit/s'),
    '64kb' -> (65536.0, 'bytes'); a bare number -> (x, None): read in the axis's unit."""
    if isinstance(text, bool):
        raise ValueError("a stress value is a number or a value with a unit, not a boolean")
    if isinstance(text, int | float):
        x = float(text)
        if not math.isfinite(x):
            raise ValueError(f"stress {text!r} is not finite")
        return x, None
    t = str(text).strip()
    try:
        x = float(t)
    except ValueError:
        pass
    else:
        if not math.isfinite(x):
            raise ValueError(f"stress {t!r} is not finite")
        return x, None
    if t.endswith("%"):
        return units.parse_fraction(t), "fraction"
    for parse, unit in (
        (units.parse_duration, "seconds"),
        (units.parse_rate, "bit/s"),
        (units.parse_size, "bytes"),
    ):
        try:
            return float(parse(t)), unit
        except ValueError:
            continue
    raise ValueError(f"{t!r} is not a stress value (10%, 20ms, 2mbit, 64kb or a number)")


def _g(x: float) -> str:
    return f"{x:.4g}"


def format_stress(x: float, unit: str) -> str:
    if unit == "fraction":
        return f"{_g(x * 100)}%"
    if unit == "seconds":
        return f"{_g(x * 1000)}ms" if abs(x) < 1 else f"{_g(x)}s"
    if unit == "bit/s":
        for name, factor in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
            if abs(x) >= factor:
                return f"{_g(x / factor)}{name}"
        return f"{_g(x)}bit"
    if unit == "bytes":
        return f"{_g(x)}B"
    return _g(x)


def _unit_key(metric: str) -> str:
    """The name whose suffix gives a metric's unit, as in verdict: latency_ms.p99 -> latency_ms."""
    try:
        names = [p for p in verdict.parse_path(metric) if isinstance(p, str)]
    except ValueError:
        return metric
    return next((p for p in reversed(names) if "_" in p), names[-1] if names else "")


def format_value(x: float, metric: str) -> str:
    key = _unit_key(metric)
    if key.endswith("ratio"):
        return f"{_g(x * 100)}%"
    for suffix, unit in (("_ms", "ms"), ("_s", "s"), ("_bps", " bit/s")):
        if key.endswith(suffix):
            return f"{_g(x)}{unit}"
    return _g(x)


def guess_better(metric: str) -> Better:
    """'lower' for delays and counts of trouble (names ending _ms or _s, lost, duplicates,
    reordered, send_errors, outages); 'higher' for everything else (ratios, rates)."""
    key = _unit_key(metric)
    last = metric.rsplit(".", 1)[-1]
    bad = ("lost", "duplicates", "reordered", "send_errors", "outages", "outage_count")
    if key.endswith(("_ms", "_s")) or last in bad:
        return "lower"
    return "higher"


@dataclass(frozen=True)
class Curve:
    axis: str
    stress: Sequence[float]
    values: Sequence[float]
    unit: str = ""
    metric: str = "metric"
    intervals: Sequence[tuple[float, float]] | None = None
    counts: Sequence[tuple[int, int]] | None = None
    better: Better = "higher"
    confidence: float = stats.CONFIDENCE

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"curve {self.metric} over {self.axis}: {msg}")

        stress = tuple(float(s) for s in self.stress)
        values = tuple(float(v) for v in self.values)
        object.__setattr__(self, "stress", stress)
        object.__setattr__(self, "values", values)
        if self.unit not in AXIS_UNITS:
            raise bad(f"unit must be one of {', '.join(map(repr, AXIS_UNITS))}")
        if self.better not in ("higher", "lower"):
            raise bad(f"better must be 'higher' or 'lower', got {self.better!r}")
        if not stress or len(stress) != len(values):
            raise bad(f"{len(stress)} stress values and {len(values)} metric values")
        for i, x in enumerate(stress + values):
            if not math.isfinite(x):
                raise bad(f"value {x!r} at position {i % len(stress)} is not finite")
        falls = len(stress) > 1 and stress[1] < stress[0]
        for i in range(1, len(stress)):
            if (stress[i] >= stress[i - 1]) if falls else (stress[i] <= stress[i - 1]):
                order = "fall" if falls else "rise"
                raise bad(f"stress must {order} strictly: {self.at(i)} follows {self.at(i - 1)}")
        if self.intervals is not None and self.counts is not None:
            raise bad("give intervals or counts, not both")
        if self.intervals is not None:
            ivs = tuple((float(lo), float(hi)) for lo, hi in self.intervals)
            object.__setattr__(self, "intervals", ivs)
            if len(ivs) != len(values):
                raise bad(f"{len(ivs)} intervals for {len(values)} steps")
            for i, (lo, hi) in enumerate(ivs):
                if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                    raise bad(f"interval ({lo}, {hi}) at {self.at(i)} is not lo <= hi")
        if self.counts is not None:
            cts = tuple((int(k), int(n)) for k, n in self.counts)
            object.__setattr__(self, "counts", cts)
            if len(cts) != len(values):
                raise bad(f"{len(cts)} counts for {len(values)} steps")
            for i, (k, n) in enumerate(cts):
                if not 0 <= k <= n or n < 1:
                    raise bad(f"counts {k}/{n} at {self.at(i)} are not 0 <= k <= n, n >= 1")
                if abs(values[i] - k / n) > 1e-6:
                    raise bad(f"value {values[i]!r} at {self.at(i)} is not {k}/{n}")

    @classmethod
    def from_texts(
        cls, axis: str, steps: Sequence[str | float], values: Sequence[float], **kw: Any
    ) -> Curve:
        """A curve from a sweep's own spelling: Curve.from_texts('loss', ['0%', '5%'], ...)."""
        parsed = [parse_stress(s) for s in steps]
        found = {u for _, u in parsed if u is not None}
        if len(found) > 1:
            raise ValueError(f"sweep {axis}: steps mix units ({', '.join(sorted(found))})")
        unit = found.pop() if found else ""
        return cls(axis=axis, stress=[x for x, _ in parsed], values=values, unit=unit, **kw)

    @property
    def falls(self) -> bool:
        """Stress values that fall along the sweep (a rate: less bandwidth is more
        stress). "Up to" and "after" then follow the sweep's order: up_to rate=1mbit
        means the steps from the first down to 1mbit."""
        return len(self.stress) > 1 and self.stress[1] < self.stress[0]

    def before(self, x: float, y: float) -> bool:
        """x comes at or before y in the sweep's order."""
        return x >= y if self.falls else x <= y

    def at(self, i: int) -> str:
        return f"{self.axis}={format_stress(self.stress[i], self.unit)}"

    def fmt(self, x: float) -> str:
        return format_value(x, self.metric)

    def interval(self, i: int) -> tuple[float, float]:
        """Step i's interval: given, Clopper-Pearson from counts, else the point (v, v)."""
        if self.intervals is not None:
            return self.intervals[i]
        if self.counts is not None:
            k, n = self.counts[i]
            return _clopper_pearson(k, n, self.confidence)
        return self.values[i], self.values[i]

    def resolve(self, stress: Stress) -> float | None:
        """A stress bound as a number on this curve's axis: 0.1, '10%' or 'loss=10%'."""
        if stress is None:
            return None
        if isinstance(stress, int | float) and not isinstance(stress, bool):
            return float(stress)
        text = str(stress).strip()
        m = _AT.fullmatch(text)
        if m:
            if m.group("axis") != self.axis:
                raise ValueError(
                    f"{text!r} names axis {m.group('axis')}, the curve's axis is {self.axis}"
                )
            text = m.group("value")
        value, unit = parse_stress(text)
        if unit is not None and unit != self.unit:
            raise ValueError(
                f"{text!r} is in {unit}, the {self.axis} axis in {self.unit or 'plain numbers'}"
            )
        return value


@dataclass(frozen=True)
class CheckResult:
    check: str
    passed: bool
    explanation: str
    steps: tuple[int, ...] = ()  # indices of the offending steps (the knee: the step after it)
    at: tuple[float, ...] = ()  # their stress values
    value: float | None = None  # the knee's stress

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "passed": self.passed,
            "explanation": self.explanation,
            "at": list(self.at),
            "value": self.value,
        }


def _result(
    curve: Curve, check: str, passed: bool, text: str, steps: Sequence[int] = ()
) -> CheckResult:
    return CheckResult(check, passed, text, tuple(steps), tuple(curve.stress[i] for i in steps))


def _limit(curve: Curve, x: float | str, name: str) -> float:
    if isinstance(x, str):
        value = verdict.parse_value(x, _unit_key(curve.metric))
        if isinstance(value, bool):
            raise ValueError(f"{name} {x!r} must be a number")
        return value
    if isinstance(x, bool) or not math.isfinite(x):
        raise ValueError(f"{name} {x!r} must be a finite number")
    return float(x)


def _bound(curve: Curve, limit: float | str, up_to: Stress, above: bool) -> CheckResult:
    check = "floor" if above else "ceiling"
    lim = _limit(curve, limit, check)
    top = curve.resolve(up_to)
    m, f = curve.metric, curve.fmt(lim)
    side = "at or above" if above else "at or below"
    scope = (
        "over the sweep" if top is None else f"up to {curve.axis}={format_stress(top, curve.unit)}"
    )
    if top is not None and not curve.before(top, curve.stress[-1]):
        return _result(
            curve, check, False, f"{m} {check} {f} {scope}: the sweep stops at {curve.at(-1)}"
        )
    steps = [i for i, s in enumerate(curve.stress) if top is None or curve.before(s, top)]
    if not steps:
        return _result(
            curve, check, False, f"{m} {check} {f} {scope}: the sweep starts at {curve.at(0)}"
        )
    v = curve.values
    bad = [i for i in steps if (v[i] < lim if above else v[i] > lim)]
    if bad:
        where = ", ".join(f"{curve.fmt(v[i])} at {curve.at(i)}" for i in bad)
        word = "falls below" if above else "rises above"
        return _result(curve, check, False, f"{m} {word} {f} {scope}: {where}", bad)
    worst = min(steps, key=lambda i: v[i]) if above else max(steps, key=lambda i: v[i])
    which = "lowest" if above else "highest"
    return _result(
        curve,
        check,
        True,
        f"{m} stays {side} {f} {scope} ({which} {curve.fmt(v[worst])} at {curve.at(worst)})",
    )


def floor(curve: Curve, f: float | str, up_to: Stress = None) -> CheckResult:
    """Every step with stress <= up_to (all steps if None) has value >= f."""
    return _bound(curve, f, up_to, above=True)


def ceiling(curve: Curve, c: float | str, up_to: Stress = None) -> CheckResult:
    """Every step with stress <= up_to (all steps if None) has value <= c."""
    return _bound(curve, c, up_to, above=False)


def no_cliff(curve: Curve, max_drop: float | str, relative: bool = False) -> CheckResult:
    """Between neighbouring steps i-1, i the metric gets worse by at most max_drop:
    worse = v[i-1] - v[i] (v[i] - v[i-1] if lower is better); with relative=True
    worse / |v[i-1]| (a worsening from 0 counts as infinite)."""
    bound = units.parse_fraction(max_drop) if relative and isinstance(max_drop, str) else None
    limit = bound if bound is not None else _limit(curve, max_drop, "max_drop")
    if limit < 0:
        raise ValueError(f"max_drop {max_drop!r} must not be negative")
    v, sign = curve.values, (1.0 if curve.better == "higher" else -1.0)
    word = "drops" if sign > 0 else "rises"

    def size(i: int) -> float:
        worse = sign * (v[i - 1] - v[i])
        if not relative:
            return worse
        if v[i - 1] == 0:
            return math.inf if worse > 0 else 0.0
        return worse / abs(v[i - 1])

    def show(x: float) -> str:
        if relative:
            return "infinitely" if math.isinf(x) else f"{_g(x * 100)}%"
        return curve.fmt(x)

    def step(i: int) -> str:
        rel = " of its value" if relative else ""
        return (
            f"{word} by {show(size(i))}{rel} from {curve.fmt(v[i - 1])} at {curve.at(i - 1)}"
            f" to {curve.fmt(v[i])} at {curve.at(i)}"
        )

    lim = f"{_g(limit * 100)}% of its value" if relative else curve.fmt(limit)
    m = curve.metric
    bad = [i for i in range(1, len(v)) if size(i) > limit]
    if bad:
        text = f"{m} {'; '.join(step(i) for i in bad)}: more than {lim}"
        return _result(curve, "no_cliff", False, text, bad)
    worst = max(range(1, len(v)), key=size, default=None)
    if worst is None or size(worst) <= 0:
        largest = f"it never {word}"
    else:
        largest = f"largest: {show(size(worst))} from {curve.at(worst - 1)} to {curve.at(worst)}"
    return _result(
        curve,
        "no_cliff",
        True,
        f"{m} never {word} by more than {lim} between neighbouring steps ({largest})",
    )


def monotone(curve: Curve) -> CheckResult:
    """Some non-increasing curve (non-decreasing if lower is better) passes through every
    step's interval. Step i offends when its interval lies wholly on the better side of an
    earlier step j's: lo_i > hi_j (hi_i < lo_j if lower is better); j is the earlier step
    with the lowest hi (highest lo). Without intervals this is plain monotonicity."""
    sign = 1.0 if curve.better == "higher" else -1.0
    ivs = [curve.interval(i) for i in range(len(curve.values))]
    # in "goodness" (value * sign) the rule is always: lo_i <= min over j < i of hi_j
    good = [(lo, hi) if sign > 0 else (-hi, -lo) for lo, hi in ivs]
    has_iv = curve.intervals is not None or curve.counts is not None
    shape = "non-increasing" if sign > 0 else "non-decreasing"
    if curve.counts is not None:
        within = f" within its {_g(curve.confidence * 100)}% Clopper-Pearson intervals"
    else:
        within = " within its intervals" if has_iv else ""

    def show(i: int) -> str:
        lo, hi = ivs[i]
        iv = f" [{curve.fmt(lo)}, {curve.fmt(hi)}]" if has_iv else ""
        return f"{curve.fmt(curve.values[i])}{iv} at {curve.at(i)}"

    bad: list[tuple[int, int]] = []
    j = 0  # the earlier step with the lowest upper end (in goodness)
    for i in range(1, len(good)):
        if good[i][0] > good[j][1]:
            bad.append((i, j))
        if good[i][1] < good[j][1]:
            j = i
    m = curve.metric
    if bad:
        word = "rises" if sign > 0 else "falls"
        beyond = ", beyond the intervals" if has_iv else ""
        where = "; ".join(f"{word} from {show(j)} to {show(i)}" for i, j in bad)
        return _result(
            curve,
            "monotone",
            False,
            f"{m} is not {shape}{within}: {where}{beyond}",
            [i for i, _ in bad],
        )
    return _result(curve, "monotone", True, f"{m} is {shape}{within} over {len(good)} steps")


_monotone = monotone  # assert_graceful's parameter `monotone` hides the function
_no_cliff = no_cliff  # and `no_cliff` this one


def knee(curve: Curve, after: Stress = None) -> CheckResult:
    """The stress at which the metric first falls below half its baseline b = values[0]
    (rises above 2b if lower is better): with i the first such step, the point on the
    straight line from step i-1 to step i where it crosses the threshold, so
    stress[i-1] <= knee <= stress[i] (rounded to 12 significant digits, then kept within
    those two). None if it never does, or if b <= 0 (no halving).
    Passes unless `after` is given and knee <= after."""
    v, s, m = curve.values, curve.stress, curve.metric
    limit = curve.resolve(after)
    b = v[0]
    higher = curve.better == "higher"
    if b <= 0:
        text = f"{m} has no knee: its baseline at {curve.at(0)} is {curve.fmt(b)}"
        return _result(curve, "knee", True, text)
    t = b / 2 if higher else 2 * b
    what = (
        f"falls below half its baseline {curve.fmt(b)}"
        if higher
        else f"rises above twice its baseline {curve.fmt(b)}"
    )
    for i in range(1, len(v)):
        if (v[i] < t) if higher else (v[i] > t):
            frac = (t - v[i - 1]) / (v[i] - v[i - 1])
            # 12 significant digits: the knee between 10% and 20% is 15%, not 0.15000000000000002
            x = float(f"{s[i - 1] + frac * (s[i] - s[i - 1]):.12g}")
            x = min(max(x, min(s[i - 1], s[i])), max(s[i - 1], s[i]))
            at = f"{curve.axis}={format_stress(x, curve.unit)}"
            text = (
                f"{m} {what} ({curve.fmt(t)}) at {at}, interpolated between"
                f" {curve.fmt(v[i - 1])} at {curve.at(i - 1)}"
                f" and {curve.fmt(v[i])} at {curve.at(i)}"
            )
            passed = limit is None or not curve.before(x, limit)
            if limit is not None:
                bound = f"{curve.axis}={format_stress(limit, curve.unit)}"
                text += f"; {'after' if passed else 'not after'} {bound}"
            return CheckResult("knee", passed, text, (i,), (s[i],), x)
    stays = "at or above" if higher else "at or below"
    half = "half" if higher else "twice"
    text = (
        f"{m} has no knee: it stays {stays} {half} its baseline {curve.fmt(b)}"
        f" ({curve.fmt(t)}) up to {curve.at(len(v) - 1)}"
    )
    return _result(curve, "knee", True, text)


def assert_graceful(
    curve: Curve,
    floor: float | str | None = None,
    up_to: Stress = None,
    max_drop: float | str | None = None,
    monotone: bool = True,
    *,
    ceiling: float | str | None = None,
    relative: bool = False,
    knee_after: Stress = None,
    no_cliff: float | str | None = None,
) -> list[CheckResult]:
    """pytest helper: run the asked checks (floor and ceiling up to `up_to`, no_cliff with
    max_drop, monotone, knee after knee_after); AssertionError with one line per failed
    check, else the results. `no_cliff=` is another name for max_drop."""
    if no_cliff is not None:
        if max_drop is not None and max_drop != no_cliff:
            raise ValueError("give max_drop or no_cliff (the same check), not both")
        max_drop = no_cliff
    results = []
    if floor is not None:
        results.append(_bound(curve, floor, up_to, above=True))
    if ceiling is not None:
        results.append(_bound(curve, ceiling, up_to, above=False))
    if max_drop is not None:
        results.append(_no_cliff(curve, max_drop, relative=relative))
    if monotone:
        results.append(_monotone(curve))
    if knee_after is not None:
        results.append(knee(curve, after=knee_after))
    failed = [r.explanation for r in results if not r.passed]
    if failed:
        raise AssertionError("\n".join(failed))
    return results


# ---- the assertion form: "curve.METRIC CHECK ARGS" ----

_AT = re.compile(r"(?P<axis>[A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?P<value>\S+)")
_FORM = re.compile(
    r"^\s*curve(?:\[(?P<axis>[^\]\s]*)\])?\.(?P<path>\S+)\s+(?P<check>\S+)(?P<rest>.*?)\s*$"
)
_ARGS = {
    "floor": re.compile(r"\s+(?P<value>\S+)(?:\s+up_to\s+(?P<at>\S.*))?"),
    "ceiling": re.compile(r"\s+(?P<value>\S+)(?:\s+up_to\s+(?P<at>\S.*))?"),
    "no_cliff": re.compile(r"\s+(?P<value>\S+)(?P<relative>\s+relative)?"),
    "monotone": re.compile(r""),
    "knee": re.compile(r"(?:\s+after\s+(?P<at>\S.*))?"),
}
_USAGE = {
    "floor": "floor VALUE [up_to AXIS=STRESS]",
    "ceiling": "ceiling VALUE [up_to AXIS=STRESS]",
    "no_cliff": "no_cliff VALUE [relative]",
    "monotone": "monotone",
    "knee": "knee [after AXIS=STRESS]",
}


@dataclass(frozen=True)
class CurveAssertion:
    text: str
    metric: str
    check: str
    value: float | None = None  # floor/ceiling bound, no_cliff max_drop
    at: str | None = None  # "loss=10%": up_to for floor/ceiling, after for knee
    relative: bool = False
    axis: str | None = None  # "curve[delay]. ...": the sweep it judges (several sweeps)


def is_curve_assertion(text: object) -> bool:
    """`curve.METRIC ...` or `curve[AXIS].METRIC ...`."""
    return isinstance(text, str) and text.strip().startswith(("curve.", "curve["))


def parse_curve_assertion(text: str) -> CurveAssertion:
    """Raises ValueError with one line naming the assertion."""
    if not isinstance(text, str):
        raise ValueError(
            f"expected a string like 'curve.flows.cbr.delivery_ratio monotone', got {text!r}"
        )
    t = text.strip()
    m = _FORM.match(t)
    if not m:
        raise ValueError(
            f"{t!r} is not 'curve.METRIC CHECK ...' (CHECK one of {', '.join(CHECKS)}; "
            "e.g. 'curve.flows.cbr.delivery_ratio floor 90% up_to loss=10%')"
        )
    check = m.group("check")
    axis = m.group("axis")
    if axis is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", axis):
        raise ValueError(f"{t!r}: curve[AXIS]. names a sweep's axis (curve[loss].), got {axis!r}")
    if check not in _ARGS:
        raise ValueError(f"{t!r}: unknown check {check!r} (one of {', '.join(CHECKS)})")
    try:
        metric = verdict.format_path(verdict.parse_path(m.group("path")))
    except ValueError as exc:
        raise ValueError(f"{t!r}: {exc}") from None
    args = _ARGS[check].fullmatch(m.group("rest"))
    if not args:
        raise ValueError(f"{t!r}: expected 'curve.METRIC {_USAGE[check]}'")
    groups = args.groupdict()
    value: float | None = None
    relative = bool(groups.get("relative"))
    try:
        if groups.get("value") is not None:
            raw = groups["value"]
            if relative:
                value = units.parse_fraction(raw)
            else:
                parsed = verdict.parse_value(raw, _unit_key(metric))
                if isinstance(parsed, bool):
                    raise ValueError(f"{raw!r} must be a number, not true/false")
                value = parsed
            if check == "no_cliff" and value < 0:
                raise ValueError(f"a drop of {raw!r} must not be negative")
        at = groups.get("at")
        if at is not None:
            a = _AT.fullmatch(at.strip())
            if not a:
                raise ValueError(f"{at.strip()!r} is not AXIS=STRESS (e.g. loss=10%)")
            parse_stress(a.group("value"))
            at = f"{a.group('axis')}={a.group('value')}"
    except ValueError as exc:
        raise ValueError(f"{t!r}: {exc}") from None
    return CurveAssertion(t, metric, check, value, at, relative, axis)


def evaluate(assertion: str | CurveAssertion, curves: Mapping[str, Curve]) -> dict[str, Any]:
    """Judge one assertion against the curves by metric path; a JSON-ready check like
    verdict.check's. A bad assertion string raises ValueError; a curve that is missing,
    or a stress on another axis, fails the check with an `error`."""
    a = parse_curve_assertion(assertion) if isinstance(assertion, str) else assertion
    out: dict[str, Any] = {"assert": a.text, "metric": a.metric, "check": a.check}
    curve = curves.get(a.metric)
    if curve is None:
        have = ", ".join(sorted(curves)) or "none"
        out.update(passed=False, error=f"no curve for {a.metric!r} (have: {have})")
        return out
    try:
        if a.check in ("floor", "ceiling"):
            assert a.value is not None
            result = _bound(curve, a.value, a.at, above=a.check == "floor")
        elif a.check == "no_cliff":
            assert a.value is not None
            result = no_cliff(curve, a.value, relative=a.relative)
        elif a.check == "monotone":
            result = monotone(curve)
        else:
            result = knee(curve, after=a.at)
    except ValueError as exc:
        out.update(passed=False, error=f"{a.text!r}: {exc}")
        return out
    out.update(result.to_dict())
    return out
