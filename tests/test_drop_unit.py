"""The drop filter of radio-like cuts, pure parts (no root): the eBPF bytecode run on a
small interpreter of the instructions it uses, the slot numbering, the rtnetlink
requests that attach it, and the event runner's model of which slots drop and which
interfaces go down for each carrier mode."""

from __future__ import annotations

import socket
import struct
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from meshstress.build import drop, rtnl
from meshstress.cli import cli
from meshstress.errors import InputError
from meshstress.model import generators, scenario
from meshstress.model import sweep as model_sweep
from meshstress.stress.events import (
    CARRIER_KEEP,
    CARRIER_LOSE,
    CARRIER_MODES,
    Event,
    EventRunner,
    parse_events,
)

MAP_FD = 7
STACK = 0x10000  # where r10 points in the interpreter


def run(code: bytes, values: dict[int, int], size: int = 16) -> int:
    """Run the drop program on an array map holding `values` (slot -> u32; others 0)
    with `size` entries; returns r0 at exit. Knows exactly the instructions `program`
    emits, and fails on anything else, on a jump out of the program, or on a loop."""
    insns = [drop.INSN.unpack_from(code, k) for k in range(0, len(code), 8)]
    regs: list[Any] = [0] * 11
    regs[10] = STACK
    stack: dict[int, int] = {}
    pc, steps = 0, 0
    while True:
        assert 0 <= pc < len(insns), f"jump out of the program to {pc}"
        steps += 1
        assert steps < 1000, "no exit"
        op, rr, off, imm = insns[pc]
        dst, src = rr & 0xF, rr >> 4
        if op == 0x62:  # *(u32 *)(dst + off) = imm
            assert dst == 10 and -512 <= off < 0
            stack[regs[dst] + off] = imm & 0xFFFFFFFF
        elif op == 0xBF:  # dst = src
            regs[dst] = regs[src]
        elif op == 0x07:  # dst += imm
            regs[dst] += imm
        elif op == 0x18:  # dst = map (64-bit immediate, two instructions)
            assert src == drop.BPF_PSEUDO_MAP_FD and imm == MAP_FD
            assert insns[pc + 1] == (0, 0, 0, 0)
            regs[dst] = ("map", MAP_FD)
            pc += 1
        elif op == 0x85:  # call
            assert imm == drop.BPF_FUNC_MAP_LOOKUP_ELEM and regs[1] == ("map", MAP_FD)
            key = stack[regs[2]]
            regs[0] = ("value", key) if key < size else 0
            regs[1:6] = [None] * 5  # the call clobbers r1-r5
        elif op == 0x15:  # if dst == imm goto +off
            if regs[dst] == imm:
                pc += off
        elif op == 0x61:  # dst = *(u32 *)(src + off)
            assert isinstance(regs[src], tuple) and off == 0
            regs[dst] = values.get(regs[src][1], 0)
        elif op == 0x55:  # if dst != imm goto +off
            if regs[dst] != imm:
                pc += off
        elif op == 0xB7:  # dst = imm
            regs[dst] = imm
        elif op == 0x95:  # exit
            return int(regs[0])
        else:
            raise AssertionError(f"unexpected opcode {op:#x} at {pc}")
        pc += 1


@pytest.mark.parametrize("slots", [[1], [3, 9], [2, 5, 11]])
def test_the_program_drops_when_any_of_its_slots_is_set_and_passes_otherwise(slots) -> None:
    code = drop.program(MAP_FD, slots)
    assert len(code) % 8 == 0
    assert run(code, {}) == drop.TC_ACT_UNSPEC  # nothing set: the frame goes on
    for s in slots:
        assert run(code, {s: 1}) == drop.TC_ACT_SHOT, s
    assert run(code, {s: 1 for s in slots}) == drop.TC_ACT_SHOT
    others = {k: 1 for k in range(16) if k not in slots}  # other nodes' and links' slots
    assert run(code, others) == drop.TC_ACT_UNSPEC


def test_the_program_ends_in_exits_and_its_jumps_stay_inside() -> None:
    code = drop.program(MAP_FD, [4, 8])
    insns = [drop.INSN.unpack_from(code, k) for k in range(0, len(code), 8)]
    assert insns[-1][0] == 0x95 and insns[-3][0] == 0x95  # pass exit, drop exit
    for k, (op, _, off, _) in enumerate(insns):
        if op in (0x15, 0x55):
            assert k + 1 + off < len(insns)
    # the drop branch returns TC_ACT_SHOT, the fall-through TC_ACT_UNSPEC
    assert insns[-2] == (0xB7, 0, 0, drop.TC_ACT_SHOT)
    assert insns[-4] == (0xB7, 0, 0, drop.TC_ACT_UNSPEC)


def test_the_program_refuses_no_slot_or_a_bad_one() -> None:
    with pytest.raises(ValueError):
        drop.program(MAP_FD, [])
    with pytest.raises(ValueError):
        drop.program(MAP_FD, [-1])


def test_slot_numbers_leave_zero_unused_then_nodes_then_links() -> None:
    nodes, links, size = drop.slot_numbers(["a", "b", "c"], [("a", "b"), ("c", "b")])
    assert nodes == {"a": 1, "b": 2, "c": 3}
    assert links == {frozenset("ab"): 4, frozenset("bc"): 5}
    assert size == 6


def _attrs(data: bytes) -> dict[int, bytes]:
    out, off = {}, 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        out[kind & 0x3FFF] = data[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


def test_clsact_and_filter_requests_decode_as_rtnetlink() -> None:
    msg = drop.clsact_msg(5, seq=77)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq) == (len(msg), drop.RTM_NEWQDISC, 77)
    assert flags == rtnl.NLM_F_REQUEST | rtnl.NLM_F_CREATE  # no EXCL: one there is kept
    family, index, handle, parent, _ = struct.unpack_from("=BxxxiIII", msg, 16)
    assert (family, index, handle, parent) == (0, 5, 0xFFFF0000, 0xFFFFFFF1)
    assert _attrs(msg[36:])[drop.TCA_KIND] == b"clsact\0"

    for parent in (drop.INGRESS, drop.EGRESS):
        msg = drop.filter_msg(5, parent, prog_fd=42, seq=78)
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
        assert (length, kind, seq) == (len(msg), drop.RTM_NEWTFILTER, 78)
        assert flags & rtnl.NLM_F_CREATE and flags & rtnl.NLM_F_REPLACE
        _, index, handle, got_parent, info = struct.unpack_from("=BxxxiIII", msg, 16)
        assert (index, handle, got_parent) == (5, 1, parent)
        assert info >> 16 == drop.FILTER_PRIO and info & 0xFFFF == socket.htons(0x0003)
        attrs = _attrs(msg[36:])
        assert attrs[drop.TCA_KIND] == b"bpf\0"
        opts = _attrs(attrs[drop.TCA_OPTIONS])
        assert struct.unpack("=I", opts[drop.TCA_BPF_FD]) == (42,)
        assert struct.unpack("=I", opts[drop.TCA_BPF_FLAGS]) == (drop.TCA_BPF_FLAG_ACT_DIRECT,)
    assert drop.INGRESS == 0xFFFFFFF2 and drop.EGRESS == 0xFFFFFFF3


# --- the event runner's model (no kernel: a stub mesh) ----------------------------------


def stub_runner() -> EventRunner:
    topo = generators.line(3)
    ifaces = {
        "n0": [{"ifname": "i0", "peer": "n1"}],
        "n1": [{"ifname": "i0", "peer": "n0"}, {"ifname": "i1", "peer": "n2"}],
        "n2": [{"ifname": "i0", "peer": "n1"}],
    }
    mesh = SimpleNamespace(state=SimpleNamespace(interfaces=ifaces))
    backend = SimpleNamespace(mtu=None, role=None, l3=True)
    return EventRunner(mesh, backend, topo)  # type: ignore[arg-type]


def test_the_model_drops_keep_cuts_and_downs_lose_cuts() -> None:
    r = stub_runner()
    n1 = r._node_slot["n1"]
    l01 = r._link_slot[frozenset(("n0", "n1"))]
    l12 = r._link_slot[frozenset(("n1", "n2"))]
    r.crashed.add("n1")
    r.crash_carrier["n1"] = CARRIER_KEEP
    assert r._drop_slots() == {n1}
    assert all(r._wanted(["n0", "n1", "n2"]).values())  # every interface stays up
    assert not any(r._carrying(["n1"]).values())  # but carries nothing
    assert r._carrying(["n0"]) == {("n0", "i0"): True}  # the neighbour's own: untouched
    r.crash_carrier["n1"] = CARRIER_LOSE
    assert r._drop_slots() == set()
    assert r._wanted(["n1"]) == {("n1", "i0"): False, ("n1", "i1"): False}
    assert r._wanted(["n0"]) == {("n0", "i0"): True}  # the neighbour's end stays up

    r.crashed.clear()
    r.downed.add(frozenset(("n0", "n1")))
    r.down_carrier[frozenset(("n0", "n1"))] = CARRIER_KEEP
    r.cut = {frozenset(("n1", "n2"))}
    r.cut_carrier = CARRIER_LOSE
    assert r._drop_slots() == {l01}
    assert r._wanted(["n1"]) == {("n1", "i0"): True, ("n1", "i1"): False}
    r.cut_carrier = CARRIER_KEEP
    assert r._drop_slots() == {l01, l12}
    assert r._carrying(["n0", "n2"]) == {("n0", "i0"): False, ("n2", "i0"): False}


def test_prepare_picks_the_interfaces_of_radio_like_cuts_only() -> None:
    r = stub_runner()
    evs = [
        Event(0, "node-crash", node="n1"),
        Event(1, "link-down", link=("n0", "n1"), carrier=CARRIER_LOSE),
        Event(2, "partition", groups=(("n0",), ("n1", "n2"))),
    ]
    assert r._keep_interfaces(evs) == [("n1", "i0"), ("n1", "i1"), ("n0", "i0"), ("n1", "i0")]


# --- the carrier key in scenario files --------------------------------------------------


def parse(text: str) -> list[Event]:
    return parse_events(tomllib.loads(text)["events"], "sc.toml", generators.grid4(3, 3))


def test_carrier_defaults_to_keep_and_parses_on_cuts() -> None:
    evs = parse(
        """
        [[events]]
        at = "1s"
        action = "node-crash"
        node = "n4"
        for = "2s"
        [[events]]
        at = "2s"
        action = "link-down"
        link = ["n0", "n1"]
        carrier = "lose"
        for = "1s"
        [[events]]
        at = "5s"
        action = "partition"
        groups = [["n0"]]
        carrier = "keep"
        """
    )
    assert [(e.action, e.carrier) for e in evs] == [
        ("node-crash", "keep"),
        ("link-down", "lose"),
        ("node-restart", "keep"),  # an undo carries its event's mode
        ("link-up", "lose"),
        ("partition", "keep"),
    ]
    assert CARRIER_MODES == model_sweep.CARRIERS == ("keep", "lose")


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ('action = "node-crash"\nnode = "n4"\ncarrier = "drop"', "events[0].carrier",
         "must be one of keep, lose"),
        ('action = "link-down"\nlink = ["n0", "n1"]\ncarrier = 1', "events[0].carrier",
         "expected a string"),
        ('action = "link-up"\nlink = ["n0", "n1"]\ncarrier = "keep"', "events[0].carrier",
         "unknown key"),
        ('action = "node-restart"\nnode = "n4"\ncarrier = "lose"', "events[0].carrier",
         "unknown key"),
    ],
)  # fmt: skip
def test_a_bad_carrier_names_the_field(body: str, field: str, words: str) -> None:
    with pytest.raises(InputError) as info:
        parse(f'[[events]]\nat = "1s"\n{body}\n')
    assert info.value.source == "sc.toml" and info.value.field == field
    assert words in info.value.message


SWEEP_HEAD = """
[scenario]
duration = "20s"
[mesh]
generate = "line 3"
routing = "static"
[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n2"
rate = "10pps"
"""


def test_a_churn_sweep_takes_carrier_and_its_crashes_carry_it() -> None:
    sc = scenario.loads(
        SWEEP_HEAD + '[sweep]\nchurn = [0, 12]\nstep = "10s"\nchurn_down = "2s"\n'
        'carrier = "lose"\n',
        "s.toml",
    )
    (sw,) = sc.sweeps
    assert sw.carrier == "lose"
    evs = [ev for a in model_sweep.expand(sw, sc.topology) for ev in a.events]
    assert {ev.carrier for ev in evs} == {"lose"} and len(evs) == 4
    assert sc.needs() == []
    keep = scenario.loads(SWEEP_HEAD + '[sweep]\nchurn = [0, 12]\nstep = "10s"\n', "s.toml")
    assert keep.sweeps[0].carrier == "keep" and keep.needs() == ["tc-bpf"]


@pytest.mark.parametrize(
    ("sweep", "words"),
    [
        ('loss = ["0%", "1%"]\ncarrier = "keep"', "only a failed_links or churn sweep"),
        ('failed_links = [0, 1]\ncarrier = "off"', "must be one of keep, lose"),
    ],
)
def test_a_bad_sweep_carrier_names_the_field(sweep: str, words: str) -> None:
    with pytest.raises(InputError) as info:
        scenario.loads(SWEEP_HEAD + "[sweep]\n" + sweep + "\n", "s.toml")
    assert info.value.field == "sweep.carrier" and words in info.value.message


def test_the_cli_refuses_a_bad_carrier_in_one_line_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SWEEP_HEAD + '[[events]]\nat = "1s"\naction = "node-crash"\nnode = "n1"\n'
                   'carrier = "drop"\n')  # fmt: skip
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--out", str(out), str(bad)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line]
    assert lines == [
        f'meshstress: {bad}: events[0].carrier: must be one of keep, lose, got "drop"'
    ], result.output
    assert not out.exists()  # nothing created
