"""Obtain a stock distribution kernel (image, modules, headers) unpacked in a cache.

The packages are fetched with ``apt-get download`` (or taken from apt's own archive cache),
unpacked with ``dpkg -x`` into a temporary directory next to the cache entry and renamed into
place, so an interrupted or concurrent fetch never leaves a half-filled entry. Nothing is
installed on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meshstress.errors import CapabilityError

DEFAULT_KERNEL_PACKAGE = "linux-image-amd64"  # Debian's; Ubuntu hosts get linux-image-generic
UBUNTU_KERNEL_PACKAGE = "linux-image-generic"
APT_ARCHIVES = Path("/var/cache/apt/archives")
_PKG_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def cache_root() -> Path:
    """Where kernels and initramfs images are cached (/var/cache/meshstress/lab for root)."""
    override = os.environ.get("MESHSTRESS_LAB_CACHE")
    if override:
        return Path(override)
    system = Path("/var/cache/meshstress/lab")
    if os.geteuid() == 0:
        return system
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "meshstress" / "lab"


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel in the cache."""

    package: str  # versioned image package, e.g. linux-image-6.1.0-56-amd64
    version: str  # Debian package version, e.g. 6.1.192-2
    release: str  # uname -r, e.g. 6.1.0-56-amd64
    root: Path  # the dpkg -x tree: boot/, lib/modules/RELEASE, usr/src/...

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return modules_dir(self.root, self.release)

    @property
    def has_headers(self) -> bool:
        return (self.root / "usr" / "src" / f"linux-headers-{self.release}").is_dir()

    def bind_mounts(self) -> list[tuple[str, str]]:
        """(path inside the cache tree, guest path) pairs the guest bind-mounts over its root."""
        pairs = [(str(self.modules_dir), f"/lib/modules/{self.release}")]
        for sub in ("usr/src", "usr/lib"):
            base = self.root / sub
            if not base.is_dir():
                continue
            for entry in sorted(base.iterdir()):
                if entry.is_dir() and entry.name.startswith(("linux-headers-", "linux-kbuild-")):
                    pairs.append((str(entry), "/" + sub + "/" + entry.name))
        return pairs


# ---------------------------------------------------------------- pure parsing


def parse_candidate(policy_text: str) -> str | None:
    """The 'Candidate:' version from `apt-cache policy PKG`, or None if there is none."""
    m = re.search(r"^\s*Candidate:\s*(\S+)", policy_text, re.MULTILINE)
    if not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def parse_depends(show_text: str) -> list[str]:
    """Package names in the first stanza's Depends field of `apt-cache show` (alternatives too)."""
    stanza = show_text.strip().split("\n\n")[0]
    m = re.search(r"^Depends:\s*(.*(?:\n[ \t].*)*)", stanza, re.MULTILINE)
    if not m:
        return []
    names: list[str] = []
    for clause in m.group(1).replace("\n", " ").split(","):
        for alt in clause.split("|"):
            name = alt.strip().split(" ")[0].split(":")[0]
            if name:
                names.append(name)
    return names


def default_kernel_package(os_release: str) -> str:
    """The stock kernel metapackage for the host's distribution (/etc/os-release text)."""
    ids: set[str] = set()
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE"):
            ids.update(value.strip().strip('"').split())
    if "ubuntu" in ids:
        return UBUNTU_KERNEL_PACKAGE
    return DEFAULT_KERNEL_PACKAGE


def host_default_kernel_package() -> str:
    try:
        return default_kernel_package(Path("/etc/os-release").read_text())
    except OSError:
        return DEFAULT_KERNEL_PACKAGE


def module_packages_from_depends(depends: list[str]) -> list[str]:
    """Separate module packages (Ubuntu: linux-modules-*, linux-modules-extra-*)."""
    return [d for d in depends if d.startswith("linux-modules-")]


def image_package_from_depends(package: str, depends: list[str]) -> str:
    """The versioned image package a metapackage points to, or `package` itself."""
    for dep in depends:
        if dep.startswith("linux-image-") and dep != package:
            return dep
    return package


def release_of(image_package: str) -> str:
    """`uname -r` of an image package: linux-image-6.1.0-56-amd64 -> 6.1.0-56-amd64."""
    if not image_package.startswith("linux-image-"):
        raise CapabilityError(f"{image_package}: not a linux-image package")
    rel = image_package[len("linux-image-") :]
    for suffix in ("-unsigned", "-dbg"):
        if rel.endswith(suffix):
            rel = rel[: -len(suffix)]
    return rel


def header_packages_from_depends(depends: list[str]) -> list[str]:
    """The packages a linux-headers package needs for building modules/BPF (common + kbuild)."""
    return [d for d in depends if d.startswith(("linux-headers-", "linux-kbuild-"))]


def deb_filename(package: str, version: str, arch: str) -> str:
    """apt's archive file name (epoch colon quoted as %3a)."""
    return f"{package}_{version.replace(':', '%3a')}_{arch}.deb"


def entry_name(package: str, version: str) -> str:
    return f"{package}_{version.replace(':', '+')}"


# ---------------------------------------------------------------- apt side effects


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )


def _apt_candidate(package: str) -> str | None:
    if not shutil.which("apt-cache"):
        return None
    return parse_candidate(_run(["apt-cache", "policy", package]).stdout)


def _apt_depends(package: str, version: str) -> list[str]:
    return parse_depends(_run(["apt-cache", "show", f"{package}={version}"]).stdout)


def _apt_update() -> None:
    if os.geteuid() == 0 and shutil.which("apt-get"):
        _run(["apt-get", "update", "-q"])


def _arch() -> str:
    out = _run(["dpkg", "--print-architecture"]).stdout.strip()
    return out or "amd64"


def _download(package: str, version: str, dest: Path) -> Path:
    """A .deb for package=version: from apt's archive cache if there, else downloaded."""
    name = deb_filename(package, version, _arch())
    cached = APT_ARCHIVES / name
    if cached.is_file():
        return cached
    for attempt in range(2):
        res = _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=dest)
        got = sorted(dest.glob(f"{package}_*.deb"))
        if res.returncode == 0 and got:
            return got[0]
        if attempt == 0:
            _apt_update()
    raise CapabilityError(
        f"apt-get download {package}={version} failed: {res.stderr.strip().splitlines()[-1:]}"
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def modules_dir(root: Path, release: str) -> Path:
    for cand in (root / "lib" / "modules" / release, root / "usr" / "lib" / "modules" / release):
        if cand.is_dir():
            return cand
    return root / "lib" / "modules" / release


def _alias_path(package: str) -> Path:
    return cache_root() / "kernels" / f"{package}.json"


def _load_alias(package: str) -> Kernel | None:
    try:
        data = json.loads(_alias_path(package).read_text())
        k = Kernel(data["package"], data["version"], data["release"], Path(data["root"]))
    except (OSError, ValueError, KeyError):
        return None
    return k if k.vmlinuz.is_file() and (k.root / ".complete").is_file() else None


def _save_alias(package: str, k: Kernel) -> None:
    path = _alias_path(package)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(
        json.dumps(
            {"package": k.package, "version": k.version, "release": k.release, "root": str(k.root)}
        )
    )
    os.replace(tmp, path)


def cached_kernel(package: str | None = None) -> Kernel | None:
    """The cached kernel for `package` without touching apt, or None."""
    package = package or host_default_kernel_package()
    return _load_alias(package)


def _unpack(debs: list[Path], root: Path, release: str) -> None:
    for deb in debs:
        res = _run(["dpkg-deb", "-x", str(deb), str(root)])
        if res.returncode != 0:
            raise CapabilityError(f"dpkg-deb -x {deb.name} failed: {res.stderr.strip()}")
    # Debian's kmod (30) reads <base>/lib/modules; a merged-/usr package may ship usr/lib/modules.
    if (
        not (root / "lib" / "modules" / release).is_dir()
        and (root / "usr" / "lib" / "modules" / release).is_dir()
    ):
        (root / "lib").mkdir(exist_ok=True)
        os.symlink("../usr/lib/modules", root / "lib" / "modules")
    res = _run(["depmod", "-b", str(root), release])
    if res.returncode != 0:
        raise CapabilityError(f"depmod -b {root} {release} failed: {res.stderr.strip()}")


def fetch_kernel(
    package: str | None = None, *, refresh: bool = False, headers: bool = True
) -> Kernel:
    """The kernel for `package` (default: the host distribution's stock kernel), fetched and
    unpacked into the cache if not there yet."""
    package = package or host_default_kernel_package()
    if not _PKG_NAME.match(package):
        raise CapabilityError(f"{package!r}: not a package name")
    if not refresh:
        k = _load_alias(package)
        if k is not None:
            return k
    for tool in ("apt-cache", "apt-get", "dpkg-deb", "depmod"):
        if not shutil.which(tool):
            raise CapabilityError(f"no kernel cached for {package} and {tool} is not installed")
    version = _apt_candidate(package)
    if version is None:
        _apt_update()
        version = _apt_candidate(package)
    if version is None:
        raise CapabilityError(f"no kernel cached and apt knows no package {package}")
    meta_deps = _apt_depends(package, version)
    image = image_package_from_depends(package, meta_deps)
    image_deps = meta_deps
    if image != package:
        version = _apt_candidate(image) or version
        image_deps = _apt_depends(image, version)
    extra = list(dict.fromkeys(module_packages_from_depends(meta_deps + image_deps)))
    release = release_of(image)
    kernels = cache_root() / "kernels"
    final = kernels / entry_name(image, version)
    with _locked(kernels / ".lock"):
        if (final / ".complete").is_file():
            k = Kernel(image, version, release, final)
            _save_alias(package, k)
            return k
        for stale in kernels.glob(".fetch-*"):  # left by a killed fetch (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        pkgs = [(image, version)]
        for mod in extra:
            mver = _apt_candidate(mod)
            if mver:
                pkgs.append((mod, mver))
        if headers:
            hdr = f"linux-headers-{release}"
            hver = _apt_candidate(hdr)
            if hver:
                pkgs.append((hdr, hver))
                for dep in header_packages_from_depends(_apt_depends(hdr, hver)):
                    dver = _apt_candidate(dep)
                    if dver:
                        pkgs.append((dep, dver))
        with tempfile.TemporaryDirectory(dir=kernels, prefix=".fetch-") as tmp:
            tmpdir = Path(tmp)
            debs = [_download(p, v, tmpdir) for p, v in pkgs]
            root = tmpdir / "root"
            root.mkdir()
            _unpack(debs, root, release)
            k = Kernel(image, version, release, root)
            if not k.vmlinuz.is_file():
                raise CapabilityError(f"{image} {version} has no boot/vmlinuz-{release}")
            (root / ".complete").write_text(" ".join(f"{p}={v}" for p, v in pkgs) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(root, final)
        k = Kernel(image, version, release, final)
        _save_alias(package, k)
        return k


# ---------------------------------------------------------------- uncompressed kernel (PVH)

_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZ_MAGIC = b"\x1f\x8b\x08\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def has_pvh_note(elf: bytes) -> bool:
    """True if a 64-bit ELF has the Xen PHYS32_ENTRY note qemu needs to boot it via PVH."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff = int.from_bytes(elf[32:40], "little")
    phentsize = int.from_bytes(elf[54:56], "little")
    for i in range(int.from_bytes(elf[56:58], "little")):
        ph = phoff + i * phentsize
        if int.from_bytes(elf[ph : ph + 4], "little") != _PT_NOTE:
            continue
        off = int.from_bytes(elf[ph + 8 : ph + 16], "little")
        end = off + int.from_bytes(elf[ph + 32 : ph + 40], "little")
        while off + 12 <= end:
            namesz, descsz, ntype = (
                int.from_bytes(elf[off + j : off + j + 4], "little") for j in (0, 4, 8)
            )
            name = elf[off + 12 : off + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed ELF kernel inside a bzImage (xz or gzip payload), or None."""
    for magic in (_XZ_MAGIC, _GZ_MAGIC):
        start = bzimage.find(magic)
        while start != -1:
            try:
                if magic == _XZ_MAGIC:
                    out = lzma.LZMADecompressor().decompress(bzimage[start:])
                else:
                    out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bzimage[start:])
            except (lzma.LZMAError, zlib.error):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            start = bzimage.find(magic, start + 1)
    return None


def boot_image(k: Kernel) -> Path:
    """The kernel file to give qemu: an uncompressed PVH vmlinux if one can be had (decompressing
    a bzImage in emulated code costs ~3 s under TCG), else the bzImage."""
    target = k.root / "boot" / f"vmlinux-{k.release}.pvh"
    if target.is_file():
        return target
    bad = target.with_suffix(".none")
    if bad.exists():
        return k.vmlinuz
    elf = extract_vmlinux(k.vmlinuz.read_bytes())
    try:
        if elf is None or not has_pvh_note(elf):
            bad.touch()
            return k.vmlinuz
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(elf)
        os.replace(tmp, target)
    except OSError:
        return k.vmlinuz
    return target
