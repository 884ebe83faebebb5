"""babeld (Babel) in every node namespace, one process per node."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from typing import TYPE_CHECKING, Any

from meshstress.routing import settings as st
from meshstress.routing.base import Backend, live_records, node_dir, which

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.model.topology import Topology


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def whole_seconds(lo: int, hi: int) -> Any:
    """A duration in whole seconds (babeld's -M takes an integer)."""
    parse = st.duration(lo, hi)

    def check(value: object) -> int:
        seconds = parse(value)
        if seconds != int(seconds):
            raise ValueError(f"must be whole seconds, got {value!r}")
        return int(seconds)

    return check


def babeld_argv(
    binary: str,
    directory: str,
    interfaces: list[tuple[str, str]],  # (ifname, "wired" | "wireless")
    prefix: str,
    settings: dict[str, Any],
) -> list[str]:
    """The command line for one node's babeld. Pure.

    Redistributes only the node's own address (local, inside the topology prefix) and
    nothing else; installs routes with the Babel metric as kernel priority, so the
    builder's neighbour routes (priority 0) and babeld's coexist."""
    net = ipaddress.IPv4Network(prefix, strict=False)
    hello = _fmt(settings["hello_interval"])
    argv = [
        binary,
        "-I",
        os.path.join(directory, "babeld.pid"),
        "-S",
        os.path.join(directory, "babeld.state"),
        "-h",
        hello,
        "-H",
        hello,
        "-C",
        "reflect-kernel-metric true",
    ]
    if settings.get("smoothing_half_life") is not None:
        argv += ["-M", str(settings["smoothing_half_life"])]
    if settings.get("debug"):
        argv += ["-d", str(settings["debug"])]
    argv += [
        "-C",
        f"redistribute local ip {net} allow",
        "-C",
        "redistribute local deny",
        "-C",
        "redistribute deny",
    ]
    for ifname, kind in interfaces:
        stmt = f"interface {ifname} type {kind} hello-interval {hello}"
        if settings.get("update_interval"):
            stmt += f" update-interval {_fmt(settings['update_interval'])}"
        argv += ["-C", stmt]
    return argv


class BabeldBackend(Backend):
    """One babeld per node on all its mesh interfaces (l3: the node's /32 on each)."""

    name = "babeld"
    l3 = True
    role = "babeld"
    FIELDS = (
        st.Field("hello_interval", st.duration(0.05, 600), 1.0, doc="hello interval (-h/-H)"),
        st.Field("update_interval", st.duration(0.05, 3600), None, doc="full dump interval"),
        st.Field(
            "smoothing_half_life",
            whole_seconds(0, 3600),
            None,
            doc="-M: half-life of the metric smoothing used for route selection (0: none)",
        ),
        st.Field("debug", st.integer(0, 3), 0, doc="-d: babeld's debug level, to babeld.log"),
        st.Field(
            "link_type",
            st.choice("auto", "wired", "wireless"),
            "auto",
            doc="auto: wired for veth links, wireless (ETX, no split horizon) for segments",
        ),
    )

    def missing(self) -> str | None:
        if which("babeld") is None:
            return "babeld not installed (apt-get install babeld)"
        return None

    def start_node(self, mesh: Mesh, topo: Topology, node: str) -> None:
        cfg = self.node_config(topo, node)
        binary = which("babeld") or "babeld"
        ifaces = []
        for i in mesh.state.interfaces.get(node, []):
            kind = cfg["link_type"]
            if kind == "auto":
                kind = "wireless" if i.get("segment") else "wired"
            ifaces.append((i["ifname"], kind))
        if not ifaces:
            return
        directory = node_dir(mesh, node)
        if not live_records(mesh, node, self.role):
            # babeld refuses to start while its pid file exists (left by a SIGKILL)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, "babeld.pid"))
        argv = babeld_argv(binary, directory, ifaces, topo.prefix, cfg)
        with open(os.path.join(directory, "babeld.log"), "ab") as log:
            proc = mesh.popen(node, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        mesh.record_process(proc, node, self.role, argv)
