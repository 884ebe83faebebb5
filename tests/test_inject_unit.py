"""Inject events without root: parsing, the seeded generator (same seed, same bytes),
that the frames dissect as the attack says, and the verdict's pure parts."""

from __future__ import annotations

import json

import pytest

from meshstress.errors import InputError
from meshstress.model import generators
from meshstress.routing.converge import RouteSnapshot
from meshstress.stress import inject
from meshstress.stress.events import parse_events

pytest.importorskip("scapy", reason="scapy not installed (pip install scapy)")


def topo(routing):
    t = generators.grid4(3, 3)
    t.routing = routing
    return t


BASE = {"at": "5s", "action": "inject", "node": "n4", "protocol": "babel",
        "attack": "bogus-metric", "for": "10s", "seed": 7}  # fmt: skip


def test_parse_inject():
    (ev,) = parse_events([{**BASE, "rate": "20pps", "recover_within": "12s"}], "s.toml",
                         topo("babeld"))  # fmt: skip
    assert (ev.at, ev.node) == (5.0, "n4")
    assert ev.inject == inject.InjectSpec("babel", "bogus-metric", 20.0, 10.0, 7, 12.0)
    assert ev.inject.count() == 200


@pytest.mark.parametrize(
    "change, fld",
    [
        ({"protocol": "ospf"}, "events[0].protocol"),
        ({"protocol": "batman-adv", "attack": "max-tq"}, "events[0].protocol"),  # babeld mesh
        ({"attack": "max-tq"}, "events[0].attack"),  # a batman-adv attack
        ({"rate": "fast"}, "events[0].rate"),
        ({"rate": "0pps"}, "events[0].rate"),
        ({"seed": "seven"}, "events[0].seed"),
        ({"seed": -1}, "events[0].seed"),
        ({"for": "0s"}, "events[0].for"),
        ({"recover_within": "soon"}, "events[0].recover_within"),
        ({"node": "n99"}, "events[0].node"),
        ({"link": ["n0", "n1"]}, "events[0].link"),
        ({"rate": "10000pps", "for": "1h"}, "events[0].rate"),  # too many packets
    ],
)
def test_parse_inject_errors_name_the_field(change, fld):
    with pytest.raises(InputError) as err:
        parse_events([{**BASE, **change}], "s.toml", topo("babeld"))
    assert err.value.field == fld


@pytest.mark.parametrize("missing", ["protocol", "attack", "for", "seed", "node"])
def test_parse_inject_missing(missing):
    with pytest.raises(InputError) as err:
        parse_events([{k: v for k, v in BASE.items() if k != missing}], "s.toml", topo("babeld"))
    assert err.value.field == f"events[0].{missing}"


CTX = inject.Context(
    node="n4", address="10.201.0.5",
    ports=(inject.Port("i0", "02:00:00:00:04:01", "fe80::4:1"),
           inject.Port("i1", "02:00:00:00:04:02", "fe80::4:2")),
    honest={f"n{k}": (f"02:00:00:00:0{k}:01", f"10.201.0.{k + 1}") for k in range(9) if k != 4},
)  # fmt: skip


@pytest.mark.parametrize(
    "protocol, attack", [(p, a) for p, attacks in inject.ATTACKS.items() for a in attacks]
)
def test_same_seed_same_bytes_other_seed_other_bytes(protocol, attack):
    spec = inject.InjectSpec(protocol, attack, 20.0, 2.0, 1234)
    one = inject.generate(spec, CTX)
    assert len(one) == 40
    assert one == inject.generate(spec, CTX)
    other = inject.generate(inject.InjectSpec(protocol, attack, 20.0, 2.0, 1235), CTX)
    assert other != one


def test_batman_frames_dissect_as_ogms_of_the_attack():
    from scapy.layers.l2 import Ether

    from meshstress.packets import batadv as B

    honest = {mac for mac, _ in CTX.honest.values()}
    spec = inject.InjectSpec("batman-adv", "spoofed-originator", 50.0, 2.0, 5)
    for port, frame in inject.generate(spec, CTX):
        p = Ether(frame)
        assert p.src == CTX.ports[port].mac and p.type == B.ETH_P_BATMAN
        ogm = p[B.BatadvOGM]
        assert ogm.orig in honest and ogm.tq == 255 and ogm.prev_sender == p.src
    spec = inject.InjectSpec("batman-adv", "seqno-jump", 50.0, 2.0, 5)
    seqs: dict[str, list[int]] = {}
    for _, frame in inject.generate(spec, CTX):
        ogm = Ether(frame)[B.BatadvOGM]
        seqs.setdefault(ogm.orig, []).append(ogm.seqno)
    jumps = [(b - a) % 2**32 for s in seqs.values() for a, b in zip(s, s[1:], strict=False)]
    assert jumps and all(j > 1 for j in jumps)


def test_bad_tvlvs_are_bad():
    from scapy.layers.l2 import Ether

    from meshstress.packets import batadv as B

    spec = inject.InjectSpec("batman-adv", "bad-tvlv", 50.0, 2.0, 9)
    bad = 0
    for _, frame in inject.generate(spec, CTX):
        raw = frame[14:]
        tvlv_len = int.from_bytes(raw[22:24], "big")
        body = raw[24:]
        known = {1, 2, 3, 4, 5, 6, 7}
        if tvlv_len != len(body):
            bad += 1  # the container's length lies
        elif (
            len(body) < 4
            or body[0] not in known
            or 4 + int.from_bytes(body[2:4], "big") != len(body)
        ):
            bad += 1
        elif body[0] in (1, 4, 6):
            bad += 1  # a known type with a random-sized value
        assert Ether(frame).haslayer(B.BatadvOGM)
    assert bad == 100


def test_babel_frames_are_babel_from_the_node():
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    from meshstress.packets import babel as Bb

    spec = inject.InjectSpec("babel", "bogus-metric", 20.0, 2.0, 3)
    prefixes = set()
    for port, frame in inject.generate(spec, CTX):
        p = Ether(frame)
        assert (p[IPv6].src, p[IPv6].dst) == (CTX.ports[port].ll, "ff02::1:6")
        for tlv in p[Bb.BabelHeader].tlvs:
            if isinstance(tlv, Bb.BabelUpdate):
                prefixes.add(".".join(str(b) for b in tlv.prefix))
    assert prefixes and prefixes <= {a for _, a in CTX.honest.values()}


def snap(t, broken=()):
    nodes = ["a", "b", "c"]
    routes = {n: {d: (d, 1) for d in nodes if d != n} for n in nodes}
    for a, b in broken:
        routes[a][b] = (None, None)
    return RouteSnapshot(t, routes)


def test_honest_routes_held_recovered_or_not():
    honest = ["a", "b", "c"]
    held = inject.honest_routes([snap(0), snap(1), snap(2)], honest, 0.5, 1.5)
    assert (held["held"], held["recovered_s"], held["snapshots"]) == (True, 0.0, 2)
    snaps = [snap(1), snap(2, [("a", "b")]), snap(3, [("a", "b")]), snap(6), snap(7)]
    back = inject.honest_routes(snaps, honest, 1.0, 2.5)
    assert (back["held"], back["recovered_s"]) == (False, 3.5)
    never = inject.honest_routes([*snaps, snap(8, [("c", "a")])], honest, 1.0, 2.5)
    assert never["recovered_s"] is None and never["reachable_min"] == round(5 / 6, 4)


def test_kernel_problems():
    lines = ["batman_adv: bat0: Adding interface: i0", "WARNING: CPU: 0 PID: 1 at net/x.c:1",
             "BUG: kernel NULL pointer dereference", "Oops: 0000 [#1] SMP", "all fine"]  # fmt: skip
    assert inject.kernel_problems(lines) == lines[1:4]


# --- the trigger: an inject sender started early, fired at its event -----------------

_WAITER = (
    "import signal, sys, time\n"
    "from meshstress.stress import inject_agent as A\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, [A.WAKE])\n"
    "t, seen = A.await_trigger(sys.argv[1], 60)\n"
    "print(repr(t), repr(seen), flush=True)\n"
)


def _waiter(trigger):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", _WAITER, trigger], stdout=subprocess.PIPE, text=True
    )


def test_trigger_fired_after_the_agent_is_up(tmp_path):
    import os
    import time

    from meshstress.stress import inject_agent as A

    trigger = str(tmp_path / "n1.trigger")
    proc = _waiter(trigger)
    try:
        while not A.is_up(trigger, proc.pid):
            assert proc.poll() is None, "the waiter ended before it was up"
            time.sleep(0.01)
        time.sleep(0.2)  # it waits; nothing has been written
        assert proc.poll() is None and not os.path.exists(trigger)
        t = time.monotonic()
        A.fire(trigger, proc.pid, t)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    got, seen = map(float, out.split())
    assert got == t  # the event's time, exactly as written
    assert seen >= t  # seen after it was fired, never before
    assert proc.returncode == 0


def test_trigger_fired_before_the_agent_is_up(tmp_path):
    """A sender started late (not armed): the file is there before it looks; fire sends
    no signal to a process that has not blocked it yet (it would die of it)."""
    import time

    from meshstress.stress import inject_agent as A

    trigger = str(tmp_path / "n1.trigger")
    t = time.monotonic()
    A.fire(trigger, 2**22 + 12345, t)  # no such agent up: no signal sent
    proc = _waiter(trigger)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    got, seen = map(float, out.split())
    assert got == t and seen >= t and proc.returncode == 0


def test_trigger_gives_up_after_its_limit(tmp_path):
    import pytest as _pytest

    from meshstress.stress import inject_agent as A

    with _pytest.raises(SystemExit, match="no trigger"):
        A.await_trigger(str(tmp_path / "never"), 0.2)


def test_recovery_check_undecided_when_the_run_ended_before_the_time_allowed():
    from meshstress.runner import inject_checks

    def checks(recovered, watched, limit):
        ev = {"node": "n5", "attack": "bogus-metric", "seed": 7, "recover_within_s": limit,
              "routes": {"recovered_s": recovered, "watched_s": watched}}  # fmt: skip
        inj = {"daemons": {"alive": True}, "events": [ev]}
        (c,) = [c for c in inject_checks(inj) if c["metric"].endswith("recovered_s")]
        return c

    assert checks(12.0, 25.0, 20.0)["passed"]
    assert not checks(28.5, 35.0, 20.0)["passed"]  # back, but too late
    assert not checks(None, 25.0, 20.0)["passed"]  # watched past the limit: not back
    c = checks(None, 25.0, 2300.0)  # the run ended first: undecided, said so, not passed
    assert not c["passed"] and "undecided" in c["assert"]
    snaps = [snap(1), snap(2, [("a", "b")]), snap(9, [("a", "b")])]
    assert inject.honest_routes(snaps, ["a", "b", "c"], 1.0, 2.5)["watched_s"] == 6.5


def test_the_plan_keeps_the_context_so_the_seed_makes_the_frames_again():
    back = inject.context_of(json.loads(json.dumps(inject.context_json(CTX))))
    assert back == CTX
    spec = inject.InjectSpec("batman-adv", "bad-tvlv", 20.0, 1.5, 77)
    frames = inject.generate(spec, CTX)
    plan = {"protocol": "batman-adv", "attack": "bad-tvlv", "rate": 20.0, "for_s": 1.5,
            "seed": 77, "context": inject.context_json(CTX)}  # fmt: skip
    assert inject.regenerate(plan) == frames and len(frames) == 30
    assert inject.regenerate({**plan, "seed": 78}) != frames


def test_meshif_check_of_a_batman_adv_run():
    from meshstress.runner import inject_checks

    inj = {"daemons": {"alive": True}, "events": [],
           "meshif": {"name": "bat0", "expected": 4, "broken": {}, "alive": True}}  # fmt: skip
    (c,) = [c for c in inject_checks(inj) if c["metric"] == "inject.meshif.alive"]
    assert c["passed"] and c["actual"] is True
    inj["meshif"] = {"name": "bat0", "expected": 4, "broken": {"n2": "bat0 is gone"},
                     "alive": False}  # fmt: skip
    (c,) = [c for c in inject_checks(inj) if c["metric"] == "inject.meshif.alive"]
    assert not c["passed"] and c["actual"] == {"n2": "bat0 is gone"}
