#!/usr/bin/env bash
# Relay forwarding over loopback: a relay node (one data-plane core) between two plain UDP
# sockets, against the raw UDP ceiling (sender straight to receiver) and a minimal GRO-in/GSO-out
# forwarder, all at the same datagram size and alternated in every round. Builds the perf binary
# in release mode and runs
#   ant-quic-perf relay-rate [ARGS]
# (defaults: 5 rounds, 3 s of sending per run, 1200- and 1452-byte datagrams, the relay on both
# backends). Prints the markdown table on stdout, progress on stderr.
# Extra arguments go to `relay-rate`, e.g. --runs 7, --sizes 1200, --backends io-uring,
# --offered-mpps 0.5 (pace the sender instead of overloading), --pin (relay core or forwarder on
# one CPU, sender and receiver on the other), --json.
set -euo pipefail
exec bash "$(dirname "$0")/perf-exec.sh" "scripts/bench-relay.sh $*" relay-rate "$@"
