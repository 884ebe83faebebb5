"""Ping output parsing (pure)."""

from __future__ import annotations

import pytest

from meshstress.traffic import parse_ping

REPLIES = """PING 10.201.0.9 (10.201.0.9) 56(84) bytes of data.
64 bytes from 10.201.0.9: icmp_seq=1 ttl=61 time=0.064 ms
64 bytes from 10.201.0.9: icmp_seq=3 ttl=61 time=0.093 ms

--- 10.201.0.9 ping statistics ---
4 packets transmitted, 2 received, 50% packet loss, time 816ms
rtt min/avg/max/mdev = 0.064/0.078/0.093/0.009 ms
"""

NONE = """PING 10.201.0.3 (10.201.0.3) 56(84) bytes of data.

--- 10.201.0.3 ping statistics ---
3 packets transmitted, 0 received, 100% packet loss, time 2040ms
"""


def test_replies_give_counts_rtts_and_ttl() -> None:
    r = parse_ping(REPLIES)
    assert (r.sent, r.received, r.ttl) == (4, 2, 61)
    assert r.ok and r.loss == pytest.approx(0.5)
    assert (r.rtt_min_ms, r.rtt_avg_ms, r.rtt_max_ms) == (0.064, 0.078, 0.093)


def test_no_reply_and_no_output() -> None:
    r = parse_ping(NONE)
    assert (r.sent, r.received, r.rtt_min_ms, r.ttl) == (3, 0, None, None)
    assert not r.ok and r.loss == 1.0
    empty = parse_ping("ping: connect: Network is unreachable\n")
    assert empty.sent == 0 and not empty.ok and empty.loss == 1.0
