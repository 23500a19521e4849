#!/usr/bin/env bash
# The admin listener under abuse, and what it costs the data plane: one `ant-quic --cores 1 --www`
# node; a bulk download from it with `ant-quic get` alone (baseline) and while
# scripts/admin-abuse.py hits its admin port (10,000 idle connections, slow clients, oversized
# requests, 1,000 /metrics a second, /health probes), the two alternating, PAIRS pairs.
# Prints a markdown table on stdout, progress on stderr.
#
#   scripts/bench-admin-abuse.sh [PAIRS] [MIB]      defaults: 3 pairs, a 1024 MiB file
#
# ANT_QUIC_BIN=PATH runs that node binary instead of this tree's (an older build, for a
# before/after). Builds release binaries first (a no-op when they are current).
set -euo pipefail
cd "$(dirname "$0")/.."
pairs="${1:-3}"
mib="${2:-1024}"
[[ "$pairs" =~ ^[1-9][0-9]*$ && "$mib" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [PAIRS] [MIB]" >&2; exit 2; }
cargo build --release -p ant-quic >&2
bin="${CARGO_TARGET_DIR:-target}/release"
node_bin="${ANT_QUIC_BIN:-$bin/ant-quic}"
abuse_seconds=20

# The file and the download live in memory, so that the disk is not what is measured.
work="$(mktemp -d -p /dev/shm)"
node_pid=""
cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/www" "$work/out"
head -c "$((mib * 1048576))" /dev/urandom >"$work/www/bulk.bin"

"$node_bin" --listen 127.0.0.1:0 --cores 1 --data-dir "$work/node" --www "$work/www" \
    >"$work/node.out" 2>"$work/node.err" &
node_pid=$!
addr="" admin=""
for _ in $(seq 100); do
    addr="$(sed -n 's/^listening on \([0-9.:]*\).*/\1/p' "$work/node.out")"
    admin="$(sed -n 's/^admin http on \([0-9.:]*\).*/\1/p' "$work/node.out")"
    [ -n "$addr" ] && [ -n "$admin" ] && break
    sleep 0.1
done
[ -n "$admin" ] || { echo "the node did not start:" >&2; cat "$work/node.err" >&2; exit 1; }

# CPU seconds (user + system) the node's data-plane thread (ant-quic-core-0) has used so far.
# On a shared 2-core machine the wall-clock rate moves with whatever else runs; the core thread's
# CPU per GiB is the data plane's own cost, which is what the abuse must not raise.
core_cpu() {
    local task
    for task in /proc/"$node_pid"/task/*; do
        if [ "$(cat "$task/comm" 2>/dev/null)" = ant-quic-core-0 ]; then
            # fields 14 and 15 of stat (utime, stime) in clock ticks; comm has no spaces here
            awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "$task/stat"
            return
        fi
    done
    echo "no ant-quic-core-0 thread in the node" >&2
    return 1
}

# MB/s of one download (10^6 bytes), process start to exit; appends the core thread's CPU
# seconds per GiB to the file named by $1.
download() {
    rm -f "$work/out/bulk.bin"
    local start end cpu_start cpu_end
    cpu_start="$(core_cpu)"
    start="$EPOCHREALTIME"
    "$bin/ant-quic" get "https://$addr/bulk.bin" --insecure --output "$work/out" >"$work/get.out" 2>"$work/get.err" \
        || { cat "$work/get.err" >&2; return 1; }
    end="$EPOCHREALTIME"
    cpu_end="$(core_cpu)"
    [ "$(stat -c %s "$work/out/bulk.bin")" -eq "$((mib * 1048576))" ] || { echo "short download" >&2; return 1; }
    awk -v a="$cpu_start" -v b="$cpu_end" -v m="$mib" 'BEGIN { printf "%.3f\n", (b - a) / (m / 1024) }' >>"$1"
    awk -v s="$start" -v e="$end" -v b="$((mib * 1048576))" 'BEGIN { printf "%.1f\n", b / (e - s) / 1e6 }'
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
download "$work/warmup.cpu" >/dev/null
: >"$work/base"
: >"$work/abused"
: >"$work/base.cpu"
: >"$work/abused.cpu"
for i in $(seq "$pairs"); do
    download "$work/base.cpu" >>"$work/base"
    python3 scripts/admin-abuse.py --admin "$admin" --pid "$node_pid" --seconds "$abuse_seconds" \
        >"$work/abuse.$i.json" &
    abuse_pid=$!
    sleep 4 # the first wave of idle connections is open
    download "$work/abused.cpu" >>"$work/abused"
    wait "$abuse_pid"
    echo "pair $i/$pairs: alone $(tail -1 "$work/base") MB/s $(tail -1 "$work/base.cpu") CPU s/GiB, under abuse $(tail -1 "$work/abused") MB/s $(tail -1 "$work/abused.cpu") CPU s/GiB" >&2
    echo "  $(cat "$work/abuse.$i.json")" >&2
done

median() { sort -g "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g "$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }'; }
m_base="$(median "$work/base")"
m_abused="$(median "$work/abused")"
c_base="$(median "$work/base.cpu")"
c_abused="$(median "$work/abused.cpu")"
field() { python3 -c "import json,sys; r=[json.load(open(f)) for f in sys.argv[2:]]; print(eval(sys.argv[1]))" "$1" "$work"/abuse.*.json; }

cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "- Machine: $(nproc) cores, $cpu, Linux $(uname -r); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "- Command: \`${ANT_QUIC_BIN:+ANT_QUIC_BIN=$ANT_QUIC_BIN }scripts/bench-admin-abuse.sh $pairs $mib\`; load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| download of $mib MiB from \`ant-quic --cores 1 --www\` | median MB/s | min–max | ratio | data-plane thread CPU s/GiB, median | min–max | ratio |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
echo "| alone (baseline) | $m_base | $(range "$work/base") | 1 | $c_base | $(range "$work/base.cpu") | 1 |"
echo "| admin listener under abuse | $m_abused | $(range "$work/abused") | $(awk -v a="$m_abused" -v b="$m_base" 'BEGIN { printf "%.3f", a / b }') | $c_abused | $(range "$work/abused.cpu") | **$(awk -v a="$c_abused" -v b="$c_base" 'BEGIN { printf "%.3f", a / b }')** |"
echo
echo "| per abuse run | /health ok / probes | p50 ms | p99 ms | max ms | node RSS before → max (KiB) | threads before → max | control thread CPU s | /metrics answered (200) | idle connections opened / closed by the node | oversized: request line, header |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
field '"\n".join(
    "| %d | %d / %d | %s | %s | %s | %d → %d | %d → %d | %s | %s | %d / %d | %s, %s |" % (
        i + 1, x["health_probes"] - sum(x["health_failures"].values()), x["health_probes"],
        x["health_ms"]["p50"], x["health_ms"]["p99"], x["health_ms"]["max"],
        x["node_rss_kib"]["before"], x["node_rss_kib"]["max"], x["node_threads"]["before"], x["node_threads"]["max"],
        x["control_thread_cpu_s"], x["metrics"]["answers"].get("200", 0),
        x["idle_and_slow"]["idle_opened"], x["idle_and_slow"]["idle_closed_by_node"],
        " ".join(f"{k} × {v}" for k, v in x["oversized"]["request_line"].items()),
        " ".join(f"{k} × {v}" for k, v in x["oversized"]["header"].items()))
    for i, x in enumerate(r))'
