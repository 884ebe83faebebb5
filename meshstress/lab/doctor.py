"""`meshstress lab doctor`: boot the lab and report what its kernel offers."""

from __future__ import annotations

import io
from typing import Any

from meshstress.lab import kernel, qemu, runner


def _qdisc(spec: str) -> str:
    return f"tc qdisc add dev lo root {spec} && tc qdisc del dev lo root"


# name -> (shell test printing a detail on stdout, exit 0 if present; essential for meshstress?)
CHECKS: dict[str, tuple[str, bool]] = {
    "kernel": ("uname -r", True),
    "batman-adv": (
        "cat /sys/module/batman_adv/version && ip link add msdoc0 type batadv"
        " && ip link del msdoc0",
        True,
    ),
    "netem": ("tc qdisc add dev lo root netem delay 1ms && tc qdisc del dev lo root", True),
    "tbf": (_qdisc("tbf rate 1mbit burst 32kbit latency 50ms"), False),
    "htb": (_qdisc("htb default 1"), False),
    "fq_codel": (_qdisc("fq_codel"), False),
    "veth": ("ip link add msdoc1 type veth peer name msdoc2 && ip link del msdoc1", True),
    "bridge": ("test -d /sys/module/bridge", False),
    "ifb": ("test -d /sys/module/ifb", False),
    "kprobes": ("test -e /sys/kernel/tracing/kprobe_events && echo tracefs", False),
    "btf": ("test -e /sys/kernel/btf/vmlinux && echo /sys/kernel/btf/vmlinux", False),
    "tracefs": ("test -e /sys/kernel/tracing/trace && echo /sys/kernel/tracing", False),
    "debugfs": ("test -d /sys/kernel/debug/tracing || test -e /sys/kernel/debug/bdi", False),
    "headers": (
        'b="/lib/modules/$(uname -r)/build"; test -e "$b/Makefile" && readlink "$b"',
        False,
    ),
    "kheaders": ("test -e /sys/kernel/kheaders.tar.xz", False),
    "bcc": ("/usr/bin/python3 -c 'import bcc; print(bcc.__file__)'", False),
    "batctl": ("batctl -v", False),
}


def probe_script(checks: dict[str, tuple[str, bool]] = CHECKS) -> str:
    """A sh script printing `@@name=ok|no detail` per check."""
    lines = ["nl='\n'"]
    for name, (test, _) in checks.items():
        lines.append(
            f"if d=$( ( {test} ) 2>&1 ); then s=ok; else s=no; fi; "
            f'd=${{d%%"$nl"*}}; echo "@@{name}=$s $d"'
        )
    return "\n".join(lines) + "\n"


def parse_probe(output: str, checks: dict[str, tuple[str, bool]] = CHECKS) -> dict[str, Any]:
    """The report from the probe's output: per check ok/detail, and overall ok."""
    results: dict[str, dict[str, Any]] = {}
    for line in output.splitlines():
        if not line.startswith("@@") or "=" not in line:
            continue
        name, rest = line[2:].split("=", 1)
        status, _, detail = rest.partition(" ")
        results[name] = {"ok": status == "ok", "detail": detail.strip()}
    for name in checks:
        results.setdefault(name, {"ok": False, "detail": "not reported"})
    ok = all(results[n]["ok"] for n, (_, essential) in checks.items() if essential)
    return {"ok": ok, "checks": results}


def doctor(kernel_package: str | None = None) -> dict[str, Any]:
    """Boot the lab once and run every check inside it."""
    available, why = runner.lab_available(kernel_package)
    if not available:
        return {"ok": False, "error": why, "checks": {}}
    buf = io.BytesIO()
    timings: dict[str, float] = {}
    rc = runner.run_in_lab(
        ["sh", "-c", probe_script()],
        cwd="/",
        share=False,
        kernel_package=kernel_package,
        stdout=buf,
        stderr=io.BytesIO(),
        timeout=600,
        timings=timings,
    )
    report = parse_probe(buf.getvalue().decode(errors="replace"))
    k = kernel.cached_kernel(kernel_package)
    exe = qemu.qemu_binary() or qemu.QEMU
    report["lab"] = {
        "package": k.package if k else kernel_package,
        "version": k.version if k else "",
        "accel": "kvm" if qemu.kvm_usable(exe) else "tcg",
        "boot_seconds": round(timings.get("boot", 0.0), 2),
        "probe_exit": rc,
    }
    return report


def render_table(report: dict[str, Any]) -> str:
    """A plain text table (one row per capability)."""
    if "error" in report:
        return f"lab unavailable: {report['error']}"
    rows = [("capability", "ok", "detail")]
    for name, r in report["checks"].items():
        rows.append((name, "yes" if r["ok"] else "NO", r["detail"]))
    w0 = max(len(r[0]) for r in rows)
    lines = [f"{a:<{w0}}  {b:<3}  {c}".rstrip() for a, b, c in rows]
    lab = report.get("lab", {})
    lines.append(
        f"\n{lab.get('package', '')} {lab.get('version', '')} via {lab.get('accel', '')}, "
        f"command started {lab.get('boot_seconds', 0)} s after invocation"
    )
    return "\n".join(lines)
