"""Build real meshes on the host (root): packets cross, and teardown leaves nothing."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from meshstress import build
from meshstress.build import bringup, netns, plan, rtnl, state
from meshstress.cli import host as hostcli
from meshstress.model.topology import Link, Node, Segment, Topology

exe = [sys.executable, "-m", "meshstress.cli"]

pytestmark = pytest.mark.network


def line(n: int) -> Topology:
    return Topology(
        "line",
        [Node(f"n{i}") for i in range(n)],
        [Link(f"n{i}", f"n{i + 1}") for i in range(n - 1)],
    )


def ping(mesh: build.Mesh, src: str, dst: str, count: int = 1) -> bool:
    return mesh.ping(src, dst, count=count).ok


def host_links() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute(groups=0) as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def leftovers(run_id: str) -> list[str]:
    pre = plan.run_prefix(run_id)
    left = [n for n in netns.list_names() if n.startswith(pre)]
    left += [n for n in host_links() if n.startswith(pre)]
    if state.load(run_id) is not None:
        left.append("state file")
    return left


def test_line_of_three_direct_neighbours_reach_each_other(mesh_factory) -> None:
    mesh = mesh_factory(line(3))
    assert ping(mesh, "n0", "n1") and ping(mesh, "n1", "n2") and ping(mesh, "n2", "n1")
    # no routing: the ends are two hops apart and must not reach each other
    assert not ping(mesh, "n0", "n2")
    links = {link.get_attr("IFLA_IFNAME") for link in mesh.netlink("n1").get_links()}
    assert len([name for name in links if name.startswith(mesh.prefix + "i")]) == 2


def rx_packets(mesh: build.Mesh, node: str) -> int:
    total = 0
    for link in mesh.netlink(node).get_links():
        if link.get_attr("IFLA_IFNAME").startswith(mesh.prefix):
            total += link.get_attr("IFLA_STATS64")["rx_packets"]
    return total


def test_shared_segment_of_five_every_member_hears_every_transmission(mesh_factory) -> None:
    names = [f"n{i}" for i in range(5)]
    mesh = mesh_factory(
        Topology("seg5", [Node(n) for n in names], segments=[Segment("air", names)])
    )
    for other in names[1:]:
        assert ping(mesh, "n0", other), f"n0 cannot reach {other} on the segment"
    assert ping(mesh, "n4", "n2")
    # a unicast exchange between n0 and n1 also reaches n3: one medium, no learning
    before = rx_packets(mesh, "n3")
    assert ping(mesh, "n0", "n1", count=10)
    assert rx_packets(mesh, "n3") - before >= 10


def test_teardown_leaves_nothing_behind() -> None:
    topo = line(4)
    topo.segments.append(Segment("air", ["n0", "n2", "n3"]))
    st = bringup.bring_up(topo).state
    try:
        assert len([n for n in netns.list_names() if n.startswith(plan.run_prefix(st.run_id))]) == 5
        assert st.host_links[0] in host_links()
    finally:
        problems = build.teardown(st)
    assert problems == []
    assert leftovers(st.run_id) == []


def test_a_failed_build_is_undone(monkeypatch) -> None:
    """The kernel refuses the third veth pair of the batch (a name over IFNAMSIZ): the
    error names it, and everything built so far, veths of the same batch included, goes."""
    real = rtnl.veth_msg
    calls = {"n": 0}

    def failing(a, b, seq, up=True):
        calls["n"] += 1
        if calls["n"] == 3:
            a = dataclasses.replace(a, ifname="x" * 20)
        return real(a, b, seq, up)

    monkeypatch.setattr(rtnl, "veth_msg", failing)
    run_id = plan.new_run_id()
    with pytest.raises(rtnl.NetlinkRefused, match=r"veth ms-\w+-i\d+ in ms-\w+-n2"):
        bringup.bring_up(line(6), run_id)
    assert calls["n"] >= 3
    assert leftovers(run_id) == []


def read_sysctl(key: str) -> str:
    """A net.* sysctl of the calling thread's namespace, through the host's /proc."""
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def want_sysctls(p: plan.Plan, node: str | None) -> dict[str, str]:
    return dict(p.sysctls) if node is not None else dict(build.HUB_SYSCTLS)


def test_kernel_state_is_what_the_plan_says(mesh_factory) -> None:
    """Every interface has the plan's ifindex, master, MTU, one packet per skb, one queue
    each way and state up; every address and neighbour route is there as `ip` would add
    it, nothing more; every namespace has its sysctls, and each node interface got the
    namespace's defaults (no DAD, no reverse-path filter)."""
    from pyroute2 import IPRoute

    topo = line(4)
    topo.segments.append(Segment("air", ["n0", "n2", "n3"]))
    mesh = mesh_factory(topo)
    p = plan.make_plan(topo, mesh.state.run_id)
    index = p.ifindexes()
    factory = netns.NetnsFactory()
    try:
        for spec in p.namespaces:
            fd = os.open(netns.path(spec.name), os.O_RDONLY)
            try:
                with factory.inside(fd):
                    ipr = IPRoute(groups=0)
                    sysctls = {k: read_sysctl(k) for k in want_sysctls(p, spec.node)}
                    confs = {
                        (fam, ifname): read_sysctl(f"net.{fam}.conf.{ifname}.{key}")
                        for ifname in {i for (ns, i) in index if ns == spec.name}
                        for fam, key in (("ipv4", "rp_filter"), ("ipv6", "accept_dad"))
                        if spec.node is not None
                    }
            finally:
                os.close(fd)
            assert sysctls == want_sysctls(p, spec.node), spec.name
            # the defaults were in place before the interfaces were made
            assert set(confs.values()) <= {"0"}, (spec.name, confs)
            with ipr:
                links = {link.get_attr("IFLA_IFNAME"): link for link in ipr.get_links()}
                addrs = {
                    (a["index"], a.get_attr("IFA_LOCAL"), a["prefixlen"], a["scope"])
                    for a in ipr.get_addr(family=2)
                }
                routes = {
                    (r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_OIF"), r["scope"],
                     r["proto"], r["type"], r.get_attr("RTA_GATEWAY"))
                    for r in ipr.get_routes(family=2, table=254)
                }  # fmt: skip
            assert links["lo"]["index"] == 1 and links["lo"]["flags"] & 1
            assert links["lo"].get_attr("IFLA_IFALIAS") == build.mark(mesh.state.run_id, mesh.state.owner_pid, mesh.state.created)
            mine = {ifname for (ns, ifname) in index if ns == spec.name}
            assert set(links) - {"lo"} == mine | (
                {p.witness + "p"} if spec.name == p.witness_ns else set()
            )
            for ifname in mine:
                link = links[ifname]
                assert link["index"] == index[(spec.name, ifname)]
                assert link["flags"] & 1, f"{ifname} in {spec.name} is down"
                assert link.get_attr("IFLA_MTU") == 1500
                if not ifname.endswith("br"):
                    assert link.get_attr("IFLA_GSO_MAX_SEGS") == 1
                    assert link.get_attr("IFLA_NUM_TX_QUEUES") == 1
                    assert link.get_attr("IFLA_NUM_RX_QUEUES") == 1
                if ifname[len(p.prefix)] == "p":
                    assert link.get_attr("IFLA_MASTER") == index[(spec.name, p.prefix + "br")]
            want_addrs = {
                (index[(a.ns, a.ifname)], a.address.split("/")[0], 32, 0)
                for a in p.addresses
                if a.ns == spec.name
            }
            want_addrs.add((1, "127.0.0.1", 8, 254))  # lo is up in hubs too
            assert addrs == want_addrs
            want_routes = {
                (r.dst.split("/")[0], 32, index[(r.ns, r.ifname)], 253, 4, 1, None)
                for r in p.routes
                if r.ns == spec.name
            }
            assert routes == want_routes
    finally:
        factory.close()


def test_cli_up_exec_status_down(tmp_path) -> None:
    topo = tmp_path / "l3.toml"
    topo.write_text(
        'nodes = ["a", "b", "c"]\n[topology]\nname = "l3"\n'
        '[[links]]\na = "a"\nb = "b"\n[[links]]\na = "b"\nb = "c"\n'
    )
    run_id = plan.new_run_id()
    up = subprocess.run([*exe, "up", str(topo), "--run", run_id], capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stderr
        ex = subprocess.run(
            [*exe, "exec", "--run", run_id, "a", "--", "ping", "-c1", "-W1", "@b"],
            capture_output=True,
            text=True,
        )
        assert ex.returncode == 0 and "1 received" in ex.stdout
        st = subprocess.run(
            [*exe, "status", "--run", run_id, "--json"], capture_output=True, text=True
        )
        assert '"namespaces_present": 3' in st.stdout
    finally:
        down = subprocess.run([*exe, "down", "--run", run_id], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert leftovers(run_id) == []


def test_cli_bad_file_exits_2_with_one_line_and_creates_nothing(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('nodes = ["a", "b"]\n[[links]]\na = "a"\nb = "zz"\n')
    before = set(netns.list_names())
    r = subprocess.run([*exe, "up", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert (
        len(r.stderr.strip().splitlines()) == 1 and str(bad) in r.stderr and "links[0]" in r.stderr
    )
    assert set(netns.list_names()) == before


def test_teardown_closes_this_process_sockets_that_would_hold_namespaces() -> None:
    st = bringup.bring_up(line(2)).state
    mesh = build.Mesh(st)
    assert mesh.netlink("n0").get_links()  # a socket inside n0 is now open
    problems = build.teardown(st, timeout=10)
    assert problems == []
    assert leftovers(st.run_id) == []


def test_doctor_json_covers_every_capability_and_names_remedies() -> None:
    import json

    r = subprocess.run([*exe, "doctor", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert set(checks) == {
        "root", "netns", "veth", "bridge", "batman-adv", "netem", "tbf", "htb", "tc-bpf",
        "bcc+headers", "tracefs", "kprobes", "batctl", "babeld", "batmand", "qemu",
    }
    assert checks["root"]["ok"] and checks["netns"]["ok"] and checks["veth"]["ok"]
    assert checks["tc-bpf"]["ok"]  # radio-like cuts need it; our hosts have clsact + cls_bpf
    for c in checks.values():
        assert c["ok"] or c["remedy"], f"{c['name']} is missing without a remedy"
    # the doctor's verdicts match what the kernel does when asked directly
    batadv = subprocess.run(["unshare", "-n", "ip", "link", "add", "b0", "type", "batadv"],
                            capture_output=True)
    assert checks["batman-adv"]["ok"] == (batadv.returncode == 0)
    tbf = subprocess.run(["unshare", "-n", "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                          "rate", "1mbit", "burst", "10kb", "latency", "50ms"], capture_output=True)
    assert checks["tbf"]["ok"] == (tbf.returncode == 0)


def test_exec_node_references() -> None:
    from meshstress.errors import InputError

    addrs = {"n1": "10.201.0.2/16", "7": "10.201.0.8/16"}
    assert hostcli.expand_node_refs("@n1", addrs) == "10.201.0.2"
    assert hostcli.expand_node_refs("--host=@7", addrs) == "--host=10.201.0.8"
    assert hostcli.expand_node_refs("7", addrs) == "7"  # plain numbers stay numbers
    assert hostcli.expand_node_refs("@@n1", addrs) == "@n1"
    assert hostcli.expand_node_refs("root@n1", addrs) == "root@n1"
    assert hostcli.expand_node_refs("@n1,@7", addrs) == "10.201.0.2,10.201.0.8"
    with pytest.raises(InputError, match="@zz"):
        hostcli.expand_node_refs("@zz", addrs)


def test_cli_routes_shows_next_hops_and_records_snapshots(tmp_path) -> None:
    import json

    topo = tmp_path / "line3.toml"
    gen = subprocess.run([*exe, "topo", "gen", "line", "3", "-o", str(topo)], capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    run_id = plan.new_run_id()
    up = subprocess.run([*exe, "up", str(topo), "--routing", "static", "--run", run_id],
                        capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stderr
        r = subprocess.run([*exe, "routes", "--run", run_id, "--json", "--watch", "2",
                            "--interval", "0.3", "n0"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["routes"]["n0"]["n2"]["next_hop"] == "n1"
        assert out["routes"]["n0"]["n2"]["hops"] == 2
        assert out["routes"]["n0"]["n1"]["hops"] == 1
        # a static mesh never flaps: no change between snapshots (two at least, to compare;
        # how many fit in 2 s depends on the host's load; no more than one per 0.3 s)
        assert 2 <= out["snapshots"] <= 2 / 0.3 + 1 and out["changes"] == [], out
        bad = subprocess.run([*exe, "routes", "--run", run_id, "zz"], capture_output=True, text=True)
        assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    finally:
        subprocess.run([*exe, "down", "--run", run_id], capture_output=True)
    assert leftovers(run_id) == []


def test_impairments_without_netem_fail_fast_and_ideal_builds(tmp_path) -> None:
    from meshstress.doctor import has_netem

    topo = tmp_path / "lossy.toml"
    topo.write_text('nodes = ["a", "b"]\n[[links]]\na = "a"\nb = "b"\nloss = "10%"\n')
    run_id = plan.new_run_id()
    if has_netem():
        pytest.skip("this kernel has netem: the impaired build is a kernel test")
    r = subprocess.run([*exe, "up", str(topo), "--run", run_id], capture_output=True, text=True)
    assert r.returncode == 3
    assert len(r.stderr.strip().splitlines()) == 1 and "sch_netem" in r.stderr and str(topo) in r.stderr
    assert leftovers(run_id) == []
    r = subprocess.run([*exe, "up", str(topo), "--run", run_id, "--ideal"], capture_output=True, text=True)
    try:
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run([*exe, "down", "--run", run_id], capture_output=True)
    assert leftovers(run_id) == []


def test_cli_up_exits_1_when_routing_does_not_converge_and_keeps_the_mesh(tmp_path) -> None:
    topo = tmp_path / "l3.toml"
    # c has no link: nothing can route to it, so this never converges (a timing-based
    # version, babeld given 0.05 s, converged once in CI)
    topo.write_text('nodes = ["a", "b", "c"]\n[[links]]\na = "a"\nb = "b"\n')
    run_id = plan.new_run_id()
    r = subprocess.run([*exe, "up", str(topo), "--routing", "babeld", "--timeout", "0.05",
                        "--run", run_id], capture_output=True, text=True)
    try:
        assert r.returncode == 1, r.stderr
        assert "did not converge" in r.stderr and "the mesh stays up" in r.stderr
        assert state.load(run_id) is not None
    finally:
        subprocess.run([*exe, "down", "--run", run_id], capture_output=True)
    assert leftovers(run_id) == []


def test_plugin_fixture_example_from_its_docstring(mesh_factory) -> None:
    from meshstress.model import generators

    mesh = mesh_factory(generators.line(3), routing="static")
    r = mesh.ping("n0", "n2", count=5)
    assert r.loss == 0 and r.ttl == 63  # one router between the ends


def proc_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if " - proc " in line]


@pytest.mark.parametrize("remount_every", [1, 3, 64])
def test_sysctls_of_many_namespaces_through_a_private_procfs(remount_every: int) -> None:
    """create_many writes each namespace's sysctls through the writer thread's own procfs
    (remounted every `remount_every` namespaces): read back through the host's /proc,
    every namespace has them; the host's own values and mounts are as they were."""
    pre = f"ms-sysw{os.getpid()}-"
    names = [f"{pre}{k}" for k in range(10)]
    want = {**plan.NODE_SYSCTLS, "net.ipv4.conf.default.rp_filter": "0"}
    host_before = {k: read_sysctl(k) for k in want}
    mounts_before = proc_mounts()
    writer = netns.SysctlWriter(remount_every=remount_every)
    fds: dict[str, int] = {}
    factory = netns.NetnsFactory()
    try:
        fds = factory.create_many([(n, want) for n in names], writer=writer)
        writer.finish()
        assert writer.private is True
        assert writer.written == len(names)
        assert writer.mounts == 1 + (len(names) - 1) // remount_every
        for name in names:
            with factory.inside(fds[name]):
                assert {k: read_sysctl(k) for k in want} == want, name
    finally:
        for fd in fds.values():
            os.close(fd)
        for name in names:
            netns.delete(name)
        factory.close()
    assert {k: read_sysctl(k) for k in want} == host_before
    assert proc_mounts() == mounts_before
