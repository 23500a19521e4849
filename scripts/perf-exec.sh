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
# ANT_QUIC_PERF_PROFILE: the cargo profile to build with (default release; scripts/test.sh's smoke
# runs use its `ci` profile, whose figures are not the release build's).
profile="${ANT_QUIC_PERF_PROFILE:-release}"
cargo build --profile "$profile" -p ant-quic-perf
source="commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ "$profile" = release ] || source="$source, cargo profile $profile"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    source="$source, with uncommitted changes in the working tree"
fi
export ANT_QUIC_PERF_SOURCE="$source"
export ANT_QUIC_PERF_VIA="$via"
exec "${CARGO_TARGET_DIR:-target}/$profile/ant-quic-perf" "$@"
