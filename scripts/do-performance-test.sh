#!/usr/bin/env bash
# Measures a running ant-quic node from outside, as the runbook lists it, and gates on thresholds:
#   - connection establishment time: full 1-RTT handshakes (`ant-quic-perf client --workload
#     handshakes`), p50 and p99;
#   - throughput in MB/s: one connection downloading --bytes (`--workload bulk`);
#   - latency p50/p90/p99: request/response at a fixed rate (`--workload rr`); ant-quic-perf
#     reports p90, not p95, so p95 is not shown;
#   - NAT traversal success rate: `nat_traversal_success_rate` from the node's /metrics.
# Prints a markdown table and one JSON line; exits 1 with one line naming the thresholds missed.
#
# Usage: scripts/do-performance-test.sh TARGET [options]
#   TARGET                     HOST:PORT, `local` (127.0.0.1:9000), `staging` (DO_STAGING_HOST:9000)
#                              or `production` (DO_HOST:9000)
#   --min-throughput-mbps N    minimum throughput in Mbit/s (default 8, i.e. 1 MB/s)
#   --max-p99-ms N             maximum request/response latency p99 in ms (default 1000)
#   --max-connect-ms N         maximum connection establishment p99 in ms (default 1000)
#   --min-nat-success N        minimum NAT traversal success rate, 0..1 (default 0.8; a node with
#                              no attempts yet (NaN) passes unless this flag is given)
#   --metrics-url URL          the node's /metrics (default: http://127.0.0.1:PORT/metrics when
#                              TARGET is on this host, through --ssh when given; else not read)
#   --ssh DEST                 user@host[:port]: read /health and /metrics on the node's host
#                              over SSH (curl there); staging/production default to
#                              DO_STAGING_USER@DO_STAGING_HOST / DO_USER@DO_HOST when the user is set
#   --peer-id ID               the node's peer ID, pinned by the client (default: from /health)
#   --perf-bin PATH            ant-quic-perf (default: on PATH, else target/release/ant-quic-perf)
#   --bytes N                  bulk download size (default 64000000)
#   --seconds S                duration of the handshake and request/response runs (default 3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

fail() { echo "do-performance-test: $*" >&2; exit 1; }
usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
positive() { [[ "$2" =~ ^[0-9]+([.][0-9]+)?$ ]] || fail "$1 must be a non-negative number, not '$2'"; }

target=""
min_mbps=8
max_p99_ms=1000
max_connect_ms=1000
min_nat=0.8
nat_explicit=0
metrics_url=""
ssh_dest=""
peer_id=""
perf_bin=""
bytes=64000000
seconds=3

while [ $# -gt 0 ]; do
    case "$1" in
        --min-throughput-mbps) positive "$1" "${2:-}"; min_mbps="$2"; shift 2 ;;
        --max-p99-ms) positive "$1" "${2:-}"; max_p99_ms="$2"; shift 2 ;;
        --max-connect-ms) positive "$1" "${2:-}"; max_connect_ms="$2"; shift 2 ;;
        --min-nat-success) positive "$1" "${2:-}"; min_nat="$2"; nat_explicit=1; shift 2 ;;
        --metrics-url) metrics_url="${2:?--metrics-url needs a URL}"; shift 2 ;;
        --ssh) ssh_dest="${2:?--ssh needs user@host[:port]}"; shift 2 ;;
        --peer-id) peer_id="${2:?--peer-id needs an ID}"; shift 2 ;;
        --perf-bin) perf_bin="${2:?--perf-bin needs a path}"; shift 2 ;;
        --bytes) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || fail "--bytes must be a whole number of bytes"; bytes="$2"; shift 2 ;;
        --seconds) positive "$1" "${2:-}"; seconds="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) fail "unknown option '$1' (see --help)" ;;
        *) [ -z "$target" ] || fail "one TARGET only ('$target', then '$1')"; target="$1"; shift ;;
    esac
done
[ -n "$target" ] || fail "TARGET missing: HOST:PORT, local, staging or production (see --help)"
awk -v n="$min_nat" 'BEGIN { exit !(n <= 1) }' || fail "--min-nat-success is a rate from 0 to 1"
command -v python3 >/dev/null 2>&1 || fail "python3 is needed to read the measurements"

case "$target" in
    local) addr="127.0.0.1:9000" ;;
    staging)
        [ -n "${DO_STAGING_HOST:-}" ] || fail "staging: DO_STAGING_HOST is not set"
        addr="$DO_STAGING_HOST:9000"
        if [ -z "$ssh_dest" ] && [ -n "${DO_STAGING_USER:-}" ]; then ssh_dest="$DO_STAGING_USER@$DO_STAGING_HOST"; fi ;;
    production)
        [ -n "${DO_HOST:-}" ] || fail "production: DO_HOST is not set"
        addr="$DO_HOST:9000"
        if [ -z "$ssh_dest" ] && [ -n "${DO_USER:-}" ]; then ssh_dest="$DO_USER@$DO_HOST"; fi ;;
    *:*) addr="$target" ;;
    *) fail "TARGET '$target' is not HOST:PORT, local, staging or production" ;;
esac
host="${addr%:*}"
port="${addr##*:}"
if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then fail "bad port in '$addr'"; fi
# The client needs an IPv4 socket address; resolve a name once, here.
ip="$(python3 -c 'import socket, sys; print(socket.getaddrinfo(sys.argv[1], None, socket.AF_INET)[0][4][0])' "$host" 2>/dev/null)" \
    || fail "cannot resolve '$host'"

# The admin port listens on the node's loopback at the UDP port's number (unless --metrics-port
# moved it): reachable from here when the node is on this host, or through SSH.
local_node=0
case "$ip" in 127.*) local_node=1 ;; esac
if [ -z "$metrics_url" ]; then
    if [ "$local_node" = 1 ] || [ -n "$ssh_dest" ]; then metrics_url="http://127.0.0.1:$port/metrics"; fi
fi

# admin_get URL: an admin page, from here or through SSH on the node's host.
admin_get() {
    if [ -n "$ssh_dest" ]; then
        local dest="$ssh_dest" ssh_port=()
        if [[ "$dest" =~ ^(.+):([0-9]+)$ ]]; then dest="${BASH_REMATCH[1]}"; ssh_port=(-p "${BASH_REMATCH[2]}"); fi
        ssh "${ssh_port[@]}" -o BatchMode=yes -o ConnectTimeout=10 -o StrictHostKeyChecking=accept-new \
            "$dest" curl -fsS -m 10 "$1"
    else
        python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"
    fi
}

if [ -z "$peer_id" ]; then
    [ -n "$metrics_url" ] || fail "no --peer-id and no admin port to read it from (pass --peer-id, --ssh or --metrics-url)"
    health="$(admin_get "${metrics_url%/metrics}/health" 2>/dev/null)" || fail "cannot read ${metrics_url%/metrics}/health${ssh_dest:+ via ssh $ssh_dest} (is the node running?)"
    peer_id="$(printf '%s' "$health" | python3 -c 'import json, sys; print(json.load(sys.stdin)["peer_id"])' 2>/dev/null)" \
        || fail "/health did not give a peer_id"
fi
[[ "$peer_id" =~ ^[0-9a-f]{64}$ ]] || fail "peer ID must be 64 hex digits, not '$peer_id'"

if [ -z "$perf_bin" ]; then
    if command -v ant-quic-perf >/dev/null 2>&1; then perf_bin="$(command -v ant-quic-perf)"
    else perf_bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/ant-quic-perf"; fi
fi
[ -x "$perf_bin" ] || fail "no ant-quic-perf at $perf_bin (cargo build --release -p ant-quic-perf, or --perf-bin PATH)"

work="$(mktemp -d "${TMPDIR:-/tmp}/do-perf.XXXXXX")"
trap 'rm -rf "$work"' EXIT
server="{\"impl\":\"ant-quic\",\"addr\":\"$ip:$port\",\"pid\":0,\"peer_id\":\"$peer_id\"}"

# measure NAME ARGS...: one ant-quic-perf client run; its JSON line in $work/NAME.json.
measure() {
    local name="$1"; shift
    if ! "$perf_bin" client --impl ant-quic --server "$server" --json --timeout 120 "$@" \
        >"$work/$name.json" 2>"$work/$name.err"; then
        fail "$name run against $addr failed: $(tail -n 1 "$work/$name.err")"
    fi
}
measure handshakes --workload handshakes --concurrency 4 --seconds "$seconds"
measure bulk --workload bulk --connections 1 --bytes "$bytes"
measure rr --workload rr --connections 4 --rate 200 --response-bytes 1024 --seconds "$seconds"

nat_rate="unavailable"
if [ -n "$metrics_url" ]; then
    metrics="$(admin_get "$metrics_url" 2>/dev/null)" || fail "cannot read $metrics_url${ssh_dest:+ via ssh $ssh_dest}"
    nat_rate="$(printf '%s\n' "$metrics" | sed -n 's/^nat_traversal_success_rate \([^ ]*\).*$/\1/p' | head -n 1)"
    [ -n "$nat_rate" ] || fail "$metrics_url has no nat_traversal_success_rate"
fi

python3 - "$work" "$addr" "$peer_id" "$min_mbps" "$max_p99_ms" "$max_connect_ms" "$min_nat" "$nat_explicit" "$nat_rate" <<'PY'
import json, math, sys
work, addr, peer, min_mbps, max_p99, max_connect, min_nat, nat_explicit, nat_rate = sys.argv[1:]
min_mbps, max_p99, max_connect, min_nat = map(float, (min_mbps, max_p99, max_connect, min_nat))
run = {name: json.load(open(f"{work}/{name}.json")) for name in ("handshakes", "bulk", "rr")}
failed = []
for name, r in run.items():
    if r["errors"] or not r["completed"] or not r.get("latency_us"):
        failed.append(f"{name}: {r['errors']} errors, {r['completed']} completed ({r.get('first_error') or 'no error text'})")
ms = lambda r, q: r["latency_us"][q] / 1000 if r.get("latency_us") else math.nan
hs, bulk, rr = run["handshakes"], run["bulk"], run["rr"]
mbytes = bulk["bytes"] / bulk["seconds"] / 1e6 if bulk["seconds"] > 0 else 0.0
mbits = mbytes * 8
connect = {"p50": ms(hs, "p50"), "p99": ms(hs, "p99")}
latency = {q: ms(rr, q) for q in ("p50", "p90", "p99")}
nat = None if nat_rate in ("unavailable", "NaN", "nan") else float(nat_rate)
nat_text = {"unavailable": "not measured (no /metrics: --metrics-url or --ssh)", "NaN": "no attempts yet (NaN)"}.get(nat_rate, f"{nat_rate}")

ok_connect = connect["p99"] <= max_connect
ok_mbps = mbits >= min_mbps
ok_p99 = latency["p99"] <= max_p99
ok_nat = (nat >= min_nat) if nat is not None else (nat_explicit != "1")
if not ok_connect: failed.append(f"connection establishment p99 {connect['p99']:.2f} ms > --max-connect-ms {max_connect:g}")
if not ok_mbps: failed.append(f"throughput {mbits:.1f} Mbit/s < --min-throughput-mbps {min_mbps:g}")
if not ok_p99: failed.append(f"latency p99 {latency['p99']:.2f} ms > --max-p99-ms {max_p99:g}")
if not ok_nat:
    failed.append(f"NAT traversal success rate {nat} < --min-nat-success {min_nat:g}" if nat is not None
                  else f"NAT traversal success rate {nat_text}: cannot check --min-nat-success {min_nat:g}")
yes = lambda ok: "yes" if ok else "**no**"
print(f"Performance of {addr} (peer {peer[:16]}…)\n")
print("| measurement | value | threshold | ok |")
print("| --- | --- | --- | --- |")
print(f"| connection establishment p50 / p99 | {connect['p50']:.2f} / {connect['p99']:.2f} ms ({hs['completed']} handshakes, {hs['per_second']:.0f}/s) | p99 ≤ {max_connect:g} ms | {yes(ok_connect)} |")
print(f"| throughput (1 connection, {bulk['bytes']} bytes) | {mbytes:.1f} MB/s ({mbits:.0f} Mbit/s) | ≥ {min_mbps:g} Mbit/s | {yes(ok_mbps)} |")
print(f"| latency p50 / p90 / p99 ({rr['completed']} requests of 1 KiB) | {latency['p50']:.2f} / {latency['p90']:.2f} / {latency['p99']:.2f} ms | p99 ≤ {max_p99:g} ms | {yes(ok_p99)} |")
print(f"| NAT traversal success rate | {nat_text} | ≥ {min_nat:g} | {yes(ok_nat) if nat is not None or not ok_nat else 'n/a'} |")
print()
finite = lambda v: None if isinstance(v, float) and math.isnan(v) else v
print(json.dumps({
    "target": addr, "peer_id": peer,
    "connect_ms": {k: finite(round(v, 3)) for k, v in connect.items()},
    "handshakes": hs["completed"],
    "throughput_mbytes_per_s": round(mbytes, 3), "throughput_mbit_per_s": round(mbits, 3),
    "latency_ms": {k: finite(round(v, 3)) for k, v in latency.items()},
    "nat_traversal_success_rate": nat,
    "thresholds": {"min_throughput_mbps": min_mbps, "max_p99_ms": max_p99, "max_connect_ms": max_connect, "min_nat_success": min_nat},
    "pass": not failed,
}, separators=(",", ":")))
if failed:
    print("do-performance-test: below threshold: " + "; ".join(failed), file=sys.stderr)
    sys.exit(1)
PY
