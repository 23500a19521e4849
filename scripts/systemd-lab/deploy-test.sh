#!/usr/bin/env bash
# The deployment procedure, end to end, against a real systemd over a real SSH (lab.sh):
#   1. package -> setup -> deploy-blue -> test-blue -> switch-to-blue: the node runs under systemd,
#      /health answers, the watchdog is armed;
#   2. a second package switched in while an aioquic download of 300 MB runs: the download
#      completes with its SHA-256, the peer ID is unchanged, bin/ holds ant-quic and ant-quic.backup;
#   3. a third package whose binary exits at once: test-blue refuses it; switch-to-blue refuses it
#      untested; forced, it rolls back by itself while a download runs, which completes intact;
#   4. two more deploys: bin/ holds exactly three binaries, the oldest left; `rollback` twice walks
#      back through them, each time serving;
#   5. kill -9 of the node: systemd restarts it and /health is green again within 10 s.
#
#   deploy-test.sh BINARY PYTHON
#
# BINARY: the ant-quic release binary to package; PYTHON: an interpreter with aioquic
# (scripts/python-env.sh). Needs root. Exits 1 with one line naming the first failed check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$(pwd)
binary=${1:?deploy-test.sh BINARY PYTHON}
python=${2:?deploy-test.sh BINARY PYTHON}
lab="$repo/scripts/systemd-lab/lab.sh"
target=${CARGO_TARGET_DIR:-$repo/target}
mkdir -p "$target/systemd-lab"
work=$(mktemp -d "$target/systemd-lab/run.XXXXXX")
run="$work/lab"
started=$SECONDS

step() { printf '\n=== deploy-test [%3ss] %s\n' "$((SECONDS - started))" "$*"; }
fail() { echo "deploy-test: FAILED: $*" >&2; exit 1; }
cleanup() {
    local rc=$?
    [ -z "${download_pid:-}" ] || kill "$download_pid" 2>/dev/null || true
    pkill -P "$backstop" 2>/dev/null || true
    kill "$backstop" 2>/dev/null || true
    if [ "$rc" != 0 ] && [ -f "$run/leader.pid" ]; then
        echo "--- journal of the units (last 40 lines) ---" >&2
        bash "$lab" exec "$run" journalctl -u 'ant-quic@*' -n 40 --no-pager >&2 || true
    fi
    [ -z "${outside:-}" ] || ip netns del "$outside" 2>/dev/null || true
    bash "$lab" down "$run" || rc=1
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
# A backstop under the test harness's own limit, so that the cleanup (lab.sh down) always runs.
(sleep "${ANT_QUIC_DEPLOY_TEST_LIMIT:-1500}" && echo "deploy-test: FAILED: still running after ${ANT_QUIC_DEPLOY_TEST_LIMIT:-1500} s" >&2 && kill -TERM $$) 2>/dev/null &
backstop=$!

net() { bash "$lab" net "$run" "$@"; }
inside() { bash "$lab" exec "$run" "$@"; }
export DO_SSH_KNOWN_HOSTS="$run/known_hosts"
deploy() { net bash "$repo/scripts/deploy-do.sh" --host root@127.0.0.1:22 --key "$run/id_ed25519" "$@"; }
# deploy, and its output kept for checks
deploy_log() { deploy "$@" 2>&1 | tee "$work/last.log"; return "${PIPESTATUS[0]}"; }

# Packages of distinguishable builds: the release binary with a marker appended (ELF loaders
# ignore trailing bytes), so the test can tell which version is where.
package() { # N [BINARY]
    local n=$1 bin=${2:-}
    if [ -z "$bin" ]; then
        bin="$work/ant-quic-$n"
        cp "$binary" "$bin"
        printf '\nant-quic-lab-build-%s\n' "$n" >>"$bin"
    fi
    ANT_QUIC_BIN=$binary bash "$repo/scripts/package.sh" --no-build --version "0.0.$n-lab" --binary "$bin" \
        --out "$work/packages" 2>"$work/package.log" | tail -1
}
sha_of_build() { sha256sum "$work/ant-quic-$1" | cut -d' ' -f1; }
remote_sha() { inside sha256sum "/opt/ant-quic/bin/$1" 2>/dev/null | cut -d' ' -f1; }
bin_listing() { inside ls -A /opt/ant-quic/bin | tr '\n' ' ' | sed 's/ $//'; }
serving_color() {
    local c
    for c in blue green; do
        [ "$(inside systemctl show -p ActiveState --value "ant-quic@$c")" = active ] && { echo "$c"; return; }
    done
    echo none
}
serving_sha() { # SHA-256 of the executable the serving unit's main process runs
    local c pid
    c=$(serving_color)
    pid=$(inside systemctl show -p MainPID --value "ant-quic@$c")
    inside sha256sum "/proc/$pid/exe" | cut -d' ' -f1
}
health() { net curl -fsS --max-time 3 http://127.0.0.1:9000/health; }
field() { grep -o "\"$1\":[^,}]*" | head -1 | sed 's/^[^:]*://; s/"//g'; }
expect_serving() { # N: build N serves, under systemd, healthy
    local want have
    want=$(sha_of_build "$1")
    have=$(serving_sha)
    [ "$have" = "$want" ] || fail "expected build $1 to serve; the serving process runs ${have:0:12} ($(serving_color))"
    [ "$(health | field status)" = ok ] || fail "/health is not ok while build $1 serves"
    echo "build $1 serves (ant-quic@$(serving_color), /health ok)"
}
expect_bin() { # N_CURRENT [N_BACKUP [N_BACKUP2]]
    local names=(ant-quic ant-quic.backup ant-quic.backup.2) i=0 expected=""
    for n in "$@"; do
        [ "$(remote_sha "${names[$i]}")" = "$(sha_of_build "$n")" ] || fail "bin/${names[$i]} is not build $n"
        expected="$expected ${names[$i]}"
        i=$((i + 1))
    done
    expected=${expected# }
    [ "$(bin_listing)" = "$expected" ] || fail "bin/ holds '$(bin_listing)', expected '$expected'"
    echo "bin/: $expected = builds $*"
}

# A download of big.bin from the serving node over aioquic, in the background.
start_download() { # NAME
    rm -rf "$work/dl-$1"
    mkdir -p "$work/dl-$1"
    net "$python" "$repo/tests/interop/hq_client.py" --insecure --timeout 240 --output "$work/dl-$1" \
        https://127.0.0.1:9000/big.bin >"$work/dl-$1.log" 2>&1 &
    download_pid=$!
    for _ in $(seq 1 150); do
        local got
        got=$(stat -c %s "$work/dl-$1/big.bin.part" 2>/dev/null || echo 0)
        [ "$got" -gt 20000000 ] && { echo "download $1 running ($got bytes so far)"; return 0; }
        kill -0 "$download_pid" 2>/dev/null || { cat "$work/dl-$1.log" >&2; fail "download $1 ended early"; }
        sleep 0.1
    done
    fail "download $1 did not get going within 15 s"
}
expect_download_intact() { # NAME
    kill -0 "$download_pid" 2>/dev/null || [ -f "$work/dl-$1/big.bin" ] ||
        fail "download $1 ended before the switch finished"
    local rc=0
    wait "$download_pid" || rc=$?
    download_pid=""
    [ "$rc" = 0 ] || { cat "$work/dl-$1.log" >&2; fail "download $1 failed (hq_client exit $rc)"; }
    local have
    have=$(sha256sum "$work/dl-$1/big.bin" | cut -d' ' -f1)
    [ "$have" = "$big_sha" ] || fail "download $1 arrived altered: SHA-256 $have, served $big_sha"
    echo "download $1 complete: $(stat -c %s "$work/dl-$1/big.bin") bytes, SHA-256 intact"
    rm -rf "$work/dl-$1"
}

step "boot a Debian bookworm under systemd (systemd-nspawn), sshd on 127.0.0.1:22 in its namespace"
bash "$lab" up "$run"
[ "$(net ip -o link | awk -F': ' '{print $2}' | tr '\n' ' ')" = "lo " ] ||
    fail "the container's network namespace holds more than loopback: $(net ip -o link)"

step "package 1, setup (twice: the second changes nothing)"
p1=$(package 1)
echo "$p1"
deploy setup --artifact "$p1"
deploy_log setup --artifact "$p1" >/dev/null
grep -q 'setup-server: done, nothing changed' "$work/last.log" || fail "a second setup changed something: $(grep -v unchanged "$work/last.log")"
echo "second setup: nothing changed"
for f in bash-completion/completions/ant-quic zsh/site-functions/_ant-quic fish/vendor_completions.d/ant-quic.fish \
    man/man1/ant-quic.1; do
    inside test -s "/usr/local/share/$f" || fail "setup installed no /usr/local/share/$f"
done
echo "completions and man page installed under /usr/local/share"
inside nft list table inet ant_quic >/dev/null || fail "firewall table inet ant_quic not loaded"
# A file to download, served by the node (the operator's config: www added before the first start).
inside bash -c 'mkdir -p /opt/ant-quic/www && head -c 314572800 /dev/urandom >/opt/ant-quic/www/big.bin &&
    sed -i "s|^# www = .*|www = \"/opt/ant-quic/www\"|" /opt/ant-quic/config/ant-quic.toml &&
    grep -q "^www = " /opt/ant-quic/config/ant-quic.toml'
big_sha=$(inside sha256sum /opt/ant-quic/www/big.bin | cut -d' ' -f1)

step "1. deploy-blue, test-blue, switch-to-blue: the node runs under systemd"
deploy deploy-blue --artifact "$p1"
deploy_log test-blue
scratch_backend=$(grep -o '"backend":"[^"]*"' "$work/last.log" | head -1 | cut -d'"' -f4)
deploy switch-to-blue --window 5
deploy health
# The runbook's secrets as the workflow passes them: the key itself in DO_SSH_KEY, no --host.
DO_HOST=127.0.0.1:22 DO_USER=root DO_SSH_KEY="$(cat "$run/id_ed25519")" \
    net bash "$repo/scripts/deploy-do.sh" status
expect_serving 1
backend=$(health | field backend)
[ "$backend" = "$scratch_backend" ] ||
    fail "under the hardened unit the node runs backend '$backend', unconfined it ran '$scratch_backend'"
echo "backend under the unit: $backend (as unconfined)"
color=$(serving_color)
watchdog=$(inside systemctl show -p WatchdogUSec --value "ant-quic@$color")
[ "$watchdog" = 10s ] || fail "systemctl show: WatchdogUSec=$watchdog, expected 10s"
echo "systemd: ant-quic@$color Type=$(inside systemctl show -p Type --value "ant-quic@$color"), WatchdogUSec=$watchdog, user $(inside ps -o user= -p "$(inside systemctl show -p MainPID --value "ant-quic@$color")")"
peer=$(health | field peer_id)
echo "peer id $peer"
deploy backup
[ -n "$(inside find /opt/ant-quic/backups -mindepth 3 -maxdepth 3 -path '*/data/*' -print -quit)" ] || fail "backup holds no data/ (identity key)"

step "firewall: from another namespace, UDP 9000 and TCP 22 pass; other ports and the admin port do not"
# A veth pair between the container's namespace and a namespace made here: nothing else is touched.
outside="aq-out-$$"
ip netns add "$outside"
ip link add "aqi$$" type veth peer name "aqo$$"
ip link set "aqi$$" netns "$(cat "$run/leader.pid")"
ip link set "aqo$$" netns "$outside"
net ip addr add 10.213.0.1/30 dev "aqi$$"
net ip link set "aqi$$" up
ip -n "$outside" addr add 10.213.0.2/30 dev "aqo$$"
ip -n "$outside" link set "aqo$$" up
ip -n "$outside" link set lo up
out() { ip netns exec "$outside" "$@"; }
inside systemd-run -q --unit=firewall-probe python3 -m http.server 8081 --bind 0.0.0.0
for _ in $(seq 1 50); do net curl -fs --max-time 1 -o /dev/null http://127.0.0.1:8081/ && break; sleep 0.1; done
net curl -fs --max-time 2 -o /dev/null http://127.0.0.1:8081/ || fail "probe listener on TCP 8081 does not answer on loopback"
if out curl -s --max-time 3 -o /dev/null http://10.213.0.1:8081/; then fail "TCP 8081 is reachable from outside: the firewall lets it in"; fi
# ... and it is the firewall that drops it: without the table it answers.
inside nft delete table inet ant_quic
out curl -fs --max-time 3 -o /dev/null http://10.213.0.1:8081/ || fail "TCP 8081 unreachable from outside even without the firewall: the probe proves nothing"
inside nft -f /etc/nftables.d/ant-quic.nft
echo "TCP 8081 (listening on 0.0.0.0): answers on loopback, dropped from outside by table inet ant_quic"
if out curl -s --max-time 3 -o /dev/null http://10.213.0.1:9000/health; then fail "the admin port answers from outside"; fi
echo "admin port 9000/tcp: not reachable from outside"
out ssh -q -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 \
    -i "$run/id_ed25519" -o IdentitiesOnly=yes root@10.213.0.1 true </dev/null || fail "SSH (TCP 22) is blocked from outside"
echo "TCP 22: SSH from outside works"
out "$binary" --bootstrap 10.213.0.1:9000 --test --timeout 10 --data-dir "$work/probe-id" >"$work/probe.log" 2>&1 ||
    { tail -3 "$work/probe.log" >&2; fail "ant-quic --test over UDP 9000 from outside failed"; }
# No NAT between the namespaces: the alternate port (UDP 9001) answering through the firewall makes
# the mapping endpoint-independent; a firewall that dropped it would leave it unknown.
grep -q 'NAT mapping endpoint-independent' "$work/probe.log" ||
    { tail -3 "$work/probe.log" >&2; fail "the alternate port (UDP 9001) did not answer through the firewall"; }
echo "UDP 9000 and 9001: ant-quic --bootstrap 10.213.0.1:9000 --test from outside: ok, mapping known"
inside systemctl stop firewall-probe
ip netns del "$outside"
outside=""

if ! deploy_log switch-to-blue; then fail "switch-to-blue run again after a switch failed"; fi
grep -q 'nothing to switch' "$work/last.log" || fail "switch-to-blue run again did something"

step "2. package 2 switched in during a 300 MB download"
p2=$(package 2)
deploy deploy-blue --artifact "$p2"
deploy test-blue
start_download two
deploy switch-to-blue --window 5
expect_download_intact two
expect_serving 2
[ "$(health | field peer_id)" = "$peer" ] || fail "the peer id changed across the switch"
echo "peer id unchanged"
expect_bin 2 1

step "3. package 3, a build that exits at once: refused, and rolled back by itself when forced"
printf '#!/bin/sh\necho "ant-quic: broken build" >&2\nexit 1\n' >"$work/ant-quic-3"
chmod 755 "$work/ant-quic-3"
p3=$(package 3 "$work/ant-quic-3")
deploy deploy-blue --artifact "$p3"
if deploy_log test-blue; then fail "test-blue passed a binary that exits at once"; fi
grep -q 'FAILED' "$work/last.log" || fail "test-blue failed without its FAILED line"
if deploy_log switch-to-blue; then fail "switch-to-blue switched to a binary that did not pass test-blue"; fi
grep -q 'has not passed test-blue' "$work/last.log" || fail "switch-to-blue refused for another reason"
start_download three
if deploy_log switch-to-blue --force --window 5; then fail "switch-to-blue --force reported success with a binary that exits"; fi
grep -q 'rolled back by itself' "$work/last.log" || fail "switch-to-blue --force failed without rolling back by itself"
expect_download_intact three
expect_serving 2
[ "$(health | field peer_id)" = "$peer" ] || fail "the peer id changed across the failed switch"
inside rm -f /opt/ant-quic/bin/ant-quic.new
expect_bin 2 1

step "3b. a build that takes the port over, then dies: switch-to-blue --force rolls back by itself"
# It runs the previous binary for 4 s, then is killed; systemd restarts it, and again.
printf '#!/bin/sh\n(sleep 4; kill -9 $$) &\nexec /opt/ant-quic/bin/ant-quic.backup "$@"\n' >"$work/ant-quic-3b"
chmod 755 "$work/ant-quic-3b"
p3b=$(package 3b "$work/ant-quic-3b")
deploy deploy-blue --artifact "$p3b"
before=$(inside systemctl show -p MainPID --value ant-quic@green)
start_download three-b
if deploy_log switch-to-blue --force --window 10; then fail "switch-to-blue --force reported success with a build that dies"; fi
grep -q 'was taken over: starting it again' "$work/last.log" || fail "the dying build never took the port over: this step tests nothing"
grep -q 'rolled back by itself' "$work/last.log" || fail "switch-to-blue --force failed without rolling back by itself"
expect_download_intact three-b
expect_serving 2
after=$(inside systemctl show -p MainPID --value ant-quic@green)
[ "$after" != "$before" ] || fail "ant-quic@green still runs pid $before: it was never taken over and restarted"
echo "ant-quic@green: pid $before (taken over, drained) -> pid $after (the rollback)"
[ "$(health | field peer_id)" = "$peer" ] || fail "the peer id changed across the rollback"
inside rm -f /opt/ant-quic/bin/ant-quic.new
expect_bin 2 1

step "4. packages 4 and 5: bin/ keeps exactly three; rollback twice"
for n in 4 5; do
    p=$(package "$n")
    deploy deploy-blue --artifact "$p"
    deploy test-blue
    deploy switch-to-blue --window 5
    expect_serving "$n"
done
expect_bin 5 4 2
deploy rollback
expect_serving 4
expect_bin 4 2
deploy rollback
expect_serving 2
expect_bin 2
if deploy_log rollback; then fail "a rollback with no kept version succeeded"; fi
grep -q 'nothing to roll back to' "$work/last.log" || fail "rollback failed for another reason"
expect_serving 2
[ "$(health | field peer_id)" = "$peer" ] || fail "the peer id changed across the rollbacks"
echo "peer id unchanged"

step "5. kill -9 of the node: systemd restarts it, /health green within 10 s"
color=$(serving_color)
pid=$(inside systemctl show -p MainPID --value "ant-quic@$color")
inside kill -9 "$pid"
killed_at=$SECONDS
green=0
for _ in $(seq 1 100); do
    new_pid=$(inside systemctl show -p MainPID --value "ant-quic@$color")
    if [ "$new_pid" != "$pid" ] && [ "$new_pid" != 0 ] && [ "$(health 2>/dev/null | field status)" = ok ]; then
        green=1
        break
    fi
    sleep 0.1
done
[ "$green" = 1 ] || fail "no healthy node 10 s after kill -9 of pid $pid"
echo "restarted by systemd: pid $pid -> $new_pid, /health ok after $((SECONDS - killed_at)) s (NRestarts=$(inside systemctl show -p NRestarts --value "ant-quic@$color"))"
expect_serving 2

step "all checks passed"
echo "deploy-test: ok in $((SECONDS - started)) s"
