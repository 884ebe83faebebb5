"""VM lab pure logic: no root, no qemu, no kernel download."""

from __future__ import annotations

import dataclasses
import gzip
import json
import lzma
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from meshstress.lab import doctor, guest, initramfs, kernel, qemu, runner

POLICY = """linux-image-amd64:
  Installed: 6.1.192-2
  Candidate: 6.1.192-2
  Version table:
 *** 6.1.192-2 500
"""

SHOW = """Package: linux-headers-6.1.0-56-amd64
Version: 6.1.192-2
Depends: linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2),
 linux-compiler-gcc-12-x86 | gcc:any
Description: headers

Package: linux-headers-6.1.0-56-amd64
Version: 6.1.176-1
Depends: linux-headers-6.1.0-50-common
"""

MODULES_DEP = """kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/9p/9p.ko: kernel/fs/fscache/fscache.ko kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
kernel/drivers/virtio/virtio.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko kernel/net/9p/9pnet.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/batman-adv/batman-adv.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
"""  # noqa: E501


# ---------------------------------------------------------------- kernel package resolution


def test_candidate_and_none() -> None:
    assert kernel.parse_candidate(POLICY) == "6.1.192-2"
    assert kernel.parse_candidate("foo:\n  Installed: (none)\n  Candidate: (none)\n") is None
    assert kernel.parse_candidate("") is None


def test_depends_first_stanza_continuation_and_alternatives() -> None:
    assert kernel.parse_depends(SHOW) == [
        "linux-headers-6.1.0-56-common",
        "linux-kbuild-6.1",
        "linux-compiler-gcc-12-x86",
        "gcc",
    ]
    assert kernel.parse_depends("Package: x\nVersion: 1\n") == []


def test_metapackage_resolves_to_the_versioned_image() -> None:
    deps = kernel.parse_depends(
        "Package: linux-image-amd64\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n"
    )
    assert (
        kernel.image_package_from_depends("linux-image-amd64", deps) == "linux-image-6.1.0-56-amd64"
    )
    versioned = ["kmod", "linux-base (>= 4.3~)", "initramfs-tools"]
    assert kernel.image_package_from_depends("linux-image-6.1.0-56-amd64", versioned) == (
        "linux-image-6.1.0-56-amd64"
    )


def test_release_and_header_packages_and_deb_name() -> None:
    assert kernel.release_of("linux-image-6.1.0-56-amd64") == "6.1.0-56-amd64"
    assert kernel.release_of("linux-image-6.1.0-56-amd64-unsigned") == "6.1.0-56-amd64"
    with pytest.raises(kernel.CapabilityError):
        kernel.release_of("linux-headers-6.1.0-56-amd64")
    assert kernel.header_packages_from_depends(kernel.parse_depends(SHOW)) == [
        "linux-headers-6.1.0-56-common",
        "linux-kbuild-6.1",
    ]
    assert kernel.deb_filename("foo", "1:2.3-1", "amd64") == "foo_1%3a2.3-1_amd64.deb"


def test_cached_kernel_alias_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSTRESS_LAB_CACHE", str(tmp_path))
    assert kernel.cached_kernel("linux-image-amd64") is None
    root = tmp_path / "kernels" / "linux-image-9.9.9-1-amd64_9.9.9-1"
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "vmlinuz-9.9.9-1-amd64").write_bytes(b"k")
    (root / "lib" / "modules" / "9.9.9-1-amd64").mkdir(parents=True)
    (root / "usr" / "src" / "linux-headers-9.9.9-1-amd64").mkdir(parents=True)
    k = kernel.Kernel("linux-image-9.9.9-1-amd64", "9.9.9-1", "9.9.9-1-amd64", root)
    kernel._save_alias("linux-image-amd64", k)
    assert kernel.cached_kernel("linux-image-amd64") is None  # not marked complete
    (root / ".complete").write_text("x\n")
    got = kernel.cached_kernel("linux-image-amd64")
    assert got == k and got.has_headers
    assert got.bind_mounts() == [
        (str(root / "lib/modules/9.9.9-1-amd64"), "/lib/modules/9.9.9-1-amd64"),
        (str(root / "usr/src/linux-headers-9.9.9-1-amd64"), "/usr/src/linux-headers-9.9.9-1-amd64"),
    ]


# ---------------------------------------------------------------- initramfs


def test_modules_resolve_dependencies_first_and_skip_builtins() -> None:
    order = initramfs.resolve_modules(
        MODULES_DEP, "kernel/drivers/virtio/virtio.ko\n", ("9p", "9pnet_virtio", "batman_adv")
    )
    names = [initramfs.module_name(p) for p in order]
    assert sorted(names) == sorted(["netfs", "fscache", "9pnet", "9p", "virtio_ring",
                                    "9pnet_virtio", "libcrc32c", "batman_adv"])  # fmt: skip
    deps = initramfs.parse_modules_dep(MODULES_DEP)
    for i, name in enumerate(names):  # every dependency is loaded before its user
        for dep in deps[name][1]:
            dname = initramfs.module_name(dep)
            assert dname == "virtio" or names.index(dname) < i, (name, dname)
    assert initramfs.resolve_modules(MODULES_DEP, "", ("nonexistent",)) == []


def _parse_cpio(data: bytes) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out[name] = (mode, body)


def test_cpio_newc_round_trip() -> None:
    entries = initramfs.initramfs_entries(b"BUSYBOX", [("kernel/a/x.ko", b"abc"), ("y.ko", b"")])
    files = _parse_cpio(initramfs.cpio_newc(entries))
    assert files["bin/busybox"] == (0o100755, b"BUSYBOX")
    assert files["lib/modules/00-x.ko"][1] == b"abc"
    assert files["modules"][1] == b"00-x.ko\n01-y.ko\n"
    assert files["dev/console"][0] == 0o020600
    assert files["init"][1].startswith(b"#!/bin/busybox sh\n")


def test_cpio_archive_extracts_with_cpio(tmp_path: Path) -> None:
    if not shutil.which("cpio"):
        pytest.skip("cpio not installed")
    entries = [initramfs._dir("d"), initramfs.CpioEntry("d/f", 0o100644, b"hello\n")]
    subprocess.run(["cpio", "-id", "--quiet"], input=initramfs.cpio_newc(entries),
                   cwd=tmp_path, check=True)  # fmt: skip
    assert (tmp_path / "d" / "f").read_bytes() == b"hello\n"


def test_init_script_is_valid_shell_and_mounts_what_the_guest_needs() -> None:
    text = initramfs.init_script()
    assert subprocess.run(["sh", "-n", "-c", text]).returncode == 0
    for needle in ("hostroot /lower", "ro,trans=virtio", "lowerdir=/lower,upperdir=/rw/upper",
                   "mslab /xchg", ". /xchg/boot.conf", "switch_root /newroot"):  # fmt: skip
        assert needle in text
    assert (Path("/") / "bin" / "busybox").name == "busybox"


def test_static_busybox_detection(tmp_path: Path) -> None:
    assert not initramfs._is_static(Path(sys.executable).resolve())  # dynamically linked
    fake = tmp_path / "x"
    fake.write_bytes(b"#!/bin/sh\n")
    assert not initramfs._is_static(fake)


# ---------------------------------------------------------------- guest files


def test_env_file_round_trips_awkward_values(tmp_path: Path) -> None:
    env = {"A": "plain", "Q": "it's \"quoted\" $HOME `x` \\", "NL": "two\nlines", "E": "",
           "bad-name": "dropped", "SHLVL": "9", "U": "ünï"}  # fmt: skip
    path = tmp_path / "env"
    path.write_bytes(guest.env_file(env))
    out = subprocess.run(
        ["sh", "-c", f". {shlex.quote(str(path))}; {sys.executable} -c "
         "'import os,json; print(json.dumps(dict(os.environ)))'"],
        env={}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout)
    for k in ("A", "Q", "NL", "E", "U"):
        assert got[k] == env[k]
    assert "bad-name" not in got and got.get("SHLVL") != "9"


def test_boot_conf_quotes_paths(tmp_path: Path) -> None:
    conf = guest.boot_conf([("/c/with space/mod", "/lib/modules/v")], [("share0", "/p/it's")])
    script = 'lab_bind() { printf \'B<%s><%s>\\n\' "$1" "$2"; }\n'
    script += 'lab_share() { printf \'S<%s><%s>\\n\' "$1" "$2"; }\n' + conf
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == "B</c/with space/mod></lib/modules/v>\nS<share0></p/it's>\n"


def test_stage2_runs_command_with_quoted_argv_in_cwd() -> None:
    argv = ["printf", "%s|", "a b", "it's", "$HOME"]
    text = guest.stage2_script(argv, "/work/dir with space")
    assert subprocess.run(["sh", "-n", "-c", text]).returncode == 0
    exec_line = next(line for line in text.splitlines() if line.strip().startswith("exec "))
    assert shlex.split(exec_line.strip())[1:] == argv
    assert "cd '/work/dir with space' || exit 125" in text
    assert "modprobe -a -q batman-adv sch_netem" in text
    assert "/run/mslab/rc" in text and "sysrq-trigger" in text


# ---------------------------------------------------------------- qemu command line


def _spec(**kw: Any) -> qemu.VmSpec:
    base = qemu.VmSpec(vmlinuz="/k/vmlinuz", initrd="/k/initrd", xchg_dir="/run/x,y",
                       out_sock="/r/o", err_sock="/r/e", console_log="/r/c.log")  # fmt: skip
    return dataclasses.replace(base, **kw)


def test_qemu_argv_tcg_default() -> None:
    argv = qemu.qemu_argv(_spec(shares=[("share0", "/work/main")]))
    joined = " ".join(argv)
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert argv[argv.index("-cpu") + 1] == "max"
    assert argv[argv.index("-m") + 1] == "2048M" and argv[argv.index("-smp") + 1] == "2"
    assert "-no-reboot" in argv and "-nodefaults" in argv
    virtfs = [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"]
    assert virtfs[0] == ("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                         "multidevs=remap")  # fmt: skip
    assert (
        virtfs[1].startswith("local,path=/run/x,,y,mount_tag=mslab,")
        and "readonly" not in virtfs[1]
    )
    assert virtfs[2].startswith("local,path=/work/main,mount_tag=share0,")
    assert "virtserialport,chardev=msout,name=ms.out" in joined
    assert "socket,id=mserr,path=/r/e" in joined
    assert "quiet" in argv[argv.index("-append") + 1]


def test_qemu_argv_kvm() -> None:
    argv = qemu.qemu_argv(_spec(kvm=True, mem_mb=512, cpus=1))
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-m") + 1] == "512M"


def test_accel_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSTRESS_LAB_ACCEL", "tcg")
    assert qemu.kvm_usable("/nonexistent/qemu") is False


# ---------------------------------------------------------------- run helpers


def test_default_share_is_the_git_tree_and_never_a_system_dir(tmp_path: Path) -> None:
    (tmp_path / "proj" / ".git").mkdir(parents=True)
    (tmp_path / "proj" / "sub").mkdir()
    assert runner.default_share(str(tmp_path / "proj" / "sub")) == str(tmp_path / "proj")
    assert runner.default_share("/") is None
    assert runner.default_share("/etc") is None
    assert not runner.is_safe_share("/usr/") and runner.is_safe_share("/work/main")
    assert not runner.is_safe_share("/usr/share/doc") and not runner.is_safe_share("/etc/x")
    assert not runner.is_safe_share("/home/al", home="/home/al")
    assert runner.is_safe_share("/home/al/proj", home="/home/al")
    assert runner.is_safe_share("/srv/ci/work") and runner.is_safe_share("/usrlocal")
    assert runner.timeout_message(20) == "meshstress lab: timed out after 20 s; guest killed"


def test_run_in_lab_refuses_system_share_and_empty_command() -> None:
    with pytest.raises(runner.MeshstressError):
        runner.run_in_lab([])
    if qemu.qemu_binary():
        with pytest.raises(runner.MeshstressError, match="refusing"):
            runner.run_in_lab(["true"], share="/etc")


def test_reap_stale_kills_recorded_qemu_of_dead_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "state_dir", lambda: tmp_path)
    owner = subprocess.Popen(["true"])
    owner.wait()
    victim = subprocess.Popen(["sleep", "60"])
    rundir = tmp_path / "run-abc"
    rundir.mkdir()
    state = {"qemu_pid": victim.pid, "qemu_create_time": psutil.Process(victim.pid).create_time(),
             "owner_pid": owner.pid, "owner_create_time": 1.0, "rundir": str(rundir)}  # fmt: skip
    (tmp_path / "run-abc.json").write_text(json.dumps(state))
    live = {**state, "owner_pid": os.getpid(),
            "owner_create_time": psutil.Process().create_time()}  # fmt: skip
    (tmp_path / "run-live.json").write_text(json.dumps(live))
    try:
        assert runner.reap_stale() == ["run-abc.json"]
        assert victim.wait(5) is not None
        assert not rundir.exists() and not (tmp_path / "run-abc.json").exists()
        assert (tmp_path / "run-live.json").exists()
    finally:
        if victim.poll() is None:
            victim.kill()


# ---------------------------------------------------------------- doctor


def test_doctor_probe_script_and_parse() -> None:
    checks = {"a": ("echo yes; echo more", True), "b": ("echo why >&2; false", False),
              "c": ("true", True)}  # fmt: skip
    out = subprocess.run(["sh", "-c", doctor.probe_script(checks)], capture_output=True, text=True)
    report = doctor.parse_probe(out.stdout, checks)
    assert report["checks"]["a"] == {"ok": True, "detail": "yes"}
    assert report["checks"]["b"] == {"ok": False, "detail": "why"}
    assert report["ok"] is True
    report = doctor.parse_probe("@@a=ok\n", checks)
    assert report["checks"]["c"] == {"ok": False, "detail": "not reported"} and not report["ok"]
    table = doctor.render_table({**report, "lab": {"accel": "tcg"}})
    assert "a " in table and "NO" in table


def test_default_kernel_package_follows_the_distribution() -> None:
    debian = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
    ubuntu = 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n'
    mint = 'ID=linuxmint\nID_LIKE="ubuntu debian"\n'
    assert kernel.default_kernel_package(debian) == "linux-image-amd64"
    assert kernel.default_kernel_package(ubuntu) == "linux-image-generic"
    assert kernel.default_kernel_package(mint) == "linux-image-generic"
    assert kernel.default_kernel_package("") == "linux-image-amd64"


def test_module_packages_and_compressed_modules(tmp_path: Path) -> None:
    deps = ["linux-image-6.8.0-1-generic", "linux-modules-extra-6.8.0-1-generic", "linux-firmware"]
    assert kernel.module_packages_from_depends(deps) == ["linux-modules-extra-6.8.0-1-generic"]
    (tmp_path / "a.ko.xz").write_bytes(lzma.compress(b"ELFxz"))
    (tmp_path / "b.ko.gz").write_bytes(gzip.compress(b"ELFgz"))
    (tmp_path / "c.ko").write_bytes(b"ELF")
    assert initramfs.read_module(tmp_path / "a.ko.xz") == b"ELFxz"
    assert initramfs.read_module(tmp_path / "b.ko.gz") == b"ELFgz"
    assert initramfs.read_module(tmp_path / "c.ko") == b"ELF"
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", str(tmp_path / "c.ko"), "-o", str(tmp_path / "d.ko.zst")],
                       check=True)  # fmt: skip
        assert initramfs.read_module(tmp_path / "d.ko.zst") == b"ELF"


def _elf_with_note(name: bytes, ntype: int) -> bytes:
    """A minimal little-endian ELF64 with one PT_NOTE segment holding one note."""
    namesz = len(name) + 1
    note = (namesz.to_bytes(4, "little") + (4).to_bytes(4, "little") + ntype.to_bytes(4, "little")
            + name + b"\0" * ((-len(name)) % 4 or 4) + b"\0\0\0\0")  # fmt: skip
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    ehdr[32:40] = (64).to_bytes(8, "little")  # e_phoff
    ehdr[54:56] = (56).to_bytes(2, "little")  # e_phentsize
    ehdr[56:58] = (1).to_bytes(2, "little")  # e_phnum
    phdr = bytearray(56)
    phdr[0:4] = (4).to_bytes(4, "little")  # PT_NOTE
    phdr[8:16] = (120).to_bytes(8, "little")  # p_offset
    phdr[32:40] = len(note).to_bytes(8, "little")  # p_filesz
    return bytes(ehdr + phdr + note)


def test_pvh_note_detection_and_vmlinux_extraction() -> None:
    pvh = _elf_with_note(b"Xen", 18)
    assert kernel.has_pvh_note(pvh)
    assert not kernel.has_pvh_note(_elf_with_note(b"Xen", 17))
    assert not kernel.has_pvh_note(_elf_with_note(b"GNU", 18))
    assert not kernel.has_pvh_note(b"MZ not an elf")
    bzimage = b"\x00setup code\xfd7zXZ\x00junk" + lzma.compress(pvh) + b"trailer"
    assert kernel.extract_vmlinux(bzimage) == pvh
    assert kernel.extract_vmlinux(b"junk" + gzip.compress(pvh)) == pvh
    assert kernel.extract_vmlinux(b"no payload") is None


def test_cached_debian_kernel_has_a_pvh_vmlinux() -> None:
    k = kernel.cached_kernel("linux-image-amd64")
    if k is None:
        pytest.skip("no lab kernel cached (meshstress lab fetch)")
    elf = kernel.extract_vmlinux(k.vmlinuz.read_bytes())
    assert elf is not None and kernel.has_pvh_note(elf)


def test_lab_available_names_the_missing_capability(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu, "qemu_binary", lambda: None)
    ok, why = runner.lab_available()
    assert not ok and why.startswith("qemu-system-x86_64 not installed")
    monkeypatch.setattr(qemu, "qemu_binary", lambda: "/usr/bin/qemu-system-x86_64")
    monkeypatch.setattr(runner, "find_busybox", lambda: Path("/bin/busybox"))
    monkeypatch.setenv("MESHSTRESS_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(kernel, "_apt_candidate", lambda pkg: None)
    ok, why = runner.lab_available("linux-image-amd64")
    assert not ok and "no kernel cached for linux-image-amd64" in why
    monkeypatch.setattr(kernel, "_apt_candidate", lambda pkg: "6.1.192-2")
    assert runner.lab_available("linux-image-amd64") == (
        True, "linux-image-amd64 fetchable with apt"
    )  # fmt: skip


def test_the_guest_of_a_lab_run_skips_the_capability_checks(monkeypatch) -> None:
    # run_in_lab runs `meshstress run --where host` in the guest with this label: the
    # host chose the lab for its kernel, and the checks cost 10-20 s under emulation
    from meshstress import runner
    from meshstress.cli.run import default_scenario
    from meshstress.model import scenario

    sc = scenario.load(default_scenario())

    def checks(_sc: object) -> list[str]:
        raise AssertionError("checked")

    monkeypatch.setattr(runner, "missing_here", checks)
    monkeypatch.setenv("MESHSTRESS_WHERE_LABEL", "lab")
    assert runner.choose_where(sc, "host")[0] == "host"
    monkeypatch.delenv("MESHSTRESS_WHERE_LABEL")
    with pytest.raises(AssertionError, match="checked"):
        runner.choose_where(sc, "host")
