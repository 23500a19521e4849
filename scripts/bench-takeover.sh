#!/usr/bin/env bash
# Zero-downtime takeover, measured (issue 11): a node on 127.0.0.1 (--cores 2) serving a live bulk
# download and a client that opens a new connection every 5 ms (one echo each), while the node is
# taken over (`ant-quic --takeover` with the same flags), left alone (the noise floor), or
# restarted (SIGTERM, then started again: what an upgrade meant before). The modes alternate,
# REPS runs of each (default 5, at most 20; about 10 s a run).
#
# Prints a markdown table (machine, command, median [min–max] of each figure):
#   - time from `--takeover` to the new process's `listening on`, and to the first connection
#     started after that and served;
#   - connections started from 1 s before the switch to 2 s after it that failed or took over 3 s
#     (target 0), and the longest gap between two completed connections (target <= 50 ms);
#   - bulk throughput in the second around the switch over its rate in the 2 s before it.
#
# The measurement is `bench_takeover` in tests/takeover.rs (ignored by `cargo test`), so that it
# shares the tests' way of starting and taking over nodes. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

reps="${1:-5}"
case "$reps" in
    '' | *[!0-9]*) echo "usage: $0 [REPS]" >&2; exit 2 ;;
esac
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

# Bounded: each run has its own deadlines; the whole is cut off at 10 minutes plus a minute a run.
ANT_QUIC_BENCH_REPS="$reps" ANT_QUIC_BENCH_OUT="$out" \
    timeout "$((600 + 3 * 60 * reps))" \
    cargo test --release --test takeover -- --ignored --exact bench_takeover --nocapture >&2
cat "$out"
