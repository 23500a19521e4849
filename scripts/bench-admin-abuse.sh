#!/usr/bin/env bash
# The admin listener under abuse, and what it costs the data plane: one `ant-quic --cores 1 --www`
# node; a bulk download from it with `ant-quic get` alone (baseline) and while
# scripts/admin-abuse.py hits its admin port (10,000 idle connections, slow clients, oversized
# requests, 1,000 /metrics a second, /health probes), and while the same abuse hits a second,
# idle node instead; the three alternating, PAIRS rounds.
# Prints a markdown table on stdout, progress on stderr.
#
# On two or more CPUs the data plane gets a CPU of its own, as on a production host: the node's
# data-plane thread and the download client share CPU 0 in every phase, and the node's other
# threads (control, admin listener) and the abuser run on CPU 1. All phases then put the same
# work on the data plane's CPU, and what the abuse changes there is its interference (metrics
# reads of the core's counters, caches, memory), which is what the 2 % target is about.
#
#   scripts/bench-admin-abuse.sh [PAIRS] [MIB]      defaults: 3 rounds, a 1024 MiB file
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
node_pid="" decoy_pid=""
cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
    [ -n "$decoy_pid" ] && kill "$decoy_pid" 2>/dev/null && wait "$decoy_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/www" "$work/out"
head -c "$((mib * 1048576))" /dev/urandom >"$work/www/bulk.bin"

"$node_bin" --listen 127.0.0.1:0 --cores 1 --data-dir "$work/node" --www "$work/www" \
    >"$work/node.out" 2>"$work/node.err" &
node_pid=$!
# The address a node printed after PREFIX on its stdout OUT, waiting up to 10 s; empty if none.
printed_address() { # OUT PREFIX
    local found="" _
    for _ in $(seq 100); do
        found="$(sed -n "s/^$2 \([0-9.:]*\).*/\1/p" "$1")"
        [ -n "$found" ] && break
        sleep 0.1
    done
    echo "$found"
}
addr="$(printed_address "$work/node.out" "listening on")"
admin="$(printed_address "$work/node.out" "admin http on")"
[ -n "$admin" ] || { echo "the node did not start:" >&2; cat "$work/node.err" >&2; exit 1; }

# The data-plane thread pins itself to the first CPU the process may use (CPU 0); every other
# thread of the node moves to CPU 1.
client_cpu="" abuse_cpu=""
if [ "$(nproc)" -ge 2 ]; then
    client_cpu="taskset -c 0" abuse_cpu="taskset -c 1"
    for task in /proc/"$node_pid"/task/*; do
        [ "$(cat "$task/comm" 2>/dev/null)" = ant-quic-core-0 ] && continue
        taskset -p -c 1 "${task##*/}" >/dev/null
    done
    for task in /proc/"$node_pid"/task/*; do
        echo "node thread $(cat "$task/comm"): $(taskset -p "${task##*/}" | sed 's/.*: //')" >&2
    done
fi

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
    $client_cpu "$bin/ant-quic" get "https://$addr/bulk.bin" --insecure --output "$work/out" >"$work/get.out" 2>"$work/get.err" \
        || { cat "$work/get.err" >&2; return 1; }
    end="$EPOCHREALTIME"
    cpu_end="$(core_cpu)"
    [ "$(stat -c %s "$work/out/bulk.bin")" -eq "$((mib * 1048576))" ] || { echo "short download" >&2; return 1; }
    awk -v a="$cpu_start" -v b="$cpu_end" -v m="$mib" 'BEGIN { printf "%.3f\n", (b - a) / (m / 1024) }' >>"$1"
    awk -v s="$start" -v e="$end" -v b="$((mib * 1048576))" 'BEGIN { printf "%.1f\n", b / (e - s) / 1e6 }'
}

# A third phase aims the same abuse at a second node that carries no traffic (all its threads on
# CPU 1): the same work next to the data plane's CPU, none of it through the measured node. Under
# abuse ÷ decoy abuse is then the part of the cost that passes through the node itself.
"$node_bin" --listen 127.0.0.1:0 --cores 1 --data-dir "$work/decoy-node" \
    >"$work/decoy.out" 2>"$work/decoy.err" &
decoy_pid=$!
decoy_admin="$(printed_address "$work/decoy.out" "admin http on")"
[ -n "$decoy_admin" ] || { echo "the decoy node did not start:" >&2; cat "$work/decoy.err" >&2; exit 1; }
if [ -n "$abuse_cpu" ]; then
    for task in /proc/"$decoy_pid"/task/*; do taskset -p -c 1 "${task##*/}" >/dev/null; done
fi

# One download while admin-abuse.py hits ADMIN of PID; the abuser's JSON report goes to REPORT.
abused_download() { # CPU_FILE ADMIN PID REPORT
    $abuse_cpu python3 scripts/admin-abuse.py --admin "$2" --pid "$3" --seconds "$abuse_seconds" >"$4" &
    local abuse_pid=$!
    sleep 4 # the first wave of idle connections is open
    download "$1"
    wait "$abuse_pid"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f\n", a / b }'; }

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
download "$work/warmup.cpu" >/dev/null
for f in base abused decoy; do : >"$work/$f"; : >"$work/$f.cpu"; done
for f in rate cpu; do : >"$work/pair.$f"; : >"$work/own.$f"; done
for i in $(seq "$pairs"); do
    download "$work/base.cpu" >>"$work/base"
    abused_download "$work/abused.cpu" "$admin" "$node_pid" "$work/abuse.$i.json" >>"$work/abused"
    abused_download "$work/decoy.cpu" "$decoy_admin" "$decoy_pid" "$work/decoy.$i.json" >>"$work/decoy"
    ratio "$(tail -1 "$work/abused")" "$(tail -1 "$work/base")" >>"$work/pair.rate"
    ratio "$(tail -1 "$work/abused.cpu")" "$(tail -1 "$work/base.cpu")" >>"$work/pair.cpu"
    ratio "$(tail -1 "$work/abused")" "$(tail -1 "$work/decoy")" >>"$work/own.rate"
    ratio "$(tail -1 "$work/abused.cpu")" "$(tail -1 "$work/decoy.cpu")" >>"$work/own.cpu"
    echo "round $i/$pairs: alone $(tail -1 "$work/base") MB/s $(tail -1 "$work/base.cpu") CPU s/GiB, under abuse $(tail -1 "$work/abused") MB/s $(tail -1 "$work/abused.cpu") CPU s/GiB, decoy abused $(tail -1 "$work/decoy") MB/s $(tail -1 "$work/decoy.cpu") CPU s/GiB" >&2
    echo "  $(cat "$work/abuse.$i.json")" >&2
done
kill "$decoy_pid" 2>/dev/null && wait "$decoy_pid" 2>/dev/null
decoy_pid=""

median() { sort -g "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g "$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }'; }
m_base="$(median "$work/base")"
m_abused="$(median "$work/abused")"
c_base="$(median "$work/base.cpu")"
c_abused="$(median "$work/abused.cpu")"
m_decoy="$(median "$work/decoy")"
c_decoy="$(median "$work/decoy.cpu")"
field() { python3 -c "import json,sys; r=[json.load(open(f)) for f in sys.argv[2:]]; print(eval(sys.argv[1]))" "$1" "$work"/abuse.*.json; }

cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "- Machine: $(nproc) cores, $cpu, Linux $(uname -r); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$client_cpu" ]; then
    echo "- Placement: the data-plane thread and the download client on CPU 0; the node's other threads and the abuser on CPU 1"
else
    echo "- Placement: none (one CPU)"
fi
echo "- Command: \`${ANT_QUIC_BIN:+ANT_QUIC_BIN=$ANT_QUIC_BIN }scripts/bench-admin-abuse.sh $pairs $mib\`; load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| download of $mib MiB from \`ant-quic --cores 1 --www\` | median MB/s | min–max | ratio | data-plane thread CPU s/GiB, median | min–max | ratio |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
echo "| alone (baseline) | $m_base | $(range "$work/base") | 1 | $c_base | $(range "$work/base.cpu") | 1 |"
echo "| same abuse at another node (the data plane's neighbour busy) | $m_decoy | $(range "$work/decoy") | $(ratio "$m_decoy" "$m_base") | $c_decoy | $(range "$work/decoy.cpu") | $(ratio "$c_decoy" "$c_base") |"
echo "| admin listener under abuse | $m_abused | $(range "$work/abused") | $(awk -v a="$m_abused" -v b="$m_base" 'BEGIN { printf "%.3f", a / b }') | $c_abused | $(range "$work/abused.cpu") | **$(awk -v a="$c_abused" -v b="$c_base" 'BEGIN { printf "%.3f", a / b }')** |"
echo
echo "Per round, under abuse ÷ alone: MB/s median $(median "$work/pair.rate") ($(range "$work/pair.rate")), data-plane thread CPU s/GiB median $(median "$work/pair.cpu") ($(range "$work/pair.cpu")). Under abuse ÷ the same abuse at another node (the node's own share): MB/s median **$(median "$work/own.rate")** ($(range "$work/own.rate")), CPU s/GiB median **$(median "$work/own.cpu")** ($(range "$work/own.cpu"))."
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
