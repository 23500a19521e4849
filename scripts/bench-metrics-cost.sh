#!/usr/bin/env bash
# The cost of metrics recording: single-connection bulk throughput over loopback with the per-core
# latency histograms on (default build) and compiled out (--no-default-features), alternating
# A B A B in one run, median of PAIRS pairs (default 5), 1 GiB per transfer, download.
# Then, where valgrind exists, the instruction counts of a 16 MiB transfer (portable backend)
# under callgrind, 3 runs of each build: they do not depend on what else the machine is doing.
# Usage: scripts/bench-metrics-cost.sh [PAIRS] [BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs="${1:-5}"
bytes="${2:-1073741824}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p ant-quic-perf >&2
CARGO_TARGET_DIR="$target/no-metrics" cargo build --release -p ant-quic-perf --no-default-features >&2
on="$(mktemp -d)/ant-quic-perf-metrics"; off="$(dirname "$on")/ant-quic-perf-no-metrics"
cp "$target/release/ant-quic-perf" "$on"; cp "$target/no-metrics/release/ant-quic-perf" "$off"
gbps() { timeout 120 "$1" ant-quic-bulk --bytes "$bytes" | sed -n 's/.*"gbps":\([0-9.]*\).*/\1/p'; }
with=(); without=()
for i in $(seq "$pairs"); do
    with+=("$(gbps "$on")"); without+=("$(gbps "$off")")
    echo "pair $i: metrics on ${with[-1]} Gbit/s, compiled out ${without[-1]} Gbit/s" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
range() { printf '%s\n' "$@" | sort -g | awk 'NR==1{lo=$1} {hi=$1} END {print lo "–" hi}'; }
m_on=$(median "${with[@]}"); m_off=$(median "${without[@]}")
echo "- Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, Linux $(uname -r)"
echo "- Command: \`scripts/bench-metrics-cost.sh $pairs $bytes\` (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
echo
echo "| build | median Gbit/s | min–max | on / off |"
echo "| --- | --- | --- | --- |"
echo "| metrics on (default) | $m_on | $(range "${with[@]}") | **$(awk -v a="$m_on" -v b="$m_off" 'BEGIN{printf "%.3f", a/b}')** |"
echo "| metrics compiled out | $m_off | $(range "${without[@]}") | 1 (baseline) |"
if command -v valgrind >/dev/null 2>&1; then
    count() {
        valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" ant-quic-bulk --bytes 16777216 --backend portable 2>&1 \
            | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
    }
    i_on=(); i_off=()
    for i in 1 2 3; do i_on+=("$(count "$on")"); i_off+=("$(count "$off")"); done
    c_on=$(median "${i_on[@]}"); c_off=$(median "${i_off[@]}")
    echo
    echo "| build | instructions, 16 MiB transfer (median of 3; all runs) | on / off |"
    echo "| --- | --- | --- |"
    echo "| metrics on (default) | $c_on (${i_on[*]}) | **$(awk -v a="$c_on" -v b="$c_off" 'BEGIN{printf "%.4f", a/b}')** |"
    echo "| metrics compiled out | $c_off (${i_off[*]}) | 1 (baseline) |"
fi
rm -f "$on" "$off"
