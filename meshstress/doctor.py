"""What this host can do: one check per capability, each with a remedy when missing."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass

from meshstress.build import netns
from meshstress.errors import plain_error


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    remedy: str = ""


def _try_netns(body: Callable[[object], str]) -> tuple[bool, str]:
    """Run `body(ipr)` inside a throwaway namespace; (ok, detail or error)."""
    import ctypes

    from pyroute2 import IPRoute

    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(netns.CLONE_NEWNET) != 0:
            return False, plain_error(OSError(ctypes.get_errno(), "unshare"))
        try:
            with IPRoute(groups=0) as ipr:
                return True, body(ipr)
        except Exception as exc:  # noqa: BLE001 - every failure is the answer here
            return False, plain_error(exc)
        finally:
            netns.setns(home)
    finally:
        os.close(home)


def _link(kind: str, **kw: object) -> Callable[[object], str]:
    def body(ipr: object) -> str:
        ipr.link("add", ifname="msdoc0", kind=kind, **kw)  # type: ignore[attr-defined]
        return "yes"

    return body


def _qdisc(kind: str, **kw: object) -> Callable[[object], str]:
    def body(ipr: object) -> str:
        ipr.link("set", index=1, state="up")  # type: ignore[attr-defined]
        ipr.tc("add", kind, index=1, handle="1:", **kw)  # type: ignore[attr-defined]
        return "yes"

    return body


def _drop_filter(ipr: object) -> str:
    """The drop filter of radio-like cuts (meshstress.build.drop) on `lo`: a BPF map, a
    SCHED_CLS program, a clsact qdisc and the program on ingress and egress."""
    from meshstress.build import drop, rtnl

    ipr.link("set", index=1, state="up")  # type: ignore[attr-defined]
    m = drop.DropMap(2)
    try:
        fd = drop.load_program(m.fd, [1])
        try:
            with contextlib.closing(rtnl.open_socket()) as sock:
                drop.attach(sock, "doctor", [("lo", 1, fd)])
        finally:
            os.close(fd)
    finally:
        m.close()
    return "clsact + cls_bpf direct action"


_QDISC_PROBES = {
    "netem": _qdisc("netem", delay=1000),
    "tbf": _qdisc("tbf", rate="1mbit", burst=10240, latency="50ms"),
    "htb": _qdisc("htb", default=0),
}


def _bcc() -> tuple[bool, str]:
    try:
        import bcc  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return False, f"cannot import bcc: {exc}"
    release = platform.release()
    for path in (f"/lib/modules/{release}/build", "/sys/kernel/kheaders.tar.xz"):
        if os.path.exists(path):
            return True, f"bcc imports; headers at {path}"
    return False, f"bcc imports, but no kernel headers for {release}"


def _tool(name: str, pkg: str) -> Check:
    path = shutil.which(name)
    return Check(
        name, path is not None, path or "not found", "" if path else f"apt-get install {pkg}"
    )


def _mounted(fstype: str, path: str) -> bool:
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        return any(line.split()[1] == path and line.split()[2] == fstype for line in f)
    return False


def run_checks() -> list[Check]:
    checks: list[Check] = []
    root = os.geteuid() == 0
    checks.append(
        Check(
            "root",
            root,
            "uid 0" if root else f"uid {os.geteuid()}",
            "" if root else "run with sudo",
        )
    )
    if not root:
        return checks
    ok, detail = _try_netns(lambda ipr: "yes")
    checks.append(Check("netns", ok, detail, "" if ok else "a kernel with CONFIG_NET_NS"))
    lab = "or run inside the VM lab: meshstress lab run -- ..."
    for name, body, remedy in (
        ("veth", _link("veth", peer="msdoc1"), "CONFIG_VETH"),
        ("bridge", _link("bridge"), "CONFIG_BRIDGE"),
        ("batman-adv", _link("batadv"), f"modprobe batman-adv (CONFIG_BATMAN_ADV), {lab}"),
        ("netem", _QDISC_PROBES["netem"], f"modprobe sch_netem (CONFIG_NET_SCH_NETEM), {lab}"),
        ("tbf", _QDISC_PROBES["tbf"], f"modprobe sch_tbf (CONFIG_NET_SCH_TBF), {lab}"),
        ("htb", _QDISC_PROBES["htb"], f"modprobe sch_htb (CONFIG_NET_SCH_HTB), {lab}"),
        (
            "tc-bpf",
            _drop_filter,
            "modprobe sch_ingress cls_bpf (CONFIG_BPF_SYSCALL, CONFIG_NET_SCH_INGRESS, "
            f'CONFIG_NET_CLS_BPF: radio-like cuts), or carrier = "lose", {lab}',
        ),
    ):
        ok, detail = _try_netns(body)
        checks.append(Check(name, ok, detail, "" if ok else remedy))
    ok, detail = _bcc()
    checks.append(
        Check(
            "bcc+headers",
            ok,
            detail,
            ""
            if ok
            else f"apt-get install python3-bpfcc linux-headers-{platform.release()}, {lab}",
        )
    )
    tracefs = _mounted("tracefs", "/sys/kernel/tracing")
    checks.append(
        Check(
            "tracefs",
            tracefs,
            "mounted" if tracefs else "not mounted",
            "" if tracefs else "mount -t tracefs tracefs /sys/kernel/tracing",
        )
    )
    kprobes = os.path.exists("/sys/kernel/tracing/kprobe_events") or os.path.exists(
        "/sys/kernel/debug/tracing/kprobe_events"
    )
    checks.append(
        Check(
            "kprobes",
            kprobes,
            "kprobe_events present" if kprobes else "no kprobe_events (or tracefs not mounted)",
            "" if kprobes else f"CONFIG_KPROBES and tracefs, {lab}",
        )
    )
    checks.append(_tool("batctl", "batctl"))
    checks.append(_tool("babeld", "babeld"))
    checks.append(_tool("batmand", "batmand"))
    qemu = _tool("qemu-system-x86_64", "qemu-system-x86")
    qemu.name = "qemu"
    if qemu.ok:
        kvm = os.path.exists("/dev/kvm")
        qemu.detail += " (KVM device present)" if kvm else " (software emulation)"
    checks.append(qemu)
    return checks


def as_json(checks: list[Check]) -> list[dict[str, object]]:
    return [asdict(c) for c in checks]


def has_netem() -> bool:
    """Whether this kernel can make a netem qdisc (tried in a throwaway namespace)."""
    return has_qdisc("netem")


def has_qdisc(kind: str) -> bool:
    """Whether this kernel can make a `kind` qdisc ("netem", "tbf" or "htb"), tried in
    a throwaway namespace."""
    return os.geteuid() == 0 and _try_netns(_QDISC_PROBES[kind])[0]


def missing_qdiscs(kinds: set[str]) -> list[str]:
    """The kinds among `kinds` this kernel cannot make, sorted."""
    return sorted(k for k in kinds if not has_qdisc(k))


def default_scenario_verdict(checks: list[Check]) -> tuple[bool, str]:
    """(whether the default scenario can run here, a sentence saying where or why not):
    on the host when these checks pass everything it needs, else in the VM lab when the
    lab can run here."""
    from meshstress import lab
    from meshstress.cli.run import default_scenario
    from meshstress.model import scenario

    sc = scenario.load(default_scenario())
    by_name = {c.name: c for c in checks}
    missing = [n for n in ("root", "netns", "veth", *sc.needs())
               if n not in by_name or not by_name[n].ok]  # fmt: skip
    if not missing:
        return True, "the default scenario (meshstress run) can run on this host"
    ok, why = lab.lab_available()
    lacks = ", ".join(missing)
    if ok:
        return True, (
            f"the default scenario (meshstress run) runs in the VM lab: this host lacks {lacks}"
        )
    return False, (
        f"the default scenario (meshstress run) can run neither on this host, which lacks "
        f"{lacks}, nor in the VM lab: {why}; {QUICK_HINT}"
    )


# what a host that can run the default scenario nowhere can run instead
QUICK_HINT = (
    "scenarios/quick.toml needs none of that (babeld, no netem or BCC): "
    "sudo meshstress run scenarios/quick.toml"
)
