"""`pip install .` as a wheel (not editable): the probes' C files, the default scenario and
the pytest plugin come with it. One wheel build, one fresh venv, checks run from outside
the source tree. Needs no root; runs in CI's host run (`pytest -m "not kernel"`).
Offline hosts install from the local wheelhouse (MESHSTRESS_WHEELHOUSE)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WHEELHOUSE = Path(os.environ.get("MESHSTRESS_WHEELHOUSE", "/var/lib/meshstress/wheels"))
BASE_PYTHON = "/usr/bin/python3"


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(venv, a cwd outside the source tree, env): meshstress installed from a wheel."""
    if not os.path.exists(BASE_PYTHON):
        pytest.skip(f"needs {BASE_PYTHON} to make a fresh venv")
    tmp = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env.pop("MESHSTRESS_PROBES_DIR", None)
    dist, venv, outside, src = tmp / "dist", tmp / "venv", tmp / "elsewhere", tmp / "src"
    outside.mkdir()
    # build from a copy of the checkout's files (tracked or new, not ignored): no stale
    # build/ or egg-info can lend the wheel files the package data would not carry
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    # setuptools and wheel are in the test venv: no build isolation, no index needed
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "-w", str(dist), str(src)], outside, env)  # fmt: skip
    wheels = list(dist.glob("meshstress-*.whl"))
    assert len(wheels) == 1, wheels
    _run([BASE_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], outside, env)
    index = (["--no-index", "--find-links", str(WHEELHOUSE)] if WHEELHOUSE.is_dir() else [])
    _run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", *index,
          "--find-links", str(dist), str(wheels[0]), "pytest"], outside, env)  # fmt: skip
    return venv, outside, env


def test_wheel_has_probes_default_scenario_and_plugin(
    installed: tuple[Path, Path, dict[str, str]],
) -> None:
    venv, outside, env = installed
    py = str(venv / "bin/python")
    # the package imported is the installed one, not this checkout
    where = _run([py, "-c", "import meshstress; print(meshstress.__file__)"], outside, env)
    pkg = Path(where.stdout.strip()).parent
    assert str(pkg).startswith(str(venv)), pkg
    assert not pkg.is_relative_to(REPO)

    # the probes' C files resolve inside the installed package, and build one program
    probe = _run([py, "-c",
                  "from meshstress.observe import probes\n"
                  "text, flags = probes.build_source(list(probes.PROBES), {})\n"
                  "print(probes.PROBES_DIR)\n"
                  "print(len(text), 'TRACEPOINT_PROBE' in text, ' '.join(flags))"],
                 outside, env)  # fmt: skip
    probes_dir, figures = probe.stdout.splitlines()
    assert Path(probes_dir) == pkg / "bpf"
    for name in ("common.h", "netdev.c", "drops.c", "tcp_retrans.c"):
        assert (pkg / "bpf" / name).is_file(), name
    size, has_tp, flags = figures.split(" ", 2)
    assert int(size) > 1000 and has_tp == "True" and "-DPROBE_DROPS" in flags

    # the default scenario is packaged and valid (--where lab: no capability checks)
    check = _run([str(venv / "bin/meshstress"), "run", "--check", "--where", "lab"], outside, env)
    assert "default.toml: valid;" in check.stdout, check.stdout
    assert str(pkg / "data" / "default.toml") in check.stdout

    # the pytest plugin's entry point is registered: its options show in --help
    helptext = _run([py, "-m", "pytest", "--help"], outside, env).stdout
    assert "--meshstress-where" in helptext
