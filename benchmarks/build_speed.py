#!/usr/bin/env python3
"""Build and tear down big meshes on the host; print JSON with the seconds each took.

In process ("setup"): from the first namespace to every address and route in place;
teardown: until the kernel has destroyed every namespace and link of the run (meshstress
waits for its witness veth in the host namespace to vanish). Targets on a 2-core
machine: grid4 10x10 <= 1.0 s setup and <= 1.0 s teardown; grid4 32x32 <= 10 s setup.

Whole command ("up"), issue 12: `meshstress up FILE --ideal` timed from process start to
exit, and with `--meshnet-lab DIR` meshnet-lab's `network.py apply FILE` on the same
meshnet-lab JSON, side by side in one run: the two alternate (meshstress first in even
repetitions, meshnet-lab first in odd ones), medians are compared. Targets: at least 12x
faster than meshnet-lab on grid4 10x10, 15x on Freifunk Ulm, and grid4 32x32 in 6 s or
less. The 1-minute load average is recorded before each measurement: this host is
shared, and its timings move 1.5x and more with the load.

meshnet-lab runs from its checkout as root and changes eight host sysctls (TTL, neighbour
table sizes); they are put back at the end. Its namespaces ("switch" and "ns-ID") are
removed here by name, never with its `clear` (that deletes every namespace on the host),
and the run refuses to start if one of those names exists already.

Scaling and memory (`--memory`): for grid4 10x10, 32x32, 64x32 and 64x64 by default,
the `up` command's wall and CPU time per node, each build phase per node (namespaces,
veths, addresses), and `scaling`: those per-node times as multiples of the smallest
size's; peak RSS of the `up` command, and the kernel's memory per node from
/proc/meminfo before and after it (MemAvailable, Slab, Percpu, ...). `--settle S`
rests S seconds before each build. Other processes on a shared host move these too.

    sudo .venv/bin/python benchmarks/build_speed.py --meshnet-lab /work/meshnet-lab-bench
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from meshstress import build
from meshstress.build import netns, plan
from meshstress.build.state import RunState
from meshstress.doctor import has_netem
from meshstress.model import generators, topofile
from meshstress.model.topology import Topology

HERE = Path(__file__).resolve().parent


def _shared() -> Path:
    """../shared/data/freifunk next to the checkout (or next to a worktree's parents)."""
    for up in HERE.parents:
        if (up / "shared" / "data" / "freifunk").is_dir():
            return up / "shared" / "data" / "freifunk"
    return HERE.parent.parent / "shared" / "data" / "freifunk"


SHARED = _shared()
TIME = "/usr/bin/time"  # GNU time: the command's own peak RSS (see timed_rusage)
FREIFUNK = SHARED / "freifunk-altdorf.json"
ULM = SHARED / "freifunk-ulm.json"
RATIO_TARGETS = {"grid4-10x10": 12.0, "freifunk-ulm": 15.0}
SECONDS_TARGETS = {"grid4-32x32": 6.0}
# what meshnet-lab's system_setup writes in the host namespace; put back afterwards
MESHNET_SYSCTLS = [
    "net.ipv6.conf.default.hop_limit",
    "net.ipv4.ip_default_ttl",
    *(f"net.{v}.neigh.default.gc_thresh{k}" for v in ("ipv4", "ipv6") for k in (1, 2, 3)),
]
MEMINFO_KEYS = [
    "MemAvailable",
    "MemFree",
    "Slab",
    "SReclaimable",
    "SUnreclaim",
    "KernelStack",
    "PageTables",
    "Percpu",
    "VmallocUsed",
]


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


# --- in process --------------------------------------------------------------------


def measure(topo: Topology, repeat: int, impair: bool) -> dict[str, Any]:
    rows = []
    for _ in range(repeat):
        run_id = plan.new_run_id()
        p = plan.make_plan(topo, run_id, impair=impair)
        st = RunState(run_id=run_id, topology=topo.name)
        load = load1()
        t0 = time.monotonic()
        try:
            build.apply(p, st)
            t1 = time.monotonic()
        finally:
            t2 = time.monotonic()
            problems = build.teardown(st)
            t3 = time.monotonic()
        if problems:
            raise SystemExit(f"teardown problems: {problems}")
        rows.append((t1 - t0, t3 - t2, load))
    return {
        "topology": topo.name,
        "nodes": len(topo.nodes),
        "links": len(topo.links),
        "setup_s": median([r[0] for r in rows]),
        "teardown_s": median([r[1] for r in rows]),
        "setup_all_s": [round(r[0], 3) for r in rows],
        "teardown_all_s": [round(r[1], 3) for r in rows],
        "load1_before": [r[2] for r in rows],
    }


# --- whole commands ----------------------------------------------------------------


def meshstress_argv() -> list[str]:
    """The console script next to this interpreter (what a user types), else -m."""
    script = Path(sys.executable).with_name("meshstress")
    return [str(script)] if script.exists() else [sys.executable, "-m", "meshstress"]


def timed_rusage(argv: list[str], cwd: str | None = None) -> tuple[float, int, str]:
    """Run argv to its end: (seconds from start to exit, its peak RSS in kB, its stdout).
    The command's user and system CPU seconds go to LAST_CPU_S (0 without GNU time).

    The RSS comes from GNU time (when installed, else 0): a child forked from this
    process would count this process's pages, which it held until its exec, as its own
    peak (Linux records the old image's high-water mark at exec). The extra exec costs
    about a millisecond, the same for every command timed."""
    with tempfile.NamedTemporaryFile() as rss, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:  # fmt: skip
        wrap = [TIME, "-f", "%U %S %M", "-o", rss.name] if os.access(TIME, os.X_OK) else []
        t0 = time.perf_counter()
        proc = subprocess.run([*wrap, *argv], cwd=cwd, stdout=out, stderr=err, check=False)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(
                f"{argv[:3]} failed ({proc.returncode}): {err.read().decode()[-2000:]}"
            )
        text = Path(rss.name).read_text().split()
        LAST_CPU_S[:] = [float(text[-3]), float(text[-2])] if wrap and text else [0.0, 0.0]
        return seconds, int(text[-1]) if wrap and text else 0, out.read().decode()


LAST_CPU_S: list[float] = [0.0, 0.0]  # user, system seconds of the last timed command


def up_meshstress(path: str) -> dict[str, Any]:
    run_id = plan.new_run_id()
    load = load1()
    seconds, rss_kb, out = timed_rusage(
        [*meshstress_argv(), "up", path, "--ideal", "--run", run_id, "--json"]
    )
    info = json.loads(out)
    down = time.perf_counter()
    subprocess.run(
        [*meshstress_argv(), "down", "--run", run_id], check=True, stdout=subprocess.DEVNULL
    )
    return {
        "s": seconds,
        "setup_s": info["setup_s"],
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "down_s": round(time.perf_counter() - down, 3),
        "load1": load,
    }


def meshnet_names(path: str) -> list[str]:
    with open(path) as f:
        data = json.load(f)
    ids = {str(n["id"]) for n in data.get("nodes", [])}
    for link in data.get("links", []):
        ids |= {str(link["source"]), str(link["target"])}
    return [f"ns-{i}" for i in sorted(ids)] + ["switch"]


def up_meshnet_lab(directory: str, path: str) -> dict[str, Any]:
    names = meshnet_names(path)
    taken = [n for n in names if netns.exists(n)]
    if taken:
        raise SystemExit(f"meshnet-lab would collide with existing namespaces: {taken[:5]}")
    script = str(Path(directory) / "network.py")
    argv = [script] if os.access(script, os.X_OK) else ["/usr/bin/python3", script]
    load = load1()
    try:
        seconds, rss_kb, _ = timed_rusage([*argv, "apply", path], cwd=directory)
    finally:
        down = time.perf_counter()
        remove_meshnet_lab(names)
    return {
        "s": seconds,
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "down_s": round(time.perf_counter() - down, 3),
        "load1": load,
    }


def remove_meshnet_lab(names: list[str], timeout: float = 120.0) -> None:
    """Remove meshnet-lab's namespaces by name and wait until the kernel has destroyed
    its "switch" (a witness veth of ours moved in there vanishes with it)."""
    from pyroute2 import IPRoute

    witness = "bsw-mnl"
    with IPRoute(groups=0) as ipr:
        if netns.exists("switch"):
            fd = os.open(netns.path("switch"), os.O_RDONLY)
            try:
                ipr.link(
                    "add",
                    ifname=witness,
                    kind="veth",
                    peer={"ifname": witness + "p", "net_ns_fd": fd},
                )
            finally:
                os.close(fd)
        for name in names:  # the node namespaces first, "switch" last
            if netns.exists(name):
                netns.delete(name)
        deadline = time.monotonic() + timeout
        while ipr.link_lookup(ifname=witness) and time.monotonic() < deadline:
            time.sleep(0.01)
        for index in ipr.link_lookup(ifname=witness):
            ipr.link("del", index=index)


def read_sysctls(keys: list[str]) -> dict[str, str]:
    out = {}
    for key in keys:
        with open("/proc/sys/" + key.replace(".", "/")) as f:
            out[key] = f.read().strip()
    return out


def write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)


def side_by_side(cases: list[tuple[str, str, int]], mnl: str | None, repeat: int) -> list[Any]:
    """For each (name, meshnet-lab JSON, node count): meshstress `up` and, with `mnl`,
    meshnet-lab's apply, alternating, `repeat` times each."""
    results = []
    for name, path, nodes in cases:
        ms: list[dict[str, Any]] = []
        ml: list[dict[str, Any]] = []
        with_mnl = mnl is not None and name in RATIO_TARGETS
        for rep in range(repeat):
            order = ["ms", "ml"] if rep % 2 == 0 else ["ml", "ms"]
            for who in order:
                if who == "ms":
                    ms.append(up_meshstress(path))
                elif with_mnl:
                    assert mnl is not None
                    ml.append(up_meshnet_lab(mnl, path))
                time.sleep(1.0)  # let the kernel's namespace cleanup settle
        row: dict[str, Any] = {
            "topology": name,
            "nodes": nodes,
            "meshstress_up_s": median([r["s"] for r in ms]),
            "meshstress_up_all_s": [round(r["s"], 3) for r in ms],
            "meshstress_setup_all_s": [r["setup_s"] for r in ms],
            "meshstress_load1": [r["load1"] for r in ms],
            "meshstress_peak_rss_mb": max(r["peak_rss_mb"] for r in ms),
        }
        if ml:
            row["meshnet_lab_apply_s"] = median([r["s"] for r in ml])
            row["meshnet_lab_apply_all_s"] = [round(r["s"], 3) for r in ml]
            row["meshnet_lab_load1"] = [r["load1"] for r in ml]
            row["ratio"] = round(row["meshnet_lab_apply_s"] / row["meshstress_up_s"], 1)
            if name in RATIO_TARGETS:
                goal = RATIO_TARGETS[name]
                row["target"] = {"ratio_at_least": goal, "met": row["ratio"] >= goal}
        if name in SECONDS_TARGETS:
            goal = SECONDS_TARGETS[name]
            row["target"] = {"up_s_at_most": goal, "met": row["meshstress_up_s"] <= goal}
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
    return results


# --- memory ------------------------------------------------------------------------


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in MEMINFO_KEYS:
                out[key] = int(rest.split()[0])
    return out


def memory(cases: list[tuple[str, str, int]], repeat: int, settle: float) -> list[dict[str, Any]]:
    """For each size: the whole `up` command timed, per node too (wall, its CPU, each
    build phase), its peak RSS, and /proc/meminfo before `up` and after it returned, per
    node. Before each build the host gets `settle` seconds: the kernel destroys the last
    mesh's namespaces in the background after `down`, and on a /run on ext4 without a
    journal a file made soon after thousands were deleted costs more (docs/performance.md)."""
    rows = []
    for name, path, nodes in cases:
        deltas: list[dict[str, int]] = []
        rss: list[float] = []
        loads = []
        ups: list[float] = []
        setups: list[float] = []
        cpus: list[list[float]] = []
        phases: list[dict[str, float]] = []
        for _ in range(repeat if nodes <= 1024 else 1):
            run_id = plan.new_run_id()
            time.sleep(settle)
            loads.append(load1())
            before = meminfo()
            try:
                seconds, rss_kb, out = timed_rusage(
                    [*meshstress_argv(), "up", path, "--ideal", "--run", run_id, "--json"]
                )
                after = meminfo()
                ups.append(round(seconds, 3))
                info = json.loads(out)
                setups.append(info["setup_s"])
                phases.append(info.get("setup_phases_s", {}))
                cpus.append(list(LAST_CPU_S))
            finally:
                subprocess.run(
                    [*meshstress_argv(), "down", "--run", run_id],
                    stdout=subprocess.DEVNULL,
                    check=False,
                )
            rss.append(rss_kb / 1024)
            deltas.append({k: after[k] - before[k] for k in MEMINFO_KEYS})
        per_node = {
            f"{k}_kb": round(statistics.median(d[k] for d in deltas) / nodes, 1)
            for k in MEMINFO_KEYS
        }

        def ms_per_node(xs: list[float], nodes: int = nodes) -> float:
            return round(statistics.median(xs) * 1000 / nodes, 3)

        row = {
            "topology": name,
            "nodes": nodes,
            "peak_rss_mb": round(max(rss), 1),
            "kernel_per_node": per_node,
            "used_per_node_kb": -per_node["MemAvailable_kb"],
            "total_used_mb": round(-statistics.median(d["MemAvailable"] for d in deltas) / 1024),
            "repeat": len(deltas),
            "up_all_s": ups,
            "setup_all_s": setups,
            "up_ms_per_node": ms_per_node(ups),
            "setup_ms_per_node": ms_per_node(setups),
            "up_cpu_all_s": [[round(u, 2), round(k, 2)] for u, k in cpus],
            "up_cpu_ms_per_node": ms_per_node([u + k for u, k in cpus]),
            "phases_ms_per_node": {
                k: ms_per_node([p[k] for p in phases if k in p])
                for k in (phases[0] if phases else {})
            },
            "load1_before": loads,
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def scaling(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Time per node at each size, and as a multiple of the smallest size's."""
    if not rows:
        return {}
    base = rows[0]
    keys = ["up_ms_per_node", "setup_ms_per_node", "up_cpu_ms_per_node"]
    out: dict[str, Any] = {"relative_to": base["topology"], "sizes": []}
    for r in rows:
        item: dict[str, Any] = {"topology": r["topology"], "nodes": r["nodes"]}
        for k in keys:
            item[k] = r[k]
            item[k.replace("_ms_per_node", "_x")] = round(r[k] / base[k], 2) if base[k] else None
        item["phases_ms_per_node"] = r["phases_ms_per_node"]
        out["sizes"].append(item)
    return out


def grid_json(directory: str, w: int, h: int) -> tuple[str, str, int]:
    topo = generators.grid4(w, h)
    path = os.path.join(directory, f"{topo.name}.json")
    with open(path, "w") as f:
        f.write(topofile.dumps_meshnet_json(topo))
    return topo.name, path, len(topo.nodes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per topology (median reported)")
    ap.add_argument("--freifunk", default=str(FREIFUNK), help="meshnet-lab JSON to include")
    ap.add_argument("--ulm", default=str(ULM), help="Freifunk Ulm, for the whole-command runs")
    ap.add_argument("--quick", action="store_true", help="in process: only grid4 10x10")
    ap.add_argument(
        "--meshnet-lab",
        dest="meshnet_lab",
        metavar="DIR",
        help="a meshnet-lab checkout: time its network.py apply side by side",
    )
    ap.add_argument("--no-inprocess", action="store_true", help="skip the in-process runs")
    ap.add_argument("--no-up", action="store_true", help="skip the whole-command runs")
    ap.add_argument(
        "--memory",
        default="10x10,32x32,64x32,64x64",
        help="grid4 sizes for the scaling and memory runs ('' for none)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds of rest before each build of the scaling and memory runs",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    out: dict[str, Any] = {
        "benchmark": "build_speed",
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "load1_at_start": load1(),
    }
    if not args.no_inprocess:
        topos = [generators.grid4(10, 10)]
        if not args.quick:
            topos.append(generators.grid4(32, 32))
            if Path(args.freifunk).exists():
                topos.append(topofile.load(args.freifunk))
        # Freifunk links carry loss (1 - tq): applied where the kernel has netem.
        impair = has_netem()
        out["impairments"] = "applied" if impair else "left out (no sch_netem in this kernel)"
        results = []
        for topo in topos:
            repeat = args.repeat if len(topo.nodes) <= 200 else 1
            results.append(measure(topo, repeat, impair))
        targets = {
            "grid4-10x10": {"setup_s": 1.0, "teardown_s": 1.0},
            "grid4-32x32": {"setup_s": 10.0},
        }
        for r in results:
            for key, limit in targets.get(r["topology"], {}).items():
                r.setdefault("target", {})[key] = {"limit": limit, "met": r[key] <= limit}
        out["results"] = results
        out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    saved = read_sysctls(MESHNET_SYSCTLS)
    with tempfile.TemporaryDirectory(prefix="build-speed-") as tmp:
        try:
            if not args.no_up:
                cases = [grid_json(tmp, 10, 10)]
                if Path(args.ulm).exists():
                    cases.append(("freifunk-ulm", args.ulm, len(topofile.load(args.ulm).nodes)))
                cases.append(grid_json(tmp, 32, 32))
                out["up"] = side_by_side(cases, args.meshnet_lab, args.repeat)
                out["up_targets_met"] = all(
                    r["target"]["met"] for r in out["up"] if "target" in r
                ) and all(
                    name in {r["topology"] for r in out["up"] if "ratio" in r}
                    for name in RATIO_TARGETS
                    if args.meshnet_lab
                )
            if args.memory:
                sizes = [tuple(int(x) for x in s.split("x")) for s in args.memory.split(",")]
                out["memory"] = memory(
                    [grid_json(tmp, w, h) for w, h in sizes], args.repeat, args.settle
                )
                out["scaling"] = scaling(out["memory"])
        finally:
            with contextlib.suppress(OSError):
                write_sysctls(saved)
    out["load1_at_end"] = load1()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
