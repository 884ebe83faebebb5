"""Isolation between runs and signals at every stage, on the host (issue 11, item 6).

Each test runs meshstress as a separate process with a state directory of its own
(MESHSTRESS_STATE_DIR under tmp_path), so that it finds its own run there and `clean`
sees no other run's state file. What a test checks is asserted before any cleanup of
its own; the cleanup in `finally` only matters when the test has already failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from meshstress import build
from meshstress.build import bringup, netns, state
from meshstress.build.plan import run_prefix

pytestmark = pytest.mark.network

EXE = [sys.executable, "-m", "meshstress.cli"]
# Ctrl-C reaches a foreground process whose SIGINT is at its default. A CI runner may
# start us with SIGINT ignored (as a shell does for its background jobs), and a child
# inherits that, so the commands that get signals start through this reset.
FOREGROUND = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]
LINE = 'nodes = ["a", "b", "c"]\nlinks = [{ a = "a", b = "b" }, { a = "b", b = "c" }]\n'


def env_with_state(tmp_path: Path) -> dict[str, str]:
    d = tmp_path / "state"
    return {**os.environ, "MESHSTRESS_STATE_DIR": str(d)}


def runs_in(state_dir: str) -> list[state.RunState]:
    out = []
    if os.path.isdir(state_dir):
        for name in sorted(os.listdir(state_dir)):
            if name.endswith(".json"):
                with open(os.path.join(state_dir, name)) as f:
                    out.append(state.RunState.from_dict(json.load(f)))
    return out


def host_links() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute(groups=0) as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def left_of(run_id: str) -> list[str]:
    """Namespaces and host links of the run that still exist."""
    pre = run_prefix(run_id)
    return [n for n in netns.list_names() if n.startswith(pre)] + [
        n for n in host_links() if n.startswith(pre)
    ]


def alive(pids: list[tuple[int, float]]) -> list[int]:
    out = []
    for pid, created in pids:
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 0.05 and p.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def grid_toml(tmp_path: Path, side: int, routing: str = "none") -> Path:
    out = subprocess.run(
        [*EXE, "topo", "gen", "grid4", str(side), str(side), "--routing", routing],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = tmp_path / f"grid{side}.toml"
    path.write_text(out)
    return path


def wait_for(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll `pred` until true; the timeout only keeps a broken run from hanging."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def fallback_teardown(state_dir: str) -> None:
    for st in runs_in(state_dir):
        build.teardown(st, timeout=15)


@contextlib.contextmanager
def started(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """The command, started with SIGINT at its default; afterwards (only when the test
    has failed already) it is killed and its run torn down."""
    proc = subprocess.Popen(
        [*FOREGROUND, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        yield proc
    except BaseException as exc:  # say what the command said, if it has ended
        if proc.poll() is not None and proc.stderr is not None:
            exc.add_note(f"{argv[:2]} exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fallback_teardown(env["MESHSTRESS_STATE_DIR"])


def random_id() -> str:
    return "z" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(3))


# --- look-alikes survive clean --all --------------------------------------------------


def test_clean_all_removes_marked_leftovers_and_spares_look_alikes(tmp_path) -> None:
    env = env_with_state(tmp_path)
    state_dir = env["MESHSTRESS_STATE_DIR"]
    topo = tmp_path / "line.toml"
    topo.write_text(LINE)
    decoy = random_id()
    decoy_ns, decoy_link = f"ms-{decoy}-n0", f"ms-{decoy}-w"
    decoy_proc = None
    run_id = None
    try:
        up = subprocess.run(
            [*EXE, "up", str(topo), "--routing", "static", "--json"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert up.returncode == 0, up.stderr
        (st,) = runs_in(state_dir)
        run_id = st.run_id
        # a crash that lost the state file: only the sweep can find the run now
        os.unlink(os.path.join(state_dir, f"{run_id}.json"))
        # look-alikes that meshstress did not make: same prefix shape, a routing daemon's name
        subprocess.run(["ip", "netns", "add", decoy_ns], check=True)
        subprocess.run(["ip", "link", "add", decoy_link, "type", "bridge"], check=True)
        decoy_proc = subprocess.Popen(["bash", "-c", "exec -a babeld sleep 600"])
        wait_for(lambda: psutil.Process(decoy_proc.pid).name() != "bash", 10, "decoy exec")
        assert left_of(run_id)

        out = subprocess.run(
            [*EXE, "clean", "--all"], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert left_of(run_id) == []  # the marked leftovers went
        assert decoy_ns in netns.list_names()
        assert decoy_link in host_links()
        assert decoy_proc.poll() is None
        assert f"left {decoy_ns}" in out.stdout and f"left {decoy_link}" in out.stdout
    finally:
        if decoy_proc is not None:
            decoy_proc.kill()
            decoy_proc.wait()
        subprocess.run(["ip", "netns", "del", decoy_ns], capture_output=True)
        subprocess.run(["ip", "link", "del", decoy_link], capture_output=True)
        if run_id is not None:
            build.sweep([run_id])  # (removed, spared, live)


def test_clean_all_of_another_state_directory_spares_a_live_run(tmp_path, monkeypatch) -> None:
    """A run whose state file lives in another state directory (another user's CI, a test
    with its own MESHSTRESS_STATE_DIR, a benchmark) is invisible to `clean --all`'s state
    files; its mark names its owner, alive, so the sweep leaves it. Once the owner has
    gone, the same sweep removes it."""
    from meshstress.model.topology import Link, Node, Topology

    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path / "mine"))
    (tmp_path / "theirs").mkdir()
    env = env_with_state(tmp_path / "theirs")
    line = Topology("l2", [Node("a"), Node("b")], [Link("a", "b")])
    mine = bringup.bring_up(line, wait=False).state
    try:
        out = subprocess.run(
            [*EXE, "clean", "--all"], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr
        names = [n for n in netns.list_names() if n.startswith(run_prefix(mine.run_id))]
        assert len(names) == 2, out.stdout
        assert all(f"left {n}: the run that made it is still running" in out.stdout
                   for n in names), out.stdout  # fmt: skip
        # the same namespaces with an owner that has gone (a PID that started later than
        # the run: recycled) are leftovers
        assert build.read_mark(build.mark(mine.run_id, os.getpid(), mine.created - 3600),
                               mine.run_id)[0]  # fmt: skip
        assert not state.process_alive_since(os.getpid(), mine.created - 3600)
    finally:
        build.teardown(mine)


# --- two runs at once ------------------------------------------------------------------


def test_two_runs_at_once_keep_their_traffic_and_down_of_one_leaves_the_other(
    tmp_path,
) -> None:
    """Two meshes with the same node names and addresses, on different prefixes: pings
    run in both at once; then B keeps pinging while A is torn down. Not one is lost."""
    env = env_with_state(tmp_path)
    state_dir = env["MESHSTRESS_STATE_DIR"]
    topo = tmp_path / "line.toml"
    topo.write_text(LINE)
    ids = (random_id(), random_id())
    try:
        for rid in ids:
            up = subprocess.run(
                [*EXE, "up", str(topo), "--routing", "static", "--run", rid],
                capture_output=True,
                text=True,
                env=env,
            )
            assert up.returncode == 0, up.stderr
        states = {st.run_id: st for st in runs_in(state_dir)}
        assert set(states) == set(ids)
        meshes = {rid: build.Mesh(states[rid]) for rid in ids}
        try:
            a, b = (meshes[rid] for rid in ids)
            assert a.address("c") == b.address("c")  # same addresses, separate namespaces
            results: dict[str, object] = {}

            def ping(name: str, mesh: build.Mesh, count: int) -> None:
                results[name] = mesh.ping("a", "c", count=count, interval=0.02, wait=2.0)

            both = [threading.Thread(target=ping, args=(rid, meshes[rid], 100)) for rid in ids]
            for t in both:
                t.start()
            for t in both:
                t.join()
            for rid in ids:
                r = results[rid]
                assert r.sent == 100 and r.received == 100, (rid, r)  # type: ignore[attr-defined]

            during = threading.Thread(target=ping, args=("during", b, 150))
            during.start()
            time.sleep(0.5)
            down = subprocess.run(
                [*EXE, "down", "--run", ids[0]], capture_output=True, text=True, env=env
            )
            during.join()
            assert down.returncode == 0, down.stderr
            r = results["during"]
            assert r.sent == 150 and r.received == 150, r  # type: ignore[attr-defined]
            assert left_of(ids[0]) == []
            assert len([n for n in netns.list_names() if n.startswith(run_prefix(ids[1]))]) == 3
            assert b.ping("a", "c", count=3).ok
            assert [st.run_id for st in runs_in(state_dir)] == [ids[1]]
        finally:
            for m in meshes.values():
                m.close()
    finally:
        fallback_teardown(state_dir)


# --- signals at every stage --------------------------------------------------------------


def processes_of(st: state.RunState) -> list[tuple[int, float]]:
    return [(p.pid, p.create_time) for p in st.processes]


def interrupt_and_check(
    proc: subprocess.Popen[str], sig: int, state_dir: str, run_id: str, watched: list
) -> float:
    """Send `sig`, wait for the process to end, and check that nothing of the run is
    left at that moment: namespaces, host links, state file, recorded processes."""
    t = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - t
    assert left_of(run_id) == [], (took, err[-2000:])
    assert runs_in(state_dir) == []
    assert alive(watched) == []
    assert not os.path.exists(os.path.join(state_dir, f"ms-{run_id}-files"))
    print(
        f"\n{signal.Signals(sig).name}: exited {proc.returncode} after {took:.2f} s, nothing left"
    )
    return took


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_1024_node_build_leaves_nothing(tmp_path, sig) -> None:
    env = env_with_state(tmp_path)
    state_dir = env["MESHSTRESS_STATE_DIR"]
    topo = grid_toml(tmp_path, 32)
    run_id = None
    with started([*EXE, "up", str(topo), "--no-wait"], env) as proc:
        # mid-build: the state file exists and some of its namespaces do, not all
        def building() -> bool:
            nonlocal run_id
            runs = runs_in(state_dir)
            if not runs or not runs[0].namespaces:
                return False
            run_id = runs[0].run_id
            made = [n for n in netns.list_names() if n.startswith(run_prefix(run_id))]
            return 50 <= len(made) < len(runs[0].namespaces)

        wait_for(building, 120, "a build half way")
        assert run_id is not None
        interrupt_and_check(proc, sig, state_dir, run_id, [])
        assert proc.returncode != 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_convergence_leaves_nothing(tmp_path, sig) -> None:
    env = env_with_state(tmp_path)
    state_dir = env["MESHSTRESS_STATE_DIR"]
    topo = grid_toml(tmp_path, 4, routing="babeld")
    with started([*EXE, "up", str(topo), "--wait", "--timeout", "300"], env) as proc:
        watched: list[tuple[int, float]] = []

        def daemons_running() -> bool:
            runs = runs_in(state_dir)
            if runs and len(runs[0].processes) == 16:
                watched[:] = processes_of(runs[0])
                return True
            return False

        wait_for(daemons_running, 120, "16 babeld daemons started")
        (st,) = runs_in(state_dir)
        assert st.status == "up"  # built, and still waiting for the routes
        assert len(alive(watched)) == 16
        interrupt_and_check(proc, sig, state_dir, st.run_id, watched)


SCENARIO = """
[scenario]
name = "sig-traffic"
duration = "60s"
[mesh]
generate = "line 3"
routing = "static"
[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n2"
rate = "50pps"
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_traffic_leaves_nothing(tmp_path, sig) -> None:
    env = env_with_state(tmp_path)
    state_dir = env["MESHSTRESS_STATE_DIR"]
    scen = tmp_path / "sig.toml"
    scen.write_text(SCENARIO)
    with started(
        [*EXE, "run", str(scen), "--where", "host", "--out", str(tmp_path / "out")], env
    ) as proc:
        watched: list[tuple[int, float]] = []

        def flowing() -> bool:
            runs = runs_in(state_dir)
            traffic = [p for p in runs[0].processes if p.role == "traffic"] if runs else []
            if len(traffic) >= 2:  # the receiver and the sender of cbr
                watched[:] = processes_of(runs[0])
                return True
            return False

        wait_for(flowing, 120, "the flow's agents running")
        (st,) = runs_in(state_dir)
        interrupt_and_check(proc, sig, state_dir, st.run_id, watched)
        assert proc.returncode in (130, 143), proc.returncode


def test_clean_leaves_a_run_whose_owner_is_alive(tmp_path, monkeypatch) -> None:
    """A run in progress (its owner, this test process, alive) survives `clean --all` from
    another process; a run whose owner has exited (`meshstress up`) is removed."""
    from meshstress.model.topology import Link, Node, Topology

    env = env_with_state(tmp_path)
    state_dir = env["MESHSTRESS_STATE_DIR"]
    monkeypatch.setattr(state, "STATE_DIR", state_dir)
    topo = tmp_path / "line.toml"
    topo.write_text(LINE)
    mine = None
    try:
        line = Topology("l2", [Node("a"), Node("b")], [Link("a", "b")])
        mine = bringup.bring_up(line, wait=False).state
        up = subprocess.run([*EXE, "up", str(topo)], capture_output=True, text=True, env=env)
        assert up.returncode == 0, up.stderr
        (orphan,) = [st for st in runs_in(state_dir) if st.run_id != mine.run_id]
        out = subprocess.run(
            [*EXE, "clean", "--all"], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert f"run {mine.run_id}: left" in out.stdout
        assert len([n for n in netns.list_names() if n.startswith(run_prefix(mine.run_id))]) == 2
        assert left_of(orphan.run_id) == []
        assert [st.run_id for st in runs_in(state_dir)] == [mine.run_id]
    finally:
        if mine is not None:
            build.teardown(mine)
        fallback_teardown(state_dir)
