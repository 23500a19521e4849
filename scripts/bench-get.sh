#!/usr/bin/env bash
# Wall time of one small download over loopback, process start to exit: `ant-quic get` against
# the same download with quinn 0.11 (`ant-quic-perf quinn-get`: quinn's example client, which
# closes and waits for its endpoint to be idle), both against one `ant-quic --www` node, the two
# commands alternating (A B A B ...). Prints a markdown table on stdout, progress on stderr.
#
#   scripts/bench-get.sh [PAIRS] [BYTES]      defaults: 20 pairs, a 2048-byte file
#
# ANT_QUIC_GET_BIN=PATH measures `PATH get` instead of this tree's `ant-quic get` (an older build,
# for a before/after); the node serving the file is always this tree's.
#
# Builds release binaries first (a no-op when they are current). Every run must print the file's
# SHA-256; the node's close counters say whether every client's CONNECTION_CLOSE reached it.
set -euo pipefail
cd "$(dirname "$0")/.."
pairs="${1:-20}"
bytes="${2:-2048}"
[[ "$pairs" =~ ^[1-9][0-9]*$ && "$bytes" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [PAIRS] [BYTES]" >&2; exit 2; }
cargo build --release -p ant-quic -p ant-quic-perf >&2
bin="${CARGO_TARGET_DIR:-target}/release"

work="$(mktemp -d)"
node_pid=""
cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/www" "$work/out"
head -c "$bytes" /dev/urandom >"$work/www/file.bin"
sha="$(sha256sum "$work/www/file.bin" | cut -d' ' -f1)"

"$bin/ant-quic" --listen 127.0.0.1:0 --cores 1 --data-dir "$work/node" --www "$work/www" \
    >"$work/node.out" 2>"$work/node.err" &
node_pid=$!
addr=""
for _ in $(seq 100); do
    addr="$(sed -n 's/^listening on \([0-9.:]*\).*/\1/p' "$work/node.out")"
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "the node did not start:" >&2; cat "$work/node.err" >&2; exit 1; }
url="https://$addr/file.bin"
metrics() { curl -s "http://$addr/metrics" | sed -n "s/^quic_connection_closes_total{reason=\"$1\"} //p"; }

ant=("${ANT_QUIC_GET_BIN:-$bin/ant-quic}" get "$url" --insecure --output "$work/out")
quinn=("$bin/ant-quic-perf" quinn-get "$url" --insecure --output "$work/out")

# Seconds one command takes, start to exit; fails unless it printed the file's hash.
run() {
    rm -f "$work/out/file.bin"
    local start end
    start="$EPOCHREALTIME"
    "$@" >"$work/run.out" 2>"$work/run.err" || { cat "$work/run.err" >&2; return 1; }
    end="$EPOCHREALTIME"
    grep -q "$sha" "$work/run.out" || { echo "no hash in: $(cat "$work/run.out")" >&2; return 1; }
    echo "$start $end" | awk '{ printf "%.4f\n", $2 - $1 }'
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
run "${ant[@]}" >/dev/null && run "${quinn[@]}" >/dev/null # warm-up: page cache, the node's first handshake
clean_before="$(metrics peer_application)"
: >"$work/ant.times"
: >"$work/quinn.times"
for i in $(seq "$pairs"); do
    run "${ant[@]}" >>"$work/ant.times"
    run "${quinn[@]}" >>"$work/quinn.times"
    echo "pair $i/$pairs: ant-quic $(tail -1 "$work/ant.times") s, quinn $(tail -1 "$work/quinn.times") s" >&2
done
sleep 0.5 # the last close is counted once it arrives
clean=$(($(metrics peer_application) - clean_before))

# Median and nearest-rank p90 of a file of numbers.
stat() { sort -n "$1" | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
    p = int(NR * 0.9); if (p < NR * 0.9) p++; printf "%.3f %.3f\n", m, v[p] }'; }
read -r ant_median ant_p90 < <(stat "$work/ant.times")
read -r quinn_median quinn_p90 < <(stat "$work/quinn.times")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "Machine: $(nproc) cores, $cpu, kernel $(uname -r); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
echo "A $bytes-byte file over loopback from \`ant-quic --cores 1 --www\`, $pairs alternating pairs, wall time from process start to exit (\`${ANT_QUIC_GET_BIN:+ANT_QUIC_GET_BIN=$ANT_QUIC_GET_BIN }scripts/bench-get.sh $pairs $bytes\`); load average before: $load_before."
echo
echo "| command | median | p90 | baseline (quinn-get) median | p90 | ratio median | ratio p90 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
echo "| \`${ANT_QUIC_GET_BIN:-ant-quic} get URL --insecure --output DIR\` | $ant_median s | $ant_p90 s | $quinn_median s | $quinn_p90 s | $(ratio "$ant_median" "$quinn_median") | $(ratio "$ant_p90" "$quinn_p90") |"
echo
echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Connections the node saw end with the client's application close (CONNECTION_CLOSE received): $clean of $((2 * pairs))."
