#!/usr/bin/env python3
"""Holds idle client connections open against a proxy, to measure its memory per connection.

Usage: idle.py HOST:PORT COUNT HOLD_SECONDS
Opens COUNT TCP connections to HOST:PORT (loopback only), sends nothing, prints "open" once all
are established, keeps them HOLD_SECONDS, closes them all and prints "closed". Bounded in count
and time.
"""
import socket
import sys
import time


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    count, hold = int(sys.argv[2]), float(sys.argv[3])
    if not (host.startswith("127.") or host == "::1"):
        raise SystemExit("loopback targets only")
    if count > 20000 or hold > 600:
        raise SystemExit("count <= 20000 and hold <= 600 s")
    conns = []
    for _ in range(count):
        s = socket.create_connection((host, int(port)), timeout=10)
        conns.append(s)
    print("open", flush=True)
    time.sleep(hold)
    for s in conns:
        s.close()
    print("closed", flush=True)


if __name__ == "__main__":
    main()
