"""One connection of a guest to the twin's own address: qemu's guestfwd runs this per connection
with the guest's socket as standard input and output, and it joins that to 127.0.0.1:PORT.

Usage (by qemu only): python3 host_forward.py HOST PORT
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

CHUNK = 65536


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    try:
        upstream = socket.create_connection((host, port), timeout=30)
    except OSError:
        return 1
    upstream.settimeout(None)

    def guest_to_host() -> None:
        while True:
            try:
                data = os.read(0, CHUNK)
            except OSError:
                data = b""
            if not data:
                break
            upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    threading.Thread(target=guest_to_host, daemon=True).start()
    while True:
        try:
            data = upstream.recv(CHUNK)
        except OSError:
            break
        if not data:
            break
        os.write(1, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
