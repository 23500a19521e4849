#!/usr/bin/env bash
# Profile a bulk transfer over loopback and render a flame graph.
#
#   scripts/profile.sh                       # ant-quic download, 2 GiB, frame-pointer call graphs
#   scripts/profile.sh --upload              # the client sends
#   scripts/profile.sh --impl quinn          # the quinn 0.11 baseline, same transfer
#   scripts/profile.sh --dwarf               # DWARF unwinding (also through std, larger perf.data)
#   scripts/profile.sh --bytes 536870912 --out target/profile/small
#
# Builds ant-quic-perf with the `profiling` profile (release code, full debug info) and frame
# pointers, records it with `perf record -e cpu-clock` (a software event: no hardware counters
# needed), and writes perf.data, the folded stacks and flamegraph.svg (inferno) into --out.
# Installs what it needs when missing: perf (apt, as root) and inferno (cargo, under target/tools).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

impl=ant-quic bytes=$((2 << 30)) upload="" callgraph=fp out=target/profile freq=999
while [ $# -gt 0 ]; do
    case "$1" in
        --impl) impl="$2"; shift 2 ;;
        --bytes) bytes="$2"; shift 2 ;;
        --upload) upload=--upload; shift ;;
        --dwarf) callgraph=dwarf; shift ;;
        --out) out="$2"; shift 2 ;;
        --freq) freq="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$impl" in
    ant-quic) sub=ant-quic-bulk ;;
    quinn) sub=quinn-bulk ;;
    *) echo "error: --impl must be ant-quic or quinn" >&2; exit 2 ;;
esac

if ! command -v perf >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
    fi
    command -v perf >/dev/null 2>&1 || { echo "error: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
fi
tools="$PWD/target/tools"
if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
    echo "==> installing inferno 0.12.8 into $tools" >&2
    cargo install --quiet --locked --version 0.12.8 --root "$tools" inferno >&2
fi

echo "==> building ant-quic-perf (profile: profiling, frame pointers)" >&2
# A target directory of its own: other RUSTFLAGS would otherwise rebuild the release tree.
export CARGO_TARGET_DIR="$PWD/target/profiling-fp"
RUSTFLAGS="-C force-frame-pointers=yes" cargo build --quiet --profile profiling -p ant-quic-perf
bin="$CARGO_TARGET_DIR/profiling/ant-quic-perf"

mkdir -p "$out"
case "$callgraph" in
    fp) cg=(--call-graph fp) ;;
    dwarf) cg=(--call-graph dwarf,16384) ;;
esac
echo "==> perf record -e cpu-clock -F $freq ${cg[*]} -- $sub --bytes $bytes $upload" >&2
perf record -q -e cpu-clock -F "$freq" "${cg[@]}" -o "$out/perf.data" -- \
    "$bin" "$sub" --bytes "$bytes" $upload >"$out/result.json"
cat "$out/result.json" >&2
perf script -i "$out/perf.data" 2>/dev/null | "$tools/bin/inferno-collapse-perf" >"$out/stacks.folded"
"$tools/bin/inferno-flamegraph" --title "$impl $sub $upload ($bytes bytes)" <"$out/stacks.folded" >"$out/flamegraph.svg"
echo "==> $out/flamegraph.svg ($(wc -l <"$out/stacks.folded") distinct stacks); perf report -i $out/perf.data" >&2
