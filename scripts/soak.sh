#!/usr/bin/env bash
# Soak: the ant-quic binary under 10,000 idle keep-alive connections plus churn (20 connections a
# second opened, used and closed) for 30 minutes, sampled every minute: RSS, descriptors, threads,
# quic_connections_active. Fails unless descriptors and connections come back to where they
# started once the load stops. Builds both binaries in release mode, prints the markdown table,
# and draws the samples in a PNG (matplotlib, from the Python environment of scripts/python-env.sh).
#
# Usage: scripts/soak.sh [--out DIR] [ant-quic-perf soak ARGS...]
#   --out DIR   where soak.json and soak.png go (default target/soak)
#   e.g. --minutes 2 --idle 1000 --sample-seconds 10 for a short run.
# Every connection is to 127.0.0.1; the run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/soak
if [ "${1:-}" = "--out" ]; then
    out="${2:?--out needs a directory}"
    shift 2
fi
mkdir -p "$out"
cargo build --release -p ant-quic
python="$(bash scripts/python-env.sh | tail -n 1)"
"$python" -c 'import matplotlib' 2>/dev/null || "$python" -m pip install -q --disable-pip-version-check matplotlib >&2
status=0
bash scripts/perf-exec.sh "scripts/soak.sh $*" soak --json-file "$out/soak.json" "$@" || status=$?
if [ -s "$out/soak.json" ]; then
    "$python" scripts/soak-plot.py "$out/soak.json" "$out/soak.png"
fi
exit "$status"
