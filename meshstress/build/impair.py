"""Link impairments as qdiscs: what a direction of a link does to packets, as tc calls.

Pure part: `chain(imp, mtu)` -> the qdiscs to install, each a `QdiscSpec` (kind, handle,
parent, pyroute2 keyword arguments), built from `netem_args` and `tbf_args`; `needs(imp)`
-> the qdisc kinds a kernel must offer. Side effects: `apply(sock, index, imp)` and
`replace(...)` inside a namespace (one pyroute2 `tc(...)` call per qdisc).

The chain, at each impaired interface's egress:
- loss (independent or Gilbert-Elliott), delay, jitter, duplicate, corrupt, reorder:
  one netem qdisc at the root (handle 1:);
- rate alone: one tbf qdisc at the root (handle 1:), so shaping works on kernels
  without sch_netem;
- both: netem at the root, tbf as its child (parent 1:1, handle 10:), the layout the
  netem documentation gives for "delay plus rate". A packet is dropped, duplicated or
  corrupted and then held for its delay by netem; when it is due it enters tbf, which
  releases it at the rate from its own bounded queue. The other order (tbf root, netem
  child) gave the same rate in the lab but the backlog then sits in netem's queue,
  since a child replaces tbf's own: 50 ms delay at 4 Mbit/s had a loaded round trip of
  143-147 ms that way against 77-81 ms this way. netem's own `rate` is not used, so
  one shaper (tbf, which our netem-less hosts have) serves both cases.
"""

from __future__ import annotations

import errno
import math
import types
from dataclasses import dataclass, field
from typing import Any

from meshstress.model.topology import Impairment, simple_gilbert

__all__ = [
    "QdiscSpec",
    "apply",
    "chain",
    "describe",
    "disable_offloads",
    "needs",
    "netem_args",
    "remove",
    "replace",
    "simple_gilbert",
    "tbf_args",
]

ROOT_HANDLE = "1:"
NETEM_CHILD_PARENT = "1:1"  # netem's single class, where its child qdisc hangs
CHILD_HANDLE = "10:"
TC_H_ROOT = 0xFFFFFFFF
TC_H_CLSACT = 0xFFFFFFF1  # clsact and ingress qdiscs (meshstress.build.drop): not ours here
MIN_LIMIT = 1000  # netem's default queue, in packets
ETH_HLEN = 14  # a veth frame is the MTU plus the Ethernet header, as tbf counts it
TBF_QUEUE_S = 0.05  # tbf's default queue: 50 ms at the rate (at least TBF_MIN_PACKETS)
TBF_MIN_PACKETS = 16
TBF_BURST_S = 0.004  # bucket: 4 ms at the rate, at least two full frames
U32_MAX = 2**32 - 1


@dataclass(frozen=True)
class QdiscSpec:
    """One qdisc: `sock.tc("add", kind, index=..., handle=handle, parent=parent, **args)`."""

    kind: str
    handle: str
    parent: str | None  # None: the root
    args: dict[str, Any] = field(default_factory=dict)

    def call_kwargs(self, index: int) -> dict[str, Any]:
        kw: dict[str, Any] = {"index": index, "handle": self.handle}
        kw["parent"] = TC_H_ROOT if self.parent is None else self.parent
        kw.update(self.args)
        return kw


# --- pure ----------------------------------------------------------------------------


def uses_netem(imp: Impairment) -> bool:
    return bool(
        imp.loss
        or imp.gemodel is not None
        or imp.delay
        or imp.jitter
        or imp.duplicate
        or imp.corrupt
        or imp.reorder
    )


def needs(imp: Impairment) -> set[str]:
    """The qdisc kinds `chain(imp)` uses: a subset of {"netem", "tbf", "htb"}."""
    out: set[str] = set()
    if uses_netem(imp):
        out.add("netem")
    if imp.rate is not None:
        out.add("tbf")
    return out


def _frame(mtu: int) -> int:
    return mtu + ETH_HLEN


def _rate_bytes(imp: Impairment) -> int:
    """tbf's rate field is 32 bits of bytes/s: beyond 34 Gbit/s is as good as unlimited."""
    assert imp.rate is not None
    return max(1, min(U32_MAX, round(imp.rate / 8)))


def tbf_args(imp: Impairment, mtu: int = 1500) -> dict[str, Any]:
    """pyroute2 tbf keywords for `imp.rate`: rate in bytes/s, burst (the bucket) 4 ms at
    the rate but at least two full frames (a frame larger than the bucket could never
    pass), limit (bytes queued) `imp.queue` frames or else 50 ms at the rate, at least
    16 frames, plus the bucket."""
    rate = _rate_bytes(imp)
    frame = _frame(mtu)
    burst = max(2 * frame, math.ceil(rate * TBF_BURST_S))
    if imp.queue is not None:
        limit = imp.queue * frame
    else:
        limit = max(TBF_MIN_PACKETS * frame, math.ceil(rate * TBF_QUEUE_S)) + burst
    return {"rate": rate, "burst": burst, "limit": min(limit, U32_MAX), "mtu": max(frame, 1600)}


def _tbf_packets(imp: Impairment, mtu: int) -> int:
    return math.ceil(tbf_args(imp, mtu)["limit"] / _frame(mtu))


def netem_args(imp: Impairment, mtu: int = 1500) -> dict[str, Any]:
    """pyroute2 netem keywords: delay/jitter in microseconds, percentages for loss,
    duplicate, corrupt (`prob_corrupt`) and reorder (`prob_reorder`, `gap`); a
    Gilbert-Elliott model as `ge_loss` = (p, r, h, 1-k) fractions (our encoder puts it
    into TCA_NETEM_LOSS). The queue (`limit`) is `imp.queue` if given, else it holds at
    least one delay's worth of packets at the rate (or at 1 Gbit/s when unlimited), so
    the delay itself does not drop packets, plus a tbf child's queue."""
    args: dict[str, Any] = {}
    if imp.delay or imp.jitter:
        args["delay"] = round(imp.delay * 1e6)
        if imp.jitter:
            args["jitter"] = round(imp.jitter * 1e6)
    model = imp.loss_model()
    if model is not None:
        # the kernel wants h (no loss in the bad state) where tc's users give 1-h
        args["ge_loss"] = (model.p, model.r, 1.0 - model.bad_loss, model.good_loss)
    elif imp.loss:
        args["loss"] = imp.loss * 100.0
    if imp.duplicate:
        args["duplicate"] = imp.duplicate * 100.0
    if imp.corrupt:
        args["prob_corrupt"] = imp.corrupt * 100.0
    if imp.reorder:
        args["prob_reorder"] = imp.reorder * 100.0
        args["gap"] = imp.reorder_gap or 1
    if imp.queue is not None:
        args["limit"] = imp.queue
    else:
        in_flight = (imp.rate or 10**9) * (imp.delay + imp.jitter) / 8 / mtu
        limit = max(MIN_LIMIT, math.ceil(2 * in_flight))
        if imp.rate is not None:
            limit += _tbf_packets(imp, mtu)  # netem counts its child's queue too
        args["limit"] = min(limit, U32_MAX)
    return args


def chain(imp: Impairment, mtu: int = 1500) -> list[QdiscSpec]:
    """The qdiscs for `imp`, root first (see the module docstring); [] when ideal."""
    specs: list[QdiscSpec] = []
    if uses_netem(imp):
        specs.append(QdiscSpec("netem", ROOT_HANDLE, None, netem_args(imp, mtu)))
    if imp.rate is not None:
        if specs:
            specs.append(QdiscSpec("tbf", CHILD_HANDLE, NETEM_CHILD_PARENT, tbf_args(imp, mtu)))
        else:
            specs.append(QdiscSpec("tbf", ROOT_HANDLE, None, tbf_args(imp, mtu)))
    return specs


def describe(imp: Impairment) -> str:
    from meshstress.model import units

    pct = units.format_fraction
    parts = []
    if imp.gemodel is not None:
        ge = imp.gemodel
        parts.append(
            f"loss gemodel p {pct(ge.p)} r {pct(ge.r)} bad {pct(ge.bad_loss)} "
            f"good {pct(ge.good_loss)} (~{ge.mean_loss() * 100:.3g}%)"
        )
    elif imp.loss:
        text = f"loss {pct(imp.loss)}"
        if imp.loss_burst is not None:
            text += f" in bursts of {imp.loss_burst:g}"
        parts.append(text)
    if imp.delay:
        parts.append(f"delay {units.format_duration(imp.delay)}")
    if imp.jitter:
        parts.append(f"jitter {units.format_duration(imp.jitter)}")
    if imp.duplicate:
        parts.append(f"duplicate {pct(imp.duplicate)}")
    if imp.corrupt:
        parts.append(f"corrupt {pct(imp.corrupt)}")
    if imp.reorder:
        gap = f" gap {imp.reorder_gap}" if imp.reorder_gap is not None else ""
        parts.append(f"reorder {pct(imp.reorder)}{gap}")
    if imp.rate:
        parts.append(f"rate {units.format_rate(imp.rate)}")
    if imp.queue is not None:
        parts.append(f"queue {imp.queue} packets")
    return ", ".join(parts) or "ideal"


# --- netlink encoding: netem with Gilbert-Elliott loss --------------------------------
#
# pyroute2 0.9's netem plugin sends loss, duplicate, reorder and corrupt, but declares
# TCA_NETEM_LOSS as 'none' and cannot send a loss model. Our plugin for kind "netem"
# subclasses its options with the nested TCA_NETEM_LOSS { NETEM_LOSS_GI, NETEM_LOSS_GE }
# (struct tc_netem_gimodel / tc_netem_gemodel of linux/pkt_sched.h) and adds it when the
# keywords carry `ge_loss`; everything else is pyroute2's own encoder. It is installed
# in pyroute2's plugin table (which both encoding and decoding consult) the first time
# a chain is applied; decoding gains the loss model, nothing else changes.


def _u32(fraction: float) -> int:
    return max(0, min(U32_MAX, round(fraction * U32_MAX)))


def _netem_plugin() -> types.ModuleType:
    from pyroute2.netlink import nla
    from pyroute2.netlink.rtnl.tcmsg import sched_netem

    class options(sched_netem.options):  # noqa: N801 - pyroute2 looks this name up
        nla_map = tuple(
            ("TCA_NETEM_LOSS", "netem_loss") if name == "TCA_NETEM_LOSS" else (name, kind)
            for name, kind in sched_netem.options.nla_map
        )

        class netem_loss(nla):  # noqa: N801
            nla_map = (
                ("NETEM_LOSS_UNSPEC", "none"),
                ("NETEM_LOSS_GI", "gimodel"),
                ("NETEM_LOSS_GE", "gemodel"),
            )

            class gimodel(nla):  # noqa: N801
                fields = (("p13", "I"), ("p31", "I"), ("p32", "I"), ("p14", "I"), ("p23", "I"))

            class gemodel(nla):  # noqa: N801
                fields = (("p", "I"), ("r", "I"), ("h", "I"), ("k1", "I"))

    # pyroute2 compiles an nla_map once per class and marks it in a class attribute,
    # which a subclass inherits: if pyroute2's netem options were compiled already (any
    # netem message, e.g. doctor's probe), ours would silently use their map without
    # TCA_NETEM_LOSS. Make ours compile its own.
    flag = "_nlmsg_base__compiled_nla"
    if not hasattr(options, flag):  # pragma: no cover - a pyroute2 that works otherwise
        raise RuntimeError(f"pyroute2 changed: no {flag}; cannot encode Gilbert-Elliott loss")
    setattr(options, flag, False)

    def get_parameters(kwarg: dict[str, Any]) -> dict[str, Any]:
        ge = kwarg.get("ge_loss")
        opts: dict[str, Any] = sched_netem.get_parameters(kwarg)
        if ge is not None:
            p, r, h, k1 = (_u32(x) for x in ge)
            opts["loss"] = 0
            opts["attrs"].append(
                [
                    "TCA_NETEM_LOSS",
                    {"attrs": [["NETEM_LOSS_GE", {"p": p, "r": r, "h": h, "k1": k1}]]},
                ]
            )
        return opts

    module = types.ModuleType("meshstress_sched_netem")
    module.parent = sched_netem.parent  # type: ignore[attr-defined]
    module.get_parameters = get_parameters  # type: ignore[attr-defined]
    module.options = options  # type: ignore[attr-defined]
    module.meshstress = True  # type: ignore[attr-defined]
    return module


def _install_netem_plugin() -> None:
    from pyroute2.netlink.rtnl.tcmsg import plugins

    if not getattr(plugins.get("netem"), "meshstress", False):
        plugins["netem"] = _netem_plugin()


# --- side effects ---------------------------------------------------------------------


def apply(sock: Any, index: int, imp: Impairment, mtu: int = 1500) -> None:
    """Put `imp` on interface `index` (egress) through `sock`, a netlink socket in the
    interface's namespace: one `tc("add", ...)` per qdisc of `chain(imp, mtu)`."""
    specs = chain(imp, mtu)
    if any(s.kind == "netem" for s in specs):
        _install_netem_plugin()
    for spec in specs:
        sock.tc("add", spec.kind, **spec.call_kwargs(index))


def remove(sock: Any, index: int) -> bool:
    """Delete the root qdisc meshstress put on `index` (handle 1:, and with it any
    child); True if there was one. A kernel default root (handle 0) or a root that is
    not ours is left alone; "none there" is not an error."""
    from pyroute2.netlink.exceptions import NetlinkError

    ours = 0x10000
    for q in sock.get_qdiscs(index=index):
        if q["index"] == index and q["parent"] == TC_H_ROOT and q["handle"] == ours:
            try:
                sock.tc("del", index=index, handle=ours, parent=TC_H_ROOT)
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.EINVAL):
                    raise
                return False
            return True
    return False


def _tc_handle(text: str) -> int:
    """"1:" -> 0x10000, "1:1" -> 0x10001 (tc's MAJOR:MINOR in hex)."""
    major, _, minor = text.partition(":")
    return (int(major or "0", 16) << 16) | int(minor or "0", 16)


def shape(imp: Impairment, mtu: int = 1500) -> tuple[tuple[str, str, str | None], ...]:
    """The qdiscs `chain(imp)` puts on an interface (kind, handle, parent), without their
    parameters: two impairments of the same shape change into one another in place."""
    return tuple((sp.kind, sp.handle, sp.parent) for sp in chain(imp, mtu))


def _change_in_place(
    sock: Any, index: int, specs: list[QdiscSpec], known: bool = False
) -> bool:
    """When `index` carries exactly the qdiscs `specs` names (kinds, handles, parents),
    change their parameters in place (`tc change`) and return True. Deleting and adding
    a root qdisc deactivates the device and waits for an RCU grace period
    (synchronize_net): cheap on a host, but 0.3-0.5 s per interface under the VM lab's
    emulation, which made a sweep step over 12 links take 4-6 s there."""
    if not specs:
        return False
    if known:  # the caller knows the interface carries this shape: no dump
        from pyroute2.netlink.exceptions import NetlinkError

        if any(sp.kind == "netem" for sp in specs):
            _install_netem_plugin()
        try:
            for sp in specs:
                sock.tc("change", sp.kind, **sp.call_kwargs(index))
            return True
        except NetlinkError:  # not what the caller thought: look first
            pass
    have = sorted(
        (q.get_attr("TCA_KIND"), q["handle"], q["parent"])
        for q in sock.get_qdiscs(index=index)
        if q["index"] == index and q["parent"] != TC_H_CLSACT  # not the drop filter's clsact
    )
    want = sorted(
        (sp.kind, _tc_handle(sp.handle),
         TC_H_ROOT if sp.parent is None else _tc_handle(sp.parent))
        for sp in specs
    )  # fmt: skip
    if have != want:
        return False
    if any(sp.kind == "netem" for sp in specs):
        _install_netem_plugin()
    for sp in specs:
        sock.tc("change", sp.kind, **sp.call_kwargs(index))
    return True


def replace(
    sock: Any, index: int, imp: Impairment, mtu: int = 1500, was: Impairment | None = None
) -> None:
    """Swap whatever chain meshstress put on `index` for `imp`'s: change it in place when
    it has the same qdiscs, else remove ours (if any) and apply. An ideal `imp` leaves the
    interface with the kernel's default qdisc. `was`: the impairment the caller put there
    last, when it knows (a chain of the same shape then changes without a dump first)."""
    known = was is not None and shape(was, mtu) == shape(imp, mtu)
    if _change_in_place(sock, index, chain(imp, mtu), known=known):
        return
    remove(sock, index)
    apply(sock, index, imp, mtu)


# What makes netem act per packet is the builder's cap of one segment per skb on every
# veth end (build.ONE_PACKET_PER_SKB): TCP builds GSO super-packets whatever these
# features say, and they are segmented only after the qdisc. Turning the features off on
# an impaired interface as well keeps its own segmentation and GRO out of the picture,
# so a capture on it sees the frames the qdisc saw.
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
