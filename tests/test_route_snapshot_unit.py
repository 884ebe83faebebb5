"""The fast route snapshot's pure parts: dump framing, row reuse, reachability and flap
counts against the straightforward algorithms they replace."""

from __future__ import annotations

import random
import socket
import struct
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from meshstress.routing.base import KernelRouteReader, select_routes
from meshstress.routing.converge import RouteSnapshot, hops_table, route_changes
from meshstress.routing.rtdump import (
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    _read_dump,
    iter_payloads,
    parse_route,
    parse_rule,
)

PORT = 4242


def nlmsg(msg_type: int, seq: int, payload: bytes, port: int = PORT) -> bytes:
    body = struct.pack("=IHHII", 16 + len(payload), msg_type, 2, seq, port) + payload
    return body + b"\0" * (-len(body) % 4)


def done(seq: int, errno: int = 0, port: int = PORT) -> bytes:
    return nlmsg(NLMSG_DONE, seq, struct.pack("=i", -errno), port)


def attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value


def route(
    dst: str, gateway: str | None = None, table: int = 254, priority: int = 0,
    dst_len: int = 32, rtype: int = 1,
) -> bytes:  # fmt: skip
    rtm = struct.pack("=BBBBBBBBI", socket.AF_INET, dst_len, 0, 0, min(table, 255), 4, 0, rtype, 0)
    attrs = attr(15, struct.pack("=I", table)) + attr(1, socket.inet_aton(dst))
    if priority:
        attrs += attr(6, struct.pack("=I", priority))
    if gateway:
        attrs += attr(5, socket.inet_aton(gateway))
    return rtm + attrs


def feed(datagrams: Sequence[bytes]) -> socket.socket:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for d in datagrams:
        a.send(d)
    a.close()
    b.settimeout(2)
    return b


def test_read_dump_joins_datagrams_until_done() -> None:
    first = nlmsg(RTM_NEWROUTE, 1, route("10.0.0.2")) + nlmsg(RTM_NEWROUTE, 1, route("10.0.0.3"))
    last = nlmsg(RTM_NEWROUTE, 1, route("10.0.0.4", "10.0.0.2")) + done(1)
    sock = feed([first, last, nlmsg(RTM_NEWROUTE, 9, route("10.0.0.9"))])
    raw = _read_dump(sock, 1, PORT)
    assert raw == first + last  # the next datagram is not read
    assert len(iter_payloads(raw, RTM_NEWROUTE, 1)) == 3
    assert iter_payloads(raw, RTM_NEWROUTE, 2) == []


def test_read_dump_goes_on_past_a_done_of_another_sequence_or_port() -> None:
    a = nlmsg(RTM_NEWROUTE, 1, route("10.0.0.2")) + done(7)
    b = nlmsg(RTM_NEWROUTE, 1, route("10.0.0.3")) + done(1, port=99)
    c = done(1)
    assert _read_dump(feed([a, b, c]), 1, PORT) == a + b + c


def test_read_dump_raises_the_kernels_errno() -> None:
    with pytest.raises(OSError) as err:
        _read_dump(feed([nlmsg(RTM_NEWROUTE, 1, route("10.0.0.2")) + done(1, errno=16)]), 1, PORT)
    assert err.value.errno == 16
    bad = nlmsg(NLMSG_ERROR, 1, struct.pack("=i", -22) + b"\0" * 16)
    with pytest.raises(OSError) as err:
        _read_dump(feed([bad]), 1, PORT)
    assert err.value.errno == 22


class FakeMesh:
    def __init__(self, n: int) -> None:
        self.nodes = [f"n{i}" for i in range(n)]

    def address(self, node: str) -> str:
        return f"10.0.0.{int(node[1:]) + 1}"

    def ns(self, node: str) -> str:
        return f"ms-t-{node}"


class FakeDumper:
    def __init__(self) -> None:
        self.tables: dict[str, tuple[bytes, bytes]] = {}

    def dump(self, keys: list[str]) -> dict[str, tuple[bytes, bytes]]:
        return {k: self.tables[k] for k in keys}

    def close(self) -> None:
        pass


def dump_of(*routes: bytes) -> bytes:
    return b"".join(nlmsg(RTM_NEWROUTE, 1, r) for r in routes) + done(1)


def test_reader_reuses_unchanged_rows_and_reads_changed_ones() -> None:
    mesh = FakeMesh(3)  # n0 10.0.0.1, n1 10.0.0.2, n2 10.0.0.3
    reader = KernelRouteReader(mesh)  # type: ignore[arg-type]
    fake = FakeDumper()
    reader.dumper = fake  # type: ignore[assignment]
    rules = done(2)  # no rules: the kernel's defaults (main table)
    fake.tables = {
        "n0": (dump_of(route("10.0.0.2"), route("10.0.0.3", "10.0.0.2")), rules),
        "n1": (dump_of(route("10.0.0.1"), route("10.0.0.3")), rules),
        "n2": (dump_of(route("10.0.0.2")), rules),
    }
    first = reader.next_hops()
    assert first == {"n0": {"n1": "n1", "n2": "n1"}, "n1": {"n0": "n0", "n2": "n2"},
                     "n2": {"n1": "n1"}}  # fmt: skip
    second = reader.next_hops()
    assert all(second[n] is first[n] for n in first)  # same rows, nothing parsed again
    assert (reader.selected, reader.reused) == (3, 3)
    # n2 learns n0 through n1; a lower priority wins in the same table
    fake.tables["n2"] = (
        dump_of(route("10.0.0.2"), route("10.0.0.1", "10.0.0.3", priority=9),
                route("10.0.0.1", "10.0.0.2", priority=2)),
        rules,
    )  # fmt: skip
    third = reader.next_hops()
    assert third["n2"] == {"n1": "n1", "n0": "n1"}
    assert third["n0"] is first["n0"] and third["n2"] is not first["n2"]
    assert (reader.selected, reader.reused) == (4, 5)


def random_next_hops(rng: random.Random, n: int) -> dict[str, dict[str, str | None]]:
    nodes = [f"n{i}" for i in range(n)]
    out: dict[str, dict[str, str | None]] = {}
    for a in nodes[: n - rng.randrange(2)]:  # sometimes a node without a row
        row: dict[str, str | None] = {}
        for b in nodes:
            if b != a and rng.random() < 0.9:
                row[b] = rng.choice([*nodes, None, "stranger"])
        out[a] = row
    return out


@pytest.mark.parametrize("seed", range(30))
def test_reachable_pairs_counts_what_path_finds(seed: int) -> None:
    rng = random.Random(seed)
    s = RouteSnapshot(0.0, next_hops=random_next_hops(rng, rng.randrange(1, 9)))
    nodes = list(s.next_hops)
    brute = sum(1 for a in nodes for b in nodes if a != b and s.path(a, b) is not None)
    assert s.reachable_pairs() == brute


def test_snapshot_from_next_hops_computes_hops_on_first_use() -> None:
    nh: dict[str, dict[str, str | None]] = {"a": {"b": "b", "c": "b"}, "b": {"c": "c"}}
    s = RouteSnapshot(1.0, next_hops=nh)
    assert s._routes is None
    assert s.routes == hops_table(nh)
    assert s.routes["a"]["c"] == ("b", 2)
    assert RouteSnapshot(1.0, hops_table(nh)) == s
    with pytest.raises(TypeError):
        RouteSnapshot(1.0)


def route_changes_reference(snapshots: Sequence[Any]) -> Counter[tuple[str, str]]:
    """route_changes before the fast snapshot (every pair of every snapshot)."""
    changes: Counter[tuple[str, str]] = Counter()
    seen: set[tuple[str, str]] = set()
    prev: dict[tuple[str, str], str | None] = {}
    for snap in snapshots:
        cur = {(n, d): nh for n, row in snap.next_hops.items() for d, nh in row.items()}
        for key in set(prev) | set(cur):
            if prev.get(key) != cur.get(key) and key in seen:
                changes[key] += 1
        seen.update(k for k, v in cur.items() if v is not None)
        prev = cur
    return changes


@pytest.mark.parametrize("seed", range(20))
def test_route_changes_match_the_reference_with_shared_rows(seed: int) -> None:
    rng = random.Random(seed)
    snaps = []
    rows = random_next_hops(rng, 6)
    for t in range(12):
        new = dict(rows)  # unchanged rows are the same objects, as a reader gives them
        for node in rng.sample(sorted(random_next_hops(rng, 6)), rng.randrange(3)):
            new[node] = random_next_hops(rng, 6).get(node, {})
        if rng.random() < 0.2 and new:
            new.pop(rng.choice(sorted(new)))
        snaps.append(RouteSnapshot(float(t), next_hops=new))
        rows = new
    assert route_changes(snaps) == route_changes_reference(snaps)


def rule(
    priority: int, table: int, action: int = 1, dst: str | None = None, dst_len: int = 0,
    iif: str | None = None,
) -> bytes:  # fmt: skip
    """struct fib_rule_hdr and attributes, as the kernel dumps an IPv4 rule."""
    hdr = struct.pack("=BBBBBBBBI", socket.AF_INET, dst_len if dst else 0, 0, 0,
                      min(table, 255), 0, 0, action, 0)  # fmt: skip
    attrs = attr(15, struct.pack("=I", table)) + attr(6, struct.pack("=I", priority))
    if dst:
        attrs += attr(1, socket.inet_aton(dst))
    if iif:
        attrs += attr(3, iif.encode() + b"\0")
    return hdr + attrs


def random_dumps(rng: random.Random, mesh: FakeMesh, node: str) -> tuple[bytes, bytes]:
    """A namespace's route and rule dumps with what select_routes must weigh: several
    tables, priorities with ties, throw/unreachable routes, gateways of no node, routes
    that are not /32 or not to a node, its own address; rules with and without
    selectors, or none (the kernel's defaults)."""
    addrs = [mesh.address(n) for n in mesh.nodes] + ["10.9.9.9"]
    tables = [254, 253, 66, 65, 1000]
    routes = []
    for _ in range(rng.randrange(0, 40)):
        routes.append(route(
            rng.choice(addrs),
            rng.choice([None, None, *addrs]),
            table=rng.choice(tables),
            priority=rng.choice([0, 0, 1, 2, 5, 1024]),
            dst_len=rng.choice([32] * 8 + [24, 16]),
            rtype=rng.choice([1] * 8 + [9, 9, 7, 6]),  # unicast, throw, unreachable, blackhole
        ))  # fmt: skip
    rules = []
    kind = rng.randrange(4)
    if kind > 0:  # kind 0: no rules at all
        for prio in sorted(rng.sample(range(0, 40000), rng.randrange(1, 6))):
            rules.append(rule(
                prio, rng.choice([*tables, 255]), action=rng.choice([1, 1, 1, 2]),
                dst="10.0.0.0" if kind == 3 and rng.random() < 0.5 else None,
                dst_len=rng.choice([8, 30]),
                iif="eth0" if rng.random() < 0.2 else None,
            ))  # fmt: skip
        rng.shuffle(rules)  # the kernel's order is by priority: the reader sorts too
    rdump = b"".join(nlmsg(RTM_NEWROUTE, 1, r) for r in routes) + done(1)
    ldump = b"".join(nlmsg(RTM_NEWRULE, 2, r) for r in rules) + done(2)
    return rdump, ldump


@pytest.mark.parametrize("seed", range(300))
def test_reader_rows_are_what_select_routes_picks(seed: int) -> None:
    """The reader's one-pass selection (a cache of route messages, tables merged from
    the last to the first) gives select_routes' next hops for every namespace, also when
    the same messages come again in other dumps (cache hits)."""
    rng = random.Random(seed)
    mesh = FakeMesh(rng.randrange(2, 9))
    reader = KernelRouteReader(mesh)  # type: ignore[arg-type]
    for _ in range(3):
        for node in mesh.nodes:
            rdump, ldump = random_dumps(rng, mesh, node)
            routes = [parse_route(p) for p in iter_payloads(rdump, RTM_NEWROUTE, 1)]
            rules = sorted((parse_rule(p) for p in iter_payloads(ldump, RTM_NEWRULE, 2)),
                           key=lambda r: r.priority)  # fmt: skip
            want = {
                dst: r.next_hop
                for dst, r in select_routes(routes, rules, reader.owners, reader.me[node]).items()
            }
            assert reader._row(node, rdump, ldump) == want
