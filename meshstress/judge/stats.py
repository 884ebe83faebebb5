"""Small statistics for checking measurements against configured values (pure: no I/O).

The question these answer is "is what we measured consistent with what was configured,
and would it have been consistent with the neighbouring setting too?":

- `binomial_interval(n, p)`: the central interval of counts [lo, hi] that a
  Binomial(n, p) count falls into with at least the given probability (99% by default).
  A measured count outside it rejects p at that level (a false alarm for a correct p
  happens with probability at most 1 - confidence).
- `clopper_pearson(k, n)`: the exact confidence interval for p after seeing k of n.
- `mean_interval(mean, sd, m)`: normal approximation for the mean of m samples.
- `separated(a, b)`: whether two intervals are disjoint (the neighbouring setting's
  interval must not contain what this setting produces).
- `bootstrap_quantile(values, q)`: a seeded percentile-bootstrap interval for a quantile
  of per-packet records (a p99 latency, say).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from statistics import NormalDist

CONFIDENCE = 0.99


def z(confidence: float = CONFIDENCE) -> float:
    """The two-sided normal quantile: 2.576 for 99%."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def _check(n: int, p: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"p must be within 0..1, got {p!r}")


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p). Sums only the terms within mean +- (40 sd + 200):
    by Bernstein's inequality, P(|X - np| >= t) <= 2 exp(-t^2 / (2 (sd^2 + t/3))), and at
    that t the exponent is at least 300, so what is left out weighs below 1e-130. Costs
    O(sd) instead of O(k): Clopper-Pearson for 95000 of 100000 takes a fraction of a second."""
    _check(n, p)
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    mean = n * p
    reach = 40.0 * math.sqrt(n * p * (1.0 - p)) + 200.0
    first = max(0, math.floor(mean - reach))
    last = min(k, math.ceil(mean + reach))
    return min(1.0, math.fsum(math.exp(_log_pmf(i, n, p)) for i in range(first, last + 1)))


def binomial_interval(n: int, p: float, confidence: float = CONFIDENCE) -> tuple[int, int]:
    """Counts [lo, hi] with P(lo <= X <= hi) >= confidence for X ~ Binomial(n, p):
    lo is the smallest k with P(X <= k) > alpha/2, hi the smallest with
    P(X <= k) >= 1 - alpha/2 (each tail holds at most alpha/2)."""
    _check(n, p)
    z(confidence)
    alpha = 1.0 - confidence
    lo: int | None = None
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.exp(_log_pmf(k, n, p))
        if lo is None and cdf > alpha / 2:
            lo = k
        if cdf >= 1.0 - alpha / 2 - 1e-12:
            return (k if lo is None else lo), k
    return (n if lo is None else lo), n


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) confidence interval for p after k successes in n."""
    _check(n, 0.5)
    if not 0 <= k <= n:
        raise ValueError(f"k must be within 0..{n}, got {k!r}")
    alpha = 1.0 - confidence
    z(confidence)

    def solve(f: Callable[[float], float], target: float) -> float:
        lo_p, hi_p = 0.0, 1.0  # f decreasing in p
        for _ in range(60):
            mid = (lo_p + hi_p) / 2
            if f(mid) > target:
                lo_p = mid
            else:
                hi_p = mid
        return (lo_p + hi_p) / 2

    # lower: P(X >= k; p) = alpha/2, i.e. P(X <= k-1; p) = 1 - alpha/2
    lower = 0.0 if k == 0 else solve(lambda q: binom_cdf(k - 1, n, q), 1 - alpha / 2)
    # upper: P(X <= k; p) = alpha/2
    upper = 1.0 if k == n else solve(lambda q: binom_cdf(k, n, q), alpha / 2)
    return lower, upper


def mean_interval(
    mean: float, sd: float, m: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Normal approximation: the sample mean of m values with this mean and standard
    deviation lies within mean +- z * sd / sqrt(m) with the given probability."""
    if m < 1:
        raise ValueError(f"m must be at least 1, got {m!r}")
    half = z(confidence) * sd / math.sqrt(m)
    return mean - half, mean + half


def geometric_sd(mean: float) -> float:
    """Standard deviation of a geometric length (support 1, 2, ...) with this mean: a
    Gilbert burst that ends with probability r = 1/mean after each packet."""
    if mean < 1.0:
        raise ValueError(f"a geometric length has mean >= 1, got {mean!r}")
    return math.sqrt(mean * (mean - 1.0))


def relative_band(value: float, tolerance: float) -> tuple[float, float]:
    """[value * (1 - tolerance), value * (1 + tolerance)]."""
    return value * (1.0 - tolerance), value * (1.0 + tolerance)


def inside(x: float, band: tuple[float, float]) -> bool:
    return band[0] <= x <= band[1]


def separated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """The two closed intervals do not overlap."""
    return a[1] < b[0] or b[1] < a[0]


def sample_sd(values: list[float]) -> float | None:
    """Sample standard deviation (n - 1), None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def bootstrap_quantile(
    values: list[float],
    q: float,
    confidence: float = CONFIDENCE,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval for the q-quantile (0..1) of `values`
    (per-packet records, e.g. one-way delays): draw `resamples` samples of len(values)
    with replacement from random.Random(seed), take each one's `quantile(sample, q)`,
    and return the (1 - confidence)/2 and (1 + confidence)/2 quantiles of those
    estimates. Deterministic for a given seed, whatever the order of the values; costs
    resamples * len(values) draws."""
    if not values:
        raise ValueError("bootstrap of no values")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples!r}")
    z(confidence)
    rng = random.Random(seed)
    s = sorted(values)  # the order the records came in does not matter
    estimates = [quantile(rng.choices(s, k=len(s)), q) for _ in range(resamples)]
    alpha = 1.0 - confidence
    return quantile(estimates, alpha / 2), quantile(estimates, 1.0 - alpha / 2)


def median(values: list[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0..1, got {q!r}")
    s = sorted(values)
    rank = q * (len(s) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def iqr(values: list[float]) -> float:
    """Interquartile range: q75 - q25 (J for a uniform distribution on [-J, J])."""
    return quantile(values, 0.75) - quantile(values, 0.25)
