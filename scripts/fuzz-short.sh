#!/usr/bin/env bash
# A short fuzz run of every target in fuzz/ (cargo fuzz list): SECONDS each, starting from the
# saved seeds (fuzz/seeds/TARGET/, in git) and what earlier runs found (fuzz/corpus/TARGET/, not
# in git). Builds every target first, with cargo-fuzz's defaults (release, debug assertions,
# address sanitizer unless --sanitizer none), then runs as many targets at once as there are CPUs.
#
# Runs on the default toolchain, stable included (CI has no other): without a sanitizer
# cargo-fuzz passes rustc only stable flags, and for the address sanitizer (-Zsanitizer)
# RUSTC_BOOTSTRAP=1 lets a stable compiler accept it. TOOLCHAIN picks another (TOOLCHAIN=nightly).
#
# Exits 1 with one line naming the first target that crashed (after its panic message; the whole
# log is fuzz/artifacts/TARGET.log); its input is in fuzz/artifacts/TARGET/ (replay: see
# fuzz/README.md).
#
# Usage: scripts/fuzz-short.sh [--seconds N] [--sanitizer address|none] [--install] [--list]
#   --sanitizer  none: no address sanitizer (a faster build and faster runs; panics, hangs and
#                overflows are still caught, memory errors in unsafe code no longer)
#   --install    install cargo-fuzz (pinned) into the target directory's tools/ when missing
#   --list       print the targets and exit
set -euo pipefail
script="$(realpath "${BASH_SOURCE[0]}")"
cd "$(dirname "$script")/.."

# cargo-fuzz, pinned, installed once next to cargo-deny (scripts/install-tool.sh).
FUZZ_VERSION=0.13.2
TOOLS="$(realpath -m "${CARGO_TARGET_DIR:-target}")/tools"
export PATH="$TOOLS/bin:$PATH"
cd fuzz

seconds=30
install=0
list=0
sanitizer=address
toolchain="${TOOLCHAIN:-}"

fail() { echo "fuzz-short: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --seconds)
            if ! [[ "${2:-}" =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ] || [ "$2" -gt 3600 ]; then
                fail "--seconds must be 1 to 3600"
            fi
            seconds="$2"; shift 2 ;;
        --sanitizer)
            [[ "${2:-}" =~ ^(address|none)$ ]] || fail "--sanitizer must be address or none"
            sanitizer="$2"; shift 2 ;;
        --install) install=1; shift ;;
        --list) list=1; shift ;;
        -h | --help) sed -n '2,19p' "$script" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

if [ "$install" = 1 ]; then
    bash ../scripts/install-tool.sh cargo-fuzz "$FUZZ_VERSION" >&2 \
        || fail "installing cargo-fuzz $FUZZ_VERSION failed (scripts/install-tool.sh; see above)"
elif ! cargo fuzz --version >/dev/null 2>&1; then
    fail "cargo-fuzz missing: pass --install (scripts/install-tool.sh cargo-fuzz $FUZZ_VERSION)"
fi
# The default toolchain (what the rest of CI builds with), or TOOLCHAIN through rustup.
cargo=(cargo)
if [ -n "$toolchain" ]; then
    rustup run "$toolchain" rustc --version >/dev/null 2>&1 || fail "toolchain '$toolchain' missing (unset TOOLCHAIN)"
    cargo=(cargo "+$toolchain")
fi
# The address sanitizer is an unstable rustc flag (-Zsanitizer): let the stable compiler take it.
[ "$sanitizer" = none ] || export RUSTC_BOOTSTRAP=1

echo "==> building ${#targets[@]} targets (sanitizer: $sanitizer)"
timeout 3600 "${cargo[@]}" fuzz build -s "$sanitizer" >&2 || fail "building the fuzz targets failed"

for target in "${targets[@]}"; do
    [ -d "seeds/$target" ] || fail "no saved seeds for $target: fuzz/seeds/$target/ (see fuzz/README.md)"
done
mkdir -p artifacts

# One target: its exit status goes to artifacts/TARGET.status, its output to artifacts/TARGET.log.
run() {
    local target=$1 status=0
    mkdir -p "corpus/$target"
    # libFuzzer stops itself at -max_total_time; an input that runs 10 s counts as a crash (a
    # hang); the outer timeout only catches a hung run.
    timeout "$((seconds + 600))" "${cargo[@]}" fuzz run -s "$sanitizer" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"artifacts/$target.log" 2>&1 || status=$?
    echo "$status" >"artifacts/$target.status"
}

# libFuzzer runs on one CPU: as many targets at once as there are CPUs.
parallel=$(nproc 2>/dev/null || echo 1)
echo "==> running each target ${seconds} s, ${parallel} at a time"
for target in "${targets[@]}"; do
    rm -f "artifacts/$target.status"
    while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || true; done
    run "$target" &
done
wait

for target in "${targets[@]}"; do
    log="artifacts/$target.log"
    if [ "$(cat "artifacts/$target.status" 2>/dev/null)" != 0 ]; then
        # The panic message and libFuzzer's verdict (the backtrace stays in the log).
        { sed -n '/panicked at/,/stack backtrace/p' "$log" | head -n 20
          grep -E 'ERROR: |^SUMMARY|Test unit written' "$log" || tail -n 20 "$log"; } >&2
        fail "$target crashed or failed; input in fuzz/artifacts/$target/ (see fuzz/README.md to replay)"
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'DONE *cov: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    corpus=$(grep -o 'DONE .* corp: [0-9]*/[0-9a-zA-Z]*' "$log" | sed 's/.*corp: //' || echo '?')
    echo "$target: ${runs:-?} runs in ${seconds} s, coverage ${cov} edges, corpus ${corpus} (log: fuzz/$log)"
done
echo "fuzz-short: ${#targets[@]} targets, ${seconds} s each, no crash"
