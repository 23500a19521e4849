#!/usr/bin/env bash
# Single-connection bulk throughput over loopback: ant-quic against quinn 0.11, with the raw UDP
# ceiling, all in one run. Builds the perf binary in release mode and runs
#   ant-quic-perf compare [ARGS]
# (defaults: 5 alternating pairs per direction, 1 GiB per transfer, download and upload; each
# run a fresh process killed after 120 s). Prints the markdown table on stdout, progress on stderr.
# Extra arguments go to `compare`, e.g. --pairs 7, --directions download, --backend portable, --json.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ant-quic-perf
source="commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    source="$source, with uncommitted changes in the working tree"
fi
export ANT_QUIC_PERF_SOURCE="$source"
export ANT_QUIC_PERF_VIA="scripts/bench-bulk.sh $*"
exec "${CARGO_TARGET_DIR:-target}/release/ant-quic-perf" compare "$@"
