#!/usr/bin/env python3
"""UDP reflector for the NAT lab: answers every datagram with the address it came from.

    reflector.py --listen 198.18.0.11:3478 [--lifetime-s 600] [--stats]

Reply: b"R <ip>:<port>\\n" followed by the first 256 bytes of the request, sent back to the
source. A peer behind a NAT learns its public (server-reflexive) address from the first line; a
client measuring a path matches replies to requests by the echoed bytes.

Prints "ready" once bound. Exits at SIGTERM/SIGINT or after --lifetime-s; with --stats it then
prints one JSON line: {"received": N, "by_source_ip": {"ip": N, ...}}.
Standard library only.
"""

import argparse
import json
import selectors
import signal
import socket
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="IP:PORT to bind")
    parser.add_argument("--lifetime-s", type=float, default=600.0, help="exit after this long")
    parser.add_argument("--stats", action="store_true", help="print counts as JSON on exit")
    args = parser.parse_args()

    host, _, port = args.listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as err:
        print(f"reflector: cannot bind {args.listen}: {err}", file=sys.stderr)
        return 1
    sock.setblocking(False)

    def stop(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    received = 0
    by_source: dict[str, int] = {}
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    deadline = time.monotonic() + args.lifetime_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not sel.select(timeout=min(left, 1.0)):
                continue
            for _ in range(1000):  # drain, bounded
                try:
                    data, src = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                received += 1
                by_source[src[0]] = by_source.get(src[0], 0) + 1
                reply = f"R {src[0]}:{src[1]}\n".encode() + data[:256]
                try:
                    sock.sendto(reply, src)
                except OSError:
                    pass
    finally:
        if args.stats:
            print(json.dumps({"received": received, "by_source_ip": by_source}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
