#!/usr/bin/env python3
"""User-space path impairment for the NAT lab: loss and delay on IP packets, addresses untouched.

    impair.py --dev tun0 --loss 10 --delay-ms 100 [--seed N] [--lifetime-s 43200]

Creates the TUN device DEV (IFF_TUN, no packet-information header) in the current network
namespace and, for every IP packet the kernel routes into it, drops it with probability LOSS %
or writes it back into the same device DELAY ms later, unchanged. The kernel then receives the
packet as if it had arrived on DEV and routes it on (natlab.py sets up the policy routing: only
packets that arrived on the lab's other interfaces are sent into DEV, so re-injected packets do
not loop). The kernel has no netem; this is the lab's replacement for it.

The device disappears when this process exits (and the routes through it with it). Prints
"ready" once the device exists, and one JSON line of counters on exit (SIGTERM/SIGINT or after
--lifetime-s). Standard library only; needs CAP_NET_ADMIN (root).
"""

import argparse
import collections
import fcntl
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_QUEUED = 20000  # packets held for delay; beyond this, new packets are dropped (counted)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", default="tun0")
    parser.add_argument("--loss", type=float, default=0.0, help="drop probability, percent")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added one-way delay")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--lifetime-s", type=float, default=43200.0, help="exit after this long")
    args = parser.parse_args()
    if not 0.0 <= args.loss <= 100.0 or args.delay_ms < 0:
        print("impair: --loss must be within 0..100 and --delay-ms >= 0", file=sys.stderr)
        return 2

    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", args.dev.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as err:
        print(f"impair: cannot create TUN device {args.dev}: {err}", file=sys.stderr)
        return 1
    os.set_blocking(fd, False)

    def stop(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    rng = random.Random(args.seed)
    loss = args.loss / 100.0
    delay = args.delay_ms / 1000.0
    queue: collections.deque = collections.deque()  # (due, packet), due times are monotonic
    counts = {"received": 0, "dropped_loss": 0, "dropped_queue_full": 0, "forwarded": 0, "write_errors": 0}
    print("ready", flush=True)
    deadline = time.monotonic() + args.lifetime_s
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            # Write back what is due (constant delay: the queue is in due order).
            while queue and queue[0][0] <= now:
                _, packet = queue.popleft()
                try:
                    os.write(fd, packet)
                    counts["forwarded"] += 1
                except OSError:
                    counts["write_errors"] += 1
            timeout = min(deadline - now, 1.0)
            if queue:
                timeout = max(0.0, min(timeout, queue[0][0] - now))
            readable, _, _ = select.select([fd], [], [], timeout)
            if not readable:
                continue
            for _ in range(256):  # drain, bounded
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    break
                counts["received"] += 1
                if loss > 0 and rng.random() < loss:
                    counts["dropped_loss"] += 1
                elif len(queue) >= MAX_QUEUED:
                    counts["dropped_queue_full"] += 1
                else:
                    queue.append((time.monotonic() + delay, packet))
    finally:
        print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
