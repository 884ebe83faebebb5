"""meshstress.judge.stats and the design of the fidelity checks (pure)."""

from __future__ import annotations

import random

import pytest

from meshstress import fidelity
from meshstress.fidelity import Stream
from meshstress.judge import stats


def test_z() -> None:
    assert stats.z(0.99) == pytest.approx(2.5758, abs=1e-4)
    assert stats.z(0.95) == pytest.approx(1.9600, abs=1e-4)
    with pytest.raises(ValueError):
        stats.z(1.0)


def test_binom_cdf_small_exact() -> None:
    # Binomial(4, 0.5): 1, 4, 6, 4, 1 over 16
    assert stats.binom_cdf(1, 4, 0.5) == pytest.approx(5 / 16)
    assert stats.binom_cdf(-1, 4, 0.5) == 0.0 and stats.binom_cdf(4, 4, 0.5) == 1.0


@pytest.mark.parametrize("n,p", [(2000, 0.01), (2000, 0.05), (2000, 0.5), (50, 0.3), (10, 0.99)])
def test_binomial_interval_holds_99_percent_and_no_more_than_needed(n: int, p: float) -> None:
    lo, hi = stats.binomial_interval(n, p)
    inside = stats.binom_cdf(hi, n, p) - stats.binom_cdf(lo - 1, n, p)
    assert inside >= 0.99
    # each tail holds at most 0.5%, and one count less on either side would break that
    assert stats.binom_cdf(lo - 1, n, p) <= 0.005 < stats.binom_cdf(lo, n, p)
    assert stats.binom_cdf(hi - 1, n, p) < 0.995 <= stats.binom_cdf(hi, n, p) + 1e-12


def test_binomial_interval_known_values_and_edges() -> None:
    assert stats.binomial_interval(2000, 0.05) == (76, 126)  # mean 100, sd 9.75
    assert stats.binomial_interval(2000, 0.0) == (0, 0)
    assert stats.binomial_interval(2000, 1.0) == (2000, 2000)
    with pytest.raises(ValueError):
        stats.binomial_interval(10, 1.5)


def test_clopper_pearson() -> None:
    lo, hi = stats.clopper_pearson(0, 10, 0.95)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-6)  # 0.3085
    lo, hi = stats.clopper_pearson(10, 10, 0.95)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10), abs=1e-6)
    lo, hi = stats.clopper_pearson(100, 2000)
    assert lo < 0.05 < hi and hi - lo < 0.03


def test_quantile_iqr_median() -> None:
    assert stats.quantile([3, 1, 2, 4], 0.5) == 2.5 == stats.median([4, 3, 2, 1])
    assert stats.iqr(list(range(101))) == 50


# --- the design: at the chosen counts, neighbouring settings are told apart ----------


def _band(n: int, p: float, factor: float = 1.0) -> tuple[int, int]:
    return stats.binomial_interval(n, min(1.0, p * factor), fidelity.CONFIDENCE)


@pytest.mark.parametrize("i", range(len(fidelity.LOSS) - 1))
def test_adjacent_loss_settings_have_disjoint_intervals(i: int) -> None:
    n = fidelity.LOSS_PACKETS
    a, b = fidelity.LOSS[i], fidelity.LOSS[i + 1]
    assert stats.separated(_band(n, a), _band(n, b)), (a, b, _band(n, a), _band(n, b))


def test_two_thousand_packets_cannot_tell_one_percent_from_two() -> None:
    """Why the loss list's neighbours are its adjacent settings: at n = 2000 the 99.9%
    intervals of 1% and 2% overlap; it takes about 7000 packets."""
    assert not stats.separated(_band(2000, 0.01), _band(2000, 0.02))
    assert stats.separated(_band(7000, 0.01), _band(7000, 0.02))


@pytest.mark.parametrize(
    "p,factor",
    [(fidelity.REORDER, 1.0), (fidelity.DUPLICATE, 1.0), (fidelity.CORRUPT, 0.97), (0.05, 1.0)],
)
def test_half_and_double_have_disjoint_intervals(p: float, factor: float) -> None:
    n = fidelity.PACKETS
    for q in (p / 2, p * 2):
        assert stats.separated(_band(n, p, factor), _band(n, q, factor)), (p, q)


def test_burst_count_resolves_twenty_percent() -> None:
    """About n * loss / B bursts: the 99% interval of their mean lies inside +-20%."""
    m = round(fidelity.BURST_PACKETS * fidelity.BURST_LOSS / fidelity.BURST)
    lo, hi = stats.mean_interval(fidelity.BURST, stats.geometric_sd(fidelity.BURST), m)
    band = stats.relative_band(fidelity.BURST, fidelity.BURST_TOLERANCE)
    assert band[0] <= lo and hi <= band[1], (lo, hi, band)
    for q in (fidelity.BURST / 2, fidelity.BURST * 2):
        assert stats.separated((lo, hi), stats.relative_band(q, fidelity.BURST_TOLERANCE))


# --- rows from synthetic streams: a wrong setting fails -------------------------------


def _stream(name: str, n: int, lost: set[int], latency_ms: float = 0.1) -> Stream:
    sent = [i * 0.002 for i in range(n)]
    arrivals = [(i, t, t + latency_ms / 1000) for i, t in enumerate(sent) if i not in lost]
    return Stream(name=name, size=fidelity.SIZE, sent=sent, arrivals=arrivals)


def test_binomial_row_passes_its_setting_and_fails_the_neighbour() -> None:
    rng = random.Random(3)
    lost = {i for i in range(2000) if rng.random() < 0.05}
    s = _stream("loss5", 2000, lost)
    right = fidelity.binomial_row("loss 5%", s.n, s.lost(), 0.05, [0.10], "")
    assert right.ok and right.neighbour_ok() == [False]
    wrong = fidelity.binomial_row("loss 10%", s.n, s.lost(), 0.10, [0.05], "")
    assert not wrong.ok and wrong.neighbour_ok() == [True]


def test_rate_of_counts_only_backlogged_gaps_after_the_bucket() -> None:
    """Two busy spells of 10 Mbit/s frames (1.2112 ms apart) whose datagrams were all
    sent at once, each opened by 5 frames of the bucket at once, and a slow trickle in
    between (sent just before it arrived: not backlogged, not counted)."""
    gap = 1514 * 8 / 10e6
    arrivals = []
    seq = 0
    for start in (0.0, 1.0):
        for k in range(5):  # the bucket: at once
            arrivals.append((seq, start - 0.01, start + k * 1e-6))
            seq += 1
        for k in range(200):
            arrivals.append((seq, start - 0.01, start + 5e-6 + (k + 1) * gap))
            seq += 1
    for k in range(50):  # the trickle: each sent 0.1 ms before it arrived
        t = 0.5 + k * 0.005
        arrivals.append((seq, t - 1e-4, t))
        seq += 1
    s = Stream("r", fidelity.RATE_SIZE, sent=[0.0] * seq, arrivals=arrivals)
    rate, pairs = fidelity.rate_of(s, skip=5)
    assert pairs == 2 * 199 and rate == pytest.approx(10e6, rel=1e-6)
    rate0, _ = fidelity.rate_of(s, skip=0)
    assert rate0 is not None and rate0 > 10.1e6  # the bucket's frames would inflate it
    assert fidelity.bucket_frames(10.0) == 4 and fidelity.bucket_frames(100.0) == 34
