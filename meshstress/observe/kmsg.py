"""The kernel log, read from /dev/kmsg (each read one record: "prio,seq,usec,flags;text").

`mark()` is the sequence number of the newest record now; `since(seq)` every record after
it. Used in the VM lab, where the kernel is the run's own (on a shared host other
people's messages are in it too). Needs CAP_SYSLOG (root)."""

from __future__ import annotations

import errno
import os


def _records() -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                raw = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten while we read: skip it
                    continue
                if exc.errno == errno.EAGAIN:
                    break
                raise
            if not raw:
                break
            head, _, text = raw.decode(errors="replace").partition(";")
            parts = head.split(",")
            if len(parts) >= 2 and parts[1].isdigit():
                out.append((int(parts[1]), text.split("\n", 1)[0]))
    finally:
        os.close(fd)
    return out


def mark() -> int | None:
    """The newest record's sequence number (None: /dev/kmsg not readable)."""
    try:
        recs = _records()
    except OSError:
        return None
    return recs[-1][0] if recs else -1


def since(seq: int) -> list[str]:
    """The text of every record after sequence number `seq`."""
    return [text for s, text in _records() if s > seq]
