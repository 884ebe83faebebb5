"""The worked example's client and a fixture that starts the user's service in a node."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SERVER = Path(__file__).with_name("kv_server.py")
PORT = 7070


class KV:
    """A client of kv_server.py: a UDP socket inside the client's node."""

    def __init__(self, sock: socket.socket, server: str) -> None:
        self.sock = sock
        self.server = (server, PORT)
        self.next_id = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def get(self, key: str, timeout: float = 0.2) -> bytes | None:
        """One GET, one attempt: the value, or None if no answer within `timeout`."""
        rid = self._id()
        self.sock.settimeout(timeout)
        self.sock.sendto(f"{rid} GET {key}".encode(), self.server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                return None
            head, _, rest = data.partition(b" ")
            if head == str(rid).encode():  # an older request's late answer is skipped
                return rest.removeprefix(b"VALUE ")
        return None

    def requests(
        self, count: int, pace: float, size: int, attempts: int = 1, timeout: float = 1.0
    ) -> tuple[int, int]:
        """Open loop: SET request i first goes out at start + i/pace, whatever the
        answers do; one unanswered after `timeout` is sent again, `attempts` sends in
        all. Returns (answered, count): a ratio for mesh.sweep."""
        first = self._id()
        ids = range(first, first + count)
        self.next_id = first + count
        value = "x" * size
        sent: dict[int, tuple[int, float]] = {}  # id -> (sends so far, last send)
        done: set[int] = set()
        start = time.monotonic()
        self.sock.setblocking(False)
        try:
            while True:
                now = time.monotonic()
                due = min(count, int((now - start) * pace) + 1)
                for rid in ids[:due]:
                    n, last = sent.get(rid, (0, -1.0))
                    if rid in done or n >= attempts or (n and now - last < timeout):
                        continue
                    self.sock.sendto(f"{rid} SET k{rid} {value}".encode(), self.server)
                    sent[rid] = (n + 1, now)
                while True:
                    try:
                        data = self.sock.recv(65535)
                    except BlockingIOError:
                        break
                    rid = int(data.split(b" ", 1)[0])
                    if rid in sent:
                        done.add(rid)
                finished = len(sent) == count and all(
                    rid in done or (n >= attempts and now - last >= timeout)
                    for rid, (n, last) in sent.items()
                )
                if finished:
                    return len(done), count
                time.sleep(0.002)
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def kv_service() -> Iterator[Callable[..., KV]]:
    """kv_service(mesh, server_node, client_node) -> a KV client: starts kv_server.py in
    the server node (mesh.process: recorded by PID, stopped when the test ends) and
    opens the client's socket in the client node."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start(mesh: Any, server: str, client: str) -> KV:
            argv = [sys.executable, str(SERVER), str(PORT)]
            stack.enter_context(mesh.process(server, argv, name="kv", ready="listening"))
            sock = stack.enter_context(mesh.socket(client))
            return KV(sock, mesh.address(server))

        yield start
