#!/usr/bin/env python3
"""Abuse a running node's admin HTTP listener, bounded in count and time, loopback only; measure
what the operator and the node see meanwhile.

All at once for --seconds: --idle connections that say nothing (re-opened, at most --reopen-rate
a second, when the node closes them), --slow clients that send one byte a second and never finish
their request, --oversized-rate requests a second with a request line or a header four times the
limit, --metrics-rate `GET /metrics` a second. Meanwhile --probes `GET /health`, spread evenly,
each timed from connect to the end of the answer, and the node's RSS, thread count and the CPU
time of its control thread sampled from /proc.

    scripts/admin-abuse.py --admin 127.0.0.1:9000 --pid PID [--seconds 20] [--json]

Prints one JSON object on stdout. Standard library only; each load runs in its own process, so
that the /health probes are not delayed by the load generator itself.
"""
import argparse
import errno
import json
import multiprocessing
import os
import resource
import selectors
import socket
import time

SLOW_REQUEST = b"GET /health HTTP/1.1\r\nX-Slow: "


def parse_addr(text):
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        raise SystemExit(f"--admin must be a loopback address, got {text}")
    return (host.strip("[]"), int(port))


def raise_nofile(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        new = min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            raise SystemExit(f"need {wanted} file descriptors, the hard limit is {hard} (ulimit -Hn)")


def open_nonblocking(addr):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    code = sock.connect_ex(addr)
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        return None
    return sock


def status_of(data):
    parts = data.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return 0


def idle_and_slow(addr, idle, slow, reopen_rate, seconds, out):
    """Idle connections and slow clients on one selector; re-open what the node closes."""
    raise_nofile(idle + slow + 256)
    sel = selectors.DefaultSelector()
    counts = {"idle_opened": 0, "idle_closed_by_node": 0, "slow_opened": 0, "slow_answers": {}, "open_failed": 0}
    slow_socks = {}
    pending = []  # kinds waiting to be re-opened

    def start(kind):
        sock = open_nonblocking(addr)
        if sock is None:
            counts["open_failed"] += 1
            pending.append(kind)
            return
        sel.register(sock, selectors.EVENT_READ, kind)
        counts[kind + "_opened"] += 1
        if kind == "slow":
            slow_socks[sock] = 0

    deadline = time.monotonic() + seconds
    started = time.monotonic()
    # The first wave at most 5,000 a second, so the node's accept queue is not simply overrun.
    first = ["idle"] * idle + ["slow"] * slow
    next_byte = time.monotonic() + 1.0
    tokens, last = 0.0, time.monotonic()
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        due = min(len(first), int((now - started) * 5000) + 1)
        for kind in first[:due]:
            start(kind)
        del first[:due]
        tokens = min(reopen_rate, tokens + (now - last) * reopen_rate)
        last = now
        while pending and tokens >= 1:
            tokens -= 1
            start(pending.pop())
        if now >= next_byte:
            next_byte = now + 1.0
            for sock in list(slow_socks):
                sent = slow_socks[sock]
                byte = SLOW_REQUEST[sent:sent + 1] or b"a"
                try:
                    sock.send(byte)
                    slow_socks[sock] = sent + 1
                except OSError:
                    pass
        for key, _ in sel.select(timeout=0.01):
            sock, kind = key.fileobj, key.data
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if kind == "slow":
                answer = str(status_of(data)) if data else "closed"
                counts["slow_answers"][answer] = counts["slow_answers"].get(answer, 0) + 1
            else:
                counts["idle_closed_by_node"] += 1
            sel.unregister(sock)
            slow_socks.pop(sock, None)
            sock.close()
            pending.append(kind)
    counts["held_at_end"] = len(sel.get_map())
    out.put(("idle_and_slow", counts))


def metrics_flood(addr, rate, seconds, out):
    """`GET /metrics` at `rate` a second, at most 512 in flight."""
    raise_nofile(2048)
    sel = selectors.DefaultSelector()
    request = b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n"
    counts = {"sent": 0, "answers": {}, "skipped_in_flight_cap": 0}
    started = time.monotonic()
    deadline = started + seconds
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        due = int((now - started) * rate) - counts["sent"] - counts["skipped_in_flight_cap"]
        for _ in range(max(0, due)):
            if len(sel.get_map()) >= 512:
                counts["skipped_in_flight_cap"] += 1
                continue
            sock = open_nonblocking(addr)
            counts["sent"] += 1
            if sock is None:
                counts["answers"]["0"] = counts["answers"].get("0", 0) + 1
                continue
            sel.register(sock, selectors.EVENT_WRITE, bytearray())
        for key, events in sel.select(timeout=0.001):
            sock, buf = key.fileobj, key.data
            done = False
            if events & selectors.EVENT_WRITE:
                try:
                    sock.send(request)
                    sel.modify(sock, selectors.EVENT_READ, buf)
                except OSError:
                    done = True
            else:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                buf.extend(data)
                done = not data
            if done:
                status = str(status_of(bytes(buf[:32])))
                counts["answers"][status] = counts["answers"].get(status, 0) + 1
                sel.unregister(sock)
                sock.close()
    out.put(("metrics", counts))


def exchange(addr, payload, timeout=10.0):
    """Blocking: send, read to the end; the status (0: closed without one)."""
    with socket.create_connection(addr, timeout=timeout) as sock:
        try:
            sock.sendall(payload)
        except OSError:
            pass
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    return status_of(data)


def oversized(addr, rate, seconds, out):
    """Request lines and headers four times their limits (8 KiB and 16 KiB)."""
    line = b"GET /" + b"a" * (32 * 1024) + b" HTTP/1.1\r\n\r\n"
    header = b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    counts = {"request_line": {}, "header": {}}
    started = time.monotonic()
    sent = 0
    while time.monotonic() < started + seconds:
        for kind, payload in (("request_line", line), ("header", header)):
            try:
                status = str(exchange(addr, payload))
            except OSError:
                status = "connect_failed"
            counts[kind][status] = counts[kind].get(status, 0) + 1
        sent += 1
        pause = started + sent / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    out.put(("oversized", counts))


def proc_sample(pid):
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    rss_kib = int(status["VmRSS"].split()[0])
    return rss_kib, int(status["Threads"])


def control_cpu_seconds(pid):
    """CPU time (user + system) of the node's ant-quic-control thread."""
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != "ant-quic-contro":
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return None


def percentile(values, p):
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--admin", required=True, help="the node's admin address, loopback")
    parser.add_argument("--pid", type=int, required=True, help="the node's process ID")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--reopen-rate", type=float, default=1000.0)
    parser.add_argument("--metrics-rate", type=float, default=1000.0)
    parser.add_argument("--oversized-rate", type=float, default=10.0)
    parser.add_argument("--probes", type=int, default=200)
    args = parser.parse_args()
    if not (0 < args.seconds <= 120 and 0 <= args.idle <= 15000 and 0 <= args.slow <= 2000):
        raise SystemExit("bounds: --seconds in (0, 120], --idle <= 15000, --slow <= 2000")
    addr = parse_addr(args.admin)
    health = b"GET /health HTTP/1.1\r\nHost: admin\r\n\r\n"

    rss0, threads0 = proc_sample(args.pid)
    cpu0 = control_cpu_seconds(args.pid)
    out = multiprocessing.Queue()
    loads = [
        multiprocessing.Process(target=idle_and_slow, args=(addr, args.idle, args.slow, args.reopen_rate, args.seconds, out)),
        multiprocessing.Process(target=metrics_flood, args=(addr, args.metrics_rate, args.seconds, out)),
        multiprocessing.Process(target=oversized, args=(addr, args.oversized_rate, args.seconds, out)),
    ]
    for load in loads:
        load.start()
    started = time.monotonic()
    # Probes from 2 s in (the first wave of idle connections is open by then) to 1 s before the end.
    window = max(1.0, args.seconds - 3.0)
    latencies, failures, rss, threads = [], {}, [rss0], [threads0]
    for i in range(args.probes):
        due = started + 2.0 + window * i / args.probes
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        begin = time.monotonic()
        try:
            status = exchange(addr, health, timeout=5.0)
        except OSError:
            status = -1
        latencies.append((time.monotonic() - begin) * 1000.0)
        if status != 200:
            status = str(status)
            failures[status] = failures.get(status, 0) + 1
        sample = proc_sample(args.pid)
        rss.append(sample[0])
        threads.append(sample[1])
    results = {}
    for _ in loads:
        name, counts = out.get(timeout=args.seconds + 60)
        results[name] = counts
    for load in loads:
        load.join(timeout=30)
    cpu1 = control_cpu_seconds(args.pid)
    rss1, threads1 = proc_sample(args.pid)
    report = {
        "seconds": args.seconds,
        "health_probes": len(latencies),
        "health_failures": failures,
        "health_ms": {
            "p50": round(percentile(latencies, 50), 2),
            "p99": round(percentile(latencies, 99), 2),
            "max": round(max(latencies), 2),
        },
        "node_rss_kib": {"before": rss0, "max": max(rss + [rss1]), "after": rss1},
        "node_threads": {"before": threads0, "max": max(threads + [threads1]), "after": threads1},
        "control_thread_cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2),
        **results,
    }
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
