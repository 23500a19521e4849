#!/usr/bin/env bash
# Handshake flood on loopback: each server (ant-quic, then quinn 0.11) under the same flood of
# valid QUIC Initials from fresh connections, never answered (default: 20,000 at 3,000/s from 256
# source ports), while quinn's client makes legitimate handshakes one at a time. Measures the
# server's RSS growth, the legitimate handshakes' success rate and p99 against the same client
# unloaded, and what the answers to the flood amplify it by. Builds the perf binary in release
# mode and runs
#   ant-quic-perf flood-compare [ARGS]
# Extra arguments go to flood-compare, e.g. --initials 5000, --cores 2, --impls ant-quic, --json.
# Every packet goes to 127.0.0.1; the flood is bounded in count and stops by itself.
set -euo pipefail
exec bash "$(dirname "$0")/perf-exec.sh" "scripts/bench-flood.sh $*" flood-compare "$@"
