"""meshstress.observe.probes without a kernel: delta, drop-reason tables, key mapping, hook
choice, source assembly, and the capability errors."""

from __future__ import annotations

import json
import os
import re
import struct
import sys

import pytest

from meshstress.errors import CapabilityError, MeshstressError
from meshstress.observe import probes
from meshstress.observe.probes import (
    FALLBACK_REASONS,
    PROBES,
    PROBES_DIR,
    build_source,
    delta,
    fold,
    format_has_field,
    parse_btf_enum,
    parse_reasons_format,
    plan_hooks,
    reason_table,
)

# Debian 12's 6.1 kernel, /sys/kernel/tracing/events/skb/kfree_skb/format (shortened)
KFREE_SKB_FORMAT = """name: kfree_skb
ID: 1319
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:28;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p protocol=%u location=%p reason: %s", REC->skbaddr, REC->protocol, \
REC->location, __print_symbolic(REC->reason, { 1, "NOT_SPECIFIED" }, { 2, "NO_SOCKET" }, \
{ 3, "PKT_TOO_SMALL" }, { 45, "QDISC_DROP" }, { 66, "MAX" })
"""

OLD_KFREE_SKB_FORMAT = """name: kfree_skb
format:
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;

print fmt: "skbaddr=%p protocol=%u location=%p", REC->skbaddr, REC->protocol, REC->location
"""


# ---------------------------------------------------------------- delta


def test_delta_subtracts_nested_counters_and_keeps_the_shape() -> None:
    before = {
        "nodes": {"n0": {"interfaces": {"i0": {"tx_packets": 5, "rx_bytes": 100}}, "drops": {}}},
        "t": 10.0,
    }
    after = {
        "nodes": {
            "n0": {
                "interfaces": {
                    "i0": {"tx_packets": 55, "rx_bytes": 4300},
                    "bat0": {"tx_packets": 3},
                },
                "drops": {"NO_SOCKET": 30},
                "tcp_retransmits": 4,
            },
            "n1": {"interfaces": {}, "drops": {}, "tcp_retransmits": 0},
        },
        "t": 12.5,
    }
    d = delta(before, after)
    assert d["nodes"]["n0"]["interfaces"]["i0"] == {"tx_packets": 50, "rx_bytes": 4200}
    assert d["nodes"]["n0"]["interfaces"]["bat0"] == {"tx_packets": 3}  # new: counts from 0
    assert d["nodes"]["n0"]["drops"] == {"NO_SOCKET": 30}
    assert d["nodes"]["n0"]["tcp_retransmits"] == 4
    assert d["nodes"]["n1"] == {"interfaces": {}, "drops": {}, "tcp_retransmits": 0}
    assert d["t"] == 12.5 and d["dt"] == pytest.approx(2.5)
    assert before["nodes"]["n0"]["interfaces"]["i0"]["tx_packets"] == 5  # inputs untouched
    json.dumps(d)


def test_delta_after_a_reset_counts_from_zero_and_drops_vanished_keys() -> None:
    d = delta({"a": {"x": 100, "gone": 7}, "t": 1.0}, {"a": {"x": 30}, "t": 2.0})
    assert d == {"a": {"x": 30}, "t": 2.0, "dt": 1.0}


def test_delta_of_a_snapshot_with_itself_is_zero() -> None:
    snap = fold({(1, 2): ("n0", "i0")}, {1: "n0"}, [((1, 2), (4, 400, 3, 300))], t=5.0)
    d = delta(snap, snap)
    assert set(d["nodes"]["n0"]["interfaces"]["i0"].values()) == {0}
    assert d["dt"] == 0


# ---------------------------------------------------------------- drop reasons


def test_reasons_parsed_from_the_tracepoint_format() -> None:
    table = parse_reasons_format(KFREE_SKB_FORMAT)
    assert table == {
        1: "NOT_SPECIFIED",
        2: "NO_SOCKET",
        3: "PKT_TOO_SMALL",
        45: "QDISC_DROP",
        66: "MAX",
    }
    assert format_has_field(KFREE_SKB_FORMAT, "reason")
    assert not format_has_field(OLD_KFREE_SKB_FORMAT, "reason")
    assert parse_reasons_format(OLD_KFREE_SKB_FORMAT) == {}


def test_fallback_table_matches_the_6_1_kernel() -> None:
    # numbers as in Debian 12's 6.1 format file (checked in the VM lab)
    assert FALLBACK_REASONS[1] == "NOT_SPECIFIED"
    assert FALLBACK_REASONS[2] == "NO_SOCKET"
    assert FALLBACK_REASONS[45] == "QDISC_DROP"
    assert FALLBACK_REASONS[66] == "MAX"
    assert all(
        FALLBACK_REASONS[n] == name for n, name in parse_reasons_format(KFREE_SKB_FORMAT).items()
    )


def btf_blob(enum_name: str, values: dict[str, int]) -> bytes:
    """A tiny little-endian BTF: an INT, a STRUCT with one member, a FUNC_PROTO, the ENUM."""
    strings = b"\0"
    offsets: dict[str, int] = {}
    for s in ["int", "s", "m", enum_name, *values]:
        offsets[s] = len(strings)
        strings += s.encode() + b"\0"
    types = b""
    types += struct.pack("<3I", offsets["int"], 1 << 24, 4) + struct.pack("<I", 32)  # INT
    types += struct.pack("<3I", offsets["s"], (4 << 24) | 1, 4) + struct.pack(
        "<3I", offsets["m"], 1, 0
    )
    types += struct.pack("<3I", 0, (13 << 24) | 1, 1) + struct.pack("<2I", 0, 1)  # FUNC_PROTO
    types += struct.pack("<3I", offsets[enum_name], (6 << 24) | len(values), 4)
    for name, val in values.items():
        types += struct.pack("<Ii", offsets[name], val)
    header = struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_reasons_parsed_from_btf() -> None:
    blob = btf_blob(
        "skb_drop_reason",
        {"SKB_NOT_DROPPED_YET": 0, "SKB_CONSUMED": 1, "SKB_DROP_REASON_NO_SOCKET": 3},
    )
    table = parse_btf_enum(blob, "skb_drop_reason", ("SKB_DROP_REASON_", "SKB_"))
    assert table == {0: "NOT_DROPPED_YET", 1: "CONSUMED", 3: "NO_SOCKET"}
    assert parse_btf_enum(blob, "other_enum") == {}
    assert parse_btf_enum(b"not btf at all, not at all", "skb_drop_reason") == {}


def test_reasons_from_this_hosts_btf_when_readable() -> None:
    path = probes.BTF_VMLINUX
    if not os.access(path, os.R_OK):
        pytest.skip(f"missing capability: readable kernel BTF at {path}")
    with open(path, "rb") as f:
        table = parse_btf_enum(f.read(), "skb_drop_reason", ("SKB_DROP_REASON_", "SKB_"))
    assert "NO_SOCKET" in table.values() and "NOT_SPECIFIED" in table.values(), table
    assert table.get(0) == "NOT_DROPPED_YET"


def test_reason_table_prefers_format_then_btf_then_fallback() -> None:
    blob = btf_blob("skb_drop_reason", {"SKB_DROP_REASON_NO_SOCKET": 7})
    assert reason_table(KFREE_SKB_FORMAT, blob) == (
        parse_reasons_format(KFREE_SKB_FORMAT),
        "tracepoint format",
    )
    assert reason_table(OLD_KFREE_SKB_FORMAT, blob) == ({7: "NO_SOCKET"}, "BTF")
    assert reason_table(None, None) == (FALLBACK_REASONS, "fallback table")


# ---------------------------------------------------------------- key mapping


def test_fold_maps_netns_and_ifindex_to_node_and_interface() -> None:
    names = {
        (4026532001, 2): ("n0", "ms-r-i0"),
        (4026532001, 1): ("n0", "lo"),
        (4026532002, 2): ("n1", "ms-r-i0"),
        (4026532002, 9): ("n1", "ms-r-i0"),  # recreated with a new index: summed
    }
    node_of_ns = {4026532001: "n0", 4026532002: "n1"}
    snap = fold(
        names,
        node_of_ns,
        traffic=[
            ((4026532001, 2), (50, 4900, 50, 4200)),
            ((4026532002, 2), (10, 1000, 20, 2000)),
            ((4026532002, 9), (1, 100, 2, 200)),
            ((4026532002, 7), (3, 300, 0, 0)),  # unknown index in a known namespace
            ((4026531840, 2), (999, 999, 999, 999)),  # the host's namespace: ignored
        ],
        batman=[
            ((4026532001, 2, 0x00, 0), (5, 370)),
            ((4026532001, 2, 0x00, 1), (4, 240)),
            ((4026532001, 2, 0x40, 0), (2, 200)),
            ((4026532001, 2, 0x99, 1), (1, 10)),
        ],
        drops=[
            ((4026532002, 2), 30),
            ((4026532002, 1), 2),
            ((4026532002, 0), 5),
            ((4026532002, 200), 1),
        ],
        retrans=[(4026532001, 7), (4026531840, 100)],
        reasons=FALLBACK_REASONS,
        t=3.0,
    )
    json.dumps(snap)
    assert set(snap["nodes"]) == {"n0", "n1"} and snap["t"] == 3.0
    n0 = snap["nodes"]["n0"]
    assert set(n0["interfaces"]) == {"lo", "ms-r-i0"}
    assert set(n0["interfaces"]["lo"].values()) == {0}
    i0 = n0["interfaces"]["ms-r-i0"]
    assert (i0["tx_packets"], i0["tx_bytes"], i0["rx_packets"], i0["rx_bytes"]) == (
        50,
        4900,
        50,
        4200,
    )
    assert (i0["batman_tx_packets"], i0["batman_tx_bytes"]) == (7, 570)
    assert (i0["batman_rx_packets"], i0["batman_rx_bytes"]) == (5, 250)
    assert i0["batman_types"]["iv_ogm"] == {
        "tx_packets": 5,
        "tx_bytes": 370,
        "rx_packets": 4,
        "rx_bytes": 240,
    }
    assert i0["batman_types"]["unicast"]["tx_packets"] == 2
    assert i0["batman_types"]["type_0x99"]["rx_packets"] == 1
    assert n0["tcp_retransmits"] == 7 and n0["drops"] == {}
    n1 = snap["nodes"]["n1"]
    assert n1["interfaces"]["ms-r-i0"]["tx_packets"] == 11
    assert n1["interfaces"]["if7"]["tx_packets"] == 3
    assert "batman_types" not in n1["interfaces"]["ms-r-i0"]
    # NOT_DROPPED_YET (0) is no drop; an unknown number keeps its number
    assert n1["drops"] == {"NO_SOCKET": 30, "NOT_SPECIFIED": 2, "REASON_200": 1}
    assert n1["tcp_retransmits"] == 0


def test_every_interface_carries_every_counter() -> None:
    snap = fold({(1, 3): ("a", "x")}, {1: "a", 2: "b"})
    assert set(snap["nodes"]["a"]["interfaces"]["x"]) == set(probes.IF_COUNTERS)
    assert snap["nodes"]["b"] == {"interfaces": {}, "drops": {}, "tcp_retransmits": 0}


# ---------------------------------------------------------------- hooks and source


def test_hooks_prefer_tracepoints() -> None:
    chosen, notes = plan_hooks(PROBES, lambda c, e: True, lambda f: True)
    assert chosen == {"TX": None, "RX": None, "DROP": None, "RETRANS": None, "SYNACK": None}
    assert notes == []


def test_hooks_fall_back_to_kprobes_with_a_warning() -> None:
    have = {"dev_hard_start_xmit", "__netif_receive_skb_core.constprop.0", "kfree_skb_reason"}
    chosen, notes = plan_hooks(
        ("traffic", "batman", "drops"), lambda c, e: e == "kfree_skb", have.__contains__
    )
    assert chosen == {
        "TX": "dev_hard_start_xmit",
        "RX": "__netif_receive_skb_core.constprop.0",
        "DROP": None,
    }
    assert len(notes) == 2 and "net:net_dev_start_xmit" in notes[0]  # shared hooks once


def test_no_tracepoint_and_no_kprobe_is_a_capability_error() -> None:
    with pytest.raises(
        CapabilityError, match=r"tcp_retrans: no tracepoint tcp:tcp_retransmit_skb and no kprobe"
    ):
        plan_hooks(("tcp_retrans",), lambda c, e: False, lambda f: False)


def test_unknown_probe_names_are_refused() -> None:
    with pytest.raises(MeshstressError, match="unknown probe"):
        probes.check_which(("traffic", "bogus"))
    with pytest.raises(MeshstressError, match="no probes"):
        probes.check_which(())
    assert probes.check_which("drops") == ("drops",)


def test_source_holds_each_file_once_and_flags_select_variants() -> None:
    text, cflags = build_source(("traffic", "batman"), {"TX": "dev_hard_start_xmit", "RX": None})
    assert text.count("BPF_HASH(watched_ns") == 1 and text.count("struct if_key {") == 1
    assert "drops" not in " ".join(cflags) and "BPF_HASH(drops" not in text
    assert cflags == ["-DPROBE_TRAFFIC", "-DPROBE_BATMAN", "-DTX_KPROBE"]
    _, cflags = build_source(("drops",), {"DROP": None}, drop_reason=False)
    assert cflags == ["-DPROBE_DROPS", "-DDROP_NO_REASON"]


@pytest.mark.parametrize("hook", probes.HOOKS, ids=lambda h: h.macro)
def test_c_files_define_each_hooks_tracepoint_and_kprobe_variant(hook: probes.Hook) -> None:
    name = next(f for f, hooks in probes.FILES.values() if hook in hooks)
    text = (PROBES_DIR / name).read_text()
    assert f"TRACEPOINT_PROBE({hook.tracepoint[0]}, {hook.tracepoint[1]})" in text
    assert re.search(rf"int {hook.fn}\(struct pt_regs \*ctx", text)
    assert f"#ifdef {hook.macro}_KPROBE" in text


# ---------------------------------------------------------------- capability


def test_missing_names_bcc_when_it_cannot_be_imported(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setitem(sys.modules, "bcc", None)  # import bcc -> ImportError
    why = probes.missing()
    assert why is not None and why.startswith("BCC is not importable") and "python3-bpfcc" in why


def test_missing_names_kernel_headers(monkeypatch) -> None:
    pytest.importorskip("bcc", reason="missing capability: BCC (python3-bpfcc) not importable")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(probes, "headers_path", lambda: None)
    why = probes.missing()
    assert why is not None and "no kernel headers" in why and "linux-headers-" in why


def test_missing_names_root(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in (probes.missing() or "")


def test_probes_refuse_to_start_where_something_is_missing(monkeypatch) -> None:
    monkeypatch.setattr(probes, "missing", lambda: "no kernel headers for 9.9: apt-get install x")
    with pytest.raises(CapabilityError, match="no kernel headers for 9.9"):
        probes.Probes()
