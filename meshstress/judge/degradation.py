"""A sweep's measurements: per-window metrics, per-step points with confidence, curves,
and the degradation verdict (pure: no I/O). docs/degradation.md ("Sweeps").

What each window measured is kept as raw material that pools over repeats:
- `Ratio(k, n)`: k of n (delivery). Pooled: the counts add up; the interval is
  Clopper-Pearson (stats.clopper_pearson).
- `Samples(values, quantiles)`: per-packet values (one-way delays, RTTs). Pooled: the
  values of every repeat together; each quantile with a seeded bootstrap interval over
  those values (`bootstrap_quantiles`: the method of stats.bootstrap_quantile, one set
  of resamples shared by the quantiles).
- `Rate(units, seconds, bins)`: an amount over time (bits). Pooled: sum over sum; the
  interval a bootstrap of the mean over the per-bin values when there are bins (tcp's
  100 ms receiver bins), else none.

Sources: flows (`flow_raw`), and any other provider with the same shape
(`StepProvider`: (start, end) in monotonic seconds -> {metric: raw}); the process
metrics of `[[process]]` entries plug in there (`measure_windows(..., providers=)`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshstress.judge import curves, stats

if TYPE_CHECKING:
    from meshstress.model.sweep import Sweep, Window
    from meshstress.traffic.flows import FlowRecord

RESAMPLES = 1000
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
# the curve metrics of each flow kind (after "flows.NAME."); the first is its main one,
# which the default verdict and the degradation table lead with
CURVE_METRICS: dict[str, tuple[str, ...]] = {
    "udp": (
        "delivery_ratio",
        "latency_ms.p50",
        "latency_ms.p95",
        "latency_ms.p99",
        "throughput_bps",
    ),
    "ping": ("delivery_ratio", "rtt_ms.p50", "rtt_ms.p95", "rtt_ms.p99"),
    "tcp": ("goodput_bps",),
    "rr": ("success_ratio", "latency_ms.p50", "latency_ms.p95", "latency_ms.p99"),
}


@dataclass(frozen=True)
class Ratio:
    k: int
    n: int


@dataclass(frozen=True)
class Samples:
    values: tuple[float, ...]
    prefix: str  # "latency_ms": metrics prefix.p50 ...
    quantiles: Mapping[str, float] = field(default_factory=lambda: dict(QUANTILES))


@dataclass(frozen=True)
class Rate:
    amount: float  # bits
    seconds: float
    bins: tuple[float, ...] = ()  # per-bin rates (bit/s), for an interval


@dataclass(frozen=True)
class Mean:
    """Values whose mean is the metric (a process's numbers that are not 0/1 flags)."""

    values: tuple[float, ...]


Raw = Ratio | Samples | Rate | Mean
# what a metric source gives for one window: (start, end) monotonic -> {metric: raw}
StepProvider = Callable[[float, float], Mapping[str, Raw]]


# --- a window's raw material -------------------------------------------------------------


def flow_raw(record: FlowRecord, window: tuple[float, float]) -> dict[str, Raw]:
    """A flow's raw material in a window [start, end) (monotonic): packets sent inside it
    and their fate; tcp: the receiver's bins starting inside it."""
    from meshstress.judge.metrics import _first_arrivals, windowed

    if record.spec.kind == "rr":
        return rr_raw(record, window)
    w = windowed(record, window)
    if record.spec.kind == "tcp":
        per = [n * 8 / w.bin_s for _, n in w.bins]
        seconds = max(0.0, w.t_end - w.t_start)
        # bins without a byte are not written: count them as zeros
        slots = max(len(per), math.ceil(seconds / w.bin_s - 1e-9))
        per += [0.0] * (slots - len(per))
        return {"goodput_bps": Rate(sum(n * 8 for _, n in w.bins), seconds, tuple(per))}
    seqs = {s for s, _ in w.sent}
    first = _first_arrivals(w, seqs)
    delays = tuple((tr - ts) * 1000.0 for _, ts, tr in first)
    prefix = "rtt_ms" if record.spec.kind == "ping" else "latency_ms"
    out: dict[str, Raw] = {
        "delivery_ratio": Ratio(len(first), len(seqs)),
        prefix: Samples(delays, prefix),
    }
    if record.spec.kind == "udp":
        seconds = window[1] - window[0]
        out["throughput_bps"] = Rate(len(first) * record.spec.size * 8.0, seconds)
    return out


def rr_raw(record: FlowRecord, window: tuple[float, float]) -> dict[str, Raw]:
    """An rr flow's requests scheduled in [start, end): answered of decided (the counts
    behind `success_ratio`), and the latency of each answered one from its first send
    (as meshstress.judge.metrics reports them for the whole flow)."""
    from meshstress.judge.metrics import rr_window

    reqs = rr_window(record, window).requests
    decided = [q for q in reqs if q.decided]
    ok = [q for q in reqs if q.outcome == "ok" and q.ok_attempt is not None]
    latency = tuple(
        (q.t_done - q.sends[0]) * 1000.0
        for q in ok
        if q.t_done is not None and (q.ok_attempt or 0) < len(q.sends)
    )
    return {
        "success_ratio": Ratio(len(ok), len(decided)),
        "latency_ms": Samples(latency, "latency_ms"),
    }


def measure_windows(
    windows: Sequence[Window],
    t0: float,
    records: Mapping[str, FlowRecord],
    providers: Mapping[str, StepProvider] | None = None,
) -> list[dict[str, Raw]]:
    """Per window (in the order given): {"flows.NAME.METRIC": raw} over its measured part
    (start + settle .. end, seconds after t0). `providers` {source: provider} add their
    metrics as "SOURCE.METRIC" (e.g. "processes.client": the [[process]] hook)."""
    out: list[dict[str, Raw]] = []
    for w in windows:
        a, b = (t0 + x for x in w.measured)
        got: dict[str, Raw] = {}
        for name, rec in records.items():
            for metric, raw in flow_raw(rec, (a, b)).items():
                got[f"flows.{name}.{metric}"] = raw
        for source, provider in (providers or {}).items():
            for metric, raw in provider(a, b).items():
                got[f"{source}.{metric}"] = raw
        out.append(got)
    return out


# --- pooling and intervals ----------------------------------------------------------------


def bootstrap_quantiles(
    values: Sequence[float],
    qs: Mapping[str, float],
    confidence: float = stats.CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """stats.bootstrap_quantile's percentile bootstrap for several quantiles at once:
    the same resamples (random.Random(seed) over the sorted values) serve every q."""
    if not values:
        raise ValueError("bootstrap of no values")
    rng = random.Random(seed)
    s = sorted(values)
    est: dict[str, list[float]] = {name: [] for name in qs}
    for _ in range(resamples):
        sample = sorted(rng.choices(s, k=len(s)))
        for name, q in qs.items():
            est[name].append(stats.quantile(sample, q))
    alpha = 1.0 - confidence
    return {
        name: (stats.quantile(e, alpha / 2), stats.quantile(e, 1 - alpha / 2))
        for name, e in est.items()
    }


def bootstrap_mean(
    values: Sequence[float],
    confidence: float = stats.CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of `values` (seeded)."""
    if not values:
        raise ValueError("bootstrap of no values")
    rng = random.Random(seed)
    s = sorted(values)
    means = sorted(math.fsum(rng.choices(s, k=len(s))) / len(s) for _ in range(resamples))
    alpha = 1.0 - confidence
    return stats.quantile(means, alpha / 2), stats.quantile(means, 1 - alpha / 2)


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def pool(raws: Sequence[Raw], seed: int = 0) -> dict[str, dict[str, Any]]:
    """One step's raw material over its repeats -> {suffix: {"value", "interval", ...}}:
    "" for a Ratio or Rate, ".p50" ... for Samples. A metric without data has value None."""
    first = raws[0]
    if isinstance(first, Ratio):
        k = sum(r.k for r in raws if isinstance(r, Ratio))
        n = sum(r.n for r in raws if isinstance(r, Ratio))
        if n == 0:
            return {"": {"value": None, "k": 0, "n": 0, "interval": None}}
        lo, hi = stats.clopper_pearson(k, n)
        return {"": {"value": _r(k / n), "k": k, "n": n, "interval": [_r(lo), _r(hi)]}}
    if isinstance(first, Mean):
        vals = [v for r in raws if isinstance(r, Mean) for v in r.values]
        if not vals:
            return {"": {"value": None, "n": 0, "interval": None}}
        iv = [_r(x) for x in bootstrap_mean(vals, seed=seed)] if len(vals) > 1 else None
        return {"": {"value": _r(math.fsum(vals) / len(vals)), "n": len(vals), "interval": iv}}
    if isinstance(first, Rate):
        amount = sum(r.amount for r in raws if isinstance(r, Rate))
        seconds = sum(r.seconds for r in raws if isinstance(r, Rate))
        bins = [b for r in raws if isinstance(r, Rate) for b in r.bins]
        if seconds <= 0:
            return {"": {"value": None, "interval": None}}
        iv = [_r(x) for x in bootstrap_mean(bins, seed=seed)] if len(bins) > 1 else None
        return {"": {"value": _r(amount / seconds), "interval": iv, "seconds": _r(seconds)}}
    values = [v for r in raws if isinstance(r, Samples) for v in r.values]
    out: dict[str, dict[str, Any]] = {}
    ivs = bootstrap_quantiles(values, first.quantiles, seed=seed) if values else {}
    for name, q in first.quantiles.items():
        if not values:
            out[f".{name}"] = {"value": None, "n": 0, "interval": None}
            continue
        lo, hi = ivs[name]
        out[f".{name}"] = {
            "value": _r(stats.quantile(values, q)),
            "n": len(values),
            "interval": [_r(lo), _r(hi)],
        }
    return out


def points(
    sw: Sweep, windows: Sequence[Window], raw: Sequence[Mapping[str, Raw]]
) -> list[dict[str, Any]]:
    """Per step (pooled over its repeats): {"step", "stress", "text", "metrics":
    {"flows.cbr.delivery_ratio": {"value", "interval", "k", "n"}, "flows.cbr.latency_ms.p99":
    {...}, ...}}."""
    out = []
    for k, text in enumerate(sw.texts()):
        mine = [raw[i] for i, w in enumerate(windows) if w.step == k]
        metrics: dict[str, Any] = {}
        names = list(dict.fromkeys(m for got in mine for m in got))
        for m in names:
            pooled = pool([got[m] for got in mine if m in got], seed=sw.seed + k)
            for suffix, entry in pooled.items():
                metrics[m + suffix] = entry
        out.append({"step": k, "stress": sw.values[k], "text": text, "metrics": metrics})
    return out


def curve_dicts(sw: Sweep, pts: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{metric: curve as JSON}: the steps where the metric has a value (the others under
    "missing"), their stress, values, intervals and which way is better."""
    out: dict[str, dict[str, Any]] = {}
    names = list(dict.fromkeys(m for p in pts for m in p["metrics"]))
    for m in names:
        stress, values, ivs, missing = [], [], [], []
        for p in pts:
            e = p["metrics"].get(m)
            if e is None or e.get("value") is None:
                missing.append(p["text"])
                continue
            stress.append(p["stress"])
            values.append(e["value"])
            iv = e.get("interval")
            ivs.append(list(iv) if iv else [e["value"], e["value"]])
        if not values:
            continue
        out[m] = {
            "axis": sw.axis,
            "unit": sw.unit,
            "stress": stress,
            "values": values,
            "intervals": ivs,
            "better": curves.guess_better(m),
            "missing": missing,
        }
    return out


def curve_of(metric: str, d: Mapping[str, Any]) -> curves.Curve:
    return curves.Curve(
        axis=d["axis"],
        stress=d["stress"],
        values=d["values"],
        unit=d["unit"],
        metric=metric,
        intervals=[tuple(iv) for iv in d["intervals"]],
        better=d["better"],
    )


# --- the verdict ----------------------------------------------------------------------------


def default_assertions(flows: Mapping[str, str], axis: str | None = None) -> list[str]:
    """With no curve assertion given: for each flow ({name: kind}) its main metric
    (delivery_ratio; tcp: goodput_bps) `monotone` (within its intervals) and its `knee`
    (reported; it passes). `axis`: name the sweep (`curve[AXIS].`, several sweeps)."""
    out = []
    head = f"curve[{axis}]." if axis else "curve."
    for name, kind in flows.items():
        main = CURVE_METRICS.get(kind, ("delivery_ratio",))[0]
        out += [f"{head}flows.{name}.{main} monotone", f"{head}flows.{name}.{main} knee"]
    return out


def sweeps_of(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A results dict's sweeps in time order: `sweeps` (several), or `sweep` (one), or []."""
    many = results.get("sweeps")
    if isinstance(many, list):
        return [d for d in many if isinstance(d, Mapping)]
    one = results.get("sweep")
    return [one] if isinstance(one, Mapping) else []


def judge(
    assertions: Sequence[str | curves.CurveAssertion],
    curve_json: Mapping[str, Mapping[str, Any]],
    default: bool = False,
) -> list[dict[str, Any]]:
    """Curve assertions against the curves of results.json's sweep; checks like the plain
    ones (assert, metric, passed) plus explanation (and value for a knee)."""
    built: dict[str, curves.Curve] = {}
    errors: dict[str, str] = {}
    for m, d in curve_json.items():
        try:
            built[m] = curve_of(m, d)
        except ValueError as exc:
            errors[m] = str(exc)
    out = []
    for a in assertions:
        check = curves.evaluate(a, built)
        if check.get("metric") in errors:
            check["error"] = errors[check["metric"]]
        if default:
            check["default"] = True
        out.append(check)
    return out
