"""Timed events, pure parts: parsing and validation (the field named in every error),
`for` expansion, target strings, which links a partition cuts, the timeline's clock."""

from __future__ import annotations

import threading
import time
import tomllib
from typing import Any

import pytest

from meshstress.errors import InputError
from meshstress.model import generators
from meshstress.model.topofile import loads_toml
from meshstress.model.topology import Impairment
from meshstress.stress.events import (
    ACTIONS,
    Event,
    link_interfaces,
    parse_events,
    partition_cuts,
    run_timeline,
    target,
)

SRC = "sc.toml"


def parse(text: str, topo: Any = None) -> list[Event]:
    raw = tomllib.loads(text).get("events", [])
    return parse_events(raw, SRC, topo or generators.grid4(3, 3))


def error(text: str, topo: Any = None) -> InputError:
    with pytest.raises(InputError) as info:
        parse(text, topo)
    assert info.value.source == SRC
    return info.value


def test_every_action_parses() -> None:
    evs = parse(
        """
        [[events]]
        at = "1s"
        action = "link-down"
        link = ["n0", "n1"]
        [[events]]
        at = "2s"
        action = "link-up"
        link = ["n1", "n0"]
        [[events]]
        at = "3s"
        action = "node-crash"
        node = "n4"
        [[events]]
        at = "4s"
        action = "node-restart"
        node = "n4"
        [[events]]
        at = "5s"
        action = "partition"
        groups = [["n0", "n1", "n2"], ["n3", "n4", "n5"]]
        [[events]]
        at = "6s"
        action = "heal"
        [[events]]
        at = "7500ms"
        action = "impair"
        link = ["n4", "n5"]
        delay = "50ms"
        loss = "1%"
        """
    )
    # inject needs a mesh of its protocol's routing: tests/test_inject_unit.py parses it
    assert [e.action for e in evs] == [a for a in ACTIONS if a != "inject"]
    assert evs[0] == Event(at=1.0, action="link-down", link=("n0", "n1"))
    assert evs[1].link == ("n1", "n0")  # the order as written
    assert evs[2] == Event(at=3.0, action="node-crash", node="n4")
    # the nodes not listed form one more group
    assert evs[4].groups == (("n0", "n1", "n2"), ("n3", "n4", "n5"), ("n6", "n7", "n8"))
    assert evs[5] == Event(at=6.0, action="heal")
    assert evs[6].at == 7.5
    assert evs[6].ab == evs[6].ba == Impairment(loss=0.01, delay=0.05)


def test_for_adds_the_undo_and_events_come_out_sorted_stably() -> None:
    evs = parse(
        """
        [[events]]
        at = "10s"
        action = "link-down"
        link = ["n0", "n1"]
        for = "5s"
        [[events]]
        at = "12s"
        action = "node-crash"
        node = "n4"
        for = "3s"
        [[events]]
        at = "1s"
        action = "partition"
        groups = [["n0", "n3", "n6"]]
        for = "500ms"
        [[events]]
        at = "15s"
        action = "link-down"
        link = ["n7", "n8"]
        """
    )
    got = [(e.at, e.action, target(e)) for e in evs]
    assert got == [
        (1.0, "partition", "n0,n3,n6|n1,n2,n4,n5,n7,n8"),
        (1.5, "heal", "n0,n3,n6|n1,n2,n4,n5,n7,n8"),
        (10.0, "link-down", "n0-n1"),
        (12.0, "node-crash", "n4"),
        (15.0, "link-up", "n0-n1"),  # from `for`, before the later-listed 15 s event
        (15.0, "node-restart", "n4"),
        (15.0, "link-down", "n7-n8"),
    ]


def test_impair_directions() -> None:
    (ev,) = parse(
        """
        [[events]]
        at = "0s"
        action = "impair"
        link = ["n1", "n0"]
        a_to_b = { delay = "30ms" }
        """
    )
    assert ev.at == 0.0
    assert ev.ab == Impairment(delay=0.03)
    assert ev.ba is None  # that direction is left as it is
    (ev,) = parse(
        """
        [[events]]
        at = "1s"
        action = "impair"
        link = ["n0", "n1"]
        loss = "10%"
        b_to_a = { loss = 0, rate = "1mbit" }
        """
    )
    assert ev.ab == Impairment(loss=0.1)
    assert ev.ba == Impairment(loss=0.0, rate=1_000_000)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ('at = "1s"\naction = "explode"', "events[0].action", "must be one of"),
        ('at = "1s"', "events[0].action", "missing"),
        ('action = "heal"', "events[0].at", "missing"),
        ('at = "-1s"\naction = "heal"', "events[0].at", ""),
        ('at = "10"\naction = "heal"', "events[0].at", "unit"),
        ('at = "1s"\naction = "heal"\nlink = ["n0", "n1"]', "events[0].link", "unknown key"),
        ('at = "1s"\naction = "link-down"', "events[0].link", "missing"),
        ('at = "1s"\naction = "link-down"\nlink = ["n0", "n4"]', "events[0].link", "no link"),
        ('at = "1s"\naction = "link-down"\nlink = ["n0", "zz"]', "events[0].link[1]", "unknown"),
        ('at = "1s"\naction = "link-down"\nlink = ["n0"]', "events[0].link", "two nodes"),
        ('at = "1s"\naction = "link-up"\nlink = ["n0", "n1"]\nfor = "1s"', "events[0].for", ""),
        ('at = "1s"\naction = "link-down"\nlink = ["n0", "n1"]\nfor = "0s"', "events[0].for", ""),
        ('at = "1s"\naction = "link-down"\nlink = ["n0", "n1"]\nfor = "x"', "events[0].for", ""),
        ('at = "1s"\naction = "node-crash"', "events[0].node", "missing"),
        ('at = "1s"\naction = "node-crash"\nnode = "n9"', "events[0].node", "unknown node"),
        ('at = "1s"\naction = "node-crash"\nnode = 3', "events[0].node", "string"),
        ('at = "1s"\naction = "partition"', "events[0].groups", "missing"),
        ('at = "1s"\naction = "partition"\ngroups = []', "events[0].groups", "groups"),
        ('at = "1s"\naction = "partition"\ngroups = [[]]', "events[0].groups[0]", "non-empty"),
        (
            'at = "1s"\naction = "partition"\ngroups = [["n0", "n1"], ["n2", "n1"]]',
            "events[0].groups[1][1]",
            "already in group 0",
        ),
        (
            'at = "1s"\naction = "partition"\ngroups = [["n0","n1","n2","n3","n4","n5","n6",'
            '"n7","n8"]]',
            "events[0].groups",
            "at least two",
        ),
        ('at = "1s"\naction = "impair"\nlink = ["n0", "n1"]', "events[0]", "at least one"),
        ('at = "1s"\naction = "impair"\nlink = ["n0", "n1"]\nloss = "150%"', "events[0].loss", ""),
        (
            'at = "1s"\naction = "impair"\nlink = ["n0", "n1"]\na_to_b = { delai = "1ms" }',
            "events[0].a_to_b.delai",
            "unknown key",
        ),
        ('at = "1s"\naction = "impair"\nlink = ["n0", "n1"]\nfor = "1s"', "events[0].for", ""),
    ],
)
def test_errors_name_the_field(body: str, field: str, words: str) -> None:
    text = '[[events]]\nat = "0s"\naction = "heal"\n\n[[events]]\n' + body
    # the first event is fine: the index in the field is the raw array's
    err = error(text)
    assert err.field == field.replace("events[0]", "events[1]"), str(err)
    assert words in err.message, str(err)


def test_events_must_be_an_array_of_tables() -> None:
    with pytest.raises(InputError) as info:
        parse_events({"at": "1s"}, SRC, generators.line(3))
    assert info.value.field == "events"
    with pytest.raises(InputError) as info:
        parse_events(["heal"], SRC, generators.line(3), field="scenario.events")
    assert info.value.field == "scenario.events[0]"


SEGMENTED = """
nodes = ["a", "b", "c", "d"]
[[links]]
a = "a"
b = "b"
[[links]]
a = "c"
b = "d"
model = "segment"
[[segments]]
name = "air"
nodes = ["b", "c"]
"""


def test_partition_may_not_split_a_shared_segment() -> None:
    topo = loads_toml(SEGMENTED, "seg.toml")
    body = '[[events]]\nat = "1s"\naction = "partition"\ngroups = [["a", "b"]]'
    err = error(body, topo)
    assert err.field == "events[0].groups"
    assert "shared segment 'air'" in err.message and "not supported" in err.message
    # whole inside one group: fine, and a "segment" link is an ordinary link
    (ev,) = parse('[[events]]\nat = "1s"\naction = "partition"\ngroups = [["a"]]', topo)
    assert ev.groups == (("a",), ("b", "c", "d"))
    assert partition_cuts(topo, ev.groups) == [("a", "b")]
    # links only: a pair joined by a segment alone is not a link
    err = error('[[events]]\nat = "1s"\naction = "link-down"\nlink = ["b", "c"]', topo)
    assert err.field == "events[0].link" and "no link b-c" in err.message


def test_partition_cuts_of_a_grid() -> None:
    topo = generators.grid4(3, 3)
    # left column | the rest: the three horizontal links from column 0 to column 1
    assert partition_cuts(topo, [["n0", "n3", "n6"], ["n1", "n2", "n4", "n5", "n7", "n8"]]) == [
        ("n0", "n1"),
        ("n3", "n4"),
        ("n6", "n7"),
    ]
    top = ["n0", "n1", "n2"]
    rest = ["n3", "n4", "n5", "n6", "n7", "n8"]
    assert sorted(partition_cuts(topo, [top, rest])) == [("n0", "n3"), ("n1", "n4"), ("n2", "n5")]
    assert partition_cuts(topo, [topo.node_names()]) == []


def test_targets() -> None:
    assert target(Event(1, "link-down", link=("n0", "n1"))) == "n0-n1"
    assert target(Event(1, "node-crash", node="n4")) == "n4"
    assert target(Event(1, "partition", groups=(("n0", "n1"), ("n2", "n3")))) == "n0,n1|n2,n3"
    assert target(Event(1, "heal")) == "all"


def test_link_interfaces_finds_both_node_ends() -> None:
    interfaces = {
        "n0": [{"ifname": "x-i0", "peer": "n1", "segment": None}],
        "n1": [
            {"ifname": "x-i0", "peer": "n0", "segment": None},
            {"ifname": "x-i1", "peer": None, "segment": "air"},
            {"ifname": "x-i2", "peer": "n2", "segment": "~1"},  # a "segment" link
        ],
        "n2": [{"ifname": "x-i0", "peer": "n1", "segment": "~1"}],
    }
    assert link_interfaces(interfaces, "n0", "n1") == [("n0", "x-i0"), ("n1", "x-i0")]
    assert link_interfaces(interfaces, "n2", "n1") == [("n2", "x-i0"), ("n1", "x-i2")]
    with pytest.raises(Exception, match="no interface to n2"):
        link_interfaces(interfaces, "n0", "n2")


class FakeRunner:
    def __init__(self) -> None:
        self.applied: list[tuple[str, float]] = []

    def apply(self, event: Event) -> dict[str, Any]:
        self.applied.append((event.action, time.monotonic()))
        return {"at": event.at, "action": event.action}


def test_run_timeline_applies_in_order_at_their_times() -> None:
    runner = FakeRunner()
    evs = [Event(0.0, "heal"), Event(0.15, "link-up", link=("a", "b")), Event(0.3, "heal")]
    t0 = time.monotonic() + 0.05
    records = run_timeline(runner, evs, t0)
    assert [r["action"] for r in records] == ["heal", "link-up", "heal"]
    for (_, t), ev, rec in zip(runner.applied, evs, records, strict=True):
        assert t >= t0 + ev.at  # never early
        # late_s: how long after its time the event began (by the time apply ran, at most)
        assert 0 <= rec["late_s"] <= t - (t0 + ev.at), rec


def test_run_timeline_returns_early_when_stopped() -> None:
    runner = FakeRunner()
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    evs = [Event(0.0, "heal"), Event(5.0, "heal"), Event(6.0, "heal")]
    began = time.monotonic()
    records = run_timeline(runner, evs, began, stop)
    assert [r["at"] for r in records] == [0.0]
    assert len(runner.applied) == 1
    assert time.monotonic() < began + 5.0  # it did not sleep until the 5 s event
    stop.set()
    assert run_timeline(runner, evs, time.monotonic(), stop) == []


def test_link_state_and_host_route_messages_decode_as_rtnetlink() -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    from meshstress.stress.events import host_route_msg, link_state_msg

    down = ifinfmsg(link_state_msg(7, up=False, seq=41))
    down.decode()
    assert down["header"]["type"] == 16 and down["header"]["sequence_number"] == 41  # NEWLINK
    assert down["header"]["flags"] == 0x1  # a request, no ack asked
    assert (down["index"], down["flags"], down["change"]) == (7, 0, 1)  # only IFF_UP
    up = ifinfmsg(link_state_msg(9, up=True, seq=42, ack=True))
    up.decode()
    assert (up["index"], up["flags"], up["change"], up["header"]["flags"]) == (9, 1, 1, 0x5)
    route = rtmsg(host_route_msg("10.201.0.2", 3, seq=43, ack=True))
    route.decode()
    assert route["header"]["type"] == 24  # RTM_NEWROUTE, replace-or-create, acked
    assert route["header"]["flags"] == 0x1 | 0x4 | 0x100 | 0x400
    # what the builder installs: dst/32 scope link, main table, proto static, unicast
    assert (route["dst_len"], route["table"], route["proto"], route["scope"], route["type"]) == (
        32, 254, 4, 253, 1,
    )  # fmt: skip
    assert route.get_attr("RTA_DST") == "10.201.0.2" and route.get_attr("RTA_OIF") == 3


def test_parse_acks_reads_errors_and_acks_by_sequence_number() -> None:
    import struct

    from meshstress.stress.events import parse_acks

    def nlmsg(kind: int, seq: int, body: bytes) -> bytes:
        raw = struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 1234) + body
        return raw + b"\0" * (-len(raw) % 4)

    echo = struct.pack("=IHHII", 32, 16, 1, 5, 0)  # the request's header, echoed
    data = (
        nlmsg(2, 5, struct.pack("=i", -19) + echo)  # ENODEV for request 5
        + nlmsg(16, 6, b"\0" * 17)  # not an ack: skipped (its padding too)
        + nlmsg(2, 7, struct.pack("=i", 0) + echo)  # request 7 done
    )
    assert parse_acks(data) == {5: 19, 7: 0}
    assert parse_acks(b"") == {}
    assert parse_acks(struct.pack("=IHHII", 0, 2, 0, 1, 0)) == {}  # a broken length stops


def test_group_messages_decode_as_rtnetlink() -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    from meshstress.stress.events import MESH_GROUP, link_group_msg, link_set_group_msg

    down = ifinfmsg(link_group_msg(MESH_GROUP, up=False, seq=3, ack=True))
    down.decode()
    # no index, no name: the kernel applies flags to every device of the group
    assert (down["index"], down["flags"], down["change"]) == (0, 0, 1)
    assert down.get_attr("IFLA_GROUP") == MESH_GROUP and down.get_attr("IFLA_IFNAME") is None
    join = ifinfmsg(link_set_group_msg(12, MESH_GROUP, seq=4))
    join.decode()
    assert (join["index"], join["change"], join.get_attr("IFLA_GROUP")) == (12, 0, MESH_GROUP)
