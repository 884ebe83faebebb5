"""Captures against the BCC `batman` probe on a quiet batman-adv mesh, in the VM lab:

    .venv/bin/meshstress lab run --timeout 1800 -- env MESHSTRESS_REQUIRE=1 \\
        .venv/bin/python -m pytest -m kernel -p no:cacheprovider tests/test_capture_kernel.py -v

Both count at the same points of the same interfaces (a veth, batman-adv's hard
interface): transmit where the driver gets the frame (the probe's net_dev_start_xmit,
the packet socket's dev_queue_xmit_nit), receive in __netif_receive_skb_core before any
protocol handler. The probe's delta runs from one snapshot to the next; a snapshot takes
a few milliseconds. Frames the capture timestamped inside a snapshot may fall on either
side, so the probe's count must lie between the frames captured strictly between the
snapshots and that plus the frames captured during them (the stated tolerance: on a
quiet mesh, an OGM a second per interface, usually zero).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshstress.model import generators
from meshstress.observe.capture import CaptureOptions, Captures, Target, read_pcap
from meshstress.packets import classify

pytestmark = pytest.mark.kernel("bcc+headers", "batman-adv")


def test_ogm_counts_agree_with_the_batman_probe(mesh_factory, tmp_path: Path) -> None:
    from meshstress.observe.probes import Probes, delta

    probes = Probes(["batman"])
    try:
        mesh = mesh_factory(generators.line(3), routing="batman-adv")
        probes.watch(mesh)
        caps = Captures(mesh, CaptureOptions([Target(n) for n in mesh.nodes], snaplen=256))
        caps.start()
        try:
            time.sleep(0.5)
            a0 = time.time()
            before = probes.snapshot()
            a1 = time.time()
            time.sleep(6)
            b0 = time.time()
            after = probes.snapshot()
            b1 = time.time()
            time.sleep(0.5)
        finally:
            files = caps.write(tmp_path)
    finally:
        probes.close()
    d = delta(before, after)
    prefix = mesh.prefix
    compared = 0
    for stem, info in files.items():
        node, short = info["node"], info["iface"]
        records = list(read_pcap(tmp_path / f"{stem}.pcap"))
        inside = [r for r in records if a1 < r[0] < b0]
        edges = [r for r in records if a0 <= r[0] <= a1 or b0 <= r[0] <= b1]
        counted = d["nodes"][node]["interfaces"][prefix + short].get("batman_types", {})
        for kind in ("iv_ogm",):
            probe = counted.get(kind, {"tx_packets": 0, "rx_packets": 0})
            probe_n = probe["tx_packets"] + probe["rx_packets"]
            sure = sum(1 for r in inside if classify.kind(r[1]) == f"batman:{kind}")
            maybe = sum(1 for r in edges if classify.kind(r[1]) == f"batman:{kind}")
            print(f"{node} {short} {kind}: capture {sure} (+{maybe} at the edges), probe {probe_n}")
            assert sure <= probe_n <= sure + maybe, (node, short, kind, sure, maybe, probe)
            assert sure >= 6, (node, short, sure)  # tx and rx at one OGM/s each over 6 s
            compared += 1
        assert info["kernel_drops"] == 0 and info["dropped_old"] == 0, info
    assert compared == 4  # n0:i0, n1:i0, n1:i1, n2:i0
    # and scapy dissects what was captured into OGMs from the mesh's originators
    from scapy.utils import rdpcap

    from meshstress.packets.batadv import BatadvOGM, ogms

    frames = rdpcap(str(tmp_path / "n1-i0.pcap"))
    found = [o for f in frames if BatadvOGM in f for o in ogms(f)]
    assert found and all(o.version == 15 for o in found)
    assert len({o.orig for o in found}) == 3, {o.orig for o in found}
