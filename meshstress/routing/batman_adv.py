"""batman-adv (kernel, layer 2): a bat0 per node namespace enslaving its mesh veths.

make_plan gets l3=False and mtu=1560 (room for batman-adv's header); the node address
goes on bat0 with the topology's prefix length, so every node shares one L2 segment.
The routing algorithm is a module parameter read when bat0 is created, so it is
written (per node if nodes differ) just before each bat0. Mesh settings are applied
and tables read through batman-adv's generic netlink in-process (one short-lived socket
per query; batctl, a process per call, is the fallback and costs 0.1-0.2 s per call in
the emulated lab). Works only where the kernel has batman-adv: the VM lab
(`meshstress lab run`)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
from typing import TYPE_CHECKING, Any, NamedTuple

from meshstress.build import netns
from meshstress.routing import settings as st
from meshstress.routing.base import Backend, Route, ifindex_map, mesh_ifnames, which
from meshstress.routing.genl_batadv import BatadvNetlink

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.model.topology import Topology

MESHIF = "bat0"
ALGO_PARAM = "/sys/module/batman_adv/parameters/routing_algo"
MISSING_MODULE = "batman-adv kernel module missing (use `meshstress lab run`)"
IFF_UP = 0x1


class Originator(NamedTuple):
    orig: str  # originator MAC
    next_hop: str  # neighbour MAC the route goes through
    ifname: str  # outgoing hard interface
    metric: float | None  # tq (BATMAN_IV, 0..255) or throughput (BATMAN_V, kbit/s)
    last_seen: float | None  # seconds
    best: bool


class Neighbour(NamedTuple):
    address: str
    ifname: str
    metric: float | None  # BATMAN_V: throughput kbit/s; BATMAN_IV: None
    last_seen: float | None


def parse_originators_json(text: str) -> list[Originator]:
    """`batctl meshif bat0 originators_json` output -> Originators. Pure."""
    out = []
    for e in json.loads(text or "[]"):
        metric = e.get("tq", e.get("throughput"))
        seen = e.get("last_seen_msecs")
        out.append(
            Originator(
                orig=e["orig_address"].lower(),
                next_hop=(e.get("neigh_address") or e.get("router") or "").lower(),
                ifname=e.get("hard_ifname", ""),
                metric=None if metric is None else float(metric),
                last_seen=None if seen is None else seen / 1000.0,
                best=bool(e.get("best", False)),
            )
        )
    return out


def parse_neighbours_json(text: str) -> list[Neighbour]:
    out = []
    for e in json.loads(text or "[]"):
        seen = e.get("last_seen_msecs")
        metric = e.get("throughput", e.get("tq"))
        out.append(
            Neighbour(
                address=e["neigh_address"].lower(),
                ifname=e.get("hard_ifname", ""),
                metric=None if metric is None else float(metric),
                last_seen=None if seen is None else seen / 1000.0,
            )
        )
    return out


_MAC = r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}"
# BATMAN_IV:  * 8a:..:01    0.480s   (255) 8a:..:02 [ ms-x-i0 ]
# BATMAN_V:   * 8a:..:01    0.480s (   1.0) 8a:..:02 [ ms-x-i0 ]
_ORIG_LINE = re.compile(
    rf"^\s*(?P<best>\*)?\s*(?P<orig>{_MAC})\s+(?P<seen>[0-9.]+)s\s+"
    rf"\(\s*(?P<metric>[0-9.]+)\)\s+(?P<nh>{_MAC})\s+\[\s*(?P<if>[^\]\s]+)\s*\]"
)


def parse_originators_table(text: str) -> list[Originator]:
    """`batctl meshif bat0 originators -H` (text table, with or without the header). Pure."""
    out = []
    for line in text.splitlines():
        m = _ORIG_LINE.match(line)
        if m:
            out.append(
                Originator(
                    orig=m["orig"].lower(),
                    next_hop=m["nh"].lower(),
                    ifname=m["if"],
                    metric=float(m["metric"]),
                    last_seen=float(m["seen"]),
                    best=bool(m["best"]),
                )
            )
    return out


def settings_commands(cfg: dict[str, Any]) -> list[list[str]]:
    """batctl commands applying one node's mesh settings. Pure."""
    cmds = [
        ["meshif", MESHIF, "orig_interval", str(round(cfg["orig_interval"] * 1000))],
        ["meshif", MESHIF, "bridge_loop_avoidance", str(int(cfg["bridge_loop_avoidance"]))],
        ["meshif", MESHIF, "distributed_arp_table", str(int(cfg["distributed_arp_table"]))],
        ["meshif", MESHIF, "aggregation", str(int(cfg["aggregation"]))],
    ]
    if cfg["hop_penalty"] is not None:
        cmds.append(["meshif", MESHIF, "hop_penalty", str(cfg["hop_penalty"])])
    return cmds


def genl_values(cfg: dict[str, Any]) -> dict[str, int]:
    """SET_MESH attributes for one node's settings (the genl twin of settings_commands)."""
    out = {
        "orig_interval": round(cfg["orig_interval"] * 1000),
        "bridge_loop_avoidance_enabled": int(cfg["bridge_loop_avoidance"]),
        "distributed_arp_table_enabled": int(cfg["distributed_arp_table"]),
        "aggregated_ogms_enabled": int(cfg["aggregation"]),
    }
    if cfg["hop_penalty"] is not None:
        out["hop_penalty"] = cfg["hop_penalty"]
    return out


def originator_from_genl(e: dict[str, Any], ifnames: dict[int, str]) -> Originator:
    metric = e.get("tq", e.get("throughput"))
    seen = e.get("last_seen_msecs")
    return Originator(
        orig=e.get("orig_address", ""),
        next_hop=e.get("neigh_address") or e.get("router") or "",
        ifname=e.get("hard_ifname") or ifnames.get(e.get("hard_ifindex", -1), ""),
        metric=None if metric is None else float(metric),
        last_seen=None if seen is None else seen / 1000.0,
        best=bool(e.get("flag_best", False)),
    )


def neighbour_from_genl(e: dict[str, Any], ifnames: dict[int, str]) -> Neighbour:
    metric = e.get("throughput", e.get("tq"))
    seen = e.get("last_seen_msecs")
    return Neighbour(
        address=e.get("neigh_address", ""),
        ifname=e.get("hard_ifname") or ifnames.get(e.get("hard_ifindex", -1), ""),
        metric=None if metric is None else float(metric),
        last_seen=None if seen is None else seen / 1000.0,
    )


def module_loaded() -> bool:
    if os.path.exists("/sys/module/batman_adv"):
        return True
    modprobe = which("modprobe")
    if modprobe and os.path.isdir(f"/lib/modules/{os.uname().release}"):
        subprocess.run([modprobe, "-q", "batman-adv"], check=False, capture_output=True)
    return os.path.exists("/sys/module/batman_adv")


class BatmanAdvBackend(Backend):
    name = "batman-adv"
    l3 = False  # the node address goes on bat0
    mtu = 1560
    role = ""  # no processes: the kernel does the routing
    FIELDS = (
        st.Field(
            "algorithm",
            st.choice("BATMAN_IV", "BATMAN_V", aliases={"iv": "BATMAN_IV", "v": "BATMAN_V"}),
            "BATMAN_IV",
        ),
        st.Field("orig_interval", st.duration(0.02, 60), 1.0, doc="OGM interval"),
        st.Field("hop_penalty", st.integer(0, 255), None, doc="kernel default 30"),
        st.Field("bridge_loop_avoidance", st.boolean, False),
        st.Field("distributed_arp_table", st.boolean, True),
        st.Field("aggregation", st.boolean, True),
    )

    def __init__(self, settings: dict[str, Any] | None = None, source: str = "topology") -> None:
        super().__init__(settings, source)
        self._macs: dict[str, str] = {}
        self._ifindex: dict[str, dict[str, int]] = {}
        self._meshif_mac: dict[str, str] = {}  # bat0's MAC of stopped nodes: kept on restart
        self.use_genl = True  # False after genl failed once: batctl from then on

    def missing(self) -> str | None:
        if not module_loaded():
            return MISSING_MODULE
        if which("batctl") is None:
            return "batctl not installed (apt-get install batctl)"
        return None

    def start(self, mesh: Mesh, topo: Topology) -> None:
        for node in mesh.nodes:
            self.start_node(mesh, topo, node)
        mesh.state.extra["batman_adv"] = {"meshif": MESHIF}
        mesh.state.save()

    def start_node(self, mesh: Mesh, topo: Topology, node: str) -> None:
        """A new bat0 enslaving the node's mesh interfaces, with the node address."""
        cfg = self.node_config(topo, node)
        ifnames = mesh_ifnames(mesh, node)
        _select_algorithm(cfg["algorithm"])
        ipr = mesh.netlink(node)
        mac = self._meshif_mac.pop(node, None)
        if mac:  # a restarted node keeps its bat0 MAC, so neighbours' ARP entries hold
            ipr.link("add", ifname=MESHIF, kind="batadv", address=mac)
        else:
            ipr.link("add", ifname=MESHIF, kind="batadv")
        index = ifindex_map(mesh, node)
        self._ifindex[node] = index
        if not self._set_mesh_genl(mesh, node, index[MESHIF], cfg):
            batctl = which("batctl") or "batctl"
            script = "; ".join(
                shlex.join([batctl, *c]) + " >/dev/null" for c in settings_commands(cfg)
            )
            proc = mesh.run(node, ["sh", "-ec", script], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"batctl settings in {node} failed: {proc.stderr.strip()}")
        for ifname in ifnames:
            ipr.link("set", index=index[ifname], master=index[MESHIF])
        ipr.link("set", index=index[MESHIF], state="up")
        iface = ipaddress.IPv4Interface(mesh.state.node_addresses[node])
        ipr.addr(
            "add",
            index=index[MESHIF],
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            broadcast=str(iface.network.broadcast_address),
        )

    def stop_node(self, mesh: Mesh, node: str, kill: bool = True) -> None:
        """Delete the node's bat0: its originator table, and everything it learnt, is
        gone (kill or not; there is no process). The hard interfaces are released.
        start_node gives the new bat0 the same MAC."""
        ipr = mesh.netlink(node)
        for idx in ipr.link_lookup(ifname=MESHIF):
            (link,) = ipr.get_links(idx)
            self._meshif_mac[node] = link.get_attr("IFLA_ADDRESS")
            ipr.link("del", index=idx)
        self._ifindex.pop(node, None)

    def stop(self, mesh: Mesh) -> None:
        """Delete every bat0 (the namespaces' teardown would do it too)."""
        for node in mesh.nodes:
            ipr = mesh.netlink(node)
            for idx in ipr.link_lookup(ifname=MESHIF):
                ipr.link("del", index=idx)
        mesh.state.extra.pop("batman_adv", None)
        mesh.state.save()

    meshif = MESHIF

    def meshif_problem(self, mesh: Mesh, node: str) -> str | None:
        """None when the node's bat0 exists, is up, and enslaves every mesh interface
        of the node; else what is wrong (a hostile node's packets must not take it)."""
        links = {lk.get_attr("IFLA_IFNAME"): lk for lk in mesh.netlink(node).get_links()}
        soft = links.get(MESHIF)
        if soft is None:
            return f"{MESHIF} is gone"
        if not soft["flags"] & IFF_UP:
            return f"{MESHIF} is down"
        loose = [
            n for n in mesh_ifnames(mesh, node)
            if n not in links or links[n].get_attr("IFLA_MASTER") != soft["index"]
        ]  # fmt: skip
        return f"not in {MESHIF}: {', '.join(loose)}" if loose else None

    # --- tables --------------------------------------------------------------

    def mac_owners(self, mesh: Mesh) -> dict[str, str]:
        """MAC of every mesh interface (and bat0) -> node; cached (MACs do not change)."""
        if not self._macs:
            for node in mesh.nodes:
                for link in mesh.netlink(node).get_links():
                    name = link.get_attr("IFLA_IFNAME")
                    if name == MESHIF or name in mesh_ifnames(mesh, node):
                        self._macs[link.get_attr("IFLA_ADDRESS").lower()] = node
        return self._macs

    def _batctl(self, mesh: Mesh, node: str, query: str) -> str:
        proc = mesh.run(
            node,
            [which("batctl") or "batctl", "meshif", MESHIF, query],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            return "[]"
        return str(proc.stdout)

    def _set_mesh_genl(self, mesh: Mesh, node: str, meshif: int, cfg: dict[str, Any]) -> bool:
        if not self.use_genl:
            return False
        try:
            sock = BatadvNetlink(netns.path(mesh.ns(node)))
            try:
                sock.set_mesh(meshif, **genl_values(cfg))
            finally:
                sock.close()
        except OSError:
            self.use_genl = False
            return False
        return True

    def _genl_dump(self, mesh: Mesh, node: str, what: str) -> list[dict[str, Any]] | None:
        if not self.use_genl:
            return None
        index = self._ifindex.get(node) or ifindex_map(mesh, node)
        self._ifindex[node] = index
        if MESHIF not in index:
            return []
        try:
            sock = BatadvNetlink(netns.path(mesh.ns(node)))
            try:
                if what == "originators":
                    return sock.originators(index[MESHIF])
                return sock.neighbours(index[MESHIF])
            finally:
                sock.close()
        except OSError:
            self.use_genl = False
            return None

    def originators(self, mesh: Mesh, node: str) -> list[Originator]:
        """node's originator table: orig, next hop, outgoing interface, tq/throughput,
        last seen, best (genl; `batctl meshif bat0 oj` if genl is unavailable)."""
        entries = self._genl_dump(mesh, node, "originators")
        if entries is None:
            return parse_originators_json(self._batctl(mesh, node, "originators_json"))
        names = {i: n for n, i in self._ifindex[node].items()}
        return [originator_from_genl(e, names) for e in entries]

    def neighbours(self, mesh: Mesh, node: str) -> list[Neighbour]:
        entries = self._genl_dump(mesh, node, "neighbours")
        if entries is None:
            return parse_neighbours_json(self._batctl(mesh, node, "neighbors_json"))
        names = {i: n for n, i in self._ifindex[node].items()}
        return [neighbour_from_genl(e, names) for e in entries]

    def routes(self, mesh: Mesh, node: str) -> dict[str, Route]:
        owners = self.mac_owners(mesh)
        out = {}
        for o in self.originators(mesh, node):
            dst = owners.get(o.orig)
            if o.best and dst is not None and dst != node:
                out[dst] = Route(owners.get(o.next_hop), o.metric)
        return out


def _select_algorithm(algo: str) -> None:
    try:
        with open(ALGO_PARAM) as f:
            if f.read().strip() == algo:
                return
        with open(ALGO_PARAM, "w") as f:
            f.write(algo)
    except OSError:
        subprocess.run([which("batctl") or "batctl", "ra", algo], check=True, capture_output=True)
