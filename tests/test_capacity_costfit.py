"""benchmarks/calibrate.py's fits (meshstress.model.costfit, pure): from measurements to
per-unit costs."""

from __future__ import annotations

import pytest

from meshstress.model import costfit


def test_per_interface_fit_goes_through_both_grids() -> None:
    a, b = costfit.per_interface_fit((16, 2e-3), (64, 2.48e-3))
    assert b == pytest.approx(1e-5)
    assert a == pytest.approx(2e-3 - 16e-5)
    assert a + b * 64 == pytest.approx(2.48e-3)


def test_a_cost_that_falls_with_size_is_noise_not_a_negative_slope() -> None:
    a, b = costfit.per_interface_fit((16, 3e-3), (64, 2e-3))
    assert (a, b) == (3e-3, 0.0)
    with pytest.raises(ValueError, match="same size"):
        costfit.per_interface_fit((16, 1.0), (16, 2.0))


def test_per_hop_is_the_difference_of_medians_over_the_hops_between() -> None:
    near = [5e-6, 5.2e-6, 9e-6]  # one outlier round: the median ignores it
    far = [16e-6, 15e-6, 15.5e-6]
    assert costfit.per_hop(near, far, 1, 16) == pytest.approx((15.5e-6 - 5.2e-6) / 15)
    # noise larger than the forwarding: negative, for the caller to say so
    assert costfit.per_hop([2e-6], [1e-6], 1, 16) < 0
    with pytest.raises(ValueError):
        costfit.per_hop(near, far, 16, 16)
    with pytest.raises(ValueError):
        costfit.per_hop([], far, 1, 16)


def test_a_packets_ends_are_the_one_hop_cost_less_that_hop() -> None:
    assert costfit.packet_end(65e-6, 1e-6) == pytest.approx(64e-6)
    assert costfit.packet_end(65e-6, -1e-6) == pytest.approx(65e-6)  # a noisy hop: none
    assert costfit.packet_end(1e-6, 2e-6) == 0.0


def breakdown(window: float, **cores: float) -> dict:  # type: ignore[type-arg]
    return {"window_s": window, "by": {k: {"cpu_s": v * window} for k, v in cores.items()}}


def test_lab_routing_cores_are_the_busy_time_less_ours_and_the_idle_window() -> None:
    b = breakdown(10.0, routing=0.0, recorder=0.01, meshstress=0.02, softirq=0.03, other=0.05)
    assert costfit.private_busy_cores(b) == pytest.approx(0.08)  # not the measurer's 0.03
    assert costfit.lab_routing_cores(b, idle_cores=0.01) == pytest.approx(0.07)
    assert costfit.lab_routing_cores(b, idle_cores=0.5) == 0.0
    with pytest.raises(ValueError):
        costfit.private_busy_cores(breakdown(0.0))


def test_global_list_fit_goes_through_both_grids() -> None:
    b, c = 1e-6, 2e-7
    small = (16, 48, 48 * (b * 16 + c * 16 * 48))
    big = (64, 224, 224 * (b * 64 + c * 64 * 224))
    got = costfit.global_list_fit(small, big)
    assert got == pytest.approx((b, c))


def test_global_list_fit_never_gives_a_negative_coefficient() -> None:
    # the lab's batman-adv: faster than n x I^2 between the grids: no linear part
    b, c = costfit.global_list_fit((16, 48, 0.0032), (64, 224, 0.6244))
    assert b == 0.0 and c == pytest.approx(0.6244 / (64 * 224**2))
    # slower than n x I between the grids: no global-list part
    b, c = costfit.global_list_fit((16, 48, 0.5), (64, 224, 0.6))
    assert c == 0.0 and b == pytest.approx(0.6 / (64 * 224))
    with pytest.raises(ValueError):
        costfit.global_list_fit((16, 48, 0.1), (16, 48, 0.2))


def test_flow_fit_separates_a_flows_own_cost_from_its_packets() -> None:
    flow, per_packet = costfit.flow_fit((200, 0.005 + 200 * 35e-6), (2000, 0.005 + 2000 * 35e-6))
    assert flow == pytest.approx(0.005) and per_packet == pytest.approx(35e-6)
    # noise: cheaper at the higher rate; all per packet through the higher rate
    assert costfit.flow_fit((200, 0.02), (2000, 0.01)) == (0.0, pytest.approx(0.01 / 2000))
    # steeper than through 0: no negative per-flow cost either
    assert costfit.flow_fit((200, 0.001), (2000, 0.1)) == (0.0, pytest.approx(0.1 / 2000))
    with pytest.raises(ValueError):
        costfit.flow_fit((2000, 0.1), (200, 0.01))
