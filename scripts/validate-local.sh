#!/usr/bin/env bash
# What CI checks, runnable on a development machine. See --help.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# cargo-deny and cargo-audit, pinned: installed once into the target directory's tools/ (as
# scripts/bench-gate installs gungraun-runner), so CI and developers run the same versions.
DENY_VERSION=0.20.2
AUDIT_VERSION=0.22.2
TOOLS="$(realpath -m "${CARGO_TARGET_DIR:-target}")/tools"
export PATH="$TOOLS/bin:$PATH"

usage() {
    cat <<'USAGE'
Usage: scripts/validate-local.sh [--quick | --deny | --advisories | --help]

  (none)    what CI runs (.ci/run): the dependency policy (--deny), then bash scripts/test.sh:
            formatting, the panic-free clippy policy, every test with both crypto builds, the
            alert rule tests (promtool), the instruction-count gate. Installs missing packages
            when run as root; otherwise the tests that need them say so.
  --quick   formatting, the panic-free clippy policy and the unit tests
            (cargo test --release --workspace --lib): what the pre-commit hook runs
            (scripts/install-hooks.sh), a minute or two once built.
  --deny    licences, banned crates and sources: cargo deny check licenses bans sources
            (deny.toml). Installs cargo-deny into ${CARGO_TARGET_DIR:-target}/tools the first time
            (scripts/install-tool.sh; about 1.5 minutes on 2 cores).
  --advisories
            known vulnerabilities: cargo deny check advisories and cargo audit. Both fetch the
            RustSec advisory database from GitHub, so this runs in a GitHub workflow, not in
            scripts/test.sh (the test machines cannot reach GitHub). Installs cargo-audit
            into the same tools/ the first time.
  --help    this text.
USAGE
}

step() { printf '\n==> %s\n' "$*"; }
# Run a check; on failure print one line saying what failed and how to reproduce it.
check() {
    local what=$1
    shift
    step "$what"
    if ! "$@"; then
        echo "validate-local: FAILED: $what (\`$*\`)" >&2
        exit 1
    fi
}

fmt() {
    check "formatting (fix: cargo fmt --all)" cargo fmt --all --check
}

clippy_policy() {
    check "panic-free production code (clippy policy)" \
        cargo clippy --all-features --lib --bins -- -D clippy::panic -D clippy::unwrap_used -D clippy::expect_used -D warnings
}

# Cargo subcommand $1 at version $2 in $TOOLS (installed the first time).
tool() {
    check "$1 $2 in $TOOLS" bash scripts/install-tool.sh "$1" "$2"
}

deny() {
    tool cargo-deny "$DENY_VERSION"
    check "dependency policy (deny.toml)" cargo deny check licenses bans sources
}

advisories() {
    tool cargo-deny "$DENY_VERSION"
    tool cargo-audit "$AUDIT_VERSION"
    check "advisories (cargo deny, RustSec database from GitHub)" cargo deny check advisories
    check "advisories (cargo audit, RustSec database from GitHub)" cargo audit
}

case "${1:-}" in
    --help | -h)
        usage
        ;;
    --quick)
        fmt
        clippy_policy
        check "unit tests" cargo test --release --workspace --lib
        echo "validate-local --quick: passed"
        ;;
    --deny)
        deny
        ;;
    --advisories)
        advisories
        ;;
    "")
        # Once scripts/test.sh runs the dependency policy itself, it is not run twice.
        grep -q 'validate-local.sh --deny' scripts/test.sh || deny
        check "the whole suite (bash scripts/test.sh)" bash scripts/test.sh
        echo "validate-local: passed"
        ;;
    *)
        echo "validate-local: unknown option ${1}; see scripts/validate-local.sh --help" >&2
        exit 2
        ;;
esac
