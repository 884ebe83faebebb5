"""The user's own service for the worked example: a tiny UDP key-value store.

    python kv_server.py PORT

Each datagram is "ID SET KEY VALUE" or "ID GET KEY"; the answer goes back to the sender:
"ID OK", "ID VALUE ..." or "ID MISSING". Prints "listening" once it is bound.
"""

import socket
import sys


def main() -> None:
    port = int(sys.argv[1])
    store: dict[bytes, bytes] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print("listening", flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        parts = data.split(b" ", 3)
        if len(parts) == 4 and parts[1] == b"SET":
            store[parts[2]] = parts[3]
            reply = parts[0] + b" OK"
        elif len(parts) == 3 and parts[1] == b"GET":
            value = store.get(parts[2])
            reply = parts[0] + (b" VALUE " + value if value is not None else b" MISSING")
        else:
            reply = b"? BAD"
        sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
