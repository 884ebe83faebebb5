"""From benchmarks/calibrate.py's measurements to per-unit costs (meshstress.model.capacity).
Pure: numbers in, numbers out.

    a, b = per_interface_fit((16, 0.0021), (64, 0.0026))   # cores per interface: a + b x nodes
    b, c = global_list_fit((16, 48, 0.007), (64, 224, 0.62))  # b x n + c x n x interfaces
    hop = per_hop([65e-6, 66e-6], [101e-6, 99e-6], 1, 16)   # CPU seconds per packet per hop
    lab_routing_cores(breakdown, idle_cores)                # a private machine's busy time
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# CpuMeter categories that are the measuring process itself, not what it measures
MEASURER = ("recorder", "meshstress")


def per_interface_fit(small: tuple[int, float], big: tuple[int, float]) -> tuple[float, float]:
    """(a, b) with cost per interface = a + b x nodes through two grids, each given as
    (nodes, cores per interface). A cost that fell with size (noise) gives b = 0 and a
    the smaller grid's figure; neither is ever below 0."""
    (n0, c0), (n1, c1) = small, big
    if n1 == n0:
        raise ValueError("two grids of the same size: no slope")
    b = max(0.0, (c1 - c0) / (n1 - n0))
    return max(0.0, c0 - b * n0), b


def global_list_fit(
    small: tuple[int, int, float], big: tuple[int, int, float]
) -> tuple[float, float]:
    """(b, c) with cost per interface = b x nodes + c x nodes x interfaces, through two
    grids given as (nodes, interfaces, cores in all). The c term: batman-adv (as in the
    lab's 6.1 kernel) walks one global list of all its interfaces, every namespace's, for
    each OGM it receives (batadv_is_my_mac and others): each of the n originators' OGMs
    is received on each of the I interfaces and walks I entries, n x I^2 in all. A
    coefficient that would be negative is 0, and the other goes through the big grid."""
    (n0, i0, c0), (n1, i1, c1) = small, big
    # c0 = b n0 i0 + c n0 i0^2 ; c1 = b n1 i1 + c n1 i1^2
    det = n0 * i0 * n1 * i1**2 - n0 * i0**2 * n1 * i1
    if det == 0:
        raise ValueError("two grids of the same size: no fit")
    b = (c0 * n1 * i1**2 - c1 * n0 * i0**2) / det
    c = (n0 * i0 * c1 - n1 * i1 * c0) / det
    if b < 0:
        return 0.0, max(0.0, c1 / (n1 * i1**2))
    if c < 0:
        return max(0.0, c1 / (n1 * i1)), 0.0
    return b, c


def flow_fit(low: tuple[float, float], high: tuple[float, float]) -> tuple[float, float]:
    """(cores per flow, CPU seconds per packet) through a flow's cost at two rates, each
    given as (pps, the agents' cores). Neither below 0: a cost that fell with the rate
    (noise) is all per packet, through the higher rate."""
    (p0, c0), (p1, c1) = low, high
    if p1 <= p0:
        raise ValueError("the high rate must be higher than the low one")
    per_packet = (c1 - c0) / (p1 - p0)
    flow = c0 - per_packet * p0
    if per_packet < 0 or flow < 0:
        return 0.0, max(0.0, c1 / p1)
    return flow, per_packet


def per_hop(near: Sequence[float], far: Sequence[float], near_hops: int, far_hops: int) -> float:
    """CPU seconds per packet per hop: the difference of the medians of the per-packet
    costs of the same sender to a node `far_hops` away and one `near_hops` away (taken
    in alternating rounds), over the hops between. Not clamped: a negative figure is
    noise larger than the forwarding, and the caller says so."""
    if far_hops <= near_hops:
        raise ValueError("the far node must be more hops away than the near one")
    if not near or not far:
        raise ValueError("no rounds")
    return (statistics.median(far) - statistics.median(near)) / (far_hops - near_hops)


def packet_end(per_packet: float, hops_cost: float) -> float:
    """A packet's cost at its ends (the agents' send and receive), from a flow measured
    by the agents' CPU per packet (which holds the path's forwarding too: the kernel
    runs it in the sender's context) less the path's hops (`hops_cost`: hops x the
    per-hop cost; a negative, noisy per-hop figure counts as none). Never below 0."""
    return max(0.0, per_packet - max(0.0, hops_cost))


def lab_routing_cores(breakdown: Mapping[str, Any], idle_cores: float) -> float:
    """Cores that a mesh used on a private machine (the VM lab's guest: nobody else
    there): the whole busy time of a CpuMeter breakdown, less the measuring process's own
    (MEASURER) and less the idle window's figure (`idle_cores`, the same computed with no
    mesh just before). batman-adv runs in the kernel: its work lands in kworkers
    (`other`) and softirq, not in a process of ours."""
    return max(0.0, private_busy_cores(breakdown) - idle_cores)


def private_busy_cores(breakdown: Mapping[str, Any]) -> float:
    """A CpuMeter breakdown's busy cores less the measuring process's own (MEASURER)."""
    window = breakdown["window_s"]
    if window <= 0:
        raise ValueError("an empty window")
    by = breakdown["by"]
    busy = sum(v["cpu_s"] for k, v in by.items() if k not in MEASURER)
    return float(busy / window)
