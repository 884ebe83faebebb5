"""Flows without root: parse_flows, ping output, struct tcp_info, the ends' files, and the
agents themselves on the loopback of this namespace (addresses 127.0.0.1 only)."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from meshstress.errors import InputError
from meshstress.judge.metrics import flow_metrics, outages
from meshstress.model import generators
from meshstress.traffic import parse_ping, ping_records, ping_replies
from meshstress.traffic.agent import TCP_INFO_FIELDS, TCP_INFO_SIZE, parse_tcp_info
from meshstress.traffic.flows import FlowSpec, load_record, parse_flows

TOPO = generators.line(3)


def flows(text: str) -> list[FlowSpec]:
    return parse_flows(tomllib.loads(text).get("traffic", []), "s.toml", TOPO)


def test_parse_flows_full_and_defaults() -> None:
    specs = flows(
        """
[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n2"
rate = "2mbit"
size = "500B"
start = "1s"
duration = "20s"
port = 5001
[[traffic]]
kind = "udp"
from = "n0"
to = "n2"
[[traffic]]
kind = "udp"
from = "n0"
to = "n2"
[[traffic]]
kind = "ping"
from = "n2"
to = "n0"
[[traffic]]
kind = "tcp"
from = "n1"
to = "n0"
rate = "10mbit"
[[traffic]]
kind = "udp"
from = "n1"
to = "n0"
rate = "250pps"
"""
    )
    cbr = specs[0]
    assert cbr == FlowSpec("cbr", "udp", "n0", "n2", start=1.0, duration=20.0, rate_pps=None,
                           rate_bps=2_000_000, size=500, port=5001)  # fmt: skip
    assert cbr.pps() == pytest.approx(500.0)  # 2 Mbit/s of 500-byte payloads
    assert [s.name for s in specs] == ["cbr", "udp-n0-n2", "udp-n0-n2-2", "ping-n2-n0",
                                       "tcp-n1-n0", "udp-n1-n0"]  # fmt: skip
    assert specs[1].rate_pps == 100.0 and specs[1].size == 200 and specs[1].duration is None
    assert specs[3].rate_pps == 10.0 and specs[3].size == 56
    assert specs[4].rate_bps == 10_000_000 and specs[4].rate_pps is None
    assert specs[5].rate_pps == 250.0
    assert parse_flows([], "s.toml", TOPO) == []


def test_generated_names_do_not_take_an_explicit_one() -> None:
    specs = flows(
        """
[[traffic]]
kind = "udp"
from = "n0"
to = "n1"
[[traffic]]
name = "udp-n0-n1"
kind = "udp"
from = "n1"
to = "n2"
"""
    )
    assert [s.name for s in specs] == ["udp-n0-n1-2", "udp-n0-n1"]


BASE = {"kind": "udp", "from": "n0", "to": "n2"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"rate": "100"}, "traffic[1].rate", "needs a unit"),
        ({"rate": "fastpps"}, "traffic[1].rate", "100pps"),
        ({"rate": "0pps"}, "traffic[1].rate", "packets per second"),
        ({"rate": "2furlongs"}, "traffic[1].rate", "unknown rate unit"),
        ({"size": "8B"}, "traffic[1].size", "16 to 65507"),
        ({"size": "1zb"}, "traffic[1].size", "unknown size unit"),
        ({"start": "soon"}, "traffic[1].start", "duration"),
        ({"duration": "0s"}, "traffic[1].duration", "positive"),
        ({"duration": "10"}, "traffic[1].duration", "needs a unit"),
        ({"port": 0}, "traffic[1].port", "1..65535"),
        ({"port": True}, "traffic[1].port", "1..65535"),
        ({"to": "zz"}, "traffic[1].to", "unknown node 'zz'"),
        ({"from": "n9"}, "traffic[1].from", "unknown node 'n9'"),
        ({"to": "n0"}, "traffic[1].to", "same node"),
        ({"kind": "quic"}, "traffic[1].kind", "udp, tcp, ping"),
        ({"colour": "red"}, "traffic[1].colour", "unknown key"),
        ({"name": "ok"}, "traffic[1].name", "duplicate flow name 'ok'"),
        ({"name": "a b"}, "traffic[1].name", "letters"),
        ({"kind": "tcp", "rate": "100pps"}, "traffic[1].rate", "bitrate"),
        ({"kind": "tcp", "size": "100B"}, "traffic[1].size", "no packet size"),
        ({"kind": "ping", "rate": "1mbit"}, "traffic[1].rate", "packets per second"),
        ({"kind": "ping", "port": 7}, "traffic[1].port", "no port"),
        ({"rate": "1gbit", "size": "16B"}, "traffic[1].rate", "pps"),
    ],
)
def test_parse_flows_errors_name_the_field(change: dict, field: str, words: str) -> None:
    bad = {**BASE, **change}
    with pytest.raises(InputError) as e:
        parse_flows([{**BASE, "name": "ok"}, bad], "s.toml", TOPO)
    assert e.value.source == "s.toml" and e.value.field == field, e.value
    assert words in e.value.message, e.value.message
    assert str(e.value).startswith(f"s.toml: {field}: ")


def test_parse_flows_shape_errors() -> None:
    with pytest.raises(InputError) as e:
        parse_flows({"kind": "udp"}, "s.toml", TOPO)
    assert e.value.field == "traffic"
    with pytest.raises(InputError) as e:
        parse_flows(["udp"], "s.toml", TOPO, field="flows")
    assert e.value.field == "flows[0]"
    with pytest.raises(InputError) as e:
        parse_flows([{"kind": "udp", "to": "n1"}], "s.toml", TOPO)
    assert e.value.field == "traffic[0].from" and "missing" in e.value.message


# --- ping output ---------------------------------------------------------------------

PING = """PING 10.201.0.3 (10.201.0.3) from 10.201.0.1 : 56(84) bytes of data.
[1000.500000] 64 bytes from 10.201.0.3: icmp_seq=1 ttl=63 time=2.00 ms
[1000.600000] 64 bytes from 10.201.0.3: icmp_seq=2 ttl=63 time=0.500 ms
[1000.900000] From 10.201.0.2 icmp_seq=4 Destination Net Unreachable
[1001.000500] 64 bytes from 10.201.0.3: icmp_seq=6 ttl=63 time=0.500 ms
[1001.000900] 64 bytes from 10.201.0.3: icmp_seq=6 ttl=63 time=0.900 ms (DUP!)

--- 10.201.0.3 ping statistics ---
7 packets transmitted, 3 received, +1 duplicates, +1 errors, 57.1429% packet loss, time 700ms
"""


def test_ping_replies_and_records() -> None:
    assert ping_replies(PING) == [(1, 1000.5, 2.0), (2, 1000.6, 0.5), (6, 1001.0005, 0.5),
                                  (6, 1001.0009, 0.9)]  # fmt: skip
    assert parse_ping(PING).sent == 7  # the old summary parser still reads this output
    sent, received = ping_records(PING, realtime_minus_monotonic=900.0, interval=0.1, t_start=99)
    assert [s for s, _ in sent] == list(range(1, 8))
    t = dict(sent)
    assert t[1] == pytest.approx(100.498) and t[2] == pytest.approx(100.5995)
    assert t[6] == pytest.approx(101.0)
    # 3..5 interpolated between seq 2 and seq 6; 7 extrapolated by the interval
    assert t[3] < t[4] < t[5] and t[4] == pytest.approx((t[2] + t[6]) / 2)
    assert t[7] == pytest.approx(101.1)
    assert received[0] == pytest.approx((1, 100.498, 100.5))
    assert len(received) == 4  # the duplicate is kept


def test_ping_records_without_summary_or_replies() -> None:
    sent, received = ping_records("PING x\n", 0.0, 0.1, t_start=5.0)
    assert sent == [] and received == []
    cut = PING.split("\n---")[0]  # killed before the summary: count from the highest seq
    sent, _ = ping_records(cut, 900.0, 0.1, t_start=99)
    assert [s for s, _ in sent] == list(range(1, 7))


def test_ping_flow_metrics_from_files(tmp_path: Path) -> None:
    spec = FlowSpec("echo", "ping", "n0", "n2", rate_pps=10)
    (tmp_path / "p.txt").write_text(PING)
    (tmp_path / "o.json").write_text(json.dumps({"realtime_minus_monotonic": 900.0}))
    rec = load_record(spec, {"ping": str(tmp_path / "p.txt"), "offset": str(tmp_path / "o.json")},
                      100.5, 101.2)  # fmt: skip
    m = flow_metrics(rec, t0=100.0)
    assert (m["sent"], m["received"], m["lost"], m["duplicates"]) == (7, 3, 4, 1)
    assert m["delivery_ratio"] == pytest.approx(3 / 7, abs=1e-6)
    assert m["rtt_ms"]["max"] == 2.0 and m["rtt_ms"]["p50"] == 0.5
    assert m["outages"] == [[0.7, 1.0, 0.3]]  # seqs 3-5 lost: 0.3 s >= 3 intervals
    assert m["errors"] == []


# --- struct tcp_info -----------------------------------------------------------------


def test_tcp_info_layout_matches_linux_uapi() -> None:
    assert TCP_INFO_SIZE == 232  # up to tcpi_snd_wnd, as in include/uapi/linux/tcp.h
    offsets, off = {}, 0
    for name, fmt in TCP_INFO_FIELDS:
        offsets[name] = off
        off += struct.calcsize(fmt)
    # offsets of the fields we report, from the kernel's header
    assert offsets["rtt"] == 68 and offsets["total_retrans"] == 100
    assert offsets["bytes_acked"] == 120 and offsets["segs_out"] == 136
    assert offsets["data_segs_out"] == 156 and offsets["bytes_retrans"] == 208
    raw = bytearray(TCP_INFO_SIZE)
    struct.pack_into("=I", raw, 100, 7)
    struct.pack_into("=I", raw, 156, 1000)
    info = parse_tcp_info(bytes(raw))
    assert info["total_retrans"] == 7 and info["data_segs_out"] == 1000
    short = parse_tcp_info(bytes(raw[:104]))  # an older kernel's shorter struct
    assert short["total_retrans"] == 7 and "data_segs_out" not in short


def test_tcp_info_of_a_real_loopback_socket() -> None:
    """The layout against this kernel: a loopback transfer's counters are consistent."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    c = socket.create_connection(ls.getsockname())
    s, _ = ls.accept()
    c.sendall(b"x" * 100_000)
    got = 0
    while got < 100_000:
        got += len(s.recv(65536))
    raw = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    info = parse_tcp_info(raw)
    for x in (c, s, ls):
        x.close()
    assert info["state"] == 1  # TCP_ESTABLISHED
    assert info["bytes_acked"] in range(100_000, 100_002)  # + 1 for the SYN on some kernels
    assert info["data_segs_out"] >= 2 and info["segs_out"] >= info["data_segs_out"]
    assert info["total_retrans"] == 0 and info["snd_mss"] > 0


# --- missing and broken files ----------------------------------------------------------


def test_missing_files_become_errors_not_exceptions(tmp_path: Path) -> None:
    spec = FlowSpec("u", "udp", "n0", "n2", rate_pps=100)
    (tmp_path / "recv.json").write_text("{not json")
    rec = load_record(spec, {"send": str(tmp_path / "send.json"),
                             "recv": str(tmp_path / "recv.json")}, 10.0, 12.0)  # fmt: skip
    assert any("send.json missing" in e for e in rec.errors)
    assert any("unreadable" in e for e in rec.errors)
    m = flow_metrics(rec, 10.0)
    assert m["sent"] == 0 and m["delivery_ratio"] == 0.0 and len(m["errors"]) == 2


# --- the agents, on the loopback ------------------------------------------------------


def agent(*args: object) -> list[str]:
    return [sys.executable, "-m", "meshstress.traffic.agent", *(str(a) for a in args)]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_udp_agents_on_loopback(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    t0 = time.monotonic() + 0.4
    ready = tmp_path / "ready"
    recv = subprocess.Popen(agent("udp-recv", "--bind", "127.0.0.1", "--port", port,
                                  "--end", t0 + 1.3, "--out", tmp_path / "r.json",
                                  "--ready", ready))  # fmt: skip
    send = subprocess.Popen(agent("udp-send", "--bind", "127.0.0.1", "--to", "127.0.0.1",
                                  "--port", port, "--start", t0, "--end", t0 + 1.0, "--pps", 200,
                                  "--size", 64, "--out", tmp_path / "s.json",
                                  "--ready", ready))  # fmt: skip
    assert send.wait(timeout=10) == 0 and recv.wait(timeout=10) == 0
    spec = FlowSpec("u", "udp", "n0", "n1", rate_pps=200, size=64)
    rec = load_record(spec, {"send": str(tmp_path / "s.json"), "recv": str(tmp_path / "r.json")},
                      t0, t0 + 1.0)  # fmt: skip
    m = flow_metrics(rec, t0)
    # every datagram the sender's record lists arrived (how many it sent in 1 s depends on
    # the host's load: 135 of 200 on a busy host; never more than the schedule allows)
    assert 0 < m["sent"] <= 201 and m["received"] == m["sent"], m
    assert {p[0] for p in rec.received} == {p[0] for p in rec.sent}
    assert m["errors"] == [] and m["outages"] == []
    assert all(ts >= t0 - 1e-3 for _, ts in rec.sent)
    assert all(tr >= ts for _, ts, tr in rec.received)


def test_agent_flushes_its_record_on_sigterm(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    now = time.monotonic()
    p = subprocess.Popen(agent("udp-recv", "--bind", "127.0.0.1", "--port", port,
                               "--end", now + 60, "--out", tmp_path / "r.json",
                               "--ready", tmp_path / "ready"))  # fmt: skip
    deadline = time.monotonic() + 10
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for seq in range(3):
            s.sendto(struct.pack("!Qd", seq, time.monotonic()), ("127.0.0.1", port))
    time.sleep(0.2)
    p.terminate()
    assert p.wait(timeout=5) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert [x[0] for x in data["packets"]] == [0, 1, 2] and data["stopped"] is True


def test_agent_refuses_an_unbounded_end(tmp_path: Path) -> None:
    p = subprocess.run(agent("udp-recv", "--bind", "127.0.0.1", "--port", 9, "--end",
                             time.monotonic() + 10 * 86400, "--out", tmp_path / "r.json"),
                       capture_output=True, text=True, timeout=10)  # fmt: skip
    assert p.returncode == 2 and "--end" in p.stderr
    assert not (tmp_path / "r.json").exists()


def test_outages_from_a_record_built_by_hand() -> None:
    from meshstress.traffic.flows import FlowRecord

    spec = FlowSpec("u", "udp", "a", "b", rate_pps=10)
    sent = [(i, 100.0 + i * 0.1) for i in range(50)]
    received = [(i, t, t + 0.001) for i, t in sent if not 10 <= i < 25]
    rec = FlowRecord(spec, 100.0, 105.0, sent=sent, received=received)
    assert outages(rec) == [pytest.approx((101.0, 102.5))]
