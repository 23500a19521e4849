#!/usr/bin/env bash
# Builds the release package a server is deployed from:
#   target/package/ant-quic-VERSION-x86_64-unknown-linux-gnu.tar.gz and its .sha256
# holding the release binary, ant-quic.toml (every key at its default, data_dir set for the
# server layout), the systemd unit, the Prometheus scrape config, alert rules and their tests,
# the firewall rules, shell completions and the man page (share/), deploy-do.sh, setup-server.sh
# and a README. Prints the tarball's path as its
# last line.
#
#   scripts/package.sh [--no-build] [--version V] [--binary FILE] [--out DIR]
#
# --no-build uses the release binary already built; --version and --binary make test packages
# (tests/deploy_systemd.rs): another version string, another binary in bin/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

fail() { echo "package: FAILED: $*" >&2; exit 1; }

build=1 version="" binary="" out="$repo/target/package"
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --version) version=${2:?--version needs a value}; shift ;;
        --binary) binary=${2:?--binary needs a file}; shift ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        *) fail "unknown argument $1 (usage: package.sh [--no-build] [--version V] [--binary FILE] [--out DIR])" ;;
    esac
    shift
done

readonly triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$repo/target}
# ANT_QUIC_BIN: the release binary to use instead of the one in the target directory (a test's).
release=${ANT_QUIC_BIN:-$target_dir/release/ant-quic}
if [ "$build" = 1 ] && [ -z "${ANT_QUIC_BIN:-}" ]; then
    echo "package: cargo build --release --locked -p ant-quic" >&2
    cargo build --release --locked -p ant-quic >&2 || fail "cargo build --release failed"
fi
[ -x "$release" ] || fail "$release missing: run cargo build --release (or drop --no-build)"
[ -n "$binary" ] || binary=$release
[ -x "$binary" ] || fail "$binary is not an executable file"
if [ -z "$version" ]; then
    version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
    [ -n "$version" ] || fail "no [workspace.package] version in Cargo.toml"
fi
case "$version" in *[!A-Za-z0-9._+-]*) fail "version '$version' has characters a file name should not" ;; esac

name="ant-quic-$version-$triple"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage="$work/$name"
mkdir -p "$stage/bin" "$stage/systemd" "$stage/firewall" "$stage/prometheus"

install -m 755 "$binary" "$stage/bin/ant-quic"
# Every key at its default, as this release knows them; the identity key lives in the data
# directory the unit may write (ReadWritePaths).
"$release" config default |
    sed 's|^# data_dir = .*|data_dir = "/opt/ant-quic/data"|' >"$stage/ant-quic.toml"
grep -q '^data_dir = "/opt/ant-quic/data"$' "$stage/ant-quic.toml" ||
    fail "'ant-quic config default' has no data_dir line to set"
"$release" config check "$stage/ant-quic.toml" >/dev/null || fail "the packaged ant-quic.toml does not validate"
# Shell completions and the manual page, generated from the CLI definition, laid out as under
# /usr/local/share (setup-server.sh installs them there).
mkdir -p "$stage/share/bash-completion/completions" "$stage/share/zsh/site-functions" \
    "$stage/share/fish/vendor_completions.d" "$stage/share/man/man1"
"$release" completions bash >"$stage/share/bash-completion/completions/ant-quic" || fail "ant-quic completions bash failed"
"$release" completions zsh >"$stage/share/zsh/site-functions/_ant-quic" || fail "ant-quic completions zsh failed"
"$release" completions fish >"$stage/share/fish/vendor_completions.d/ant-quic.fish" || fail "ant-quic completions fish failed"
"$release" man >"$stage/share/man/man1/ant-quic.1" || fail "ant-quic man failed"
install -m 644 deploy/systemd/ant-quic@.service "$stage/systemd/"
install -m 644 deploy/firewall/ant-quic.nft "$stage/firewall/"
for f in deploy/prometheus/*; do
    [ -f "$f" ] && install -m 644 "$f" "$stage/prometheus/"
done
[ -f "$stage/prometheus/prometheus.yml" ] || fail "deploy/prometheus/prometheus.yml missing"
install -m 755 scripts/deploy-do.sh scripts/setup-server.sh "$stage/"
echo "$version" >"$stage/VERSION"
cat >"$stage/README.md" <<README
# ant-quic $version ($triple)

| file | what |
| --- | --- |
| bin/ant-quic | the node (release build) |
| ant-quic.toml | configuration: every key at its default, data_dir = /opt/ant-quic/data |
| systemd/ant-quic@.service | unit template, one instance per color (ant-quic@blue, ant-quic@green) |
| firewall/ant-quic.nft | nftables: UDP 9000 and 9001 (alternate port), TCP 22, loopback, established; admin port loopback-only |
| prometheus/ | scrape config, alert rules and their tests |
| share/ | bash, zsh and fish completions and the man page (ant-quic.1), installed under /usr/local/share by setup-server.sh |
| setup-server.sh | run once on the server as root: user, /opt/ant-quic, unit, firewall (idempotent) |
| deploy-do.sh | blue-green deploy, switch, rollback, health, backup (run from anywhere, over SSH) |

    ./deploy-do.sh --host root@server setup --artifact $name.tar.gz
    ./deploy-do.sh --host root@server deploy-blue --artifact $name.tar.gz
    ./deploy-do.sh --host root@server test-blue
    ./deploy-do.sh --host root@server switch-to-blue

The whole procedure: docs/deploy.md in the source repository.
README

mkdir -p "$out"
tarball="$out/$name.tar.gz"
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -cf - "$name" |
    gzip -n >"$tarball.tmp"
mv -f "$tarball.tmp" "$tarball"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256.tmp" && mv -f "$name.tar.gz.sha256.tmp" "$name.tar.gz.sha256")
echo "package: $(du -h "$tarball" | cut -f1) $(cut -d' ' -f1 "$tarball.sha256")" >&2
echo "$tarball"
