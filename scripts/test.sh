#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what the tests need on a fresh Debian machine
# (iproute2 and ethtool for the namespace tests, nftables for the NAT lab (tests/natlab_raw.rs),
# prometheus and promtool for the metrics tests, a Python virtualenv with aioquic for interop),
# then checks formatting and the panic-free policy, and runs every test with both crypto builds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each step says how long the one before it took (wall seconds), so CI logs show where time goes.
step_started=$SECONDS
step() {
    printf '\n(%d s)\n==> %s\n' "$((SECONDS - step_started))" "$*"
    step_started=$SECONDS
}

# A test whose prerequisite is missing fails under CI=true and elsewhere is skipped, writing its
# name here (tests/common/prerequisite.rs); cargo hides what passing tests print, so the list is
# shown at the end, whatever the outcome.
skipped_list=target/tmp/skipped-tests.txt
mkdir -p target/tmp
rm -f "$skipped_list"
report_skipped() {
    printf '\n(%d s)\ntotal: %d s\n' "$((SECONDS - step_started))" "$SECONDS"
    if [ -s "$skipped_list" ]; then
        printf '\nskipped: %s tests (a prerequisite is missing; CI=true makes these fail)\n' "$(wc -l <"$skipped_list")"
        sed 's/^/  /' "$skipped_list"
    fi
}
trap report_skipped EXIT

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ethtool >/dev/null 2>&1 || missing+=(ethtool)
# ping, for tests/xdp_backend.rs (ICMP across the veth while the XDP program is attached)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
# nft and python3, for the NAT lab (scripts/natlab, tests/natlab_raw.rs)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# promtool and prometheus, for the metrics tests (tests/metrics.rs)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
# ShellCheck (the workflow check lints the scripts workflows call) and curl (do-performance-test.sh
# --ssh), for tests/ops_scripts.rs
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# groff renders the packaged man page (tests/ops_scripts.rs); tmux runs `ant-quic get` on a
# terminal to see its progress bar (tests/prompt_get.rs), and `ant-quic top` (tests/node_ops/top.rs)
command -v groff >/dev/null 2>&1 || missing+=(groff-base)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
# debootstrap, systemd-nspawn, systemd-analyze, ssh, pgrep: the deployment tests
# (tests/deploy_systemd.rs: scripts/check-unit.sh and the systemd lab, scripts/systemd-lab/)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
# protoc and etcd: the etcd feature builds etcd-client's protocol (clippy --all-features too) and
# tests/federation.rs runs a 3-member etcd cluster
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# a C++ compiler: libfuzzer-sys builds libFuzzer (scripts/fuzz-short.sh)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# valgrind, for the instruction-count gate (scripts/bench-gate) unless it is skipped
if [ "${ANT_QUIC_SKIP_BENCH_GATE:-0}" != 1 ]; then
    command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "note: ${missing[*]} missing and cannot be installed here; the tests that need them will say so" >&2
    fi
fi

# The deployment test's Debian tree (tests/deploy_systemd.rs) is debootstrapped once per target
# directory: mostly downloads, about 80 s here, done while the checks below compile.
step "in the background: the systemd lab's Debian tree (log: target/tmp/lab-tree.log)"
bash scripts/systemd-lab/lab.sh tree >target/tmp/lab-tree.log 2>&1 &
lab_tree=$!

step "python environment for the interop tests (aioquic)"
bash scripts/python-env.sh >/dev/null

step "plots in the docs: each exists, names its command, and the NAT grids match their tables (no build)"
python3 scripts/check-plots.py --self-test
python3 scripts/check-plots.py
python3 -m unittest discover -s scripts/natlab -p 'test_*.py'

step "formatting"
cargo fmt --all --check

step "panic-free production code (clippy policy)"
cargo clippy --all-features --lib --bins -- \
    -D clippy::panic -D clippy::unwrap_used -D clippy::expect_used -D warnings
cargo clippy --workspace --all-targets -- -D warnings

step "dependency policy: licences, bans, sources (deny.toml; advisories run in deploy-do.yml)"
# Installs cargo-deny 0.20.2 into target/tools the first time (scripts/install-tool.sh: about 80 s).
bash scripts/validate-local.sh --deny

step "workflows and Dockerfile (actionlint, hadolint: PyPI wheels in target/lint-venv; no image is built)"
bash scripts/check-workflows.sh
bash scripts/check-dockerfile.sh

step "deployment scripts (shellcheck)"
shellcheck scripts/check-unit.sh scripts/package.sh scripts/setup-server.sh scripts/deploy-do.sh scripts/systemd-lab/*.sh

step "structure: no import circles between files, unsafe only in dataplane/src/sys/, no production file over 800 lines"
python3 scripts/check-structure.py --self-test
python3 scripts/check-structure.py

step "API docs build without warnings (broken or private intra-doc links fail; #![deny(missing_docs)] holds)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --features ant-quic/tokio

# deploy_systemd needs the whole tree: a second debootstrap must not start beside the first.
step "waiting for the systemd lab's tree"
wait "$lab_tree" || echo "note: the systemd lab's tree was not built ahead ($(tail -1 target/tmp/lab-tree.log)); the deployment test builds it"

step "tests, default build (aws-lc-rs, post-quantum key exchange), with the async API's tokio feature"
# Built with the `ci` profile (Cargo.toml): release code generation without cross-crate LTO, so
# that each of the ~50 test binaries links in seconds rather than in 40 CPU-seconds of thin LTO.
# The feature `tokio` (tokio's AsyncRead/AsyncWrite on the streams, tests/async_api.rs) only adds
# trait impls: on here, rather than a second build of the library for one test; the ring build
# below runs tests/async_api.rs without it.
cargo test --profile ci --workspace --features ant-quic/tokio

step "bootstraps sharing a peer registry on etcd (feature etcd; docs/federation.md)"
# Only the test binaries the feature changes (federation: about 25 s with 3 etcd members).
cargo test --profile ci -p ant-quic --features etcd --test federation
# The etcd load benchmark's phases run and add up (a smoke with 6 peers, not a measurement), with
# the binary the test above built (feature etcd), before another step rebuilds it.
python3 scripts/bench-registry.py --quick --bin target/ci/ant-quic >/dev/null

step "a relay across bootstraps behind the NAT lab's symmetric NATs (feature etcd; tests/natlab_federation.rs)"
# Two linked bootstraps on one etcd member inside the lab; about half a minute, most of it the lab.
cargo test --profile ci -p ant-quic --features etcd --test natlab_federation

step "the async API benchmark's runners work (scripts/bench-async.sh --quick: a smoke, not a measurement)"
# Every runner once with small sizes (a few seconds); fails if any run fails, never on a figure.
# With the perf binary the default tests built (perf/tests/soak.rs runs it): `cargo build -p
# ant-quic-perf` alone unifies features differently and would build the workspace once more.
ANT_QUIC_PERF_BIN=target/ci/ant-quic-perf bash scripts/bench-async.sh --quick >/dev/null

step "tests, ring build (--no-default-features --features rustls-ring,metrics)"
# Only the tests whose outcome depends on the crypto provider: the libraries' unit tests, the
# binary, handshakes against ourselves and aioquic, the interop feature cases (key updates,
# resumption, 0-RTT, migration), the async API, hostile packets, the short takeover tests
# (ticket keys and retry tokens handed over) and the data plane's admission, steering and
# io_uring tests. Each integration test is its own thin-LTO binary (about 40 CPU-seconds to
# link), so the rest of the suite, which runs above with aws-lc-rs, would add ten minutes for
# no new coverage; the feature-tests job of comprehensive-ci.yml runs all of it on ring.
cargo test --profile ci -p ant-quic -p ant-quic-dataplane --no-default-features --features rustls-ring,metrics \
    --lib --bins --test loopback --test interop_aioquic --test interop_features --test async_api \
    --test hostile_input --test takeover --test admission --test cid_steering --test uring_backend -- \
    --skip takeover_keeps_every_connection --skip relayed_flow_keeps_forwarding_across_a_takeover \
    --skip taking_over_twice_keeps_live_transfers

step "fuzzing: every target 20 s from the saved seeds (scripts/fuzz-short.sh; fuzz/README.md)"
# Stable toolchain, no sanitizer: the build takes a third less time and the runs three to seven
# times more inputs (the code fuzzed is safe Rust; panics, overflows and hangs are still caught).
# The fuzz workflow runs longer with the address sanitizer. Installs cargo-fuzz into target/tools
# the first time (scripts/install-tool.sh). A crash fails the run with one line; the input is left in
# fuzz/artifacts/TARGET/.
bash scripts/fuzz-short.sh --seconds 20 --sanitizer none --install

step "instruction-count gate (scripts/bench-gate --self-test)"
# Callgrind counts of the hot paths against benches/baselines/instructions.json: fails on a
# regression of more than 10 %, and checks that an injected slowdown trips it. About half a
# minute once built; the first run also installs gungraun-runner (a few minutes of compiling).
if [ "${ANT_QUIC_SKIP_BENCH_GATE:-0}" = 1 ]; then
    echo "note: ANT_QUIC_SKIP_BENCH_GATE=1: instruction-count gate skipped; run scripts/bench-gate to check"
elif ! command -v valgrind >/dev/null 2>&1; then
    echo "note: valgrind missing and not installable here: instruction-count gate skipped" >&2
else
    python3 scripts/bench-gate --self-test --no-criterion
fi
