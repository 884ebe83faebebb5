"""One end of a traffic flow, run inside a node's namespace by meshstress.traffic.flows.

    python -m meshstress.traffic.agent udp-recv --bind ADDR --port P --end T --out F [--ready F]
    python -m meshstress.traffic.agent udp-send --bind ADDR --to ADDR --port P --start T --end T
                                            --pps R --size B --out F [--ready F]
    python -m meshstress.traffic.agent tcp-recv --bind ADDR --port P --start T --end T --out F
                                            [--ready F] [--bin 0.1]
    python -m meshstress.traffic.agent tcp-send --bind ADDR --to ADDR --port P --start T --end T
                                            [--bps N] --out F [--ready F]
    python -m meshstress.traffic.agent ping --start T --out-offset F -- ping ARGS...
    python -m meshstress.traffic.agent rr-server --proto udp|tcp --bind ADDR --port P --end T
                    --request-size B --response-size B --out F [--ready F] [--peer-done F]
    python -m meshstress.traffic.agent rr-client --proto udp|tcp --bind ADDR --to ADDR --port P
                    --start T --end T --drain S --rate R --request-size B --response-size B
                    --timeout S --retries N --backoff X [--max-timeout S]
                    [--max-outstanding N] [--connection per-request|persistent] --out F

All times are absolute CLOCK_MONOTONIC seconds (time.monotonic()), comparable between
namespaces. Every agent stops at its --end (receivers: the caller adds a linger), on
SIGTERM or SIGINT, and then writes one JSON file (--out, via a temporary file and rename).
Agents bind and connect only to the addresses they are given. `ping` sleeps until
--start, then execs iputils ping (same PID) with stdout going to the caller's file.

A UDP datagram's payload starts with seq (u64) and the send time (f64, monotonic),
network byte order, padded with zeros to --size.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct("!Qd")
MAX_LIFETIME = 24 * 3600.0  # refuse absurd --end values: an agent is always bounded
GO_WAIT = 600.0  # an agent that never gets its go file ends (the runner gave up)

# struct tcp_info (include/uapi/linux/tcp.h) up to tcpi_snd_wnd, 232 bytes; identical
# layout in Debian 12's 6.1 headers and the 6.18 host kernel (fields are only appended).
TCP_INFO_FIELDS = (
    [("state", "B"), ("ca_state", "B"), ("retransmits", "B"), ("probes", "B"),
     ("backoff", "B"), ("options", "B"), ("wscale", "B"), ("flags", "B")]
    + [(n, "I") for n in (
        "rto", "ato", "snd_mss", "rcv_mss", "unacked", "sacked", "lost", "retrans",
        "fackets", "last_data_sent", "last_ack_sent", "last_data_recv", "last_ack_recv",
        "pmtu", "rcv_ssthresh", "rtt", "rttvar", "snd_ssthresh", "snd_cwnd", "advmss",
        "reordering", "rcv_rtt", "rcv_space", "total_retrans")]
    + [(n, "Q") for n in ("pacing_rate", "max_pacing_rate", "bytes_acked", "bytes_received")]
    + [(n, "I") for n in (
        "segs_out", "segs_in", "notsent_bytes", "min_rtt", "data_segs_in", "data_segs_out")]
    + [(n, "Q") for n in ("delivery_rate", "busy_time", "rwnd_limited", "sndbuf_limited")]
    + [("delivered", "I"), ("delivered_ce", "I")]
    + [("bytes_sent", "Q"), ("bytes_retrans", "Q")]
    + [(n, "I") for n in ("dsack_dups", "reord_seen", "rcv_ooopack", "snd_wnd")]
)  # fmt: skip
TCP_INFO_SIZE = struct.calcsize("=" + "".join(f for _, f in TCP_INFO_FIELDS))


def parse_tcp_info(raw: bytes) -> dict[str, int]:
    """The fields of struct tcp_info that lie wholly inside `raw` (older kernels return less)."""
    out: dict[str, int] = {}
    offset = 0
    for name, fmt in TCP_INFO_FIELDS:
        size = struct.calcsize(fmt)
        if offset + size > len(raw):
            break
        (out[name],) = struct.unpack_from("=" + fmt, raw, offset)
        offset += size
    return out


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: object) -> None:
    raise _Stop


def _write(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)


def run_recorded(
    work: Callable[[], None], rec: dict[str, Any], out: str, label: str,
    finish: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run an agent's `work` with SIGTERM and SIGINT turned into an orderly stop, then
    write `rec` to `out` whatever happened: `stopped` when a signal ended it early, an
    OSError noted under `label`, `ended` stamped (monotonic), `finish` applied last.
    Every agent (flows, crafted frames, injected frames, fidelity streams) ends so."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        work()
    except _Stop:
        rec["stopped"] = True
    except OSError as exc:
        rec["errors"].append(f"{label}: {exc}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        rec["ended"] = time.monotonic()
        if finish is not None:
            finish(rec)
        _write(out, rec)


def _ready(path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            f.write(str(os.getpid()))


def await_go(go: str, limit: float = GO_WAIT) -> float:
    """The start barrier: say this agent is up (the file GO.PID), then wait for GO and
    return the monotonic t0 it holds. The runner writes GO once every agent of the run
    is up, so a slow start (a loaded host, the emulated lab) costs no traffic."""
    with open(f"{go}.{os.getpid()}", "w") as f:
        f.write("up")
    deadline = time.monotonic() + limit
    while True:
        try:
            with open(go) as f:
                return float(f.read())
        except (FileNotFoundError, ValueError):
            if time.monotonic() >= deadline:
                raise SystemExit(f"no go file {go} within {limit:g} s") from None
            time.sleep(0.005)


def _sleep_until(t: float) -> None:
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


def _wait_ready(path: str | None, limit: float) -> bool:
    """Wait for the receiver's ready file until monotonic `limit`."""
    if not path:
        return True
    while not os.path.exists(path):
        if time.monotonic() >= limit:
            return False
        time.sleep(0.01)
    return True


def udp_recv(a: argparse.Namespace, rec: dict[str, Any]) -> None:
    packets: list[list[float]] = []
    rec["packets"] = packets  # [seq, t_send, t_recv], duplicates included, in arrival order
    rec["bad"] = 0
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((a.bind, a.port))
    _ready(a.ready)
    while True:
        left = a.end - time.monotonic()
        if left <= 0:
            break
        s.settimeout(min(left, 0.5))
        try:
            data = s.recv(65535)
        except TimeoutError:
            continue
        now = time.monotonic()
        if len(data) < HEADER.size:
            rec["bad"] += 1
            continue
        seq, sent = HEADER.unpack_from(data)
        packets.append([seq, sent, now])


def udp_send(a: argparse.Namespace, rec: dict[str, Any]) -> None:
    sent: list[list[float]] = []
    rec["sent"] = sent  # [seq, t_send]
    rec["send_errors"] = 0
    errors: dict[str, int] = {}
    rec["error_kinds"] = errors
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.bind, 0))
    pad = b"\0" * max(0, a.size - HEADER.size)
    _sleep_until(a.start)
    if not _wait_ready(a.ready, a.start + 5.0):
        rec["errors"].append("receiver not ready 5 s after the start")
    interval = 1.0 / a.pps
    began = time.monotonic()
    rec["began"] = began
    seq = 0
    while True:
        due = began + seq * interval
        if due >= a.end:
            break
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > 1.0:  # far behind (stopped, or a slow CPU): do not burst
            began += now - due
            continue
        t = time.monotonic()
        try:
            s.sendto(HEADER.pack(seq, t) + pad, (a.to, a.port))
        except OSError as exc:  # no route during an outage: an attempt all the same
            rec["send_errors"] += 1
            key = exc.strerror or str(exc)
            errors[key] = errors.get(key, 0) + 1
        sent.append([seq, t])
        seq += 1


def tcp_recv(a: argparse.Namespace, rec: dict[str, Any]) -> None:
    bins: dict[int, int] = {}
    rec["bin_s"] = a.bin
    rec["origin"] = a.start
    rec["bins"] = bins  # bin index (from --start, width --bin) -> bytes received
    rec["bytes"] = 0
    rec["connections"] = 0
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.bind, a.port))
    ls.listen(4)
    _ready(a.ready)
    conns: list[socket.socket] = []
    try:
        while True:
            left = a.end - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([ls, *conns], [], [], min(left, 0.5))
            for s in r:
                if s is ls:
                    c, _ = ls.accept()
                    c.setblocking(False)
                    conns.append(c)
                    rec["connections"] += 1
                    continue
                try:
                    data = s.recv(1 << 20)
                except BlockingIOError:
                    continue
                except ConnectionResetError as exc:
                    # the sender aborts its socket when its flow ends (tcp_send)
                    if time.monotonic() < a.end - 1.0:
                        rec["errors"].append(f"recv: {exc}")
                    data = b""
                except OSError as exc:
                    rec["errors"].append(f"recv: {exc}")
                    data = b""
                if not data:
                    conns.remove(s)
                    s.close()
                    continue
                k = int((time.monotonic() - a.start) // a.bin)
                bins[k] = bins.get(k, 0) + len(data)
                rec["bytes"] += len(data)
    finally:
        for c in conns:
            c.close()
        rec["bins"] = sorted(bins.items())


CAP_BURST_S = 0.25  # a capped tcp flow's unused credit is kept this long at most


def tcp_send(a: argparse.Namespace, rec: dict[str, Any]) -> None:
    rec["bytes_written"] = 0
    rec["tcp_info"] = {}
    _sleep_until(a.start)
    _wait_ready(a.ready, a.start + 5.0)
    s: socket.socket | None = None
    attempts = 0
    while s is None and time.monotonic() < a.end:  # retry: the route may not be there yet
        attempts += 1
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.bind((a.bind, 0))
        c.settimeout(max(0.05, min(1.0, a.end - time.monotonic())))
        try:
            c.connect((a.to, a.port))
            s = c
        except OSError as exc:
            c.close()
            if attempts == 1:
                rec["errors"].append(f"connect: {exc}")
            time.sleep(min(0.1, max(0.0, a.end - time.monotonic())))
    rec["connect_attempts"] = attempts
    if s is None:
        return
    rec["connected_at"] = time.monotonic()
    try:
        s.setblocking(False)
        chunk = b"\0" * 65536
        # a cap writes in quanta of 10 ms worth of bytes (at least one MSS), not trickles
        quantum = min(len(chunk), max(1448, a.bps // 800))
        began = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= a.end:
                break
            if a.bps:
                allowed = int((now - began) * a.bps / 8) - rec["bytes_written"]
                # a cap, not an average over the flow: credit left unused (a stall on a
                # lossy or slow stretch) is kept for CAP_BURST_S at most, so the flow
                # does not send its backlog at full speed when the path gets better
                most = max(quantum, int(a.bps / 8 * CAP_BURST_S))
                if allowed > most:
                    began += (allowed - most) * 8 / a.bps
                    allowed = most
                if allowed < quantum:
                    wait = (quantum - allowed) * 8 / a.bps
                    time.sleep(max(0.0, min(wait, a.end - now)))
                    continue
            else:
                allowed = len(chunk)
            _, w, _ = select.select([], [s], [], min(0.2, a.end - now))
            if not w:
                continue
            try:
                n = s.send(chunk[: min(len(chunk), allowed)])
            except BlockingIOError:
                continue
            except OSError as exc:
                rec["errors"].append(f"send: {exc}")
                break
            rec["bytes_written"] += n
    finally:
        try:
            raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
            rec["tcp_info"] = parse_tcp_info(raw)
        except OSError as exc:
            rec["errors"].append(f"TCP_INFO: {exc}")
        # abort (RST), not a graceful close: the flow is over, and an orphaned socket
        # still retransmitting its unsent bytes over a lossy path (backing off for
        # minutes) would hold the namespace, and the teardown would wait for it
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


# --- request/response (kind "rr") ------------------------------------------------------
#
# A request is --request-size bytes, a response --response-size bytes; both begin with
# RR: the request id (u64), the attempt (u32, 0 for the first) and the client's send time
# of that attempt (f64, monotonic), network byte order, padded with zeros. The server
# answers every request copy it gets with the same header. Over TCP the sizes frame the
# messages (both ends know them).

RR = struct.Struct("!QId")


def _rr_pad(size: int) -> bytes:
    return b"\0" * max(0, size - RR.size)


def rr_server(a: argparse.Namespace, rec: dict[str, Any]) -> None:
    served: list[list[float]] = []
    rec["served"] = served  # [id, attempt, t_recv] of every request copy, in arrival order
    rec["bad"] = 0
    pad = _rr_pad(a.response_size)
    udp = a.proto == "udp"
    ls = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    if udp:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    else:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.bind, a.port))
    if not udp:
        ls.listen(128)
    ls.setblocking(False)
    _ready(a.ready)
    bufs: dict[socket.socket, tuple[bytearray, bytearray]] = {}  # tcp: (read, write)
    rec["connections"] = 0
    try:
        while True:
            now = time.monotonic()
            if now >= a.end or (a.peer_done and os.path.exists(a.peer_done)):
                break
            wr = [c for c, (_, w) in bufs.items() if w]
            r, w, _ = select.select([ls, *bufs], wr, [], min(a.end - now, 0.2))
            for s in r:
                if udp:
                    while True:
                        try:
                            data, peer = s.recvfrom(65535)
                        except (BlockingIOError, InterruptedError):
                            break
                        t = time.monotonic()
                        if len(data) < RR.size:
                            rec["bad"] += 1
                            continue
                        rid, k, ts = RR.unpack_from(data)
                        served.append([rid, k, t])
                        try:
                            s.sendto(RR.pack(rid, k, ts) + pad, peer)
                        except OSError as exc:  # no route back: the client times out
                            rec.setdefault("send_errors", {})
                            key = exc.strerror or str(exc)
                            rec["send_errors"][key] = rec["send_errors"].get(key, 0) + 1
                    continue
                if s is ls:
                    try:
                        c, _ = ls.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    c.setblocking(False)
                    bufs[c] = (bytearray(), bytearray())
                    rec["connections"] += 1
                    continue
                rbuf, wbuf = bufs[s]
                try:
                    data = s.recv(1 << 20)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""  # reset by the client (it gave up): that connection ends
                if not data:
                    del bufs[s]
                    s.close()
                    continue
                rbuf += data
                t = time.monotonic()
                while len(rbuf) >= a.request_size:
                    rid, k, ts = RR.unpack_from(rbuf)
                    del rbuf[: a.request_size]
                    served.append([rid, k, t])
                    wbuf += RR.pack(rid, k, ts) + pad
            for s in w:
                if s not in bufs:
                    continue
                wbuf = bufs[s][1]
                try:
                    n = s.send(wbuf)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    del bufs[s]
                    s.close()
                    continue
                del wbuf[:n]
    finally:
        for c in bufs:
            c.close()
        ls.close()


class _Conn:
    """A client TCP connection: connecting, then open; the attempts sent on it."""

    def __init__(self, sock: socket.socket, t_open: float, opener: tuple[int, int]) -> None:
        self.sock = sock
        self.t_open = t_open
        self.opener = opener  # (id, attempt) that opened it
        self.connecting = True
        self.wbuf = bytearray()
        self.rbuf = bytearray()
        self.owners: list[tuple[int, int]] = []  # (id, attempt) written or queued on it
        self.entry: list[Any] = [t_open, None]  # its row of the record's "connects"


def rr_client(a: argparse.Namespace, rec: dict[str, Any]) -> None:
    """Open loop: request i is due at began + i / rate and starts then (unless
    --max-outstanding are outstanding: "skipped"); attempt k waits timeout * backoff**k
    (capped at --max-timeout) for its response, then the next attempt starts, until
    --retries are used. Stops scheduling at --end; resolves what is outstanding until
    --end + --drain."""
    reqs: list[dict[str, Any]] = []
    rec["requests"] = reqs
    responses: list[list[float]] = []
    rec["responses"] = responses  # [id, attempt, t_recv] of every response, in order
    errors: dict[str, int] = {}
    rec["error_kinds"] = errors
    tcp = a.proto == "tcp"
    persistent = tcp and a.connection == "persistent"
    rec["connects"] = []  # tcp: [t_start, connect seconds or None] of every connection
    pad = _rr_pad(a.request_size)
    live: dict[int, dict[str, Any]] = {}
    heap: list[tuple[float, int, int]] = []  # (deadline, id, attempt)
    conns: dict[socket.socket, _Conn] = {}
    by_attempt: dict[tuple[int, int], _Conn] = {}
    shared: list[_Conn] = []  # persistent: the current connection, if any
    u: socket.socket | None = None
    if not tcp:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((a.bind, 0))
        u.setblocking(False)

    def timeout(k: int) -> float:
        t = a.timeout * a.backoff**k
        return min(t, a.max_timeout) if a.max_timeout > 0 else t

    def count(exc: OSError) -> None:
        key = exc.strerror or str(exc)
        errors[key] = errors.get(key, 0) + 1

    def close(c: _Conn, result: str) -> None:
        """End a connection; the attempts on it still unanswered get `result`."""
        conns.pop(c.sock, None)
        c.sock.close()
        if shared and shared[0] is c:
            shared.clear()
        for rid, k in c.owners:
            by_attempt.pop((rid, k), None)
            q = live.get(rid)
            if q is not None and k < len(q["results"]) and q["results"][k] is None:
                q["results"][k] = result

    def connect(opener: tuple[int, int], now: float) -> _Conn | None:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.bind((a.bind, 0))
            err = c.connect_ex((a.to, a.port))
        except OSError as exc:
            err = exc.errno or -1
        conn = _Conn(c, now, opener)
        rec["connects"].append(conn.entry)
        if err not in (0, errno.EINPROGRESS):
            count(OSError(err, os.strerror(err)))
            c.close()
            return None
        conns[c] = conn
        return conn

    def attempt(q: dict[str, Any], now: float) -> None:
        k = len(q["sends"])
        q["sends"].append(now)
        q["results"].append(None)
        if tcp:
            q["connect_s"].append(None)
        heapq.heappush(heap, (now + timeout(k), q["id"], k))
        msg = RR.pack(q["id"], k, now) + pad
        if not tcp:
            assert u is not None
            try:
                u.sendto(msg, (a.to, a.port))
            except OSError as exc:  # no route: the attempt failed at once
                count(exc)
                q["results"][k] = "error"
            return
        conn = shared[0] if shared else None
        if conn is None:
            conn = connect((q["id"], k), now)
            if conn is None:
                q["results"][k] = "connect_failed"
                return
            if persistent:
                shared.append(conn)
        conn.wbuf += msg
        conn.owners.append((q["id"], k))
        by_attempt[q["id"], k] = conn

    def answered(rid: int, k: int, t: float) -> None:
        responses.append([rid, k, t])
        q = live.pop(rid, None)
        if q is None:
            return  # late, or a duplicate
        q["outcome"] = "ok"
        q["ok_attempt"] = k
        q["t_done"] = t
        if k < len(q["results"]) and q["results"][k] is None:
            q["results"][k] = "ok"
        for j in range(len(q["results"])):
            by_attempt.pop((rid, j), None)

    def expire(rid: int, k: int, now: float) -> None:
        q = live.get(rid)
        if q is None or len(q["sends"]) != k + 1:
            return  # answered, or a stale deadline
        conn = by_attempt.get((rid, k))
        if conn is not None:
            if conn.connecting:
                close(conn, "connect_failed")  # the connect took longer than the timeout
            elif not persistent:
                close(conn, "timeout")
        if q["results"][k] is None:
            q["results"][k] = "timeout"
        if k < a.retries:
            attempt(q, now)
        else:
            q["outcome"] = q["results"][k]
            q["t_done"] = now
            del live[rid]

    def readable(c: _Conn) -> None:
        try:
            data = c.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            count(exc)
            data = b""
        if not data:
            close(c, "error")  # the connection broke under these attempts
            return
        c.rbuf += data
        t = time.monotonic()
        while len(c.rbuf) >= a.response_size:
            rid, k, _ = RR.unpack_from(c.rbuf)
            del c.rbuf[: a.response_size]
            answered(rid, k, t)
        if not persistent and c.owners and c.owners[0][0] not in live:
            close(c, "ok")  # per request: answered, this connection is done

    def writable(c: _Conn, now: float) -> None:
        if c.connecting:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                count(OSError(err, os.strerror(err)))
                close(c, "connect_failed")
                return
            c.connecting = False
            c.entry[1] = now - c.t_open
            rid, k = c.opener
            q = live.get(rid)
            if q is not None and k < len(q["connect_s"]):
                q["connect_s"][k] = now - c.t_open
        if c.wbuf:
            try:
                n = c.sock.send(c.wbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                count(exc)
                close(c, "error")
                return
            del c.wbuf[:n]

    _sleep_until(a.start)
    if not _wait_ready(a.ready, a.start + 5.0):
        rec["errors"].append("server not ready 5 s after the start")
    interval = 1.0 / a.rate
    began = time.monotonic()
    rec["began"] = began
    seq = 0
    scheduling = True
    stop_at = a.end + a.drain
    try:
        while True:
            now = time.monotonic()
            while scheduling:
                due = began + seq * interval
                if due >= a.end:
                    scheduling = False
                    break
                if due > now:
                    break
                if now - due > 1.0:  # far behind (stopped, or a slow CPU): do not burst
                    began += now - due
                    continue
                q: dict[str, Any] = {"id": seq, "t": due, "sends": [], "results": [],
                                     "connect_s": [], "outcome": "pending",
                                     "ok_attempt": None, "t_done": None}  # fmt: skip
                reqs.append(q)
                seq += 1
                if len(live) >= a.max_outstanding:
                    q["outcome"] = "skipped"
                    continue
                live[q["id"]] = q
                attempt(q, now)
            while heap and heap[0][0] <= now:
                _, rid, k = heapq.heappop(heap)
                expire(rid, k, now)
            if (not scheduling and not live) or now >= stop_at:
                break
            wake = min(heap[0][0] if heap else stop_at, stop_at)
            if scheduling:
                wake = min(wake, began + seq * interval)
            socks: list[Any] = [u] if u is not None else list(conns)
            wr = [s for s, c in conns.items() if c.connecting or c.wbuf]
            r, w, _ = select.select(socks, wr, [], max(0.0, min(wake - now, 0.2)))
            now = time.monotonic()
            for s in w:
                if s in conns:
                    writable(conns[s], now)
            for s in r:
                if u is not None:
                    while True:
                        try:
                            data = u.recv(65535)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as exc:  # an ICMP error reported on the socket
                            count(exc)
                            break
                        if len(data) >= RR.size:
                            rid, k, _ = RR.unpack_from(data)
                            answered(rid, k, time.monotonic())
                elif s in conns:
                    readable(conns[s])
    finally:
        for c in list(conns.values()):
            c.sock.close()
        if u is not None:
            u.close()


def ping_exec(a: argparse.Namespace) -> None:
    """Sleep until --start, then become ping (same PID, stdout inherited)."""
    _sleep_until(a.start)
    if a.out_offset:
        # ping -D prints CLOCK_REALTIME; this pair converts it to monotonic
        _write(a.out_offset, {"realtime_minus_monotonic": time.time() - time.monotonic()})
    sys.stdout.flush()
    os.execvp(a.argv[0], a.argv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meshstress.traffic.agent")
    p.add_argument(
        "mode",
        choices=["udp-recv", "udp-send", "tcp-recv", "tcp-send", "ping", "rr-server", "rr-client"],
    )
    p.add_argument("--bind", default="")
    p.add_argument("--to", default="")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--start", type=float, default=0.0)
    p.add_argument("--end", type=float, default=0.0)
    p.add_argument("--pps", type=float, default=100.0)
    p.add_argument("--bps", type=int, default=0)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--bin", type=float, default=0.1)
    p.add_argument("--out", default="")
    p.add_argument("--out-offset", default="")
    p.add_argument("--ready", default="")
    p.add_argument("--go", default="")
    p.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    p.add_argument("--connection", choices=["per-request", "persistent"], default="per-request")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--request-size", type=int, default=64)
    p.add_argument("--response-size", type=int, default=64)
    p.add_argument("--timeout", type=float, default=0.2)
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--backoff", type=float, default=2.0)
    p.add_argument("--max-timeout", type=float, default=0.0)
    p.add_argument("--max-outstanding", type=int, default=1000)
    p.add_argument("--drain", type=float, default=0.0)
    p.add_argument("--peer-done", default="")
    args = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, rest = args[:cut], args[cut + 1 :]
    a = p.parse_args(args)
    a.argv = rest
    if a.go:  # --start/--end are offsets from the t0 that the go file will hold
        t0 = await_go(a.go)
        a.start += t0
        a.end += t0
    now = time.monotonic()
    if a.mode == "ping":
        if not a.argv:
            p.error("ping needs the ping command after --")
        ping_exec(a)
        return 0
    if not a.out or not a.bind:
        p.error("--out and --bind are required")
    if not (now - 60 < a.end <= now + MAX_LIFETIME):
        p.error(f"--end {a.end} is not within {MAX_LIFETIME:g} s from now ({now})")
    if a.mode.endswith(("send", "client")) and not a.to:
        p.error("--to is required")
    if a.mode.startswith("rr-"):
        if min(a.request_size, a.response_size) < RR.size:
            p.error(f"--request-size and --response-size must be at least {RR.size}")
        if not (a.rate > 0 and a.timeout > 0 and a.backoff >= 1 and a.retries >= 0):
            p.error("--rate and --timeout must be positive, --backoff >= 1, --retries >= 0")
        if not 0 <= a.drain <= 3600 or a.max_outstanding < 1:
            p.error("--drain must be 0..3600 s, --max-outstanding at least 1")
    if a.mode == "udp-send" and not (a.pps > 0):
        p.error("--pps must be positive")
    rec: dict[str, Any] = {"mode": a.mode, "pid": os.getpid(), "started": now, "errors": []}
    run = {"udp-recv": udp_recv, "udp-send": udp_send, "tcp-recv": tcp_recv,
           "tcp-send": tcp_send, "rr-server": rr_server,
           "rr-client": rr_client}[a.mode]  # fmt: skip

    def sorted_bins(rec: dict[str, Any]) -> None:
        if isinstance(rec.get("bins"), dict):
            rec["bins"] = sorted(rec["bins"].items())

    run_recorded(lambda: run(a, rec), rec, a.out, a.mode, sorted_bins)
    return 0


if __name__ == "__main__":
    sys.exit(main())
