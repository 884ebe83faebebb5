"""How tests/data/*.pcap were made (run as root; batman-adv needs the VM lab):

    .venv/bin/python tests/data/capture_frames.py babeld tests/data
    .venv/bin/meshstress lab run -- .venv/bin/python tests/data/capture_frames.py batman-iv tests/data
    .venv/bin/meshstress lab run -- .venv/bin/python tests/data/capture_frames.py batman-v tests/data
    .venv/bin/meshstress lab run -- .venv/bin/python tests/data/capture_frames.py batman-kinds tests/data

A 3-node line n0-n1-n2, converged; meshstress's own capture (meshstress.observe.capture)
on n1's interface toward n0 (and on n0's bat0 for batman-adv) for a few seconds, with a
ping n0 -> n2 across; the ring keeps the newest few KB, so the files stay small.

batman-kinds (B.A.T.M.A.N. IV, the kernel's defaults otherwise: fragmentation and the
distributed ARP table on) makes the other packet types, one capture each on n1's
interface toward n0, and writes what it did and the mesh's addresses, read from the
live mesh, into batman-kinds.json (the tests compare the dissected fields with it):

- bcast: a broadcast ping from n0 (`ping -b`, two echo requests; nobody answers).
- dat: n0 pings an address only n2 holds (added to n2's bat0 just before, so no ARP or
  DAT cache knows it): the distributed ARP table sends n0's ARP request to its DHT
  candidates (unicast 4addr DAT_DHT_GET) and stores n2's reply there (DAT_DHT_PUT).
  (The ARP request's own broadcast waits 250 ms for DAT and is dropped once DAT has
  answered, so it may not show.)
- icmp: `batctl meshif bat0 ping -c 3` from n0 to n2's originator address (batctl
  builds the echo requests; n2's kernel answers).
- tt: TT_CLIENTS new client MACs behind n0 at once (a frame from each through n0's
  bat0): too many changes for n0's next OGM, which then announces only its new table
  version; n1 asks n0 for the table (unicast TVLV TT request) and n0 answers with the
  whole table, which is longer than the link's MTU: fragments.
- frag: the n0-n1 link's MTU is lowered to FRAG_MTU (bat0 keeps 1500), and n0 sends
  one UDP datagram of FRAG_PAYLOAD to n2: the unicast packet no longer fits the hard
  interface, so batman-adv fragments it.

The JSON also says whether the lab kernel's own uapi header (batadv_packet.h) knows
the multicast packet type (BATADV_MCAST, 0x05): the 6.1 kernel's does not, so there is
no real multicast frame to capture there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from meshstress import build
from meshstress.build import bringup, netns
from meshstress.model import generators
from meshstress.observe.capture import CaptureOptions, Captures, Target

SETTINGS = {
    "babeld": ("babeld", {"hello_interval": "1s"}),
    "batman-iv": ("batman-adv", {"algorithm": "BATMAN_IV", "orig_interval": "1s"}),
    "batman-v": ("batman-adv", {"algorithm": "BATMAN_V", "orig_interval": "1s"}),
}


def main(kind: str, out: Path) -> None:
    routing, settings = SETTINGS[kind]
    topo = generators.line(3)
    topo.routing, topo.routing_settings = routing, settings
    up = bringup.bring_up(topo, wait=True, timeout=120)
    try:
        mesh = build.Mesh(up.state)
        targets = [Target("n1", "n0")]
        if routing == "batman-adv":
            targets.append(Target("n0", "bat0"))
        caps = Captures(mesh, CaptureOptions(targets=targets, snaplen=1600, limit=6000))
        caps.start()
        try:
            time.sleep(4.0)
            result = mesh.ping("n0", "n2", count=3, interval=0.3)
            print(f"ping n0->n2: {result}")
            time.sleep(1.0)
        finally:
            files = caps.write(out / f"{kind}.tmp")
        for stem, info in files.items():
            src = out / f"{kind}.tmp" / f"{stem}.pcap"
            dst = out / f"{kind}-{stem}.pcap"
            src.rename(dst)
            print(dst, info)
        (out / f"{kind}.tmp").rmdir()
        mesh.close()
    finally:
        build.teardown(up.state, timeout=60)


FRAG_MTU = 1280  # the n0-n1 link's MTU while the datagram goes (hard interfaces)
FRAG_PAYLOAD = b"meshstress-frag " * 92  # 1472 bytes of UDP payload: a 1500-byte IP packet
FRAG_PORT = 9  # discard
UAPI = "include/uapi/linux/batadv_packet.h"
TT_CLIENTS = 140  # x 12 bytes of TT change: more than bat0's MTU (1500) holds


def uapi_header() -> dict:
    """Where this kernel's batadv_packet.h is (its headers, which the lab mounts), and
    whether it defines the multicast packet type and the multicast tracker TVLV."""
    release = os.uname().release  # Debian: the uapi headers are in the -common package
    dirs = [f"linux-headers-{release}", f"linux-headers-{release.rsplit('-', 1)[0]}-common"]
    found = [p for d in dirs if (p := Path("/usr/src", d, UAPI)).is_file()]
    if not found:
        return {"header": None}
    text = found[0].read_text()
    return {
        "header": str(found[0]),
        "BATADV_MCAST": re.search(r"\bBATADV_MCAST\s*=", text) is not None,
        "BATADV_TVLV_MCAST_TRACKER": "BATADV_TVLV_MCAST_TRACKER" in text,
        "packet_types": re.findall(
            r"\b(BATADV_[A-Z0-9_]+)\s*=\s*(0x[0-9a-fA-F]+)",
            text.split("enum batadv_packettype", 1)[1].split("};", 1)[0],
        ),
    }


def kinds(out: Path) -> None:
    """The batman-kinds captures (see the module docstring)."""
    topo = generators.line(3)
    topo.routing, topo.routing_settings = "batman-adv", SETTINGS["batman-iv"][1]
    up = bringup.bring_up(topo, wait=True, timeout=120)
    mesh = build.Mesh(up.state)
    try:
        backend = up.backend
        facts: dict = {
            "kernel": os.uname().release,
            "batman_adv": Path("/sys/module/batman_adv/version").read_text().strip(),
            "prefix": mesh.prefix,
            "nodes": {},
            "uapi": uapi_header(),
        }
        for node in mesh.nodes:
            links = {lk.get_attr("IFLA_IFNAME"): lk for lk in mesh.netlink(node).get_links()}
            hard = [i["ifname"] for i in mesh.state.interfaces[node]]
            facts["nodes"][node] = {
                "address": mesh.address(node),
                "bat0": links["bat0"].get_attr("IFLA_ADDRESS"),
                "hard": {h[len(mesh.prefix) :]: links[h].get_attr("IFLA_ADDRESS") for h in hard},
            }
        # each node's originator address, as its neighbour's originator table has it
        origs = {o.orig: o for o in backend.originators(mesh, "n1")}
        origs.update({o.orig: o for o in backend.originators(mesh, "n0")})
        for f in facts["nodes"].values():
            (f["orig"],) = [m for m in f["hard"].values() if m in origs]

        @contextlib.contextmanager
        def capture(kind: str) -> Iterator[dict]:
            caps = Captures(mesh, CaptureOptions([Target("n1", "n0")], snaplen=1600, limit=40000))
            caps.start()
            done: dict = {}
            try:
                time.sleep(0.5)
                yield done
                time.sleep(1.5)
            finally:
                files = caps.write(out / "kinds.tmp")
            ((stem, info),) = files.items()
            dst = out / f"batman-kinds-{kind}-{stem}.pcap"
            (out / "kinds.tmp" / f"{stem}.pcap").rename(dst)
            (out / "kinds.tmp").rmdir()
            done.update(file=dst.name, packets=info["packets"], dropped_old=info["dropped_old"],
                        kernel_drops=info["kernel_drops"])  # fmt: skip
            facts[kind] = done
            print(kind, {k: v for k, v in done.items() if k != "clients"})

        def ifindex(node: str, name: str) -> int:
            return int(mesh.netlink(node).link_lookup(ifname=name)[0])

        # broadcast: a broadcast ping (no replies: the nodes ignore echo to broadcast)
        net = ipaddress.IPv4Interface(mesh.state.node_addresses["n2"]).network
        with capture("bcast") as done:
            p = mesh.run("n0", ["ping", "-n", "-b", "-c", "2", "-i", "0.5", "-W", "1",
                                str(net.broadcast_address)], capture_output=True)  # fmt: skip
            done.update(ping_to=str(net.broadcast_address), count=2)

        # the distributed ARP table: n0 asks for an address only n2 holds (added just
        # before, so no ARP or DAT cache knows it)
        extra = str(net[200])
        mesh.netlink("n2").addr("add", index=ifindex("n2", "bat0"), address=extra,
                                prefixlen=net.prefixlen)  # fmt: skip
        with capture("dat") as done:
            p = mesh.run("n0", ["ping", "-n", "-c", "1", "-W", "3", extra], capture_output=True)
            done.update(arp_for=extra, holder="n2", ping_rc=p.returncode)

        # ICMP: batctl's ping to n2's originator address
        batctl = shutil.which("batctl") or "batctl"
        with capture("icmp") as done:
            p = mesh.run("n0", [batctl, "meshif", "bat0", "ping", "-c", "3", "-i", "0.5",
                                facts["nodes"]["n2"]["orig"]], capture_output=True, text=True)  # fmt: skip
            done.update(count=3, rc=p.returncode, output=p.stdout.strip().splitlines()[-2:])

        # translation tables: TT_CLIENTS new clients behind n0 at once (one frame each
        # from its own MAC through n0's bat0): too many changes for n0's next OGM, so it
        # announces only its new version, and the others ask for the table (unicast TVLV)
        clients = [f"02:6d:73:00:{i >> 8:02x}:{i & 0xFF:02x}" for i in range(TT_CLIENTS)]
        with capture("tt") as done:
            with netns.entered(mesh.ns("n0")):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.bind(("bat0", 0))
            for mac in clients:
                s.send(b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) + b"\x88\xb5"
                       + b"meshstress tt client".ljust(46, b"\0"))  # fmt: skip
            s.close()
            time.sleep(4.0)
            done.update(node="n0", clients=clients, ethertype=0x88B5)

        # fragments: the n0-n1 link's MTU below the unicast packet's size
        link = [(n, h) for n in ("n0", "n1") for h in mesh.state.interfaces[n]
                if h.get("peer") in ("n0", "n1")]  # fmt: skip
        for node, h in link:
            mesh.netlink(node).link("set", index=ifindex(node, h["ifname"]), mtu=FRAG_MTU)
        time.sleep(0.5)
        try:
            with capture("frag") as done:
                with netns.entered(mesh.ns("n0")):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.sendto(FRAG_PAYLOAD, (mesh.address("n2"), FRAG_PORT))
                s.close()
                done.update(mtu=FRAG_MTU, udp_payload=len(FRAG_PAYLOAD), port=FRAG_PORT,
                            to=mesh.address("n2"))  # fmt: skip
        finally:
            for node, h in link:
                mesh.netlink(node).link("set", index=ifindex(node, h["ifname"]),
                                        mtu=backend.mtu)  # fmt: skip
        (out / "batman-kinds.json").write_text(json.dumps(facts, indent=1) + "\n")
    finally:
        mesh.close()
        build.teardown(up.state, timeout=60)


if __name__ == "__main__":
    if sys.argv[1] == "batman-kinds":
        kinds(Path(sys.argv[2]))
    else:
        main(sys.argv[1], Path(sys.argv[2]))
