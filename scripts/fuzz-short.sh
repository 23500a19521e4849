#!/usr/bin/env bash
# A short fuzz run of every target in fuzz/ (cargo fuzz list): SECONDS each, from the corpus left
# by earlier runs (fuzz/corpus/, empty at first). cargo-fuzz builds with sanitizers, so it needs
# a nightly toolchain (TOOLCHAIN, default nightly). Exits 1 with one line naming the first target
# that crashed; its input is in fuzz/artifacts/TARGET/ (replay: see fuzz/README.md).
#
# Usage: scripts/fuzz-short.sh [--seconds N] [--install] [--list]
#   --install  cargo install cargo-fuzz when it is missing
#   --list     print the targets and exit
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds=30
install=0
list=0
toolchain="${TOOLCHAIN:-nightly}"

fail() { echo "fuzz-short: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --seconds)
            if ! [[ "${2:-}" =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ] || [ "$2" -gt 3600 ]; then
                fail "--seconds must be 1 to 3600"
            fi
            seconds="$2"; shift 2 ;;
        --install) install=1; shift ;;
        --list) list=1; shift ;;
        -h | --help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) fail "unknown argument '$1' (see --help)" ;;
    esac
done

# The targets, as fuzz/Cargo.toml declares them (the same list `cargo fuzz list` prints).
mapfile -t targets < <(sed -n 's/^name = "\([a-z0-9_]*\)"$/\1/p' Cargo.toml | grep -vx 'ant-quic-fuzz' || true)
[ ${#targets[@]} -gt 0 ] || fail "no [[bin]] target in fuzz/Cargo.toml"
if [ "$list" = 1 ]; then
    printf '%s\n' "${targets[@]}"
    exit 0
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    [ "$install" = 1 ] || fail "cargo-fuzz missing: cargo install cargo-fuzz (or pass --install)"
    cargo install --locked cargo-fuzz >&2 || fail "cargo install cargo-fuzz failed"
fi
rustup run "$toolchain" rustc --version >/dev/null 2>&1 \
    || fail "toolchain '$toolchain' missing: rustup toolchain install $toolchain (cargo-fuzz needs nightly)"

for target in "${targets[@]}"; do
    echo "==> $target: ${seconds} s"
    mkdir -p "corpus/$target"
    # libFuzzer stops itself at -max_total_time; the outer timeout only catches a hung build or run.
    if ! timeout "$((seconds + 1800))" cargo "+$toolchain" fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1; then
        fail "$target crashed or failed; input in fuzz/artifacts/$target/ (see fuzz/README.md to replay)"
    fi
done
echo "fuzz-short: ${#targets[@]} targets, ${seconds} s each, no crash"
