#!/usr/bin/env bash
# AF_XDP on a veth pair between two network namespaces that the benchmarks make and remove
# (needs root, ip, ethtool, taskset). Builds the perf binary in release mode and runs
#   ant-quic-perf xdp-bulk          a node on io-uring against the same node on af-xdp: one
#                                   200 MB download and 64 connections at once (4 MB each),
#                                   5 alternating pairs, with the node's CPU seconds per GiB;
#   ant-quic-perf relay-rate --veth relay forwarding rate: the relay node on io-uring and on
#                                   af-xdp (user space, and channel forwarded in XDP) and a minimal XDP_TX forwarder
#                                   (the ceiling), 5 rounds of 3 s at 1200 and 1452 bytes, with
#                                   CPU per forwarded frame.
# Prints the markdown tables on stdout, progress on stderr.
# Usage: scripts/bench-xdp.sh [--quick] [bulk|relay]
#   --quick: 1 pair / 1 round, 50 MB, 16 connections of 1 MB, 1 s, 1200 bytes (to check that it
#            runs; not for figures). bulk or relay: only that part (default: both).
set -euo pipefail
quick=0
parts="bulk relay"
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        bulk | relay) parts="$arg" ;;
        *) echo "usage: scripts/bench-xdp.sh [--quick] [bulk|relay]" >&2; exit 2 ;;
    esac
done
here="$(dirname "$0")"
for part in $parts; do
    if [ "$part" = bulk ]; then
        args=(xdp-bulk)
        [ "$quick" = 1 ] && args+=(--pairs 1 --bytes 50000000 --connections 16 --bytes-per-connection 1000000)
    else
        args=(relay-rate --veth)
        [ "$quick" = 1 ] && args+=(--runs 1 --seconds 1 --sizes 1200)
    fi
    bash "$here/perf-exec.sh" "scripts/bench-xdp.sh $*" "${args[@]}"
    echo
done
