"""The builder's netlink requests as bytes (meshstress.build.rtnl), without root: each
request decodes, with pyroute2's own parsers, to what pyroute2 would have sent."""

from __future__ import annotations

import os
import struct

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from meshstress.build import netns, plan, rtnl
from meshstress.model.topology import Link, Node, Segment, Topology


def decode(cls, data: bytes):  # type: ignore[no-untyped-def]
    msg = cls(data)
    msg.decode()
    return msg


def flags(data: bytes) -> int:
    return int(struct.unpack_from("=H", data, 6)[0])


def test_veth_pair_is_made_inside_both_namespaces_with_its_indexes() -> None:
    a = rtnl.VethEnd("ms-x-p0", 7, index=3, gso_max_segs=1, mtu=1400, master=2, queues=1)
    b = rtnl.VethEnd("ms-x-i1", 9, index=4, gso_max_segs=1, mtu=1400, queues=1)
    data = rtnl.veth_msg(a, b, seq=42)
    msg = decode(ifinfmsg, data)
    assert msg["header"]["type"] == rtnl.RTM_NEWLINK and msg["header"]["sequence_number"] == 42
    assert flags(data) & (rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL) and not flags(data) & rtnl.NLM_F_ACK
    assert msg["index"] == 3 and msg["flags"] & 1 and msg["change"] & 1
    assert msg.get_attr("IFLA_IFNAME") == "ms-x-p0"
    assert msg.get_attr("IFLA_NET_NS_FD") == 7
    assert msg.get_attr("IFLA_MTU") == 1400 and msg.get_attr("IFLA_GSO_MAX_SEGS") == 1
    assert msg.get_attr("IFLA_MASTER") == 2
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer["index"] == 4 and peer.get_attr("IFLA_IFNAME") == "ms-x-i1"
    assert peer.get_attr("IFLA_NET_NS_FD") == 9 and peer.get_attr("IFLA_GSO_MAX_SEGS") == 1
    assert peer.get_attr("IFLA_MASTER") is None
    for end in (msg, peer):  # one queue each way, on both ends
        assert end.get_attr("IFLA_NUM_TX_QUEUES") == end.get_attr("IFLA_NUM_RX_QUEUES") == 1
    witness = decode(
        ifinfmsg, rtnl.veth_msg(rtnl.VethEnd("w", 3), rtnl.VethEnd("wp", 5), 1, up=False)
    )
    assert witness["index"] == 0 and witness["change"] == 0 and witness.get_attr("IFLA_MTU") is None
    assert witness.get_attr("IFLA_NUM_TX_QUEUES") is None  # the kernel's choice


def test_bridge_floods_like_a_hub() -> None:
    msg = decode(ifinfmsg, rtnl.bridge_msg("ms-x-br", 2, seq=1))
    assert msg["index"] == 2 and msg["flags"] & 1 and msg.get_attr("IFLA_IFNAME") == "ms-x-br"
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert data.get_attr("IFLA_BR_AGEING_TIME") == 0
    assert data.get_attr("IFLA_BR_FORWARD_DELAY") == 0
    assert data.get_attr("IFLA_BR_STP_STATE") == 0
    assert data.get_attr("IFLA_BR_MCAST_SNOOPING") == 0


def test_link_set_changes_only_what_it_names() -> None:
    up = decode(ifinfmsg, rtnl.link_set_msg(5, 1, up=True))
    assert (up["index"], up["flags"], up["change"]) == (5, 1, 1)
    assert up.get_attr("IFLA_IFALIAS") is None
    alias = decode(ifinfmsg, rtnl.link_set_msg(0, 1, alias="meshstress:ab", ifname="ms-ab-w"))
    assert (alias["index"], alias["change"]) == (0, 0)
    assert alias.get_attr("IFLA_IFNAME") == "ms-ab-w"
    assert alias.get_attr("IFLA_IFALIAS") == "meshstress:ab"


def test_address_as_ip_addr_add_sends_it() -> None:
    msg = decode(ifaddrmsg, rtnl.addr_msg(3, "10.201.0.7", 32, seq=9))
    assert (msg["family"], msg["prefixlen"], msg["scope"], msg["index"]) == (2, 32, 0, 3)
    assert msg.get_attr("IFA_LOCAL") == msg.get_attr("IFA_ADDRESS") == "10.201.0.7"
    assert msg.get_attr("IFA_BROADCAST") is None


def test_routes_on_link_and_via_a_gateway() -> None:
    on_link = decode(rtmsg, rtnl.route_msg("10.201.0.2/32", 4, seq=1))
    assert (on_link["dst_len"], on_link["scope"], on_link["proto"], on_link["type"]) == (
        32, 253, 4, 1,
    )  # fmt: skip
    assert on_link.get_attr("RTA_DST") == "10.201.0.2" and on_link.get_attr("RTA_OIF") == 4
    assert on_link.get_attr("RTA_GATEWAY") is None and on_link["table"] == 254
    data = rtnl.route_msg("10.9.0.0/16", 2, 1, gateway="10.201.0.3", proto=233, priority=3)
    via = decode(rtmsg, data)
    assert (via["dst_len"], via["scope"], via["proto"]) == (16, 0, 233)
    assert via.get_attr("RTA_GATEWAY") == "10.201.0.3" and via.get_attr("RTA_PRIORITY") == 3
    assert flags(data) & rtnl.NLM_F_EXCL
    assert flags(rtnl.route_msg("10.9.0.0/16", 2, 1, replace=True)) & rtnl.NLM_F_REPLACE


def error_reply(seq: int, err: int, reason: str = "") -> bytes:
    tlvs = rtnl.attr(rtnl.NLMSGERR_ATTR_MSG, reason.encode() + b"\0") if reason else b""
    body = struct.pack("=i", -err) + struct.pack("=IHHII", 16, rtnl.RTM_NEWLINK, 0, seq, 0)
    return rtnl.nlmsg(rtnl.NLMSG_ERROR, 0x100 | (0x200 if reason else 0), seq, body + tlvs)


def test_errors_are_read_with_the_kernels_reason() -> None:
    data = error_reply(5, 0) + error_reply(6, 17, "File exists here") + error_reply(7, 0)
    assert rtnl.parse_errors(data) == [(5, 0, ""), (6, 17, "File exists here"), (7, 0, "")]


class FakeSocket:
    """Handles each buffer as the kernel does: every request in order, an error reply
    for those it refuses, an ack for the ones that ask."""

    def __init__(self, refuse: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.refuse = refuse
        self.sent: list[list[tuple[int, int]]] = []  # per sendto: (seq, flags)
        self.replies = b""

    def sendto(self, data: bytes, addr: object) -> None:
        off, reqs = 0, []
        while off < len(data):
            length, _kind, fl, seq, _ = struct.unpack_from("=IHHII", data, off)
            reqs.append((seq, fl))
            if seq in self.refuse:
                self.replies += error_reply(seq, 22, "bad")
            elif fl & rtnl.NLM_F_ACK:
                self.replies += error_reply(seq, 0)
            off += (length + 3) & ~3
        self.sent.append(reqs)

    def recv(self, size: int) -> bytes:
        out, self.replies = self.replies, b""
        return out


class ReadyPoller:
    """select.poll for a FakeSocket: its replies are always there."""

    def register(self, fd: object, events: int) -> None:
        pass

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return [(0, 1)]


def batch_of(n: int) -> rtnl.Batch:
    batch = rtnl.Batch()
    for k in range(n):
        batch.add(rtnl.addr_msg(2, f"10.0.{k // 250}.{k % 250 + 1}", 32, batch.seq()), f"addr {k}")
    return batch


def test_a_batch_goes_in_chunks_each_acked_once_at_its_end(monkeypatch) -> None:
    monkeypatch.setattr("select.poll", ReadyPoller)
    sock = FakeSocket()
    batch = batch_of(3000)
    batch.send(sock)  # type: ignore[arg-type]
    assert len(sock.sent) > 1
    assert [s for chunk in sock.sent for s, _ in chunk] == [rtnl.SEQ_BASE + k for k in range(3000)]
    for chunk in sock.sent:
        acked = [s for s, fl in chunk if fl & rtnl.NLM_F_ACK]
        assert acked == [chunk[-1][0]]


def test_a_refused_request_is_named(monkeypatch) -> None:
    monkeypatch.setattr("select.poll", ReadyPoller)
    sock = FakeSocket(refuse={rtnl.SEQ_BASE + 17})
    with pytest.raises(rtnl.NetlinkRefused, match=r"addr 17: Invalid argument \(bad\)"):
        batch_of(40).send(sock)  # type: ignore[arg-type]


def test_ifindexes_count_up_per_namespace_in_creation_order() -> None:
    topo = Topology(
        "t",
        [Node("a"), Node("b"), Node("c")],
        [Link("a", "b"), Link("b", "c")],
        segments=[Segment("air", ["a", "c"])],
    )
    p = plan.make_plan(topo, "ab")
    index = p.ifindexes()
    pre = p.prefix
    assert index[(pre + "a", pre + "i0")] == 2 and index[(pre + "b", pre + "i0")] == 2
    assert index[(pre + "b", pre + "i1")] == 3 and index[(pre + "c", pre + "i0")] == 2
    assert index[(pre + "~air", pre + "br")] == 2
    assert index[(pre + "~air", pre + "p0")] == 3 and index[(pre + "a", pre + "i1")] == 3
    for ns in {ns for ns, _ in index}:
        mine = sorted(k for (n, _), k in index.items() if n == ns)
        assert mine == list(range(2, 2 + len(mine)))


class CountingFactory(netns.NetnsFactory):
    """A factory whose `create` makes no namespace: a descriptor of /dev/null, or an
    error for the name in `fail`."""

    def __init__(self, fail: str = "") -> None:
        self.home = -1
        self.fail = fail
        self.made: list[int] = []

    def create(self, name: str, sysctls: dict[str, str] | None = None) -> int:
        if name == self.fail:
            raise OSError(28, f"no room for {name}")
        fd = os.open(os.devnull, os.O_RDONLY)
        self.made.append(fd)
        return fd


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_create_many_makes_each_namespace_once(threads: int) -> None:
    factory = CountingFactory()
    names = [f"n{k}" for k in range(50)]
    fds = factory.create_many([(n, None) for n in names], threads=threads)
    try:
        assert sorted(fds) == sorted(names) and len(factory.made) == 50
        assert sorted(fds.values()) == sorted(factory.made)
    finally:
        for fd in factory.made:
            os.close(fd)


@pytest.mark.parametrize("threads", [1, 2])
def test_create_many_stops_on_an_error_and_closes_what_it_made(threads: int) -> None:
    factory = CountingFactory(fail="n20")
    with pytest.raises(OSError, match="no room for n20"):
        factory.create_many([(f"n{k}", None) for k in range(200)], threads=threads)
    assert 20 <= len(factory.made) <= 20 + threads  # no thread starts another one
    assert not any(is_open(fd) for fd in factory.made)


def test_link_dump_replies_give_index_flags_and_name() -> None:
    def newlink(index: int, flags: int, name: str) -> bytes:
        body = struct.pack("=BxHiII", 0, 1, index, flags, 0)
        body += rtnl.attr(13, struct.pack("=I", 1000))  # IFLA_TXQLEN before the name
        body += rtnl.attr(rtnl.IFLA_IFNAME, name.encode() + b"\0")
        return rtnl.nlmsg(rtnl.RTM_NEWLINK, 2, 1, body)

    data = newlink(1, 0x49, "lo") + newlink(7, 0x1002, "ms-ab-i3")
    assert rtnl.parse_links(data) == [(1, 0x49, "lo"), (7, 0x1002, "ms-ab-i3")]
    assert not rtnl._has_done(data)
    assert rtnl._has_done(data + rtnl.nlmsg(rtnl.NLMSG_DONE, 2, 1, struct.pack("=i", 0)))
    dump = decode(ifinfmsg, rtnl.link_dump_msg(5))
    assert dump["header"]["flags"] & rtnl.NLM_F_DUMP == rtnl.NLM_F_DUMP


def test_create_many_raises_a_failed_sysctl_write_and_closes_what_it_made() -> None:
    """The sysctl writer's error (here: the descriptors are not namespaces, so it cannot
    enter them) comes out of create_many, after every namespace made is closed."""
    factory = CountingFactory()
    with pytest.raises(OSError, match="setns"):
        factory.create_many([(f"n{k}", {"net.ipv4.ip_forward": "1"}) for k in range(5)])
    assert factory.made and not any(is_open(fd) for fd in factory.made)
