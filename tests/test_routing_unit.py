"""Routing, pure parts: shortest paths, settings, argv, snapshots, batctl parsing."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from meshstress.errors import InputError
from meshstress.model import generators
from meshstress.model.topology import Link, Node, Segment, Topology
from meshstress.routing import BACKEND_NAMES, get_backend, rtdump
from meshstress.routing import genl_batadv as genl
from meshstress.routing.babeld import babeld_argv
from meshstress.routing.batman_adv import (
    genl_values,
    originator_from_genl,
    parse_neighbours_json,
    parse_originators_json,
    parse_originators_table,
    settings_commands,
)
from meshstress.routing.batmand import batmand_argv
from meshstress.routing.converge import (
    RouteSnapshot,
    hops_table,
    missing_pairs,
    route_changes,
    sweep_pairs,
)
from meshstress.routing.probe import checksum, echo_request, parse_echo_reply
from meshstress.routing.static import path_hops, shortest_path_routes

# --- shortest paths ------------------------------------------------------------


def test_line_routes_go_through_the_middle() -> None:
    routes = shortest_path_routes(generators.line(3))
    assert routes == {
        "n0": {"n1": "n1", "n2": "n1"},
        "n1": {"n0": "n0", "n2": "n2"},
        "n2": {"n0": "n1", "n1": "n1"},
    }


@pytest.mark.parametrize(
    "topo",
    [generators.grid4(3, 3), generators.grid4(5, 4), generators.ring(7), generators.grid8(4, 4)],
    ids=lambda t: t.name,
)
def test_every_path_is_shortest_and_loop_free(topo: Topology) -> None:
    routes = shortest_path_routes(topo)
    for src in topo.node_names():
        hops = topo.hops_from(src)
        for dst, d in hops.items():
            if dst == src:
                assert dst not in routes[src]
                continue
            path = path_hops(routes, src, dst)
            assert path is not None and len(path) - 1 == d


def test_ties_break_by_node_order_and_are_stable() -> None:
    grid = generators.grid4(3, 3)  # n0 n1 n2 / n3 n4 n5 / n6 n7 n8
    routes = shortest_path_routes(grid)
    # n0 -> n4: via n1 or n3 (both 2 hops); n1 comes first in node order
    assert routes["n0"]["n4"] == "n1"
    assert routes["n8"]["n0"] == "n5"
    assert shortest_path_routes(grid) == routes


def test_segments_are_one_hop_and_unreachable_nodes_are_left_out() -> None:
    topo = Topology(
        "seg",
        [Node("a"), Node("b"), Node("c"), Node("d"), Node("lonely")],
        links=[Link("c", "d")],
        segments=[Segment("air", ["a", "b", "c"])],
    )
    routes = shortest_path_routes(topo)
    assert routes["a"] == {"b": "b", "c": "c", "d": "c"}
    assert routes["d"] == {"c": "c", "a": "c", "b": "c"}
    assert routes["lonely"] == {}
    assert "lonely" not in routes["a"]


# --- settings ------------------------------------------------------------------


def test_defaults() -> None:
    assert get_backend("babeld", {}).settings["hello_interval"] == 1.0
    assert get_backend("batmand", {}).settings["orig_interval"] == 1.0
    adv = get_backend("batman-adv", {})
    assert adv.settings["bridge_loop_avoidance"] is False
    assert adv.settings["algorithm"] == "BATMAN_IV"
    assert (adv.l3, adv.mtu) == (False, 1560)
    assert get_backend("batmand", {}).l3 is False
    assert get_backend("babeld", {}).l3 and get_backend("static", {}).l3
    for name in BACKEND_NAMES:
        assert get_backend(name, None).name == name


def test_settings_parse_units_and_booleans() -> None:
    b = get_backend(
        "batman-adv",
        {
            "algorithm": "batman_v",
            "orig_interval": "200ms",
            "hop_penalty": 15,
            "aggregation": "off",
        },
    )
    assert b.settings["algorithm"] == "BATMAN_V"
    assert b.settings["orig_interval"] == pytest.approx(0.2)
    assert b.settings["hop_penalty"] == 15
    assert b.settings["aggregation"] is False
    assert get_backend("babeld", {"hello_interval": "0.5s"}).settings["hello_interval"] == 0.5


def test_nested_block_for_the_backend_wins_and_others_are_ignored() -> None:
    raw = {
        "hello_interval": "2s",
        "babeld": {"hello_interval": "3s"},
        "batmand": {"orig_interval": "nonsense"},
    }
    assert get_backend("babeld", raw).settings["hello_interval"] == 3.0


@pytest.mark.parametrize(
    ("name", "raw", "field", "words"),
    [
        ("babeld", {"hello_interval": "10"}, "routing.hello_interval", "needs a unit"),
        ("babeld", {"hello_interval": "0ms"}, "routing.hello_interval", "between"),
        ("babeld", {"helo_interval": "1s"}, "routing.helo_interval", "unknown setting"),
        ("batmand", {"orig_interval": "fast"}, "routing.orig_interval", "duration"),
        ("batman-adv", {"algorithm": "OLSR"}, "routing.algorithm", "BATMAN_IV"),
        ("batman-adv", {"hop_penalty": 300}, "routing.hop_penalty", "between 0 and 255"),
        (
            "batman-adv",
            {"bridge_loop_avoidance": "maybe"},
            "routing.bridge_loop_avoidance",
            "true or false",
        ),
        ("static", {"anything": 1}, "routing.anything", "unknown setting"),
        ("babeld", {"babeld": 5}, "routing.babeld", "mapping"),
    ],
)
def test_bad_settings_name_the_field(name: str, raw: dict, field: str, words: str) -> None:
    with pytest.raises(InputError) as info:
        get_backend(name, raw, source="mesh.toml")
    assert info.value.field == field
    assert info.value.source == "mesh.toml"
    assert words in info.value.message
    assert str(info.value).startswith(f"mesh.toml: {field}: ")


def test_a_bad_setting_in_the_backend_block_names_that_block() -> None:
    with pytest.raises(InputError) as info:
        get_backend("babeld", {"babeld": {"hello_interval": "10"}}, source="g.toml")
    assert info.value.field == "routing.babeld.hello_interval"


def test_unknown_backend() -> None:
    with pytest.raises(InputError) as info:
        get_backend("olsrd", {})
    assert info.value.field == "routing"
    assert "babeld" in info.value.message


def test_per_node_settings_override_and_are_validated() -> None:
    topo = generators.line(3)
    topo.source = "line.toml"
    topo.nodes[1].settings["routing"] = {"orig_interval": "200ms"}
    b = get_backend("batmand", {"orig_interval": "500ms"})
    per = b.node_settings(topo)
    assert per["n0"]["orig_interval"] == 0.5 and per["n1"]["orig_interval"] == 0.2
    topo.nodes[2].settings["routing"] = {"orig_interval": "-1s"}
    with pytest.raises(InputError) as info:
        b.node_settings(topo)
    assert info.value.field == "nodes.n2.routing.orig_interval"
    assert info.value.source == "line.toml"


# --- command lines -------------------------------------------------------------


def test_babeld_argv() -> None:
    settings = get_backend("babeld", {"hello_interval": "500ms"}).settings
    argv = babeld_argv(
        "/usr/sbin/babeld",
        "/run/x/n0",
        [("i0", "wired"), ("i1", "wireless")],
        "10.201.0.0/16",
        settings,
    )
    joined = " ".join(argv)
    assert argv[:5] == [
        "/usr/sbin/babeld",
        "-I",
        "/run/x/n0/babeld.pid",
        "-S",
        "/run/x/n0/babeld.state",
    ]
    assert "-h 0.5 -H 0.5" in joined
    assert "redistribute local ip 10.201.0.0/16 allow" in argv
    assert argv.index("redistribute local deny") > argv.index(
        "redistribute local ip 10.201.0.0/16 allow"
    )
    assert "redistribute deny" in argv
    assert "interface i0 type wired hello-interval 0.5" in argv
    assert "interface i1 type wireless hello-interval 0.5" in argv


def test_babeld_argv_smoothing_and_debug() -> None:
    """-M (metric smoothing half-life) and -d (debug level) only when set."""
    plain = babeld_argv(
        "babeld", "/d", [("i0", "wired")], "10.201.0.0/16", get_backend("babeld").settings
    )
    assert "-M" not in plain and "-d" not in plain
    settings = get_backend("babeld", {"smoothing_half_life": "0s", "debug": 1}).settings
    argv = babeld_argv("babeld", "/d", [("i0", "wired")], "10.201.0.0/16", settings)
    assert argv[argv.index("-M") + 1] == "0"
    assert argv[argv.index("-d") + 1] == "1"
    assert get_backend("babeld", {"smoothing_half_life": "8s"}).settings["smoothing_half_life"] == 8
    with pytest.raises(InputError) as info:
        get_backend("babeld", {"smoothing_half_life": "1.5s"})
    assert info.value.field == "routing.smoothing_half_life"
    with pytest.raises(InputError):
        get_backend("babeld", {"debug": 4})


def test_batmand_argv() -> None:
    assert batmand_argv("batmand", ["i0", "i1"], 0.2) == [
        "batmand",
        "--no-detach",
        "-o",
        "200",
        "i0",
        "i1",
    ]


def test_batman_adv_settings_commands() -> None:
    cfg = get_backend("batman-adv", {"orig_interval": "250ms", "hop_penalty": 0}).settings
    cmds = [" ".join(c) for c in settings_commands(cfg)]
    assert "meshif bat0 orig_interval 250" in cmds
    assert "meshif bat0 bridge_loop_avoidance 0" in cmds
    assert "meshif bat0 distributed_arp_table 1" in cmds
    assert "meshif bat0 aggregation 1" in cmds
    assert "meshif bat0 hop_penalty 0" in cmds
    default = get_backend("batman-adv", {}).settings
    assert not any("hop_penalty" in c for c in settings_commands(default))


# --- snapshots and convergence logic -------------------------------------------


def test_hops_follow_next_hops_and_detect_loops_and_gaps() -> None:
    table = hops_table(
        {
            "a": {"b": "b", "c": "b", "d": "b"},
            "b": {"a": "a", "c": "c", "d": "a"},  # b->d goes back to a: a loop
            "c": {"a": "b", "b": "b"},
        }
    )
    assert table["a"]["b"] == ("b", 1)
    assert table["a"]["c"] == ("b", 2)
    assert table["c"]["a"] == ("b", 2)
    assert table["a"]["d"] == ("b", None)
    assert table["b"]["d"] == ("a", None)


def test_missing_pairs() -> None:
    nodes = ["a", "b", "c"]
    assert missing_pairs(nodes, {"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a", "b"}}) == []
    assert missing_pairs(nodes, {"a": {"b"}, "b": {"a", "c"}}) == [
        ("a", "c"),
        ("c", "a"),
        ("c", "b"),
    ]


def snap(t: float, routes: dict[str, dict[str, str | None]]) -> RouteSnapshot:
    return RouteSnapshot(t, {n: {d: (nh, None) for d, nh in r.items()} for n, r in routes.items()})


def test_route_changes_count_flaps_per_pair() -> None:
    snaps = [
        snap(0, {"a": {}}),
        snap(1, {"a": {"c": "b"}}),  # first appearance: not a change
        snap(2, {"a": {"c": "b"}, "b": {"c": "c"}}),
        snap(3, {"a": {"c": "d"}, "b": {"c": "c"}}),  # a->c moved to d
        snap(4, {"a": {}, "b": {"c": "c"}}),  # lost
        snap(5, {"a": {"c": "b"}, "b": {"c": "c"}}),  # back
    ]
    changes = route_changes(snaps)
    assert changes[("a", "c")] == 3
    assert changes[("b", "c")] == 0
    assert route_changes(snaps[:1]) == {}


def test_sweep_is_bounded() -> None:
    small = [f"n{i}" for i in range(4)]
    assert len(sweep_pairs(small)) == 12
    big = [f"n{i}" for i in range(217)]
    pairs = sweep_pairs(big)
    assert len(pairs) == 216 and all(src == "n0" for src, _ in pairs)


# --- ICMP ----------------------------------------------------------------------


def test_echo_request_checksum_and_reply_parsing() -> None:
    req = echo_request(0x1234, 7)
    assert checksum(req) == 0  # a valid checksum sums to zero
    ip_header = bytes([0x45]) + bytes(11) + bytes([10, 201, 0, 3]) + bytes([10, 201, 0, 1])
    reply = ip_header + bytes([0]) + req[1:]
    assert parse_echo_reply(reply) == ("10.201.0.3", 0x1234, 7)
    assert parse_echo_reply(ip_header + req) is None  # a request, not a reply


# --- batctl output -------------------------------------------------------------

ORIGINATORS_JSON_IV = (
    '[{"hard_ifindex":2,"hard_ifname":"ms-oduq-i0","orig_address":"a2:75:e7:c4:c5:1f",'
    '"best":true,"last_seen_msecs":580,"neigh_address":"76:17:d5:c7:8f:bd","tq":5},'
    '{"hard_ifindex":2,"hard_ifname":"ms-oduq-i0","orig_address":"76:17:d5:c7:8f:bd",'
    '"best":true,"last_seen_msecs":980,"neigh_address":"76:17:d5:c7:8f:bd","tq":34}]'
)

ORIGINATORS_TABLE_IV = """\
[B.A.T.M.A.N. adv 2022.3, MainIF/MAC: ms-oduq-i0/32:9d:bf:f7:cb:9f (bat0/ea:9c:a9:24:21:52 BATMAN_IV)]
   Originator        last-seen (#/255) Nexthop           [outgoingIF]
 * a2:75:e7:c4:c5:1f    0.736s   (  5) 76:17:d5:c7:8f:bd [ms-oduq-i0]
   a2:75:e7:c4:c5:1f    0.736s   (  2) 11:22:33:44:55:66 [ms-oduq-i1]
 * 76:17:d5:c7:8f:bd    0.116s   ( 45) 76:17:d5:c7:8f:bd [ms-oduq-i0]
"""


def test_parse_originators_json() -> None:
    origs = parse_originators_json(ORIGINATORS_JSON_IV)
    assert [o.orig for o in origs] == ["a2:75:e7:c4:c5:1f", "76:17:d5:c7:8f:bd"]
    first = origs[0]
    assert first.next_hop == "76:17:d5:c7:8f:bd" and first.ifname == "ms-oduq-i0"
    assert first.metric == 5 and first.last_seen == pytest.approx(0.58) and first.best
    v = parse_originators_json(
        '[{"hard_ifname":"i0","orig_address":"AA:BB:CC:DD:EE:FF","best":false,'
        '"last_seen_msecs":100,"neigh_address":"aa:bb:cc:dd:ee:01","throughput":10000}]'
    )
    assert v[0].orig == "aa:bb:cc:dd:ee:ff" and v[0].metric == 10000 and not v[0].best
    assert parse_originators_json("") == []


def test_parse_originators_table() -> None:
    origs = parse_originators_table(ORIGINATORS_TABLE_IV)
    assert len(origs) == 3
    assert origs[0].best and origs[0].metric == 5 and origs[0].last_seen == pytest.approx(0.736)
    assert not origs[1].best and origs[1].ifname == "ms-oduq-i1"
    assert origs[2].next_hop == "76:17:d5:c7:8f:bd" and origs[2].metric == 45
    assert parse_originators_table(ORIGINATORS_TABLE_IV.splitlines()[-1]) == origs[2:]


def test_parse_neighbours_json() -> None:
    n = parse_neighbours_json(
        '[{"hard_ifindex":2,"hard_ifname":"ms-oduq-i0","last_seen_msecs":44,'
        '"neigh_address":"76:17:d5:c7:8f:bd"}]'
    )
    assert n[0].address == "76:17:d5:c7:8f:bd" and n[0].metric is None
    assert n[0].last_seen == pytest.approx(0.044)


def test_parse_batman_v_table_line() -> None:
    line = " * 5e:80:2a:a4:9f:c3    0.516s (     9215.6)  de:54:6e:7c:f8:f3 [ms-ouvw-i0]"
    (o,) = parse_originators_table(line)
    assert o.metric == pytest.approx(9215.6) and o.next_hop == "de:54:6e:7c:f8:f3" and o.best


# --- batman-adv generic netlink ------------------------------------------------


def test_genl_set_mesh_message_matches_batctl() -> None:
    # what `batctl meshif bat0 it 400` sends (strace in the lab), family 0x21, seq 7
    attrs = genl.encode_attr("mesh_ifindex", 2) + genl.encode_attr("orig_interval", 400)
    msg = genl.genl_message(0x21, genl.CMD_SET_MESH, attrs, genl.NLM_F_REQUEST | genl.NLM_F_ACK, 7)
    assert msg[16:] == bytes.fromhex("0f01000008000300020000000800390090010000")
    length, family, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, family, flags, seq) == (36, 0x21, 5, 7)
    # a u8 attribute is padded to 4 bytes
    assert genl.encode_attr("bridge_loop_avoidance_enabled", 0) == bytes.fromhex("05002e0000000000")


def test_genl_originator_decoding() -> None:
    payload = (
        genl.nla(genl.ATTR["orig_address"], bytes.fromhex("a275e7c4c51f"))
        + genl.nla(genl.ATTR["neigh_address"], bytes.fromhex("7617d5c78fbd"))
        + genl.nla(genl.ATTR["hard_ifindex"], struct.pack("=I", 3))
        + genl.nla(genl.ATTR["last_seen_msecs"], struct.pack("=I", 580))
        + genl.nla(genl.ATTR["tq"], b"\x05")
        + genl.nla(genl.ATTR["flag_best"], b"")
        + genl.nla(200, b"unknown")
    )
    entry = genl.decode_batadv(genl.parse_attrs(payload))
    assert entry == {
        "orig_address": "a2:75:e7:c4:c5:1f",
        "neigh_address": "76:17:d5:c7:8f:bd",
        "hard_ifindex": 3,
        "last_seen_msecs": 580,
        "tq": 5,
        "flag_best": True,
    }
    o = originator_from_genl(entry, {3: "ms-x-i1"})
    assert (
        o
        == parse_originators_json(
            '[{"hard_ifname":"ms-x-i1","orig_address":"a2:75:e7:c4:c5:1f","best":true,'
            '"last_seen_msecs":580,"neigh_address":"76:17:d5:c7:8f:bd","tq":5}]'
        )[0]
    )
    header = struct.pack("=IHHII", 16 + 4 + len(payload), 0x21, 2, 9, 0)
    done = struct.pack("=IHHII", 20, genl.NLMSG_DONE, 2, 9, 0) + b"\0" * 4
    msgs = list(genl.split_messages(header + b"\x08\x01\x00\x00" + payload + done))
    assert [(t, s) for t, s, _ in msgs] == [(0x21, 9), (genl.NLMSG_DONE, 9)]


def test_genl_values_mirror_the_batctl_commands() -> None:
    cfg = get_backend("batman-adv", {"orig_interval": "250ms", "aggregation": False}).settings
    assert genl_values(cfg) == {
        "orig_interval": 250,
        "bridge_loop_avoidance_enabled": 0,
        "distributed_arp_table_enabled": 1,
        "aggregated_ogms_enabled": 0,
    }


# --- raw rtnetlink route parsing -----------------------------------------------


def test_parse_route_message() -> None:
    rtmsg = struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 254, 42, 0, 1, 0)
    attrs = (
        genl.nla(rtdump.RTA_TABLE, struct.pack("=I", 254))
        + genl.nla(rtdump.RTA_DST, bytes([10, 201, 0, 9]))
        + genl.nla(rtdump.RTA_PRIORITY, struct.pack("=I", 96))
        + genl.nla(rtdump.RTA_GATEWAY, bytes([10, 201, 0, 2]))
        + genl.nla(rtdump.RTA_OIF, struct.pack("=I", 3))
    )
    r = rtdump.parse_route(rtmsg + attrs)
    assert r == rtdump.KRoute("10.201.0.9", 32, 254, 42, 1, "10.201.0.2", 3, 96)
    # a multipath route: the first next hop's gateway
    nh_attrs = genl.nla(rtdump.RTA_GATEWAY, bytes([10, 201, 0, 4]))
    nexthop = struct.pack("=HBBi", 8 + len(nh_attrs), 0, 0, 5) + nh_attrs
    mp = (
        rtmsg
        + genl.nla(rtdump.RTA_DST, bytes([10, 201, 0, 9]))
        + genl.nla(rtdump.RTA_MULTIPATH, nexthop)
    )
    r = rtdump.parse_route(mp)
    assert (r.gateway, r.oif, r.priority) == ("10.201.0.4", 5, 0)
    req = rtdump.dump_request(1)
    assert struct.unpack_from("=IHH", req) == (28, rtdump.RTM_GETROUTE, 0x301)


def test_parse_rule_message() -> None:
    hdr = struct.pack("=BBBBBBBBI", 2, 16, 0, 0, 0, 0, 0, rtdump.FR_ACT_TO_TBL, 0)
    attrs = (
        genl.nla(rtdump.FRA_TABLE, struct.pack("=I", 66))
        + genl.nla(rtdump.FRA_PRIORITY, struct.pack("=I", 6600))
        + genl.nla(rtdump.FRA_DST, bytes([10, 201, 0, 0]))
    )
    assert rtdump.parse_rule(hdr + attrs) == rtdump.KRule(
        6600, 66, rtdump.FR_ACT_TO_TBL, "10.201.0.0", 16, False
    )
    iif = genl.nla(rtdump.FRA_IIFNAME, b"lo\0") + genl.nla(rtdump.FRA_TABLE, struct.pack("=I", 7))
    assert rtdump.parse_rule(hdr[:1] + bytes(7) + struct.pack("=I", 0) + iif).selective
    req = rtdump.dump_request(1, rtdump.RTM_GETRULE)
    assert struct.unpack_from("=IHH", req) == (28, rtdump.RTM_GETRULE, 0x301)


def _kr(dst: str, table: int, gateway: str | None, priority: int = 0, rtype: int = 1) -> Any:
    return rtdump.KRoute(dst, 32, table, 4, rtype, gateway, 3, priority)


def _rule(priority: int, table: int, dst: str | None = None, selective: bool = False) -> Any:
    return rtdump.KRule(priority, table, rtdump.FR_ACT_TO_TBL, dst, 16 if dst else 0, selective)


def test_select_routes_follows_the_policy_rules_like_the_kernel() -> None:
    """batmand keeps routes in tables 66 (rule 6600) and 65 (rule 6699); after a link flap
    table 65 can hold a stale route listed before the live one. The kernel looks up 66 first:
    so must we (we once took the first route of any policy table and saw loops)."""
    from meshstress.routing.base import select_routes

    owners = {f"10.201.0.{i}": f"n{i - 1}" for i in range(1, 9)}
    me = "10.201.0.1"
    routes = [
        _kr("10.201.0.7", 65, "10.201.0.2"),  # stale, listed first
        _kr("10.201.0.7", 65, "10.201.0.8"),
        _kr("10.201.0.7", 66, "10.201.0.8"),
        _kr("10.201.0.3", 65, "10.201.0.2"),  # only in 65: found after 66 misses it
        _kr("10.201.0.4", 66, None, rtype=9),  # throw: go on to the next rule
        _kr("10.201.0.4", 65, "10.201.0.8"),
        _kr("10.201.0.5", 66, None, rtype=7),  # unreachable: no route
        _kr("10.201.0.5", 65, "10.201.0.8"),
        _kr("10.201.0.6", 254, "10.201.0.2", priority=96),
        _kr("10.201.0.6", 254, "10.201.0.8", priority=10),  # lowest priority wins
        _kr("10.201.0.2", 70, "10.201.0.8"),  # table behind a source selector only
        _kr("10.201.0.2", 254, None),
        _kr("10.202.0.8", 66, "10.201.0.8"),  # not a node
    ]
    rules = [
        _rule(0, 255),
        _rule(50, 70, selective=True),
        _rule(6600, 66, "10.201.0.0"),
        _rule(6699, 65),
        _rule(32766, 254),
        _rule(32767, 253),
    ]
    got = select_routes(routes, rules, owners, me)
    assert {dst: r.next_hop for dst, r in got.items()} == {
        "n6": "n7",
        "n2": "n1",
        "n3": "n7",
        "n5": "n7",
        "n1": "n1",
    }
    assert got["n5"].metric == 10.0
    # a rule whose destination selector does not cover the address is not used
    other = [_rule(6600, 66, "10.99.0.0"), _rule(6699, 65), _rule(32766, 254)]
    assert select_routes(routes, other, owners, me)["n6"].next_hop == "n1"
    # no rules read: the kernel's defaults (main)
    assert set(select_routes(routes, [], owners, me)) == {"n5", "n1"}


def test_snapshot_path_follows_next_hops_and_stops_on_gaps_and_loops() -> None:
    from meshstress.routing import RouteSnapshot

    snap = RouteSnapshot(
        t=0.0,
        routes={
            "a": {"d": ("b", 3), "x": ("b", None)},
            "b": {"d": ("c", 2), "x": ("a", None)},
            "c": {"d": ("d", 1)},
        },
    )
    assert snap.path("a", "d") == ["a", "b", "c", "d"]
    assert snap.path("a", "x") is None  # a -> b -> a: a loop
    assert snap.path("c", "a") is None  # no route: a gap
    assert snap.path("d", "d") == ["d"]


def test_record_routes_samples_over_time_and_flaps_are_counted() -> None:
    from types import SimpleNamespace

    from meshstress.routing import Route, record_routes, route_changes

    calls = {"n": 0}

    class Flappy:
        """a's route to c alternates between b and d on every snapshot."""

        def routes(self, mesh, node):  # type: ignore[no-untyped-def]
            if node == "a":
                calls["n"] += 1
                return {"c": Route("b" if calls["n"] % 2 else "d", None)}
            return {"c": Route("c", None)}

    mesh = SimpleNamespace(nodes=["a", "b", "d"])
    snaps = record_routes(mesh, Flappy(), duration=0.25, interval=0.05)  # type: ignore[arg-type]
    assert 4 <= len(snaps) <= 7
    assert all(b.t - a.t >= 0.045 for a, b in zip(snaps, snaps[1:], strict=False))
    flaps = route_changes(snaps)
    assert flaps[("a", "c")] == len(snaps) - 1
    assert flaps[("b", "c")] == 0


def test_static_hop_counts_are_the_lengths_of_the_followed_paths() -> None:
    from meshstress.routing.static import hop_counts, path_hops, shortest_path_routes

    topo = generators.grid4(6, 5)
    topo.links.append(Link("n0", "n29"))
    routes = shortest_path_routes(topo)
    # a gap (n3 has no route to n9) and a loop (n5 and n6 point at each other for n20)
    routes["n3"].pop("n9")
    routes["n5"]["n20"], routes["n6"]["n20"] = "n6", "n5"
    counts = hop_counts(routes)
    for node, row in routes.items():
        assert set(counts[node]) == set(row)
        for dst in row:
            path = path_hops(routes, node, dst)
            assert counts[node][dst] == (len(path) - 1 if path else 0), (node, dst)
    assert counts["n5"]["n20"] == 0 and counts["n0"]["n29"] == 1
