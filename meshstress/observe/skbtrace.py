"""The skbs an interface hands to its qdisc, from the tracepoint net:net_dev_queue.

No compiler and no headers: the tracepoint is enabled through tracefs with a filter on the
interface name and a minimum length, and its text buffer is read back once. Used to check
what netem sees (one skb per wire packet, see build.ONE_PACKET_PER_SKB). One trace at a
time per host: tracefs's top-level buffer is shared.

The tracepoint has no namespace field: an interface name is matched in every namespace,
so pick a name that only one namespace has, or a minimum length that leaves the other
interfaces' packets out (a receiver's ACKs are 66-90 bytes).
"""

from __future__ import annotations

import ctypes
import os
import re

TRACEFS = "/sys/kernel/tracing"
EVENT = "events/net/net_dev_queue"
_LEN = re.compile(r"\blen=(\d+)")
_NAME = re.compile(r"^[A-Za-z0-9_.~-]{1,15}$")


def _mount() -> None:
    if os.path.exists(f"{TRACEFS}/{EVENT}"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tracefs on {TRACEFS}: {os.strerror(err)}")
    if not os.path.exists(f"{TRACEFS}/{EVENT}"):
        raise OSError(f"this kernel has no tracepoint net:net_dev_queue under {TRACEFS}")


def _write(rel: str, text: str) -> None:
    with open(f"{TRACEFS}/{rel}", "w") as f:
        f.write(text)


def parse_lengths(text: str) -> list[int]:
    """The `len=` of every net_dev_queue line of a trace buffer."""
    return [int(m.group(1)) for line in text.splitlines() if (m := _LEN.search(line))]


class SkbTrace:
    """`with SkbTrace("ms-ab12-i1", min_len=200) as t: ...` then `t.lengths`."""

    def __init__(self, ifname: str, min_len: int = 0) -> None:
        if not _NAME.match(ifname):
            raise ValueError(f"not an interface name: {ifname!r}")
        self.ifname = ifname
        self.min_len = int(min_len)
        self.lengths: list[int] = []

    def __enter__(self) -> SkbTrace:
        _mount()
        _write("tracing_on", "0")
        _write("trace", "")
        _write(f"{EVENT}/filter", f'name == "{self.ifname}" && len >= {self.min_len}')
        _write(f"{EVENT}/enable", "1")
        _write("tracing_on", "1")
        return self

    def __exit__(self, *exc: object) -> None:
        _write("tracing_on", "0")
        try:
            _write(f"{EVENT}/enable", "0")
            _write(f"{EVENT}/filter", "0")
            with open(f"{TRACEFS}/trace") as f:
                self.lengths = parse_lengths(f.read())
        finally:
            _write("trace", "")
            _write("tracing_on", "1")  # the kernel's default
