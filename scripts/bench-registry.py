#!/usr/bin/env python3
"""etcd load of a federation of bootstraps (docs/federation.md), measured on loopback.

Starts a 3-member etcd cluster and two linked bootstraps (B1, B2; lease TTL 10 s, the default),
then, in phases:

1. register: PEERS peers start, half at B1 and half at B2; what etcd did per registration;
2. idle: the peers stay connected for IDLE seconds; what etcd did per second (lease keep-alives
   only: the registry never writes per keep-alive);
3. churn: for CHURN seconds, RATE times a second one peer leaves (SIGTERM) and a new one
   registers; what etcd did per registration and departure;
4. propagation: SAMPLES peers register at B1 one after another; the time from B1 listing it
   (`/registry/peers/ID`) to B2 listing it, polled every millisecond;
5. connects: CONNECTS `--connect PEER_ID` through B2 to peers registered at B1 (forwarded
   across); what etcd did per connect (lookups come from the watch-fed cache: nothing);
6. capacity: CACHED synthetic peer entries (what a bootstrap writes, two candidates each) put
   straight into etcd (its JSON gateway, 128 per transaction); the growth of each bootstrap's
   resident memory per cached peer and of etcd's database per entry.

etcd's own counters are read from its /metrics (mvcc puts and deletes on one member, as every
member applies every write; gRPC requests, WAL fsyncs and bytes summed over the members), CPU
time from /proc. Prints a markdown report on stdout (machine, command, figures) and progress on
stderr; `--quick` is the smoke test `scripts/test.sh` runs (a few peers, a few seconds: it checks
that the phases run and that the counts add up, it measures nothing).

Usage: scripts/bench-registry.py [--bin PATH] [--peers N] [--idle S] [--churn S] [--rate R]
       [--samples N] [--connects N] [--cached N] [--quick]
Without --bin it builds `cargo build --release -p ant-quic --features etcd --bin ant-quic`.
Sends traffic only to 127.0.0.1; every process it starts is killed when it ends.
"""

import argparse
import base64
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEASE_TTL = 10


def log(message):
    print(f"bench-registry: {message}", file=sys.stderr, flush=True)


def free_port():
    """A port free on both TCP and UDP (a node's admin port is its UDP port's number)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


def http_get(port, path, timeout=2.0):
    """(status, body) of GET http://127.0.0.1:PORT/PATH; (0, error) when it fails."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


def samples(text, name):
    """Sum of every sample of metric `name` (any labels) in Prometheus text, and the samples whose
    label set contains `labels`, keyed by the raw label text."""
    total, by_labels = 0.0, {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, labels = series.partition("{")
        if metric != name:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        total += number
        by_labels[labels.rstrip("}")] = number
    return total, by_labels


def cpu_seconds(pid):
    """User + system CPU seconds of a live process (from /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Processes:
    """Every process started here, killed at the end whatever happens."""

    def __init__(self, logs):
        self.logs = logs
        self.all = []

    def spawn(self, name, args):
        """Start `args`; its stdout goes to NAME.out, its stderr to NAME.log."""
        with open(os.path.join(self.logs, f"{name}.out"), "w") as out, \
                open(os.path.join(self.logs, f"{name}.log"), "w") as err:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.all.append(process)
        return process

    def kill_all(self):
        for process in self.all:
            if process.poll() is None:
                process.kill()
        for process in self.all:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


class Etcd:
    """A 3-member etcd cluster on loopback, with its default timings."""

    def __init__(self, procs, base):
        self.clients = [free_port() for _ in range(3)]
        peers = [free_port() for _ in range(3)]
        cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(peers))
        self.members = []
        for i in range(3):
            client, peer = f"http://127.0.0.1:{self.clients[i]}", f"http://127.0.0.1:{peers[i]}"
            args = ["etcd", "--name", f"m{i}", "--data-dir", os.path.join(base, f"etcd-m{i}"),
                    "--listen-client-urls", client, "--advertise-client-urls", client,
                    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "ant-quic-bench-registry"]
            self.members.append(procs.spawn(f"etcd-m{i}", args))
        deadline = time.monotonic() + 30
        for port in self.clients:
            while '"health":"true"' not in http_get(port, "/health")[1]:
                if time.monotonic() > deadline:
                    sys.exit(f"bench-registry: etcd member on port {port} not healthy within 30 s")
                time.sleep(0.1)

    def endpoints(self):
        return [arg for port in self.clients for arg in ("--registry-endpoint", f"http://127.0.0.1:{port}")]

    def snapshot(self):
        """etcd's counters now (see the module documentation)."""
        texts = [http_get(port, "/metrics")[1] for port in self.clients]
        grpc = {}
        for text in texts:
            # Messages received, by method: unary requests and each keep-alive of the lease stream.
            for labels, value in samples(text, "grpc_server_msg_received_total")[1].items():
                method = next((p.split("=", 1)[1].strip('"') for p in labels.split(",")
                               if p.startswith("grpc_method=")), "?")
                grpc[method] = grpc.get(method, 0.0) + value
        first = texts[0]
        return {
            "puts": samples(first, "etcd_debugging_mvcc_put_total")[0],
            "deletes": samples(first, "etcd_debugging_mvcc_delete_total")[0],
            "keys": samples(first, "etcd_debugging_mvcc_keys_total")[0],
            "db_bytes": samples(first, "etcd_mvcc_db_total_size_in_use_in_bytes")[0],
            "proposals": samples(first, "etcd_server_proposals_committed_total")[0],
            "fsyncs": sum(samples(t, "etcd_disk_wal_fsync_duration_seconds_count")[0] for t in texts),
            "bytes_in": sum(samples(t, "etcd_network_client_grpc_received_bytes_total")[0] for t in texts),
            "bytes_out": sum(samples(t, "etcd_network_client_grpc_sent_bytes_total")[0] for t in texts),
            "grpc": grpc,
            "cpu": sum(cpu_seconds(m.pid) for m in self.members),
            "at": time.monotonic(),
        }


def delta(before, after):
    out = {k: after[k] - before[k] for k in before if k not in ("grpc", "keys", "db_bytes")}
    out["grpc"] = {m: after["grpc"].get(m, 0) - v for m, v in before["grpc"].items()
                   if after["grpc"].get(m, 0) - v > 0}
    out["keys"], out["db_bytes"] = after["keys"], after["db_bytes"]
    return out


class Node:
    """A running `ant-quic` node and what its start line said."""

    def __init__(self, procs, binary, name, args, admin_port=None):
        self.name = name
        self.process = procs.spawn(name, [binary, "--log-level", "warn", *args])
        self.peer_id, self.admin = None, admin_port
        deadline = time.monotonic() + 20
        while self.peer_id is None or self.admin is None:
            if self.process.poll() is not None:
                sys.exit(f"bench-registry: {name} exited before it was ready (see {procs.logs}/{name}.log)")
            if time.monotonic() > deadline:
                sys.exit(f"bench-registry: {name} printed no start line within 20 s")
            with open(os.path.join(procs.logs, f"{name}.out")) as out:
                for line in out:
                    if "peer id " in line:
                        self.peer_id = line.split("peer id ")[1].split()[0]
                    if line.startswith("admin http on "):
                        self.admin = int(line.split()[3].rsplit(":", 1)[1])
            time.sleep(0.005)

    def metric(self, name):
        return samples(http_get(self.admin, "/metrics")[1], name)

    def health(self):
        status, body = http_get(self.admin, "/health")
        return json.loads(body) if status == 200 else {}

    def has(self, peer_id):
        return http_get(self.admin, f"/registry/peers/{peer_id}")[0] == 200


def wait_for(what, check, limit):
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"bench-registry: {what} not within {limit} s")
        time.sleep(0.05)


def per(value, count):
    return value / count if count else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", help="an ant-quic binary built with --features etcd")
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--churn", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=5.0, help="departures (and registrations) per second")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--connects", type=int, default=10)
    parser.add_argument("--cached", type=int, default=100_000, help="synthetic entries for the capacity phase")
    parser.add_argument("--quick", action="store_true", help="smoke test: 6 peers, 3 s phases")
    args = parser.parse_args()
    if args.quick:
        args.peers, args.idle, args.churn, args.rate, args.samples, args.connects = 6, 3.0, 3.0, 2.0, 3, 1
        args.cached = 1000
    if shutil.which("etcd") is None:
        sys.exit("bench-registry: etcd is not installed (Debian: apt-get install etcd-server)")
    binary = args.bin
    if binary is None:
        log("building target/release/ant-quic with --features etcd")
        subprocess.run(["cargo", "build", "--release", "-p", "ant-quic", "--features", "etcd", "--bin", "ant-quic"],
                       cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target/release/ant-quic")
    binary = os.path.abspath(binary)
    load_before = os.getloadavg()[0]

    base = tempfile.mkdtemp(prefix="bench-registry-")
    procs = Processes(base)
    try:
        report = run(args, binary, base, procs)
    finally:
        procs.kill_all()
    shutil.rmtree(base, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print_report(args, report, commit, load_before, os.getloadavg()[0])
    return check(report)


def check(r):
    """What must hold whatever the machine: a registration writes, a departure deletes, a lookup
    reads nothing from etcd. Returns the exit status."""
    problems = []
    if r["churn"]["puts"] < r["cycles"] or r["churn"]["deletes"] < r["cycles"]:
        problems.append(f"churn of {r['cycles']}: only {r['churn']['puts']:.0f} puts, {r['churn']['deletes']:.0f} deletes")
    if r["connects"]["grpc"].get("Range", 0) > 0:
        problems.append(f"connects read etcd: {r['connects']['grpc']}")
    for problem in problems:
        log(problem)
    return 1 if problems else 0


def run(args, binary, base, procs):
    etcd = Etcd(procs, base)
    log("etcd cluster up")
    # Both bootstraps' peer IDs before they start, to link them.
    ports, pins = [free_port(), free_port()], []
    for i, port in enumerate(ports):
        out = subprocess.run([binary, "peer-id", "--data-dir", os.path.join(base, f"b{i + 1}")],
                             capture_output=True, text=True, check=True)
        pins.append(f"{out.stdout.strip()}@127.0.0.1:{port}")
    bootstraps = []
    for i, port in enumerate(ports):
        links = [a for p in pins if p != pins[i] for a in ("--registry-bootstrap", p)]
        bootstraps.append(Node(procs, binary, f"b{i + 1}",
                               ["--listen", f"127.0.0.1:{port}", "--cores", "1", "--data-dir",
                                os.path.join(base, f"b{i + 1}"), "--registry-backend", "etcd",
                                *etcd.endpoints(), *links], admin_port=port))
    for b in bootstraps:
        wait_for(f"{b.name} in step with etcd", lambda b=b: b.health().get("registry", {}).get("state") == "ok", 20)
    linked = lambda b: all(x.get("observed") and not x.get("error") for x in b.health().get("bootstraps", [{}]))
    for b in bootstraps:
        wait_for(f"{b.name} linked to the other", lambda b=b: linked(b), 20)
    time.sleep(1)
    log("bootstraps up and linked")
    counter = iter(range(1_000_000))
    live = []

    def start_peer(at):
        name = f"p{next(counter)}"
        node = Node(procs, binary, name, ["--listen", "127.0.0.1:0", "--cores", "1", "--data-dir",
                                          os.path.join(base, name), "--bootstrap", f"127.0.0.1:{ports[at]}"])
        return node, at

    def local_peers():
        return [b.health().get("registry", {}).get("local", -1) for b in bootstraps]

    # The links: each bootstrap is registered with the other, and counted there.
    links = local_peers()

    def settled(expected):
        return lambda: local_peers() == [e + l for e, l in zip(expected, links)]

    report = {"peers": args.peers}
    # 1. register
    before = etcd.snapshot()
    for i in range(args.peers):
        live.append(start_peer(i % 2))
    expected = [sum(1 for _, at in live if at == b) for b in range(2)]
    wait_for("every peer registered", settled(expected), 60)
    time.sleep(1)
    report["register"] = delta(before, etcd.snapshot())
    log(f"{args.peers} peers registered")

    # 2. idle
    before = etcd.snapshot()
    time.sleep(args.idle)
    report["idle"] = delta(before, etcd.snapshot())
    log(f"idle {args.idle} s")

    # 3. churn
    before = etcd.snapshot()
    writes_before = sum(b.metric("ant_quic_registry_writes_total")[0] for b in bootstraps)
    cycles, started = 0, time.monotonic()
    leaving = []
    while time.monotonic() - started < args.churn:
        node, at = live.pop(random.randrange(len(live)))
        node.process.send_signal(signal.SIGTERM)
        leaving.append(node)
        live.append(start_peer(at))
        cycles += 1
        pause = started + cycles / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    churn_seconds = time.monotonic() - started
    for node in leaving:
        try:
            node.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.process.kill()
    expected = [sum(1 for _, at in live if at == b) for b in range(2)]
    wait_for("the registries settled after the churn", settled(expected), 60)
    time.sleep(1)
    report["churn"] = delta(before, etcd.snapshot())
    report["churn"]["bootstrap_writes"] = sum(b.metric("ant_quic_registry_writes_total")[0]
                                              for b in bootstraps) - writes_before
    report["cycles"], report["churn_seconds"] = cycles, churn_seconds
    log(f"churn: {cycles} departures and registrations in {churn_seconds:.1f} s")

    # 4. propagation B1 -> B2
    propagation = []
    b1, b2 = bootstraps
    for _ in range(args.samples):
        node, at = start_peer(0)
        live.append((node, at))
        seen_b1 = seen_b2 = None
        deadline = time.monotonic() + 10
        while seen_b2 is None and time.monotonic() < deadline:
            now = time.monotonic()
            if seen_b1 is None and b1.has(node.peer_id):
                seen_b1 = now
            if seen_b1 is not None and b2.has(node.peer_id):
                seen_b2 = time.monotonic()
            time.sleep(0.001)
        if seen_b2 is None:
            sys.exit(f"bench-registry: {node.peer_id} did not reach B2 within 10 s")
        propagation.append((seen_b2 - seen_b1) * 1000)
    report["propagation_ms"] = propagation
    log(f"propagation: {len(propagation)} samples")

    # 5. connects across (B2 forwards to B1)
    targets = [node for node, at in live if at == 0][: args.connects]
    before = etcd.snapshot()
    connect_ms = []
    for i, target in enumerate(targets):
        name = f"c{i}"
        out = subprocess.run([binary, "--cores", "1", "--log-level", "warn", "--data-dir", os.path.join(base, name),
                              "--bootstrap", f"127.0.0.1:{ports[1]}", "--connect", target.peer_id, "--json",
                              "--timeout", "20"], capture_output=True, text=True, timeout=40)
        if out.returncode != 0:
            sys.exit(f"bench-registry: --connect {target.peer_id} through B2 failed: {out.stderr.strip()}")
        connect_ms.append(json.loads(out.stdout)["connect_ms"])
    report["connects"] = delta(before, etcd.snapshot())
    report["connect_ms"] = connect_ms
    report["forwards"] = b2.metric("nat_forwards_total")[1]
    log(f"connects: {len(connect_ms)}")

    # 6. capacity
    report["capacity"] = capacity(etcd, bootstraps, args.cached)
    log(f"capacity: {args.cached} entries cached")
    return report


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def capacity(etcd, bootstraps, count):
    """Synthetic entries of `count` peers at a bootstrap that is not running: every running
    bootstrap caches them all (what a federation of 1 M peers asks of each bootstrap)."""
    global_of = lambda b: b.health().get("registry", {}).get("global", -1)
    before = {"rss": [rss_bytes(b.process.pid) for b in bootstraps], "global": [global_of(b) for b in bootstraps],
              "etcd": etcd.snapshot()}
    encode = lambda text: base64.b64encode(text.encode()).decode()
    elsewhere = hashlib.sha256(b"a bootstrap that is not running").hexdigest()
    started = time.monotonic()
    for first in range(0, count, 128):
        ops = []
        for i in range(first, min(count, first + 128)):
            peer = hashlib.sha256(f"synthetic peer {i}".encode()).hexdigest()
            value = {"peer": peer, "bootstrap": elsewhere, "bootstrap_address": "198.51.100.1:9000",
                     "observed": f"203.0.113.{i % 250 + 1}:{1024 + i % 60000}",
                     "candidates": [f"203.0.113.{i % 250 + 1}:{1024 + i % 60000}", f"10.{i % 250}.0.2:9000"]}
            ops.append({"requestPut": {"key": encode(f"/ant-quic/peers/{peer}"), "value": encode(json.dumps(value))}})
        request = urllib.request.Request(f"http://127.0.0.1:{etcd.clients[0]}/v3/kv/txn",
                                         data=json.dumps({"success": ops}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    written = time.monotonic() - started
    wanted = [g + count for g in before["global"]]
    wait_for("the bootstraps cached every synthetic entry",
             lambda: all(global_of(b) >= w for b, w in zip(bootstraps, wanted)), 120)
    cached = time.monotonic() - started
    time.sleep(2)
    after_rss = [rss_bytes(b.process.pid) for b in bootstraps]
    after = etcd.snapshot()
    return {"count": count, "written_s": written, "cached_s": cached,
            "rss_per_peer": [(a - b) / count for a, b in zip(after_rss, before["rss"])],
            "db_per_entry": (after["db_bytes"] - before["etcd"]["db_bytes"]) / count,
            "bytes_in_per_entry": (after["bytes_in"] - before["etcd"]["bytes_in"]) / count}


def grpc_text(grpc):
    return ", ".join(f"{m} {v:.2f}" for m, v in sorted(grpc.items())) or "none"


def print_report(args, r, commit, load_before, load_after):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(l.split(":", 1)[1].strip() for l in info if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    argv = " ".join(sys.argv[1:])
    print(f"- Machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}")
    print(f"- Load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}")
    print(f"- Command: `scripts/bench-registry.py{(' ' + argv) if argv else ''}`")
    print(f"- Source: commit {commit}")
    print(f"- etcd: 3 members on loopback (etcd {etcd_version()}, default timings), two linked bootstraps "
          f"(lease TTL {LEASE_TTL} s), {r['peers']} peers, half at each; every peer a separate `ant-quic` process")
    print()
    print("| phase | what | etcd puts | etcd deletes | Raft proposals | WAL fsyncs (3 members) "
          "| gRPC bytes in | etcd CPU ms (3 members; above idle but for the idle row) | gRPC messages received (3 members) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    reg, idle, churn, conn = r["register"], r["idle"], r["churn"], r["connects"]
    n, cycles = r["peers"], r["cycles"]
    # etcd's own work when nothing happens (Raft heartbeats between the members, keep-alives),
    # taken off the other phases' CPU time so that what is left is theirs.
    idle_cpu_per_s = per(idle["cpu"], idle["at"])
    row = lambda phase, what, d, k, above=True: print(
        f"| {phase} | {what} | {per(d['puts'], k):.2f} | {per(d['deletes'], k):.2f} "
        f"| {per(d['proposals'], k):.2f} | {per(d['fsyncs'], k):.2f} | {per(d['bytes_in'], k):.0f} "
        f"| {per((d['cpu'] - (idle_cpu_per_s * d['at'] if above else 0)) * 1000, k):.2f} "
        f"| {grpc_text({m: v / k for m, v in d['grpc'].items()}) if k else ''} |")
    row("register", f"per registration ({n} in all)", reg, n)
    row("idle", f"per second, {n} peers connected ({idle['at']:.0f} s)", idle, idle["at"], above=False)
    row("churn", f"per departure + registration ({cycles} in {r['churn_seconds']:.0f} s)", churn, cycles)
    row("connect", f"per `--connect` across bootstraps ({len(r['connect_ms'])})", conn, len(r["connect_ms"]))
    print()
    prop = sorted(r["propagation_ms"])
    if prop:
        q = lambda f: prop[min(len(prop) - 1, int(f * len(prop)))]
        print(f"Registration at B1 to lookup at B2 ({len(prop)} peers, polled every ms): median "
              f"{statistics.median(prop):.1f} ms, p90 {q(0.9):.1f} ms, max {prop[-1]:.1f} ms.")
    if r["connect_ms"]:
        print(f"Connect across bootstraps (B2 forwarding to B1): median {statistics.median(r['connect_ms']):.1f} ms "
              f"over {len(r['connect_ms'])}; B2's forwards: {r['forwards']}.")
    c = r["capacity"]
    print(f"Capacity: {c['count']} synthetic entries written in {c['written_s']:.1f} s, cached by both bootstraps "
          f"{c['cached_s']:.1f} s after the first; each bootstrap's resident memory grew by "
          f"{' and '.join(f'{x:.0f}' for x in c['rss_per_peer'])} bytes per cached peer, etcd's database in use by "
          f"{c['db_per_entry']:.0f} bytes per entry ({c['bytes_in_per_entry']:.0f} bytes of gRPC in).")
    print(f"Bootstraps' own count of their writes during the churn: {churn['bootstrap_writes']:.0f} "
          f"({per(churn['bootstrap_writes'], cycles):.2f} per cycle). etcd at the end: {churn['keys']:.0f} keys, "
          f"{churn['db_bytes'] / 1024:.0f} KiB in use.")


def etcd_version():
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split()
    return out[2] if len(out) > 2 else "?"


if __name__ == "__main__":
    sys.exit(main())
