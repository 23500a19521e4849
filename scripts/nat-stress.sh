#!/usr/bin/env bash
# NAT traversal stress through one bootstrap on loopback (no NAT, no root): PEERS nodes register
# with a bootstrap, then in each of ROUNDS rounds every peer is reached by its ID at once
# (`ant-quic --bootstrap B --connect PEER_ID --json --send-bytes BYTES`). Every connection must be
# made and its bytes must arrive with the same SHA-256. Prints one line per round, the bootstrap's
# `nat_traversal_success_rate` and one JSON line; exits 1 with one line on the first failure.
# All traffic stays on 127.0.0.1; every process it starts is stopped on exit.
#
# Usage: scripts/nat-stress.sh [--binary PATH] [--peers N] [--rounds R] [--bytes B] [--timeout S]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="${CARGO_TARGET_DIR:-$ROOT/target}/release/ant-quic"
peers=8
rounds=3
bytes=1000000
timeout=30

fail() { echo "nat-stress: $*" >&2; exit 1; }
usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
number() {
    if ! [[ "$2" =~ ^[0-9]+$ ]] || [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then
        fail "$1 must be a whole number from $3 to $4"
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --peers) number --peers "${2:-}" 1 64; peers="$2"; shift 2 ;;
        --rounds) number --rounds "${2:-}" 1 1000; rounds="$2"; shift 2 ;;
        --bytes) number --bytes "${2:-}" 0 1000000000; bytes="$2"; shift 2 ;;
        --timeout) number --timeout "${2:-}" 1 600; timeout="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) fail "unknown argument '$1' (see --help)" ;;
    esac
done
[ -x "$binary" ] || fail "no node binary at $binary (cargo build --release --bin ant-quic, or --binary PATH)"
command -v python3 >/dev/null 2>&1 || fail "python3 is needed to read /metrics and the JSON lines"

work="$(mktemp -d "${TMPDIR:-/tmp}/nat-stress.XXXXXX")"
started=()
cleanup() {
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# start_node NAME ARGS...: a node on 127.0.0.1 (a free port); sets node_addr, node_admin, node_id.
start_node() {
    local name="$1"; shift
    "$binary" --listen 127.0.0.1:0 --cores 1 --data-dir "$work/$name" "$@" \
        >"$work/$name.out" 2>"$work/$name.err" </dev/null &
    started+=("$!")
    local pid="$!" i
    for ((i = 0; i < 200; i++)); do
        if grep -q '^admin http on ' "$work/$name.out" 2>/dev/null; then
            node_id="$(sed -n 's/^ant-quic .* peer id \([0-9a-f]*\)$/\1/p' "$work/$name.out")"
            node_addr="$(sed -n 's/^listening on \([^ ]*\) .*/\1/p' "$work/$name.out")"
            node_admin="$(sed -n 's/^admin http on \([^ ]*\) .*/\1/p' "$work/$name.out")"
            [ -n "$node_id" ] && [ -n "$node_addr" ] && return 0
        fi
        kill -0 "$pid" 2>/dev/null || fail "$name exited at start: $(tail -n 1 "$work/$name.err")"
        sleep 0.1
    done
    fail "$name did not print its addresses within 20 s"
}

# http_get ADDR PATH: the body of an admin HTTP answer.
http_get() {
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen("http://" + sys.argv[1] + sys.argv[2], timeout=5).read().decode())' "$1" "$2"
}

start_node bootstrap
boot="$node_addr"
boot_admin="$node_admin"
ids=()
admins=()
for ((p = 0; p < peers; p++)); do
    start_node "peer$p" --bootstrap "$boot"
    ids+=("$node_id")
    admins+=("$node_admin")
done
# Every peer registered (its /health lists the bootstrap as registered).
for ((p = 0; p < peers; p++)); do
    for ((i = 0; ; i++)); do
        [ "$i" -lt 100 ] || fail "peer$p did not register with the bootstrap within 20 s"
        if http_get "${admins[$p]}" /health 2>/dev/null \
            | python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["bootstraps"][0]["registered"] else 1)' 2>/dev/null; then
            break
        fi
        sleep 0.2
    done
done
echo "nat-stress: bootstrap $boot, $peers peers registered; $rounds rounds of $peers connections by peer ID, $bytes bytes each"

total=0
ok=0
for ((r = 1; r <= rounds; r++)); do
    clients=()
    for ((p = 0; p < peers; p++)); do
        "$binary" --cores 1 --data-dir "$work/client$p" --bootstrap "$boot" --connect "${ids[$p]}" \
            --json --send-bytes "$bytes" --timeout "$timeout" \
            >"$work/round$r-$p.json" 2>"$work/round$r-$p.err" </dev/null &
        clients+=("$!")
    done
    failed=0
    for ((p = 0; p < peers; p++)); do
        if ! wait "${clients[$p]}"; then
            failed=1
            echo "nat-stress: round $r: connecting to peer$p failed: $(grep -m 1 '^error:' "$work/round$r-$p.err" || tail -n 1 "$work/round$r-$p.err")" >&2
        fi
    done
    # Each line: a path, and the receiver's SHA-256 equal to the sender's.
    summary="$(python3 - "$bytes" "$work"/round"$r"-*.json <<'PY'
import json, sys
want = int(sys.argv[1])
ms, paths, bad = [], {}, []
for name in sys.argv[2:]:
    try:
        line = json.loads(open(name).read().strip() or "{}")
    except ValueError:
        line = {}
    if line.get("bytes") != want or line.get("verified") is not True:
        bad.append(name.rsplit("/", 1)[-1])
        continue
    paths[line.get("path")] = paths.get(line.get("path"), 0) + 1
    ms.append(float(line.get("connect_ms", 0)))
ms.sort()
p50 = ms[len(ms) // 2] if ms else 0
print(f"{len(ms)} ok, paths {paths}, connect ms p50 {p50:.1f} max {ms[-1] if ms else 0:.1f}" + (f"; not verified: {bad}" if bad else ""))
sys.exit(1 if bad else 0)
PY
)" || failed=1
    total=$((total + peers))
    [ "$failed" = 0 ] && ok=$((ok + peers))
    echo "round $r/$rounds: $summary"
    [ "$failed" = 0 ] || fail "round $r: not every peer was reached with its bytes intact (see above)"
done

metrics="$(http_get "$boot_admin" /metrics)"
rate="$(printf '%s\n' "$metrics" | sed -n 's/^nat_traversal_success_rate \(.*\)$/\1/p')"
echo "bootstrap nat_traversal_success_rate $rate"
printf '{"peers":%d,"rounds":%d,"connections":%d,"connected":%d,"bootstrap_success_rate":"%s"}\n' \
    "$peers" "$rounds" "$total" "$ok" "$rate"
