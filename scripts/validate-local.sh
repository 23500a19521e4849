#!/usr/bin/env bash
# What CI checks, runnable on a development machine. See --help.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# cargo-deny, pinned: installed once into the target directory's tools/ (as scripts/bench-gate
# installs gungraun-runner), so CI and developers run the same version.
DENY_VERSION=0.20.2
TOOLS="${CARGO_TARGET_DIR:-target}/tools"

usage() {
    cat <<'USAGE'
Usage: scripts/validate-local.sh [--quick | --deny | --help]

  (none)    what CI runs (.ci/run): the dependency policy (--deny), then bash scripts/test.sh:
            formatting, the panic-free clippy policy, every test with both crypto builds, the
            alert rule tests (promtool), the instruction-count gate. Installs missing packages
            when run as root; otherwise the tests that need them say so.
  --quick   formatting, the panic-free clippy policy and the unit tests
            (cargo test --release --workspace --lib): what the pre-commit hook runs
            (scripts/install-hooks.sh), a minute or two once built.
  --deny    licences, banned crates and sources: cargo deny check licenses bans sources
            (deny.toml). Installs cargo-deny into ${CARGO_TARGET_DIR:-target}/tools the first time
            (about 4 minutes of CPU). Advisories need the RustSec database and run in CI only.
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

deny() {
    if ! "$TOOLS/bin/cargo-deny" --version 2>/dev/null | grep -qx "cargo-deny $DENY_VERSION"; then
        check "installing cargo-deny $DENY_VERSION into $TOOLS (once)" \
            cargo install cargo-deny --locked --version "$DENY_VERSION" --root "$TOOLS"
    fi
    check "dependency policy (deny.toml)" env PATH="$TOOLS/bin:$PATH" cargo deny check licenses bans sources
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
