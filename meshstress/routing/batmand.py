"""batmand (B.A.T.M.A.N. layer 3, userspace) in every node namespace.

batmand wants one address prefix across all mesh interfaces (with a /24 per link it
fails multi-hop with "Network is unreachable"), so this backend asks make_plan for
l3=False and itself puts the node's address with the topology's prefix length (a /16
by default, with its broadcast address, which batmand sends OGMs to) on every mesh
interface. Every instance uses /run/batmand.socket, so each runs in a private mount
namespace with its node dir (/run/meshstress/ms-<run>-files/<node>/) bind-mounted on /run."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from typing import TYPE_CHECKING, Any

from meshstress.build import netns
from meshstress.routing import settings as st
from meshstress.routing.base import (
    Backend,
    ifindex_map,
    live_records,
    mesh_ifnames,
    node_dir,
    which,
)

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.model.topology import Topology

MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_BIND = 4096


def batmand_argv(binary: str, interfaces: list[str], orig_interval: float) -> list[str]:
    """One node's batmand command line (foreground, so its PID is the daemon's). Pure."""
    return [binary, "--no-detach", "-o", str(round(orig_interval * 1000)), *interfaces]


def _spawn_private_run(
    ns_name: str, directory: str, argv: list[str], **kwargs: Any
) -> subprocess.Popen[bytes]:
    """Start argv in the node's netns and in a private mount namespace with `directory`
    on /run. The mount namespace is made by a throwaway thread (unshare gives that
    thread its own, which it cannot leave), never by Python code in the forked child,
    which can deadlock while other threads run (the route recorder)."""

    def body() -> subprocess.Popen[bytes]:
        libc = netns._libc
        with netns.entered(ns_name):  # first: /run/netns is hidden once /run is bound
            netns._check(libc.unshare(netns.CLONE_NEWNS), "unshare mount namespace")
            netns._check(
                libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private"
            )
            netns._check(libc.mount(directory.encode(), b"/run", None, MS_BIND, None), "bind /run")
            return subprocess.Popen(argv, **kwargs)

    return netns.in_new_thread(body)


class BatmandBackend(Backend):
    name = "batmand"
    l3 = False  # the backend puts address/prefixlen (one prefix) on every mesh interface
    role = "batmand"
    FIELDS = (
        st.Field("orig_interval", st.duration(0.02, 60), 1.0, doc="originator interval (-o, ms)"),
    )

    def missing(self) -> str | None:
        if which("batmand") is None:
            return "batmand not installed (apt-get install batmand)"
        return None

    def start_node(self, mesh: Mesh, topo: Topology, node: str) -> None:
        ifnames = mesh_ifnames(mesh, node)
        if not ifnames:
            return
        orig_interval = self.node_config(topo, node)["orig_interval"]
        binary = which("batmand") or "batmand"
        iface = ipaddress.IPv4Interface(mesh.state.node_addresses[node])
        ipr = mesh.netlink(node)
        index = ifindex_map(mesh, node)
        for ifname in ifnames:
            # "replace": after a node restart the address is still there (IPv4 keeps
            # addresses on a down interface)
            ipr.addr(
                "replace",
                index=index[ifname],
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                broadcast=str(iface.network.broadcast_address),
            )
        directory = node_dir(mesh, node)
        if not live_records(mesh, node, self.role):
            # a SIGKILLed batmand leaves its socket (this node's /run/batmand.socket)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, "batmand.socket"))
        argv = batmand_argv(binary, ifnames, orig_interval)
        ns_name = mesh.ns(node)
        with open(os.path.join(directory, "batmand.log"), "ab") as log:
            proc = _spawn_private_run(
                ns_name, directory, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        mesh.record_process(proc, node, self.role, argv)
