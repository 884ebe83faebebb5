"""A hostile node: forged or malformed routing packets from a seeded generator (docs/forge.md).

Pure part: `parse_inject` (the keys of an `action = "inject"` event -> InjectSpec),
`generate` (spec + context -> every frame the node will send, in order: the same seed
and context give the same bytes), `honest_routes` (route snapshots -> did the routes
between the other nodes hold, or when did they come back), `kernel_problems` (kernel log
lines that are a WARNING, BUG or Oops). scapy (meshstress.packets) is imported by
`generate` only.

The sending is meshstress.stress.inject_agent's, inside the node's namespace: it sends
the frames at the rate through a raw AF_PACKET socket and writes every frame it sent to
inject/NODE.pcap in the run folder, so a run can be replayed.
"""

from __future__ import annotations

import ipaddress
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from meshstress.model import units

PROTOCOLS = ("batman-adv", "babel")
ATTACKS = {
    "batman-adv": ("spoofed-originator", "seqno-jump", "max-tq", "bad-tvlv"),
    "babel": ("bogus-metric", "seqno-jump", "malformed-tlv"),
}
KEYS = ("node", "protocol", "attack", "rate", "for", "seed", "recover_within")
DEFAULT_RATE = 10.0  # packets per second
MAX_RATE = 10_000.0
MAX_PACKETS = 200_000  # rate x for: every frame is generated before the first is sent
DEFAULT_RECOVER = 30.0  # seconds
BABEL_GROUP_MAC = "33:33:00:01:00:06"
BABEL_GROUP = "ff02::1:6"
BABEL_PORT = 6696


@dataclass(frozen=True)
class InjectSpec:
    protocol: str
    attack: str
    rate: float  # packets per second
    duration: float  # seconds ("for")
    seed: int
    recover_within: float = DEFAULT_RECOVER

    def count(self) -> int:
        return max(1, math.ceil(self.rate * self.duration))


def parse_inject(ctx: Any, table: dict[str, Any], where: str, routing: str) -> InjectSpec:
    """The inject keys of one [[events]] table (ctx: model.topofile._Ctx). The protocol
    must be the mesh's own (batman-adv: the "batman-adv" backend; babel: "babeld")."""
    for key in ("protocol", "attack", "for", "seed"):
        if key not in table:
            raise ctx.fail(f"{where}.{key}", "missing (needed by inject)")
    protocol = ctx.choice(table["protocol"], f"{where}.protocol", PROTOCOLS)
    backend = {"batman-adv": "batman-adv", "babel": "babeld"}[protocol]
    if routing != backend:
        raise ctx.fail(
            f"{where}.protocol",
            f"{protocol} packets need routing = {backend!r} (the mesh runs {routing!r})",
        )
    attack = ctx.choice(table["attack"], f"{where}.attack", ATTACKS[protocol])
    rate = DEFAULT_RATE
    if "rate" in table:
        raw = table["rate"]
        text = raw.strip().lower().removesuffix("pps").strip() if isinstance(raw, str) else raw
        try:
            rate = float(text) if not isinstance(text, bool) else math.nan
        except (TypeError, ValueError):
            rate = math.nan
        if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
            raise ctx.fail(
                f"{where}.rate", f'expected packets per second in (0, {MAX_RATE:g}] like "20pps"'
            )
    duration = ctx.unit(table["for"], f"{where}.for", units.parse_duration)
    if duration <= 0:
        raise ctx.fail(f"{where}.for", "must be longer than 0")
    seed = table["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ctx.fail(f"{where}.seed", f"expected an integer 0..2^63-1, got {seed!r}")
    recover = DEFAULT_RECOVER
    if "recover_within" in table:
        recover = ctx.unit(table["recover_within"], f"{where}.recover_within", units.parse_duration)
        if recover <= 0:
            raise ctx.fail(f"{where}.recover_within", "must be longer than 0")
    spec = InjectSpec(protocol, attack, rate, duration, seed, recover)
    if spec.count() > MAX_PACKETS:
        raise ctx.fail(
            f"{where}.rate", f"rate x for is {spec.count()} packets (at most {MAX_PACKETS})"
        )
    return spec


# --- the context the generator needs (gathered from the live mesh by the EventRunner) --


@dataclass(frozen=True)
class Port:
    """One mesh interface of the hostile node."""

    ifname: str
    mac: str
    ll: str | None = None  # its IPv6 link-local address (babel)


@dataclass(frozen=True)
class Context:
    node: str
    address: str  # the hostile node's IPv4 address
    ports: tuple[Port, ...]
    # the other nodes: name -> (originator MAC (batman-adv) or "", IPv4 address)
    honest: dict[str, tuple[str, str]] = field(default_factory=dict)
    algorithm: str = "BATMAN_IV"  # batman-adv


def context_json(ctx: Context) -> dict[str, Any]:
    """The context as plain JSON (the plan file keeps it, so the frames can be made
    again from the seed: `regenerate`)."""
    return {
        "node": ctx.node,
        "address": ctx.address,
        "ports": [[p.ifname, p.mac, p.ll] for p in ctx.ports],
        "honest": {n: list(v) for n, v in ctx.honest.items()},
        "algorithm": ctx.algorithm,
    }


def context_of(d: dict[str, Any]) -> Context:
    """context_json's inverse."""
    return Context(
        node=d["node"],
        address=d["address"],
        ports=tuple(Port(i, m, ll) for i, m, ll in d["ports"]),
        honest={n: (v[0], v[1]) for n, v in d["honest"].items()},
        algorithm=d["algorithm"],
    )


def regenerate(plan: dict[str, Any]) -> list[tuple[int, bytes]]:
    """The frames of a plan file (inject/NODE.plan.json), made again from its seed and
    the context it records: equal to its `frames` (and to what was sent)."""
    spec = InjectSpec(plan["protocol"], plan["attack"], plan["rate"], plan["for_s"], plan["seed"])
    return generate(spec, context_of(plan["context"]))


# --- generating (seeded; scapy) ---------------------------------------------------------


def generate(spec: InjectSpec, ctx: Context) -> list[tuple[int, bytes]]:
    """Every frame the node sends, in order: [(port index, frame bytes)]. The same spec
    (seed included) and context give the same frames."""
    rng = random.Random(spec.seed)
    if not ctx.ports:
        raise ValueError(f"node {ctx.node} has no mesh interface to send on")
    make = _babel if spec.protocol == "babel" else _batadv
    state: dict[str, Any] = {}
    out = []
    for k in range(spec.count()):
        port = rng.randrange(len(ctx.ports))
        out.append((port, make(spec.attack, rng, ctx, ctx.ports[port], k, state)))
    return out


def _rand_mac(rng: random.Random) -> str:
    b = [rng.randrange(256) for _ in range(6)]
    b[0] = (b[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{x:02x}" for x in b)


def _batadv(
    attack: str, rng: random.Random, ctx: Context, port: Port, k: int, state: dict[str, Any]
) -> bytes:
    from scapy.layers.l2 import Ether

    from meshstress.packets import batadv as B

    honest = sorted((n, mac) for n, (mac, _) in ctx.honest.items() if mac)
    seqnos: dict[str, int] = state.setdefault("seqno", {})

    def next_seq(orig: str, jump: int = 1) -> int:
        if orig not in seqnos:
            seqnos[orig] = rng.getrandbits(32)
        seqnos[orig] = (seqnos[orig] + jump) & 0xFFFFFFFF
        return seqnos[orig]

    if attack == "bad-tvlv":
        orig = port.mac if rng.random() < 0.5 or not honest else rng.choice(honest)[1]
    elif attack == "max-tq" and (rng.random() < 0.3 or not honest):
        orig = state.setdefault("fakes", [_rand_mac(rng) for _ in range(4)])[rng.randrange(4)]
    else:
        orig = rng.choice(honest)[1] if honest else _rand_mac(rng)
    if attack == "seqno-jump":
        jump = rng.choice(
            (2**31, 2**16 + rng.randrange(2**16), -rng.randrange(1, 2**16), rng.getrandbits(32))
        )
        seq = next_seq(orig, jump)
    else:
        seq = next_seq(orig)
    tq = 255 if attack in ("max-tq", "spoofed-originator") else rng.randrange(256)
    ttl = 255 if attack == "max-tq" else rng.choice((1, 2, 50))
    flags = rng.choice((0, 4)) if attack != "max-tq" else 4  # 4: DIRECTLINK
    tvlvs: list[Any] = []
    tvlv_len: int | None = None
    tail = b""
    if attack == "bad-tvlv":
        kind = rng.randrange(5)
        if kind == 0:  # unknown type
            tvlvs = [
                B.BatadvTVLV(
                    type=rng.randrange(0x08, 0x100),
                    version=rng.randrange(256),
                    value=rng.randbytes(rng.randrange(0, 32)),
                )
            ]
        elif kind == 1:  # a TVLV longer than the container
            value = rng.randbytes(rng.randrange(1, 16))
            tvlvs = [
                B.BatadvTVLV(
                    type=rng.randrange(1, 8), len=len(value) + rng.randrange(1, 200), value=value
                )
            ]
        elif kind == 2:  # the container claims more than the frame holds
            tvlvs = [B.BatadvTVLV(type=rng.randrange(1, 8), value=rng.randbytes(4))]
            tvlv_len = 8 + rng.randrange(1, 1000)
        elif kind == 3:  # a known type with a wrong-sized value (gw, tt, mcast)
            tvlvs = [
                B.BatadvTVLV(
                    type=rng.choice((1, 4, 6)),
                    version=rng.choice((1, 2)),
                    value=rng.randbytes(rng.randrange(0, 12)),
                )
            ]
        else:  # a truncated header: fewer than 4 bytes of TVLV
            tvlv_len = rng.randrange(1, 4)
            tail = rng.randbytes(tvlv_len)
    if ctx.algorithm == "BATMAN_V":
        ogm: Any = B.BatadvOGM2(
            ttl=ttl,
            flags=0,
            seqno=seq,
            orig=orig,
            throughput=0xFFFFFFFF if attack == "max-tq" else rng.getrandbits(32),
            tvlvs=tvlvs,
        )
    else:
        ogm = B.BatadvOGM(
            ttl=ttl, flags=flags, seqno=seq, orig=orig, prev_sender=port.mac, tq=tq, tvlvs=tvlvs
        )
    if tvlv_len is not None:
        ogm.tvlv_len = tvlv_len
    frame = Ether(src=port.mac, dst="ff:ff:ff:ff:ff:ff", type=B.ETH_P_BATMAN) / ogm
    return bytes(frame) + tail


def _babel(
    attack: str, rng: random.Random, ctx: Context, port: Port, k: int, state: dict[str, Any]
) -> bytes:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from meshstress.packets import babel as Bb

    honest = sorted((n, addr) for n, (_, addr) in ctx.honest.items())
    tlvs: list[Any] = []
    raw_body: bytes | None = None
    body_len: int | None = None

    def v4(addr: str) -> bytes:
        return ipaddress.IPv4Address(addr).packed

    if attack in ("bogus-metric", "seqno-jump"):
        ids = state.setdefault("ids", {})
        seqs = state.setdefault("seqs", {})
        for _ in range(rng.randrange(1, 4)):
            _name, addr = rng.choice(honest)
            rid = ids.setdefault(addr, rng.getrandbits(64))
            if attack == "bogus-metric":
                seq = seqs[addr] = (seqs.get(addr, rng.randrange(0x10000)) + 1) & 0xFFFF
                metric = rng.choice((0, 1, rng.randrange(0x10000), 0xFFFF))
            else:
                jump = rng.choice((0x8000, 0x7FFF, rng.randrange(0x100, 0x8000)))
                seq = seqs[addr] = (seqs.get(addr, rng.randrange(0x10000)) + jump) & 0xFFFF
                metric = rng.randrange(1, 512)
            tlvs += [
                Bb.BabelRouterId(router_id=rid),
                Bb.BabelNextHop(ae=1, address=v4(ctx.address)),
                Bb.BabelUpdate(
                    ae=1,
                    plen=32,
                    interval=rng.choice((1, 400, 0xFFFF)),
                    seqno=seq,
                    metric=metric,
                    prefix=v4(addr),
                ),
            ]
            if attack == "seqno-jump" and rng.random() < 0.5:
                tlvs.append(
                    Bb.BabelSeqnoRequest(
                        ae=1,
                        plen=32,
                        seqno=(seq + 1) & 0xFFFF,
                        hop_count=rng.randrange(1, 256),
                        router_id=rid,
                        prefix=v4(addr),
                    )
                )
    else:  # malformed-tlv
        _name, addr = rng.choice(honest)
        kind = rng.randrange(8)
        if kind == 0:  # a TLV whose length runs past the body
            raw_body = bytes([8, 200]) + rng.randbytes(rng.randrange(0, 20))
        elif kind == 1:  # the header claims a longer body than the packet has
            tlvs = [Bb.BabelHello(seqno=rng.randrange(0x10000), interval=400)]
            body_len = 8 + rng.randrange(1, 400)
        elif kind == 2:  # an IPv4 Update with a prefix length past 32
            tlvs = [
                Bb.BabelUpdate(
                    ae=1,
                    plen=rng.randrange(33, 256),
                    seqno=rng.randrange(0x10000),
                    metric=rng.randrange(0x10000),
                    prefix=rng.randbytes(4),
                )
            ]
        elif kind == 3:  # more bytes omitted than the prefix has
            tlvs = [
                Bb.BabelUpdate(
                    ae=1,
                    plen=32,
                    omitted=rng.randrange(5, 256),
                    metric=1,
                    seqno=rng.randrange(0x10000),
                    prefix=b"",
                )
            ]
        elif kind == 4:  # an unknown address encoding
            tlvs = [
                Bb.BabelUpdate(
                    ae=rng.randrange(4, 256),
                    plen=32,
                    metric=1,
                    seqno=rng.randrange(0x10000),
                    prefix=v4(addr),
                )
            ]
        elif kind == 5:  # a mandatory sub-TLV nobody knows (the TLV must be ignored)
            tlvs = [
                Bb.BabelUpdate(
                    ae=1,
                    plen=32,
                    metric=0,
                    seqno=rng.randrange(0x10000),
                    prefix=v4(addr),
                    subtlvs=bytes([0x80 | rng.randrange(128), 2]) + rng.randbytes(2),
                )
            ]
        elif kind == 6:  # TLVs too short for their type (len 0)
            raw_body = b"".join(bytes([t, 0]) for t in rng.sample(range(2, 11), 4))
        else:  # random bytes
            raw_body = rng.randbytes(rng.randrange(1, 64))
    header = (
        Bb.BabelHeader(tlvs=tlvs)
        if raw_body is None
        else Bb.BabelHeader(body_len=len(raw_body)) / Raw(raw_body)
    )
    if body_len is not None:
        header.body_len = body_len
    frame = (
        Ether(src=port.mac, dst=BABEL_GROUP_MAC)
        / IPv6(src=port.ll or "fe80::1", dst=BABEL_GROUP, hlim=1)
        / UDP(sport=BABEL_PORT, dport=BABEL_PORT)
        / header
    )
    return bytes(frame)


# --- judging (pure) ---------------------------------------------------------------------


def honest_routes(
    snaps: Sequence[Any], honest: Sequence[str], t_begin: float, t_end: float
) -> dict[str, Any]:
    """Over route snapshots (RouteSnapshot: .t, .path(a, b)): did every pair of honest
    nodes keep a route (a path without gap or loop) from the attack's begin on, and if
    not, how long after its end (t_end) did they all have one again, for good.
    recovered_s: 0 when they held; None when they were not all back by the last snapshot."""
    pairs = [(a, b) for a in honest for b in honest if a != b]
    series = []
    for s in snaps:
        if s.t < t_begin:
            continue
        ok = sum(1 for a, b in pairs if s.path(a, b) is not None)
        series.append((s.t, ok == len(pairs), ok / len(pairs) if pairs else 1.0))
    if not series:
        return {"snapshots": 0, "held": None, "recovered_s": None}
    held = all(full for _, full, _ in series)
    back: float | None = None
    if held:
        back = 0.0
    elif series[-1][1]:  # the last one is whole: from when on did they stay whole?
        k = len(series) - 1
        while k > 0 and series[k - 1][1]:
            k -= 1
        back = max(0.0, series[k][0] - t_end)
    return {
        "snapshots": len(series),
        "held": held,
        "reachable_min": round(min(r for _, _, r in series), 4),
        "recovered_s": None if back is None else round(back, 3),
        # how long after the attack's end the snapshots go on: "not back" means "not
        # back within this long" (a run shorter than what the protocol allows says no more)
        "watched_s": round(max(0.0, series[-1][0] - t_end), 3),
    }


_KERNEL_BAD = re.compile(
    r"WARNING:|BUG:|Oops|general protection fault|Kernel panic|"
    r"Call Trace:|UBSAN:|KASAN:|refcount_t:|list_(add|del) corruption"
)


def kernel_problems(lines: Sequence[str]) -> list[str]:
    """The kernel log lines that say the kernel went wrong (WARNING, BUG, Oops...)."""
    return [line for line in lines if _KERNEL_BAD.search(line)]
