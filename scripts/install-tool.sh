#!/usr/bin/env bash
# Installs a pinned cargo tool into the target directory's tools/: the checkers CI and developers
# share (cargo-deny, cargo-audit, cargo-fuzz, gungraun-runner), built once per target directory.
#
# Usage: scripts/install-tool.sh NAME VERSION
#
# Does nothing when that version is there already (`cargo install --list`), so callers just call
# it; another version is replaced.
#
# These tools check the project; they are neither shipped nor measured, so they are built for a
# short build, not a fast binary: no optimisation, no LTO, no debug info. On 2 cores cargo-deny
# installed in 3 min 51 s with its own profile (fat LTO, one codegen unit) and in 1 min 21 s so;
# it then checks the lock file in 1.9 s rather than 1.3 s.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: scripts/install-tool.sh NAME VERSION" >&2
    exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools="$(realpath -m "${CARGO_TARGET_DIR:-target}")/tools"
if cargo install --list --root "$tools" 2>/dev/null | grep -qx "$1 v$2:"; then
    exit 0
fi
echo "==> installing $1 $2 into $tools (once)" >&2
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=0 \
    CARGO_PROFILE_RELEASE_DEBUG=false exec cargo install "$1" --locked --version "=$2" --root "$tools"
