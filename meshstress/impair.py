"""Link impairments as qdiscs: what a direction of a link does to packets, as tc calls.

Pure part: `netem_args(impairment)` -> keyword arguments for pyroute2's
`tc("add", "netem", ...)`. Side effects: `apply(sock, index, impairment)` inside a
namespace. One netem qdisc at each impaired interface's egress carries loss, delay,
jitter and rate; later chains (tbf/htb children, Gilbert-Elliott loss, timed changes)
compose on top of the same handle.
"""

from __future__ import annotations

import math
from typing import Any

from meshstress.topology import Impairment

ROOT_HANDLE = "1:"
MIN_LIMIT = 1000  # netem's default queue, in packets


def netem_args(imp: Impairment, mtu: int = 1500) -> dict[str, Any]:
    """pyroute2 netem keywords: delay/jitter in microseconds, loss in percent, rate as tc
    text. The queue holds at least one delay's worth of packets at the rate (or at
    1 Gbit/s when unlimited), so the delay itself does not drop packets."""
    args: dict[str, Any] = {}
    if imp.delay or imp.jitter:
        args["delay"] = round(imp.delay * 1e6)
        if imp.jitter:
            args["jitter"] = round(imp.jitter * 1e6)
    if imp.loss:
        args["loss"] = imp.loss * 100.0
    if imp.rate:
        args["rate"] = f"{imp.rate}bit"
    in_flight = (imp.rate or 10**9) * (imp.delay + imp.jitter) / 8 / mtu
    args["limit"] = max(MIN_LIMIT, math.ceil(2 * in_flight))
    return args


def apply(sock: Any, index: int, imp: Impairment, mtu: int = 1500) -> None:
    """Put `imp` on interface `index` (egress) through `sock`, a netlink socket in the
    interface's namespace."""
    sock.tc("add", "netem", index=index, handle=ROOT_HANDLE, **netem_args(imp, mtu))


# Segmentation offloads make a veth send 64 KB super-packets that netem drops or delays
# as one: per-packet loss figures need them off on every impaired interface.
OFFLOADS = (
    "tx-tcp-segmentation",
    "tx-tcp6-segmentation",
    "tx-tcp-ecn-segmentation",
    "tx-tcp-mangleid-segmentation",
    "tx-generic-segmentation",
    "rx-gro",
)


def disable_offloads(ethtool: Any, ifname: str) -> None:
    """Turn OFFLOADS off on `ifname`; `ethtool` is a pyroute2 IoctlEthtool whose socket
    was opened in the interface's namespace."""
    from pyroute2.ethtool.ethtool import EthtoolFeatures

    ethtool.change_ifname(ifname)
    features = EthtoolFeatures.from_ioctl(
        features=ethtool.get_features(), offload_flags=ethtool.get_offload_flags()
    )
    for name in OFFLOADS:
        if name in features.features:
            features.features[name].enable = False
    current = ethtool.get_features()
    EthtoolFeatures.to_ioctl(current, features)
    ethtool.set_features(current)


def describe(imp: Impairment) -> str:
    from meshstress import units

    parts = []
    if imp.loss:
        parts.append(f"loss {units.format_fraction(imp.loss)}")
    if imp.delay:
        parts.append(f"delay {units.format_duration(imp.delay)}")
    if imp.jitter:
        parts.append(f"jitter {units.format_duration(imp.jitter)}")
    if imp.rate:
        parts.append(f"rate {units.format_rate(imp.rate)}")
    return ", ".join(parts) or "ideal"
