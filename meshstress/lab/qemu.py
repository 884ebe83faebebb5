"""qemu command line (pure) and the KVM usability probe."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshstress import safefs
from meshstress.errors import MeshstressError
from meshstress.lab.guest import ERR_PORT, OUT_PORT
from meshstress.lab.initramfs import ROOT_TAG, XCHG_TAG

QEMU = "qemu-system-x86_64"
KERNEL_CMDLINE = (
    "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init 8250.nr_uarts=1 "
    "i8042.noaux i8042.nokbd i8042.nopnp mitigations=off tsc=reliable no_timer_check "
    "random.trust_cpu=on"
)


@dataclass(frozen=True)
class VmSpec:
    """Everything the qemu command line depends on."""

    vmlinuz: str
    initrd: str
    xchg_dir: str
    out_sock: str
    err_sock: str
    console_log: str
    shares: list[tuple[str, str]] = field(default_factory=list)  # (tag, host path), writable
    mem_mb: int = 2048
    cpus: int = 2
    kvm: bool = False
    qemu: str = QEMU
    cmdline: str = KERNEL_CMDLINE
    bios: str | None = None  # e.g. qboot.rom: boots -kernel faster than SeaBIOS
    machine: str = "pc"


def opt_escape(value: str) -> str:
    """qemu option values escape ',' by doubling it."""
    return value.replace(",", ",,")


def virtfs(path: str, tag: str, readonly: bool) -> str:
    ro = ",readonly=on" if readonly else ""
    return f"local,path={opt_escape(path)},mount_tag={tag},security_model=none{ro},multidevs=remap"


def qemu_argv(spec: VmSpec) -> list[str]:
    """The full qemu argv for one lab run."""
    accel = ["-accel", "kvm", "-cpu", "host"] if spec.kvm else [
        "-accel", "tcg,thread=multi", "-cpu", "max"
    ]  # fmt: skip
    argv = [
        spec.qemu,
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-monitor", "none",
        "-no-reboot",
        "-machine", spec.machine,
        *(["-bios", spec.bios] if spec.bios else []),
        *accel,
        "-smp", str(spec.cpus),
        "-m", f"{spec.mem_mb}M",
        "-kernel", spec.vmlinuz,
        "-initrd", spec.initrd,
        "-append", spec.cmdline,
        "-serial", f"file:{spec.console_log}",
        "-virtfs", virtfs("/", ROOT_TAG, readonly=True),
        "-virtfs", virtfs(spec.xchg_dir, XCHG_TAG, readonly=False),
    ]  # fmt: skip
    for tag, path in spec.shares:
        argv += ["-virtfs", virtfs(path, tag, readonly=False)]
    argv += [
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=msout,path={opt_escape(spec.out_sock)}",
        "-device", f"virtserialport,chardev=msout,name={OUT_PORT}",
        "-chardev", f"socket,id=mserr,path={opt_escape(spec.err_sock)}",
        "-device", f"virtserialport,chardev=mserr,name={ERR_PORT}",
    ]  # fmt: skip
    return argv


def qemu_binary() -> str | None:
    return shutil.which(QEMU)


def _probe_cache() -> Path:
    """In the lab's own directory (checked: ours, 0700), never a guessable /tmp name."""
    from meshstress.lab.runner import state_dir

    return state_dir() / "kvm-probe.json"


def kvm_usable(qemu: str) -> bool:
    """True if /dev/kvm exists and qemu really starts a vCPU with it (result cached per boot)."""
    if os.environ.get("MESHSTRESS_LAB_ACCEL") in ("tcg", "kvm"):
        return os.environ["MESHSTRESS_LAB_ACCEL"] == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        cache = _probe_cache()
    except (OSError, MeshstressError):
        return _probe_kvm(qemu)
    try:
        return bool(json.loads(cache.read_text())["kvm"])
    except (OSError, ValueError, KeyError):
        pass
    ok = _probe_kvm(qemu)
    with contextlib.suppress(OSError):
        safefs.write_file(cache.parent, cache.name, json.dumps({"kvm": ok}))
    return ok


def _probe_kvm(qemu: str) -> bool:
    """Boot nothing with KVM for a moment: a stock kernel's MSR failure aborts qemu at once."""
    argv = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-accel", "kvm",
            "-cpu", "host", "-m", "64M", "-machine", "pc"]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            time.sleep(0.1)
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
