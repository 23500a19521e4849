#!/usr/bin/env bash
# The async API (ant_quic::endpoint) against the callback API and quinn 0.11, in one run. Builds the
# perf binary in release mode and runs
#   ant-quic-perf async-compare [ARGS]
# (defaults: 21 alternating rounds of bulk (async, callback, quinn) per direction, 1 GiB each,
# then 21 pairs of request/response latency (async, quinn), 20 000 requests each; tokio
# multi-thread runtime with 1 worker; each run a fresh process killed after 120 s; about 6
# minutes on 2 cores). Each ratio is the median over the rounds of that round's ratio. Prints the
# markdown table on stdout, progress on stderr.
# --quick: a smoke test of the runners (1 round, 16 MiB, 500 requests, failing if any run fails),
# not a measurement.
# Other arguments go to `async-compare`, e.g. --pairs 7, --workers 2, --json.
set -euo pipefail
args=()
for arg in "$@"; do
    if [ "$arg" = --quick ]; then
        args+=(--pairs 1 --bytes 16777216 --requests 500 --timeout 60 --strict)
    else
        args+=("$arg")
    fi
done
exec bash "$(dirname "$0")/perf-exec.sh" "scripts/bench-async.sh $*" async-compare "${args[@]}"
