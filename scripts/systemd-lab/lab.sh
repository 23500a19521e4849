#!/usr/bin/env bash
# A Debian bookworm machine booted by a real systemd in a container, reached over a real SSH, for
# the deployment test (tests/deploy_systemd.rs).
#
#   lab.sh tree               build (once) and print the cached root tree
#   lab.sh up RUNDIR          boot it; RUNDIR gets the test's SSH key and the container's pids
#   lab.sh net RUNDIR CMD...  run CMD on this host inside the container's network namespace
#   lab.sh exec RUNDIR CMD... run CMD inside the container (all its namespaces)
#   lab.sh down RUNDIR        power it off; no process of it is left (the cached tree stays)
#
# The tree is made by debootstrap (--variant=minbase, about 35 s on an idle machine) and cached
# under target/systemd-lab/ ($CARGO_TARGET_DIR/systemd-lab, or $ANT_QUIC_LAB_DIR); each boot runs on a throw-away overlay
# (--volatile=overlay), so every run starts from the same clean machine.
#
# Network: the container gets a private network namespace holding only its loopback
# (--private-network). The deploy scripts load a default-drop nftables ruleset and bind UDP 9000 and
# SSH; in the host's namespace they would firewall and occupy this whole machine. The test
# therefore runs its SSH client, deploy-do.sh and its downloads on this host but inside the
# container's namespace (`lab.sh net`): real SSH to 127.0.0.1:22, all traffic on loopback.
#
# Needs root and the Debian packages debootstrap and systemd-container (installed when missing).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
lab=${ANT_QUIC_LAB_DIR:-${CARGO_TARGET_DIR:-$repo/target}/systemd-lab}
# netbase: /etc/protocols, which nft needs to read protocol names (minbase leaves it out;
# every Debian server has it).
readonly packages=systemd,systemd-sysv,dbus,openssh-server,curl,python3,nftables,procps,iproute2,netbase
readonly tree_version="bookworm minbase $packages v1"
tree="$lab/bookworm"

fail() { echo "systemd-lab: FAILED: $*" >&2; exit 1; }
say() { echo "systemd-lab: $*" >&2; }

need_tools() {
    local missing=()
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
    command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
    command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        fail "${missing[*]} missing and cannot be installed here (needs root and apt-get)"
    fi
    say "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

cmd_tree() {
    [ "$(id -u)" = 0 ] || fail "needs root (debootstrap, systemd-nspawn)"
    need_tools
    if [ -f "$tree/.lab-tree" ] && [ "$(cat "$tree/.lab-tree")" = "$tree_version" ]; then
        echo "$tree"
        return 0
    fi
    mkdir -p "$lab"
    remove_tree "$tree.tmp"
    say "debootstrap --variant=minbase --include=$packages bookworm (cached in $tree)"
    debootstrap --variant=minbase --include="$packages" bookworm "$tree.tmp" http://deb.debian.org/debian \
        >"$lab/debootstrap.log" 2>&1 || {
        tail -5 "$lab/debootstrap.log" >&2
        remove_tree "$tree.tmp"
        fail "debootstrap failed (log: $lab/debootstrap.log)"
    }
    prepare "$tree.tmp"
    echo "$tree_version" >"$tree.tmp/.lab-tree"
    remove_tree "$tree"
    mv -T "$tree.tmp" "$tree"
    echo "$tree"
}

# Removes a tree a killed debootstrap may have left with /proc or /sys mounted in it.
remove_tree() {
    local dir=$1 m
    [ -e "$dir" ] || return 0
    dir=$(cd "$dir" && pwd -P)
    # awk, not grep: a tree with nothing mounted under it is no failure (pipefail).
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf "$dir"
}

# What every boot needs: a hostname, no password logins, no units that wait for a network.
prepare() {
    local t=$1
    echo ant-quic-lab >"$t/etc/hostname"
    printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n' \
        >"$t/etc/ssh/sshd_config.d/lab.conf"
    [ -f "$t/etc/ssh/ssh_host_ed25519_key" ] || chroot "$t" ssh-keygen -A >/dev/null
    install -d -m 700 "$t/root/.ssh"
    : >"$t/etc/machine-id"
    chroot "$t" systemctl mask -q systemd-networkd-wait-online.service systemd-timesyncd.service \
        apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
}

leader() { cat "$1/leader.pid" 2>/dev/null || true; }

cmd_up() {
    local run=${1:?lab.sh up RUNDIR}
    cmd_tree >/dev/null
    mkdir -p "$run"
    run=$(cd "$run" && pwd)
    [ -z "$(leader "$run")" ] || ! kill -0 "$(leader "$run")" 2>/dev/null || fail "a lab already runs for $run (lab.sh down $run)"
    rm -f "$run/id_ed25519" "$run/id_ed25519.pub" "$run/known_hosts" "$run/leader.pid" "$run/nspawn.pid"
    ssh-keygen -q -t ed25519 -N '' -C ant-quic-lab -f "$run/id_ed25519"
    local machine="ant-quic-lab-$$"
    say "booting $tree (systemd-nspawn -b, private network, volatile overlay)"
    # io_uring is the node's default backend: let it through nspawn's own seccomp filter.
    systemd-nspawn --register=no --keep-unit --quiet --boot --private-network --volatile=overlay \
        --machine="$machine" --directory="$tree" \
        --system-call-filter='io_uring_setup io_uring_enter io_uring_register' \
        --bind-ro="$run/id_ed25519.pub:/root/.ssh/authorized_keys" \
        </dev/null >"$run/console.log" 2>&1 &
    local nspawn=$! pid="" child
    echo "$nspawn" >"$run/nspawn.pid"
    # The container's init: a child of systemd-nspawn that is pid 1 in its own pid namespace
    # (nspawn forks short-lived helpers too).
    for _ in $(seq 1 300); do
        for child in $(pgrep -P "$nspawn" || true); do
            if awk '/^NSpid:/ { found = (NF > 2 && $NF == 1) } END { exit !found }' "/proc/$child/status" 2>/dev/null; then
                pid=$child
                break
            fi
        done
        [ -n "$pid" ] && break
        kill -0 "$nspawn" 2>/dev/null || { tail -5 "$run/console.log" >&2; fail "systemd-nspawn exited"; }
        sleep 0.1
    done
    [ -n "$pid" ] || fail "no container init (pid 1 of its namespace) under systemd-nspawn (pid $nspawn) after 30 s"
    echo "$pid" >"$run/leader.pid"
    local state=""
    for _ in $(seq 1 180); do
        state=$(nsenter -t "$pid" -a systemctl is-system-running 2>/dev/null || true)
        case "$state" in running | degraded) break ;; esac
        kill -0 "$nspawn" 2>/dev/null || { tail -5 "$run/console.log" >&2; fail "the container stopped while booting"; }
        sleep 1
    done
    case "$state" in running | degraded) ;; *) fail "systemd in the container is '${state:-unreachable}' after 180 s" ;; esac
    [ "$state" = running ] || say "note: system state degraded: $(nsenter -t "$pid" -a systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
    for _ in $(seq 1 30); do
        if nsenter -t "$pid" -n ssh -q -o BatchMode=yes -o StrictHostKeyChecking=accept-new \
            -o UserKnownHostsFile="$run/known_hosts" -i "$run/id_ed25519" -o IdentitiesOnly=yes \
            -o ConnectTimeout=3 root@127.0.0.1 true </dev/null 2>/dev/null; then
            say "up: leader pid $pid, sshd on 127.0.0.1:22 in its network namespace"
            return 0
        fi
        sleep 1
    done
    fail "sshd in the container does not answer on 127.0.0.1:22"
}

cmd_down() {
    local run=${1:?lab.sh down RUNDIR} nspawn pid
    nspawn=$(cat "$run/nspawn.pid" 2>/dev/null || true)
    pid=$(leader "$run")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        say "powering off (leader pid $pid)"
        kill -s SIGRTMIN+4 "$pid" 2>/dev/null || true # systemd: poweroff
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
        for _ in $(seq 1 10); do kill -0 "$nspawn" 2>/dev/null || break; sleep 1; done
        if kill -0 "$nspawn" 2>/dev/null; then
            say "systemd-nspawn still there: killing it"
            kill -KILL "$nspawn" 2>/dev/null || true
            sleep 1
        fi
    fi
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
        ! kill -0 "$pid" 2>/dev/null || fail "container leader $pid survives SIGKILL"
    fi
    rm -f "$run/leader.pid" "$run/nspawn.pid"
    say "down"
}

case "${1:-}" in
    tree) cmd_tree ;;
    up) shift; cmd_up "$@" ;;
    down) shift; cmd_down "$@" ;;
    net)
        shift
        run=${1:?lab.sh net RUNDIR CMD...}; shift
        pid=$(leader "$run"); [ -n "$pid" ] || fail "no lab runs for $run"
        exec nsenter -t "$pid" -n -- "$@" ;;
    exec)
        shift
        run=${1:?lab.sh exec RUNDIR CMD...}; shift
        pid=$(leader "$run"); [ -n "$pid" ] || fail "no lab runs for $run"
        exec nsenter -t "$pid" -a -- "$@" ;;
    *) fail "usage: lab.sh tree | up RUNDIR | net RUNDIR CMD... | exec RUNDIR CMD... | down RUNDIR" ;;
esac
