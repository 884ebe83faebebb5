"""Impairments beyond plain netem, without root: parsing and validation, the
Gilbert-Elliott math, qdisc chains, netlink encoding, apply/replace calls, describe."""

from __future__ import annotations

import errno
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshstress.build import impair
from meshstress.errors import InputError
from meshstress.model import topofile
from meshstress.model.topology import GilbertElliott, Impairment, simple_gilbert

HEAD = 'nodes = ["a", "b", "c"]\n'


def link(body: str) -> str:
    return HEAD + f'[[links]]\na = "a"\nb = "b"\n{body}\n'


def seg(body: str) -> str:
    return HEAD + f'[[segments]]\nname = "air"\nnodes = ["a", "b", "c"]\n{body}\n'


def load(text: str):
    return topofile.loads_toml(text, "imp.toml")


# --- parsing ---------------------------------------------------------------------------


def test_every_new_field_parses_on_links_directions_and_segments() -> None:
    t = load(
        link(
            'loss = "5%"\nloss_burst = 4\ndelay = "20ms"\nduplicate = "1%"\ncorrupt = "0.1%"\n'
            'reorder = "25%"\nreorder_gap = 5\nrate = "4mbit"\nqueue = 50\n'
            'b_to_a = { gemodel = { p = "1%", r = "25%", bad_loss = "90%", good_loss = "0.5%" } }'
        )
        + '[[segments]]\nname = "air"\nnodes = ["b", "c"]\nduplicate = "2%"\n'
    )
    ab, ba = t.links[0].ab, t.links[0].ba
    assert ab == Impairment(
        loss=0.05,
        delay=0.02,
        rate=4_000_000,
        loss_burst=4.0,
        duplicate=0.01,
        corrupt=0.001,
        reorder=0.25,
        reorder_gap=5,
        queue=50,
    )
    # the direction's gemodel replaces the link's loss and loss_burst, keeps the rest
    assert ba.gemodel == GilbertElliott(p=0.01, r=0.25, bad_loss=0.9, good_loss=0.005)
    assert ba.loss == 0 and ba.loss_burst is None and ba.duplicate == 0.01 and ba.queue == 50
    assert t.segments[0].egress == Impairment(duplicate=0.02)


def test_direction_loss_replaces_a_shared_gemodel() -> None:
    t = load(link('gemodel = { p = "2%", r = "50%" }\na_to_b = { loss = "3%" }'))
    assert t.links[0].ab.gemodel is None and t.links[0].ab.loss == 0.03
    assert t.links[0].ba.gemodel == GilbertElliott(0.02, 0.5)


def test_shared_reorder_is_checked_only_where_a_direction_uses_it() -> None:
    # the link alone has no delay, but each direction brings its own
    t = load(link('reorder = "10%"\na_to_b = { delay = "5ms" }\nb_to_a = { delay = "9ms" }'))
    assert t.links[0].ab.reorder == 0.1 and t.links[0].ba.delay == pytest.approx(0.009)
    # with one direction using the link's values as they are, they must hold
    with pytest.raises(InputError) as err:
        load(link('reorder = "10%"\na_to_b = { delay = "5ms" }'))
    assert err.value.field == "links[0].reorder"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (link('loss = "5%"\ngemodel = { p = "1%", r = "9%" }'), "links[0].gemodel", "use one"),
        (
            link('a_to_b = { loss_burst = 3, gemodel = { p = "1%", r = "9%" } }'),
            "links[0].a_to_b.gemodel",
            "use one",
        ),
        (link('gemodel = { p = "1%" }'), "links[0].gemodel.r", "missing"),
        (link('gemodel = { p = "1%", r = "2%", h = "3%" }'), "links[0].gemodel.h", "unknown key"),
        (link('gemodel = { p = "1%", r = "200%" }'), "links[0].gemodel.r", "above 100%"),
        (link('gemodel = "1%"'), "links[0].gemodel", "expected a table"),
        (link("loss_burst = 4"), "links[0].loss_burst", "needs a loss"),
        (link('loss = "5%"\nloss_burst = 0.5'), "links[0].loss_burst", "at least 1"),
        (link('loss = "5%"\nloss_burst = "4"'), "links[0].loss_burst", "mean burst length"),
        (link('loss = "5%"\nloss_burst = true'), "links[0].loss_burst", "mean burst length"),
        (link('loss = "90%"\nloss_burst = 2'), "links[0].loss_burst", "impossible"),
        (link('loss = "100%"\nloss_burst = 2'), "links[0].loss_burst", "between 0% and 100%"),
        (link('reorder = "5%"'), "links[0].reorder", "needs a delay"),
        (link('a_to_b = { reorder = "5%" }'), "links[0].a_to_b.reorder", "needs a delay"),
        (seg('reorder = "5%"'), "segments[0].reorder", "needs a delay"),
        (link('delay = "5ms"\nreorder_gap = 3'), "links[0].reorder_gap", "needs reorder"),
        (
            link('delay = "5ms"\nreorder = "1%"\nreorder_gap = 0'),
            "links[0].reorder_gap",
            "at least 1",
        ),
        (link("queue = 0"), "links[0].queue", "at least 1"),
        (link("queue = 1.5"), "links[0].queue", "integer"),
        (link("queue = 4294967296"), "links[0].queue", "2^32"),
        (link('duplicate = "150%"'), "links[0].duplicate", "above 100%"),
        (link('corrupt = "-1%"'), "links[0].corrupt", "percentage"),
        (link('b_to_a = { corrupt = "x" }'), "links[0].b_to_a.corrupt", "percentage"),
        (seg('gemodel = { p = "1%", r = "2%" }\nloss = "1%"'), "segments[0].gemodel", "use one"),
    ],
)
def test_validation_names_the_field(text: str, field: str, words: str) -> None:
    with pytest.raises(InputError) as err:
        load(text)
    assert err.value.source == "imp.toml"
    assert err.value.field == field, str(err.value)
    assert words in err.value.message, str(err.value)


# --- Gilbert-Elliott ---------------------------------------------------------------------


def test_simple_gilbert_numbers() -> None:
    ge = simple_gilbert(0.05, 4)
    assert ge.r == 0.25
    assert ge.p == pytest.approx(0.05 / (4 * 0.95))
    assert ge.bad_loss == 1.0 and ge.good_loss == 0.0
    assert ge.mean_loss() == pytest.approx(0.05) and ge.mean_burst() == 4
    # a burst of 1 is as far as a chain can go: every bad packet is followed by a good one
    assert simple_gilbert(0.5, 1).p == pytest.approx(1.0)
    with pytest.raises(ValueError, match="impossible"):
        simple_gilbert(0.6, 1)


@given(st.floats(0.001, 0.95), st.floats(1, 500))
def test_simple_gilbert_gives_back_loss_and_burst(loss: float, burst: float) -> None:
    burst = max(burst, loss / (1 - loss) * 1.001)
    ge = simple_gilbert(loss, burst)
    assert 0 <= ge.p <= 1 and 0 < ge.r <= 1
    assert ge.mean_loss() == pytest.approx(loss, rel=1e-9)
    assert ge.mean_burst() == pytest.approx(burst, rel=1e-9)


def kernel_gilb_ell(ge: GilbertElliott, n: int, seed: int) -> list[bool]:
    """loss_gilb_ell() of net/sched/sch_netem.c with the u32 values we send: per packet,
    first the state transition, then the loss draw of the state it was in (good: lose if
    rnd < k1; bad: lose if rnd > h)."""
    rng = random.Random(seed)
    a1, a2 = impair._u32(ge.p), impair._u32(ge.r)
    a3, a4 = impair._u32(1 - ge.bad_loss), impair._u32(ge.good_loss)
    good = True
    lost = []
    for _ in range(n):
        if good:
            if rng.getrandbits(32) < a1:
                good = False
            lost.append(rng.getrandbits(32) < a4)
        else:
            if rng.getrandbits(32) < a2:
                good = True
            lost.append(rng.getrandbits(32) > a3)
    return lost


def runs(lost: list[bool]) -> list[int]:
    out, n = [], 0
    for x in lost:
        if x:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out + ([n] if n else [])


def test_the_kernels_algorithm_with_our_parameters_gives_the_asked_loss_and_bursts() -> None:
    lost = kernel_gilb_ell(simple_gilbert(0.05, 5), 200_000, seed=7)
    r = runs(lost)
    assert sum(lost) / len(lost) == pytest.approx(0.05, abs=0.005)
    assert sum(r) / len(r) == pytest.approx(5, abs=0.3)


def test_netem_gets_h_not_one_minus_h() -> None:
    imp = Impairment(gemodel=GilbertElliott(p=0.01, r=0.3, bad_loss=0.8, good_loss=0.02))
    assert impair.netem_args(imp)["ge_loss"] == pytest.approx((0.01, 0.3, 0.2, 0.02))
    assert "loss" not in impair.netem_args(imp)
    burst = impair.netem_args(Impairment(loss=0.05, loss_burst=4))
    assert burst["ge_loss"] == pytest.approx((0.05 / 3.8, 0.25, 0.0, 0.0))


def test_netem_encoding_carries_the_gemodel_nested_in_tca_netem_loss(monkeypatch) -> None:
    import struct

    from pyroute2.netlink.rtnl.tcmsg import plugins, sched_netem, tcmsg

    # pyroute2's own netem options compiled first (as doctor's probe does): our subclass
    # must still use its own map
    sched_netem.options()
    monkeypatch.setitem(plugins, "netem", impair._netem_plugin())
    imp = Impairment(
        delay=0.01,
        gemodel=GilbertElliott(p=0.01, r=0.25),
        duplicate=0.02,
        corrupt=0.03,
        reorder=0.04,
        reorder_gap=3,
    )
    args = impair.netem_args(imp)
    opts = plugins["netem"].get_parameters(args)
    msg = tcmsg()
    msg["index"] = 1
    msg["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", opts]]
    msg.encode()
    raw = bytes(msg.data)
    # the raw bytes: TCA_NETEM_LOSS (5) nests NETEM_LOSS_GE (2) = {p, r, h, k1} as u32
    ge = struct.pack("=HHIIII", 20, 2, impair._u32(0.01), impair._u32(0.25), 0, 0)
    assert struct.pack("=HH", 24, 5) + ge in raw
    back = tcmsg(raw)
    back.decode()
    o = back.get_attr("TCA_OPTIONS")
    assert o["loss"] == 0 and o["gap"] == 3
    assert abs(o["duplicate"] - impair._u32(0.02)) < 2**8
    assert o.get_attr("TCA_NETEM_REORDER")["prob_reorder"] > 0
    assert o.get_attr("TCA_NETEM_CORRUPT")["prob_corrupt"] > 0
    got = o.get_attr("TCA_NETEM_LOSS").get_attr("NETEM_LOSS_GE")
    assert (got["p"], got["r"], got["h"], got["k1"]) == (
        impair._u32(0.01),
        impair._u32(0.25),
        0,
        0,
    )


# --- chains ------------------------------------------------------------------------------


def test_chain_shapes() -> None:
    assert impair.chain(Impairment()) == [] and impair.needs(Impairment()) == set()

    rate = Impairment(rate=4_000_000)
    (tbf,) = impair.chain(rate)
    assert (tbf.kind, tbf.handle, tbf.parent) == ("tbf", "1:", None)
    assert impair.needs(rate) == {"tbf"}

    for imp in (
        Impairment(loss=0.1),
        Impairment(delay=0.01),
        Impairment(jitter=0.001),
        Impairment(duplicate=0.1),
        Impairment(corrupt=0.1),
        Impairment(gemodel=GilbertElliott(0.1, 0.5)),
        Impairment(delay=0.01, reorder=0.1),
    ):
        specs = impair.chain(imp)
        assert [(s.kind, s.handle, s.parent) for s in specs] == [("netem", "1:", None)], imp
        assert impair.needs(imp) == {"netem"}

    both = Impairment(delay=0.05, loss=0.01, rate=4_000_000)
    netem, tbf = impair.chain(both)
    assert (netem.kind, netem.handle, netem.parent) == ("netem", "1:", None)
    assert (tbf.kind, tbf.handle, tbf.parent) == ("tbf", "10:", "1:1")
    assert impair.needs(both) == {"netem", "tbf"}
    assert "rate" not in netem.args  # the rate is tbf's alone


def test_tbf_parameters() -> None:
    args = impair.tbf_args(Impairment(rate=4_000_000), mtu=1500)
    assert args["rate"] == 500_000  # bytes per second
    assert args["burst"] >= 2 * 1514  # a full frame always fits the bucket
    # 50 ms at the rate, at least 16 frames, plus the bucket
    assert args["limit"] == max(16 * 1514, 25_000) + args["burst"]
    fast = impair.tbf_args(Impairment(rate=10**9))
    assert fast["burst"] == 500_000 and fast["limit"] == 6_250_000 + 500_000
    assert impair.tbf_args(Impairment(rate=10**9, queue=20))["limit"] == 20 * 1514
    assert impair.tbf_args(Impairment(rate=10**12))["rate"] == 2**32 - 1  # u32 field
    jumbo = impair.tbf_args(Impairment(rate=10**8), mtu=9000)
    assert jumbo["burst"] >= 2 * 9014 and jumbo["mtu"] >= 9014


def test_netem_queue() -> None:
    assert impair.netem_args(Impairment(loss=0.1))["limit"] == 1000
    assert impair.netem_args(Impairment(delay=1.0))["limit"] > 1000  # 1 s at 1 Gbit/s
    assert impair.netem_args(Impairment(delay=1.0, queue=77))["limit"] == 77
    # with a tbf child, netem's limit also covers the packets tbf may hold
    alone = impair.netem_args(Impairment(delay=0.01))["limit"]
    child = impair.netem_args(Impairment(delay=0.01, rate=10**9))["limit"]
    assert child == alone + -(-impair.tbf_args(Impairment(rate=10**9))["limit"] // 1514)


def test_netem_args_for_reorder_duplicate_corrupt() -> None:
    args = impair.netem_args(
        Impairment(delay=0.02, jitter=0.001, duplicate=0.1, corrupt=0.02, reorder=0.25)
    )
    assert args["delay"] == 20_000 and args["jitter"] == 1_000
    assert args["duplicate"] == pytest.approx(10)
    assert args["prob_corrupt"] == pytest.approx(2)
    assert args["prob_reorder"] == pytest.approx(25) and args["gap"] == 1
    gap = impair.netem_args(Impairment(delay=0.02, reorder=0.25, reorder_gap=5))
    assert gap["gap"] == 5


# --- apply / replace with a recording socket ----------------------------------------------


class FakeSock:
    def __init__(self, qdiscs: list[dict[str, Any]] | None = None, fail: int | None = None):
        self.calls: list[tuple[Any, ...]] = []
        self.qdiscs = qdiscs or []
        self.fail = fail

    def tc(self, command: str, kind: str | None = None, **kw: Any) -> None:
        if command == "del" and self.fail is not None:
            from pyroute2.netlink.exceptions import NetlinkError

            raise NetlinkError(self.fail)
        self.calls.append((command, kind, kw))

    def get_qdiscs(self, index: int | None = None) -> list[dict[str, Any]]:
        self.calls.append(("dump", None, {}))
        return [_Qdisc(q) for q in self.qdiscs]


class _Qdisc(dict):  # type: ignore[type-arg]
    """A dumped qdisc: its kind as pyroute2 gives it (an attribute)."""

    def get_attr(self, name: str) -> Any:
        return self.get("kind") if name == "TCA_KIND" else None


def test_install_puts_our_netem_plugin_in_pyroute2s_table_once() -> None:
    from pyroute2.netlink.rtnl.tcmsg import plugins

    impair._install_netem_plugin()
    first = plugins["netem"]
    impair._install_netem_plugin()
    assert plugins["netem"] is first and getattr(first, "meshstress", False)


def test_apply_one_tc_call_per_qdisc_root_first() -> None:
    sock = FakeSock()
    impair.apply(sock, 7, Impairment(delay=0.01, rate=10**6))
    assert [(c[0], c[1], c[2]["handle"], c[2]["parent"]) for c in sock.calls] == [
        ("add", "netem", "1:", impair.TC_H_ROOT),
        ("add", "tbf", "10:", "1:1"),
    ]
    assert all(c[2]["index"] == 7 for c in sock.calls)
    sock = FakeSock()
    impair.apply(sock, 7, Impairment())
    assert sock.calls == []


OURS = {"index": 7, "parent": impair.TC_H_ROOT, "handle": 0x10000}
DEFAULT = {"index": 7, "parent": impair.TC_H_ROOT, "handle": 0}


def test_replace_removes_ours_then_installs() -> None:
    sock = FakeSock([OURS, {"index": 7, "parent": 0x10001, "handle": 0x100000}])
    impair.replace(sock, 7, Impairment(rate=10**6))
    calls = [c for c in sock.calls if c[0] != "dump"]
    assert [c[:2] for c in calls] == [("del", None), ("add", "tbf")]
    assert calls[0][2] == {"index": 7, "handle": 0x10000, "parent": impair.TC_H_ROOT}


def test_replace_with_ideal_only_removes() -> None:
    sock = FakeSock([OURS])
    impair.replace(sock, 7, Impairment())
    assert [c[:2] for c in sock.calls if c[0] != "dump"] == [("del", None)]


def test_replace_leaves_a_default_or_foreign_root_alone() -> None:
    sock = FakeSock([DEFAULT, {**OURS, "index": 8}])
    impair.replace(sock, 7, Impairment(loss=0.1))
    assert [c[:2] for c in sock.calls if c[0] != "dump"] == [("add", "netem")]


def test_replace_changes_a_chain_of_the_same_shape_in_place() -> None:
    # netem (loss) on 7 already: a new loss is a `tc change`, no delete and add
    sock = FakeSock([{**OURS, "kind": "netem"}])
    impair.replace(sock, 7, Impairment(loss=0.05))
    assert [c[:2] for c in sock.calls] == [("dump", None), ("change", "netem")]
    # another shape (netem with a tbf under it): swapped
    sock = FakeSock([{**OURS, "kind": "netem"}])
    impair.replace(sock, 7, Impairment(loss=0.05, rate=10**6))
    assert [c[:2] for c in sock.calls] == [
        ("dump", None), ("dump", None), ("del", None), ("add", "netem"), ("add", "tbf")]  # fmt: skip
    # the caller says what it put there, of the same shape: no dump
    sock = FakeSock([{**OURS, "kind": "netem"}])
    impair.replace(sock, 7, Impairment(delay=0.03), was=Impairment(loss=0.05))
    assert [c[:2] for c in sock.calls] == [("change", "netem")]


def test_remove_ignores_none_there_but_not_other_errors() -> None:
    assert impair.remove(FakeSock([OURS], fail=errno.ENOENT), 7) is False
    from pyroute2.netlink.exceptions import NetlinkError

    with pytest.raises(NetlinkError):
        impair.remove(FakeSock([OURS], fail=errno.EPERM), 7)


# --- describe and round trip ---------------------------------------------------------------


def test_describe_covers_every_field() -> None:
    assert impair.describe(Impairment()) == "ideal"
    assert impair.describe(Impairment(loss=0.05, delay=0.02)) == "loss 5%, delay 20ms"
    text = impair.describe(
        Impairment(
            loss=0.05,
            loss_burst=4,
            delay=0.02,
            duplicate=0.01,
            corrupt=0.001,
            reorder=0.25,
            reorder_gap=5,
            rate=4_000_000,
            queue=50,
        )
    )
    assert text == (
        "loss 5% in bursts of 4, delay 20ms, duplicate 1%, corrupt 0.1%, "
        "reorder 25% gap 5, rate 4mbit, queue 50 packets"
    )
    ge = impair.describe(Impairment(gemodel=GilbertElliott(0.01, 0.25)))
    assert ge == "loss gemodel p 1% r 25% bad 100% good 0% (~3.85%)"


def test_round_trip_with_every_field() -> None:
    text = link(
        'loss = "5%"\nloss_burst = 4.5\ndelay = "20ms"\nreorder = "25%"\nreorder_gap = 2\n'
        'rate = "4mbit"\nqueue = 50\na_to_b = { corrupt = "1%" }\n'
        'b_to_a = { gemodel = { p = "1%", r = "25%", good_loss = "0.5%" }, duplicate = "1%" }'
    ) + (
        '[[segments]]\nname = "air"\nnodes = ["a", "b", "c"]\n'
        'gemodel = { p = "2%", r = "20%", bad_loss = "70%" }\ndelay = "1ms"\nreorder = "1%"\n'
    )
    t = load(text)
    out = topofile.dumps_toml(t)
    assert (
        "loss_burst = 4.5" in out and 'gemodel = { p = "1%", r = "25%", good_loss = "0.5%" }' in out
    )
    assert 'bad_loss = "70%"' in out
    assert load(out) == t
