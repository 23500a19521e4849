#!/usr/bin/env bash
# Single-connection bulk throughput over loopback: ant-quic against quinn 0.11, with the raw UDP
# ceiling, all in one run. Builds the perf binary in release mode and runs
#   ant-quic-perf compare [ARGS]
# (defaults: 5 alternating pairs per direction, 1 GiB per transfer, download and upload; each
# run a fresh process killed after 120 s). Prints the markdown table on stdout, progress on stderr.
# Extra arguments go to `compare`, e.g. --pairs 7, --directions download, --backend portable, --json.
set -euo pipefail
exec bash "$(dirname "$0")/perf-exec.sh" "scripts/bench-bulk.sh $*" compare "$@"
