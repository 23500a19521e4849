#!/usr/bin/env bash
# Static checks of what scripts/setup-server.sh installs on a server:
#   - deploy/systemd/ant-quic@.service: `systemd-analyze verify` passes and
#     `systemd-analyze security --offline=yes` rates it 2.0 or lower (the score is printed);
#   - deploy/firewall/ant-quic.nft: `nft -c -f` accepts it (needs root: nft checks with the kernel).
# Installs the `systemd` and `nftables` Debian packages when the tools are missing and we are root.
# Exits 1 with one line naming what failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly unit=deploy/systemd/ant-quic@.service
readonly rules=deploy/firewall/ant-quic.nft
readonly max_exposure=2.0

fail() { echo "check-unit: FAILED: $*" >&2; exit 1; }

missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "check-unit: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        fail "${missing[*]} missing and cannot be installed here (not root, or no apt-get)"
    fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# verify checks that every Exec path exists and is executable: check a copy whose /opt/ant-quic
# points into a scratch tree holding a stand-in binary (tests/deploy_systemd.rs runs the real one
# under a real systemd).
mkdir -p "$work/opt/ant-quic/bin" "$work/units"
printf '#!/bin/sh\nexit 0\n' >"$work/opt/ant-quic/bin/ant-quic"
chmod 755 "$work/opt/ant-quic/bin/ant-quic"
sed "s#/opt/ant-quic#$work/opt/ant-quic#g" "$unit" >"$work/units/ant-quic@.service"
for color in blue green; do
    cp "$work/units/ant-quic@.service" "$work/units/ant-quic@$color.service"
done

echo "check-unit: systemd-analyze verify $unit (instances blue, green)"
if ! out=$(cd "$work/units" && systemd-analyze verify ./ant-quic@blue.service ./ant-quic@green.service 2>&1); then
    echo "$out" >&2
    fail "systemd-analyze verify rejects $unit"
fi
if [ -n "$out" ]; then
    echo "$out" >&2
    fail "systemd-analyze verify warns about $unit"
fi

echo "check-unit: systemd-analyze security --offline=yes $unit"
report=$(cd "$work/units" && systemd-analyze security --offline=yes ./ant-quic@blue.service 2>&1) || true
score=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' | tail -1)
[ -n "$score" ] || { echo "$report" >&2; fail "systemd-analyze security printed no exposure level"; }
printf '%s\n' "$report" | grep '✗' || true
echo "check-unit: security exposure $score (at most $max_exposure allowed)"
awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }' ||
    fail "systemd-analyze security rates $unit $score, above $max_exposure"

echo "check-unit: nft -c -f $rules"
nft -c -f "$rules" || fail "nft -c rejects $rules"

echo "check-unit: ok (unit verified, exposure $score, firewall rules accepted)"
