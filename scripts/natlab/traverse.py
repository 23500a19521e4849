#!/usr/bin/env python3
"""NAT traversal matrix of the real node in the NAT lab.

Runs `ant-quic` as bootstraps in b1 and b2 and as a long-lived peer behind every NAT, then for every
pair of peers runs `ant-quic --bootstrap ... --connect PEER_ID --json --send-bytes N` from the
first one's namespace and records the path, the time to connect, and whether the bytes arrived
with the same SHA-256. Writes the matrix as JSON (stdout) and, with --table, as a Markdown table.

The lab must be up (`natlab.py up --prefix P`); this script does not build or remove it.

    traverse.py --prefix P --binary target/release/ant-quic [--bytes 100000000] [--via b1|b2]
                [--single] [--wait-direct S] [--ipv6] [--pairs fc1-fc2,pr1-sy1] [--table FILE] [--timeout 60]
                [--bootstrap-backend af-xdp] [--peer-backend af-xdp]

With --single every peer registers with the coordinating bootstrap only (the runbook's deployment
of one bootstrap host): peers learn their NAT mapping from its alternate port.

With --bootstrap-backend af-xdp the coordinating bootstrap runs `--backend af-xdp` on its veth end
(eth0), and the report carries its AF_XDP counters (`bootstrap_af_xdp`, read from its /metrics
before it stops). The veth end that sends to it has its transmit checksum offload turned off
first: a veth hands frames over with the UDP checksum left to the receiver, which an AF_XDP RX
ring reads as a bad checksum (docs/af-xdp.md). --peer-backend af-xdp does the same for the
long-lived peers (listening on the wildcard address, so with `[node] xdp_interface` = eth0), and
the report carries their counters (`peer_af_xdp`).

Expected outcome per pair (shared/natlab.md): direct wherever raw UDP simultaneous open works;
connected (direct or relayed) everywhere else. `ok` in the output says whether the pair met it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grid  # noqa: E402  (same directory)
import natlab  # noqa: E402  (same directory)

BOOTSTRAP_ADDR = {"b1": "198.18.0.11", "b2": "198.18.0.12"}
PORT = 9000
# The node and interface at the other end of each bootstrap's eth0 (natlab.py's layout).
BOOTSTRAP_LINK = {"b1": ("sw", "b1"), "b2": ("imp", "b2")}


def offload_off_towards(prefix, node):
    """Turn off transmit checksum offload on the veth end that sends to `node`'s eth0."""
    if node in BOOTSTRAP_LINK:
        other, dev = BOOTSTRAP_LINK[node]
    else:
        router = natlab.PEERS[node][0]
        other, dev = ("sw", "pub") if router is None else ("r-" + router, "p-" + node)
    natlab.in_ns(natlab.ns_name(prefix, other), ["ethtool", "-K", dev, "tx", "off"])
AF_XDP_SERIES = 'ant_quic_core_af_xdp_datagrams_total{core="0",path="'


def af_xdp_counters(prefix, bootstrap):
    """The bootstrap's AF_XDP counters (core 0) from its /metrics (admin HTTP on loopback, port PORT)."""
    url = f"http://127.0.0.1:{PORT}/metrics"
    metrics = natlab.in_ns(natlab.ns_name(prefix, bootstrap), ["curl", "-sS", "--max-time", "10", url]).stdout
    counters = {}
    for line in metrics.splitlines():
        if line.startswith(AF_XDP_SERIES):
            path, value = line[len(AF_XDP_SERIES) :].split('"} ')
            counters[path] = int(float(value))
    return counters


class Node:
    """A long-lived ant-quic process in a namespace, with its output in files."""

    def __init__(self, prefix, node, binary, workdir, args, env=None):
        self.name = node
        self.out_path = os.path.join(workdir, f"{node}.out")
        self.err_path = os.path.join(workdir, f"{node}.err")
        netns = natlab.ns_name(prefix, node)
        data = os.path.join(workdir, f"{node}.data")
        cmd = ["ip", "netns", "exec", netns, binary, "--data-dir", data, "--cores", "1"] + args
        self.proc = subprocess.Popen(
            cmd,
            stdout=open(self.out_path, "w"),
            stderr=open(self.err_path, "w"),
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, **(env or {})),
        )

    def text(self, which="out"):
        with open(self.out_path if which == "out" else self.err_path, errors="replace") as f:
            return f.read()

    def peer_id(self, deadline):
        while time.monotonic() < deadline:
            for line in self.text().splitlines():
                if " peer id " in line:
                    return line.split(" peer id ", 1)[1].strip()
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise natlab.LabError(f"{self.name}: no peer id printed ({self.text('err').strip()[-300:]})")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def wait_registered(node, count, deadline):
    """Until the node logged `count` observed addresses (one per bootstrap)."""
    while time.monotonic() < deadline:
        if node.text("err").count("observed address") >= count:
            return
        if node.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise natlab.LabError(f"{node.name}: not registered with its bootstraps ({node.text('err').strip()[-300:]})")


def connect(prefix, binary, workdir, src, dst_id, bootstraps, nbytes, timeout, wait_direct=0, ipv6=False):
    netns = natlab.ns_name(prefix, src)
    cmd = ["ip", "netns", "exec", netns, binary, "--data-dir", os.path.join(workdir, f"{src}.client"), "--cores", "1"]
    if ipv6:
        cmd += ["--listen", "[::]:0"]
    for b in bootstraps:
        cmd += ["--bootstrap", f"{BOOTSTRAP_ADDR[b]}:{PORT}"]
    cmd += ["--connect", dst_id, "--json", "--timeout", str(timeout)]
    if nbytes:
        cmd += ["--send-bytes", str(nbytes)]
    if wait_direct:
        cmd += ["--wait-direct", str(wait_direct)]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 15)
    except subprocess.TimeoutExpired:
        return {"result": "hung", "error": f"no exit within {timeout + 15} s"}
    elapsed = time.monotonic() - started
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    with open(os.path.join(workdir, f"{src}.client.log"), "a") as log:
        log.write(proc.stderr)
    if proc.returncode == 0 and line.startswith("{"):
        out = json.loads(line)
        out["result"] = "connected"
        out["wall_s"] = round(elapsed, 2)
        return out
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    return {"result": "failed", "error": (errors[-1] if errors else proc.stderr.strip()[-300:]), "wall_s": elapsed}


def main():
    parser = argparse.ArgumentParser(prog="traverse.py", description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="aqlab")
    parser.add_argument("--binary", help="the node binary (required unless --grid-from)")
    parser.add_argument("--bytes", type=int, default=100_000_000)
    parser.add_argument("--via", default="b1", choices=["b1", "b2"], help="bootstrap that coordinates")
    parser.add_argument("--single", action="store_true", help="register with the coordinating bootstrap only")
    parser.add_argument("--ipv6", action="store_true", help="peers listen dual-stack ([::]; the lab needs up --ipv6)")
    parser.add_argument(
        "--wait-direct", type=int, default=0, help="seconds a relayed connection may take to move to a direct path"
    )
    parser.add_argument("--pairs", default="all", help="comma-separated a-b pairs, or all")
    parser.add_argument("--table", default=None, help="write a Markdown table here")
    parser.add_argument("--grid", default=None, help="write the matrix as an SVG grid here (scripts/natlab/grid.py)")
    parser.add_argument(
        "--grid-from",
        default=None,
        metavar="TABLE.md",
        help="run nothing: draw --grid from a matrix table this script wrote (or a file holding it)",
    )
    parser.add_argument("--heading", default=None, help="with --grid-from: the table under the first heading with this")
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--logs", default=None, help="keep the nodes' output in this directory")
    parser.add_argument(
        "--bootstrap-backend", default=None, choices=["af-xdp"], help="I/O backend of the coordinating bootstrap"
    )
    parser.add_argument("--peer-backend", default=None, choices=["af-xdp"], help="I/O backend of the long-lived peers")
    args = parser.parse_args()
    if args.grid_from:
        return grid_from_table(args)
    if not args.binary:
        parser.error("--binary is required (or --grid-from TABLE.md --grid FILE.svg)")

    try:
        natlab.require_root_and_tools(need_nft=False)
        natlab.require_up(args.prefix)
        binary = os.path.abspath(args.binary)
        if not os.access(binary, os.X_OK):
            raise natlab.LabError(f"{binary} is not an executable (build it: cargo build --release)")
        if args.pairs == "all":
            order = natlab.PEER_ORDER
            pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1 :]]
        else:
            pairs = [tuple(p.split("-", 1)) for p in args.pairs.split(",")]
            for a, b in pairs:
                natlab.ns_name(args.prefix, a), natlab.ns_name(args.prefix, b)
        peers = sorted({p for pair in pairs for p in pair}, key=natlab.PEER_ORDER.index)
        # The coordinating bootstrap first: a node asks the first bootstrap it connected to.
        bootstraps = [args.via] + ([] if args.single else [b for b in ("b1", "b2") if b != args.via])
        workdir = args.logs or tempfile.mkdtemp(prefix="ant-quic-traverse-")
        os.makedirs(workdir, exist_ok=True)
        nodes = []
        af_xdp = peers_af_xdp = None
        try:
            if args.bootstrap_backend:
                offload_off_towards(args.prefix, args.via)
            for b in ("b1", "b2"):
                flags = ["--listen", f"{BOOTSTRAP_ADDR[b]}:{PORT}"]
                if b == args.via and args.bootstrap_backend:
                    flags += ["--backend", args.bootstrap_backend]
                nodes.append(Node(args.prefix, b, binary, workdir, flags))
            deadline = time.monotonic() + 20
            for n in nodes:
                n.peer_id(deadline)
            listeners = {}
            for p in peers:
                flags = ["--listen", f"[::]:{PORT}" if args.ipv6 else f"0.0.0.0:{PORT}"]
                for b in bootstraps:
                    flags += ["--bootstrap", f"{BOOTSTRAP_ADDR[b]}:{PORT}"]
                env = None
                if args.peer_backend:
                    offload_off_towards(args.prefix, p)
                    flags += ["--backend", args.peer_backend]
                    env = {"ANT_QUIC_NODE_XDP_INTERFACE": "eth0"}
                listeners[p] = Node(args.prefix, p, binary, workdir, flags, env)
                nodes.append(listeners[p])
            deadline = time.monotonic() + 30
            ids = {p: n.peer_id(deadline) for p, n in listeners.items()}
            for n in listeners.values():
                wait_registered(n, len(bootstraps), deadline)
            rows = []
            for a, b in pairs:
                # Each --connect runs on a fresh port, so no NAT state of one case serves another;
                # the long-lived peers keep theirs, as deployed nodes do.
                expect_direct = natlab.expected_direct(a, b)
                # The connecting side registers with both bootstraps, so that each knows its mapping
                # (RFC 4787) from two observations; the one given first coordinates.
                got = connect(
                    args.prefix, binary, workdir, a, ids[b], bootstraps, args.bytes, args.timeout, args.wait_direct,
                    args.ipv6,
                )
                path = got.get("path", "none")
                verified = got.get("verified", not args.bytes)
                ok = got["result"] == "connected" and verified and (path == "direct" or not expect_direct)
                rows.append(
                    {
                        "pair": f"{a}-{b}",
                        "nat": f"{natlab.nat_of(a)} / {natlab.nat_of(b)}",
                        "expect": "direct" if expect_direct else "connected",
                        "result": got["result"],
                        "path": path,
                        "remote": got.get("remote"),
                        "remote_at_end": got.get("remote_at_end"),
                        "connect_ms": got.get("connect_ms"),
                        "first_path": got.get("first_path"),
                        "first_byte_ms": got.get("first_byte_ms"),
                        "direct_ms": got.get("direct_ms"),
                        "rtt_ms": got.get("rtt_ms"),
                        "bytes": got.get("bytes", 0),
                        "verified": verified,
                        "mbit_s": got.get("mbit_s"),
                        "error": got.get("error"),
                        "ok": ok,
                    }
                )
                print(
                    f"{a:>4} -> {b:<4} {rows[-1]['result']:<9} {path:<8} "
                    f"{got.get('connect_ms', '-')!s:>8} ms  {'ok' if ok else 'NOT OK ' + str(got.get('error'))}",
                    file=sys.stderr,
                )
            if args.bootstrap_backend:
                af_xdp = af_xdp_counters(args.prefix, args.via)
            if args.peer_backend:
                peers_af_xdp = {p: af_xdp_counters(args.prefix, p) for p in listeners}
        finally:
            for n in reversed(nodes):  # peers first, so that they do not see their bootstraps go
                n.stop()
            if not args.logs:
                shutil.rmtree(workdir, ignore_errors=True)
        summary = {
            "via": args.via,
            "bootstraps": len(bootstraps),
            "bytes": args.bytes,
            "pairs": len(rows),
            "direct": sum(r["path"] == "direct" for r in rows),
            "relayed": sum(r["path"] == "relayed" for r in rows),
            "failed": sum(r["result"] != "connected" for r in rows),
            "ok": all(r["ok"] for r in rows),
            "rows": rows,
        }
        if af_xdp is not None:
            summary["bootstrap_af_xdp"] = af_xdp
        if peers_af_xdp is not None:
            summary["peer_af_xdp"] = peers_af_xdp
        if args.table:
            write_table(args.table, summary)
        if args.grid:
            write_grid(args.grid, summary["rows"], f"NAT traversal matrix, coordinated by {args.via}", summary_line(summary))
        print(json.dumps(summary))
        return 0 if summary["ok"] else 1
    except natlab.LabError as err:
        print(f"traverse: error: {err}", file=sys.stderr)
        return 1


def write_table(path, summary):
    size = f"{summary['bytes'] // 1_000_000} MB" if summary["bytes"] >= 1_000_000 else f"{summary['bytes'] // 1024} KiB"
    lines = [
        f"| pair | NATs | expected | result | first path | first byte (ms) | path at the end | direct after (ms) | {size} SHA-256 | Mbit/s |",
        "| --- | --- | --- | --- | --- | ---: | --- | ---: | --- | ---: |",
    ]

    def ms(value):
        return "—" if value is None else value

    for r in summary["rows"]:
        sha = "same" if r["verified"] and r["bytes"] else ("—" if not r["bytes"] else "DIFFERENT/none")
        lines.append(
            f"| {r['pair']} | {r['nat']} | {r['expect']} | {r['result']}{'' if r['ok'] else ' **(not as expected)**'} "
            f"| {r['first_path'] or '—'} | {ms(r['first_byte_ms'])} | {r['path']} | {ms(r['direct_ms'])} | {sha} "
            f"| {ms(r['mbit_s'])} |"
        )
    lines.append("")
    lines.append(summary_line(summary))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def summary_line(summary):
    return (
        f"{summary['pairs']} pairs: {summary['direct']} direct, {summary['relayed']} relayed, "
        f"{summary['failed']} failed; coordinated by {summary['via']}"
        f"{' (the only bootstrap)' if summary['bootstraps'] == 1 else ''}."
    )


def write_grid(path, rows, title, subtitle, time_label="the first-byte time"):
    with open(path, "w", encoding="utf-8") as f:
        f.write(grid.render(rows, title, subtitle, time_label))
    print(f"traverse: drew {path}", file=sys.stderr)


def grid_from_table(args):
    """--grid-from: the grid of a table written earlier; one error line if it is not one."""
    if not args.grid:
        print("traverse: error: --grid-from needs --grid FILE.svg", file=sys.stderr)
        return 2
    try:
        with open(args.grid_from, encoding="utf-8") as f:
            rows, summary, time_label = grid.read_table(f.read(), args.heading)
    except (OSError, ValueError) as err:
        print(f"traverse: error: {args.grid_from}: {err}", file=sys.stderr)
        return 1
    title = f"NAT traversal matrix: {args.heading}" if args.heading else "NAT traversal matrix"
    write_grid(args.grid, rows, title, summary, time_label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
