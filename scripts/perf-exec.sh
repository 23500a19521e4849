#!/usr/bin/env bash
# What the bench-*.sh wrappers share: build the perf binary in release mode, say in the report
# which source it measures (commit, uncommitted changes) and which wrapper ran it, then run
#   ant-quic-perf SUBCOMMAND [ARGS]
# Usage: scripts/perf-exec.sh "WRAPPER AND ITS ARGUMENTS" SUBCOMMAND [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: scripts/perf-exec.sh VIA SUBCOMMAND [ARGS...]" >&2; exit 2; }
via="$1"
shift
# ANT_QUIC_PERF_BIN: a perf binary built already, run as it is (scripts/test.sh's smoke runs use
# the one its tests built with the `ci` profile, whose figures are not the release build's).
binary="${ANT_QUIC_PERF_BIN:-}"
source="commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$binary" ]; then
    [ -x "$binary" ] || { echo "perf-exec: ANT_QUIC_PERF_BIN=$binary is not an executable: build it, or unset it" >&2; exit 2; }
    source="$source, prebuilt binary $binary"
else
    cargo build --release -p ant-quic-perf
    binary="${CARGO_TARGET_DIR:-target}/release/ant-quic-perf"
fi
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    source="$source, with uncommitted changes in the working tree"
fi
export ANT_QUIC_PERF_SOURCE="$source"
export ANT_QUIC_PERF_VIA="$via"
exec "$binary" "$@"
