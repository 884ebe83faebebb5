"""The lab's initramfs: busybox, the modules to mount the host root over 9p, and /init.

/init mounts the host's root read-only over virtio-9p, lays a tmpfs-backed overlay on it so the
guest can write anywhere (writes vanish at power-off), bind-mounts the cached kernel's modules and
headers over it, mounts the per-run exchange share and the writable project share, then
switch_root's into the host's own userspace and runs the per-run stage-2 script from the
exchange share. Everything per-run lives in the exchange share, so the image is cached per kernel.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meshstress.errors import CapabilityError
from meshstress.lab.kernel import Kernel, cache_root

# Load order matters: each needs the ones before it. Built-ins are skipped.
BOOT_MODULES = (
    "netfs",
    "fscache",
    "9pnet",
    "9p",
    "virtio_ring",
    "virtio",
    "9pnet_virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "overlay",
    "virtio_console",
)

XCHG_TAG = "mslab"
ROOT_TAG = "hostroot"
GUEST_XCHG = "/run/mslab"
NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=512000"

BUSYBOX_CANDIDATES = ("/usr/lib/initramfs-tools/bin/busybox", "/bin/busybox", "/usr/bin/busybox")


def module_name(path: str) -> str:
    """Canonical module name of a .ko path: kernel/net/9p/9pnet_virtio.ko -> 9pnet_virtio."""
    base = path.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep -> {name: (path, [dependency paths])}."""
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, deps = line.split(":", 1)
        out[module_name(path)] = (path.strip(), deps.split())
    return out


def resolve_modules(dep_text: str, builtin_text: str, wanted: tuple[str, ...]) -> list[str]:
    """Paths of `wanted` modules and their dependencies, dependencies first, built-ins left out."""
    deps = parse_modules_dep(dep_text)
    builtin = {module_name(p) for p in builtin_text.split()}
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in builtin or name not in deps:
            return
        path, dlist = deps[name]
        if path in order:
            return
        # modules.dep lists the full closure, farthest first reversed: load in reverse order.
        for dpath in reversed(dlist):
            visit(by_path.get(dpath, module_name(dpath)))
        if path not in order:
            order.append(path)

    for name in wanted:
        visit(name)
    return order


def init_script() -> str:
    """The initramfs /init (busybox ash). Per-run settings come from the exchange share."""
    return f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {{
  echo "meshstress-lab init: $*" >/dev/console
  echo "$*" >/xchg/init-error 2>/dev/null
  sync
  echo b >/proc/sysrq-trigger
  sleep 5
}}
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done </modules
mount -t 9p -o {NINEP_OPTS} {XCHG_TAG} /xchg || fail "cannot mount the exchange share"
mount -t 9p -o ro,{NINEP_OPTS},cache=loose {ROOT_TAG} /lower || fail "cannot mount the host root"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "cannot mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \\
  || fail "cannot mount the overlay root"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run || fail "cannot mount /run"
lab_bind() {{
  mkdir -p "/newroot$2" && mount --bind "/lower$1" "/newroot$2" || fail "cannot bind $1"
}}
lab_share() {{
  mkdir -p "/newroot$2" && mount -t 9p -o {NINEP_OPTS},cache=mmap "$1" "/newroot$2" \\
    || fail "cannot mount share $2"
}}
. /xchg/boot.conf
# Kernel interfaces and /dev extras, set up here (busybox from RAM is cheaper than host binaries
# over 9p); the mounts move into the new root with /sys and /dev.
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /dev/shm 2>/dev/null
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
hostname mslab
ip link set lo up 2>/dev/null
mkdir -p /newroot{GUEST_XCHG}
mount --move /xchg /newroot{GUEST_XCHG}
for d in proc sys dev; do mount --move "/$d" "/newroot/$d"; done
exec env -i /bin/switch_root /newroot /bin/sh {GUEST_XCHG}/stage2.sh
fail "switch_root failed"
"""


# ---------------------------------------------------------------- cpio (newc)


@dataclass(frozen=True)
class CpioEntry:
    name: str  # without leading slash
    mode: int  # full st_mode (type + permissions)
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def cpio_newc(entries: list[CpioEntry]) -> bytes:
    """A cpio archive in the 'newc' format the kernel unpacks as initramfs."""
    out = bytearray()

    def pad4() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    def header(ino: int, e: CpioEntry) -> None:
        name = e.name.encode() + b"\0"
        fields = (
            ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0
        )  # fmt: skip
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(name)
        pad4()
        out.extend(e.data)
        pad4()

    for ino, e in enumerate(entries, start=1):
        header(ino, e)
    header(0, CpioEntry("TRAILER!!!", 0))
    return bytes(out)


def _dir(name: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFDIR | 0o755)


def find_busybox() -> Path:
    for cand in BUSYBOX_CANDIDATES:
        p = Path(cand)
        if p.is_file() and _is_static(p):
            return p
    raise CapabilityError("no static busybox found: install busybox-static (scripts/setup.sh)")


def _is_static(path: Path) -> bool:
    """True if the ELF has no PT_INTERP (program interpreter) segment."""
    data = path.read_bytes()[:4096]
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off : off + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def initramfs_entries(busybox: bytes, modules: list[tuple[str, bytes]]) -> list[CpioEntry]:
    """The archive's entries: directories, /dev/console, busybox, modules and /init."""
    entries = [
        _dir(d) for d in ("bin", "dev", "proc", "sys", "lower", "rw", "newroot", "xchg", "lib")
    ]
    entries.append(_dir("lib/modules"))
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    order = []
    for i, (path, data) in enumerate(modules):
        fname = f"{i:02d}-{path.rsplit('/', 1)[-1]}"
        order.append(fname)
        entries.append(CpioEntry(f"lib/modules/{fname}", stat.S_IFREG | 0o644, data))
    entries.append(
        CpioEntry("modules", stat.S_IFREG | 0o644, "".join(o + "\n" for o in order).encode())
    )
    entries.append(CpioEntry("init", stat.S_IFREG | 0o755, init_script().encode()))
    return entries


def read_module(path: Path) -> bytes:
    """A module's bytes, decompressed (busybox insmod loads plain .ko only)."""
    data = path.read_bytes()
    name = path.name
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zst"):
        if not shutil.which("zstd"):
            raise CapabilityError(f"{name} is zstd-compressed and zstd is not installed")
        res = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=False)
        if res.returncode != 0:
            raise CapabilityError(f"zstd -d {name} failed")
        return res.stdout
    return data


def build_initramfs(kernel: Kernel) -> Path:
    """The cached initramfs for `kernel` (rebuilt when busybox, modules or /init change)."""
    mdir = kernel.modules_dir
    dep_text = (mdir / "modules.dep").read_text()
    builtin = mdir / "modules.builtin"
    builtin_text = builtin.read_text() if builtin.is_file() else ""
    paths = resolve_modules(dep_text, builtin_text, BOOT_MODULES)
    modules = [(module_name(p) + ".ko", read_module(mdir / p)) for p in paths]
    busybox = find_busybox().read_bytes()
    entries = initramfs_entries(busybox, modules)
    digest = hashlib.sha256()
    for e in entries:
        digest.update(e.name.encode() + b"\0" + hashlib.sha256(e.data).digest())
    target = cache_root() / "initramfs" / f"{kernel.release}-{digest.hexdigest()[:16]}.cpio"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as fh:
        fh.write(cpio_newc(entries))
    os.replace(fh.name, target)
    _prune(target)
    return target


def _prune(keep: Path) -> None:
    """Remove older images for the same kernel release."""
    release = keep.name.rsplit("-", 1)[0]
    for old in keep.parent.glob(f"{release}-*.cpio"):
        if old != keep:
            with contextlib.suppress(OSError):
                old.unlink()
