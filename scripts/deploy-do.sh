#!/usr/bin/env bash
# Blue-green deployment of ant-quic on a server run by systemd (the runbook's deploy-do.sh).
#
#   deploy-do.sh [--host DEST] [--key FILE] [--root DIR] COMMAND [OPTIONS]
#
# DEST is user@host[:port], reached over SSH, or `local` (this machine). Defaults: DO_HOST
# (with DO_USER@ when DO_HOST names no user) and DO_SSH_KEY (a key file, or the key itself as the
# runbook's secret holds it); `local` when no host is given. --root defaults to /opt/ant-quic.
# DO_SSH_KNOWN_HOSTS names the known-hosts file (default ~/.ssh/known_hosts; new hosts are added).
#
# Commands (each prints what it does, exits 0, or 1 with one line saying what failed, and is
# safe to run again):
#   setup [--artifact TARBALL] [--firewall load|check|skip]
#                      user, ROOT tree, unit and firewall from a release package (setup-server.sh)
#   status             which color serves, the versions in bin/, releases
#   health             /health of the serving node on its admin port (from the config)
#   backup             snapshot config/ and data/ (the identity key) into ROOT/backups/TIMESTAMP
#   deploy-blue --artifact TARBALL
#                      check TARBALL against TARBALL.sha256, install its binary as bin/ant-quic.new
#                      (and the package under releases/VERSION); nothing that serves is touched
#   test-blue          run bin/ant-quic.new on a scratch port with the production config and smoke
#                      test it: config check, /health, a transfer checked by SHA-256 (authenticated
#                      by peer ID), `--test` against itself; nothing is switched
#   switch-to-blue [--force] [--window SECONDS]
#                      rotate bin/ (ant-quic.backup -> .backup.2, ant-quic -> .backup,
#                      ant-quic.new -> ant-quic) and start the other color's instance, which takes
#                      the port over (zero-downtime takeover); then watch health for the window
#                      (default 10 s). On failure it rolls back by itself. --force skips the
#                      requirement that test-blue passed for this binary.
#   rollback           one version back (ant-quic.backup -> ant-quic, .backup.2 -> .backup), by the
#                      same takeover
set -euo pipefail

readonly colors=(blue green)
root=/opt/ant-quic
host=${DO_HOST:-}
key=${DO_SSH_KEY:-}
prog=deploy-do

die() { echo "$prog: FAILED: $*" >&2; exit 1; }
say() { echo "$prog: $*"; }
usage() { die "usage: deploy-do.sh [--host DEST] [--key FILE] [--root DIR] setup|status|health|backup|deploy-blue --artifact TARBALL|test-blue|switch-to-blue|rollback"; }

args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --host) host=${2:?--host needs user@host[:port] or local}; shift ;;
        --key) key=${2:?--key needs a file}; shift ;;
        --root) root=${2:?--root needs a directory}; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1") ;;
    esac
    shift
done
[ ${#args[@]} -gt 0 ] || usage
command=${args[0]}
args=("${args[@]:1}")
prog="deploy-do $command"

artifact="" force=0 window=10 firewall=load
i=0
while [ $i -lt ${#args[@]} ]; do
    case "${args[$i]}" in
        --artifact) i=$((i + 1)); artifact=${args[$i]:-} ;;
        --force) force=1 ;;
        --window) i=$((i + 1)); window=${args[$i]:-} ;;
        --firewall) i=$((i + 1)); firewall=${args[$i]:-} ;;
        *) die "unknown option ${args[$i]} for $command" ;;
    esac
    i=$((i + 1))
done
case "$command" in
    setup | status | health | backup | deploy-blue | test-blue | switch-to-blue | rollback) ;;
    *) usage ;;
esac
case "$window" in '' | *[!0-9]*) die "--window takes whole seconds" ;; esac
[ "$command" != deploy-blue ] || [ -n "$artifact" ] || die "deploy-blue needs --artifact TARBALL"

# ---------------------------------------------------------------------------------------------
# Over SSH: check and upload what the command needs, then run this script on the server.
# ---------------------------------------------------------------------------------------------

check_sha() { # TARBALL: its .sha256 names it and matches
    local tarball=$1 want have
    [ -f "$tarball" ] || die "$tarball not found"
    [ -f "$tarball.sha256" ] || die "$tarball.sha256 not found (scripts/package.sh writes it)"
    want=$(cut -d' ' -f1 "$tarball.sha256")
    have=$(sha256sum "$tarball" | cut -d' ' -f1)
    [ "$want" = "$have" ] || die "SHA-256 of $tarball is $have, $tarball.sha256 says $want"
    say "SHA-256 of $(basename "$tarball") ok ($have)"
}

if [ -n "$host" ] && [ "$host" != local ]; then
    [ "$host" = "${host#*@}" ] && host="${DO_USER:-root}@$host"
    user=${host%@*} address=${host#*@} port=22
    if [[ "$address" =~ ^(.*):([0-9]+)$ ]]; then address=${BASH_REMATCH[1]} port=${BASH_REMATCH[2]}; fi
    address=${address#[}
    address=${address%]}
    ssh_opts=(-p "$port" -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5
        -o ServerAliveCountMax=6 -o StrictHostKeyChecking=accept-new)
    [ -z "${DO_SSH_KNOWN_HOSTS:-}" ] || ssh_opts+=(-o "UserKnownHostsFile=$DO_SSH_KNOWN_HOSTS")
    tmp_key=""
    trap '[ -z "$tmp_key" ] || rm -f "$tmp_key"' EXIT
    if [ -n "$key" ]; then
        if [ -f "$key" ]; then
            ssh_opts+=(-i "$key" -o IdentitiesOnly=yes)
        elif [[ "$key" == *"PRIVATE KEY"* ]]; then
            tmp_key=$(mktemp)
            chmod 600 "$tmp_key"
            printf '%s\n' "$key" >"$tmp_key"
            ssh_opts+=(-i "$tmp_key" -o IdentitiesOnly=yes)
        else
            die "--key/DO_SSH_KEY is neither a key file nor a private key"
        fi
    fi
    sudo=""
    [ "$user" = root ] || sudo="sudo -n"
    # shellcheck disable=SC2029 # the command line is built for the server on purpose
    remote() { ssh "${ssh_opts[@]}" "$user@$address" "$@"; }
    remote true </dev/null || die "cannot reach $user@$address port $port over SSH"
    say "on $user@$address:$port (root $root)"
    forward=()
    if [ -n "$artifact" ]; then
        check_sha "$artifact"
        name=$(basename "$artifact")
        incoming="$root/incoming"
        say "uploading $name to $incoming"
        remote "$sudo mkdir -p $(printf %q "$incoming") && $sudo tee $(printf %q "$incoming/$name.part") >/dev/null" <"$artifact" ||
            die "upload of $name to $address failed"
        remote "$sudo tee $(printf %q "$incoming/$name.sha256") >/dev/null && $sudo mv -f $(printf %q "$incoming/$name.part") $(printf %q "$incoming/$name")" <"$artifact.sha256" ||
            die "upload of $name.sha256 to $address failed"
        forward+=(--artifact "$incoming/$name")
    fi
    [ "$force" = 0 ] || forward+=(--force)
    [ "$command" != switch-to-blue ] || forward+=(--window "$window")
    [ "$command" != setup ] || forward+=(--firewall "$firewall")
    script=$(printf '%q ' --root "$root" "$command" "${forward[@]}")
    # The script goes over stdin into a file on the server, then runs there as root.
    remote "f=\$(mktemp) && cat >\"\$f\" && $sudo bash \"\$f\" $script; rc=\$?; rm -f \"\$f\"; exit \$rc" <"$0"
    exit $?
fi

# ---------------------------------------------------------------------------------------------
# On the server.
# ---------------------------------------------------------------------------------------------

[ "$(id -u)" = 0 ] || die "run as root (or over SSH as root, or as a user with sudo)"
bin="$root/bin"
config="$root/config/ant-quic.toml"
releases="$root/releases"
readonly user=ant-quic
unit() { echo "ant-quic@$1.service"; }
other() { [ "$1" = blue ] && echo green || echo blue; }
state() { systemctl show -p ActiveState --value "$(unit "$1")" 2>/dev/null || echo unknown; }
main_pid() { systemctl show -p MainPID --value "$(unit "$1")" 2>/dev/null || echo 0; }

serving_color() { # the color whose unit is active, if any
    local c
    for c in "${colors[@]}"; do
        [ "$(state "$c")" = active ] && { echo "$c"; return 0; }
    done
    return 1
}

# Values from the effective configuration, as the installed binary reads it.
config_value() { # SECTION KEY
    local binary=$bin/ant-quic
    [ -x "$binary" ] || binary=$bin/ant-quic.new
    "$binary" config check "$config" 2>/dev/null | awk -v section="[$1]" -v key="$2" '
        /^\[/ { in_section = ($0 == section); next }
        in_section && $1 == key && $2 == "=" { v = $3; gsub(/"/, "", v); print v; exit }'
}
admin_port() { config_value metrics port; }
drain_timeout() { config_value node drain_timeout; }

health_json() { # PORT -> body of /health (any status), nothing when unreachable
    curl -s --max-time 3 "http://127.0.0.1:$1/health" 2>/dev/null || true
}
# The first "KEY": value of a compact JSON object (top-level keys come first in /health).
json_field() { grep -o "\"$1\":[^,}]*" | head -1 | sed 's/^[^:]*://; s/"//g'; }

# The package version of a binary, from the releases it came from.
version_of() {
    local file=$1 sum
    [ -e "$file" ] || { echo "-"; return; }
    sum=$(sha256sum "$file" | cut -d' ' -f1)
    awk -v s="$sum" '$1 == s { v = $2 } END { print (v == "" ? "unknown (" substr(s, 1, 12) ")" : v) }' \
        "$releases/index" 2>/dev/null || echo "unknown"
}

# Waits (bounded) until COLOR's unit is no longer running or draining.
wait_stopped() {
    local color=$1 limit=$2 s
    for ((s = 0; s < limit; s++)); do
        case "$(state "$color")" in
            active | activating | deactivating | reloading) sleep 1 ;;
            *) return 0 ;;
        esac
    done
    return 1
}

# Healthy: /health 200 with "status":"ok" from a node whose unit is active.
healthy_now() {
    local port=$1 body
    body=$(curl -s --max-time 3 -w '\n%{http_code}' "http://127.0.0.1:$port/health" 2>/dev/null) || return 1
    [ "$(tail -1 <<<"$body")" = 200 ] && [ "$(head -1 <<<"$body" | json_field status)" = ok ]
}

# Starts COLOR: it takes the port over from whatever serves it (or just starts).
start_color() {
    local color=$1 limit
    limit=$((${drain_s:-60} + 30))
    if ! wait_stopped "$color" 1; then
        say "ant-quic@$color is still draining from an earlier switch: waiting for it (up to ${limit}s)"
        wait_stopped "$color" "$limit" || { say "ant-quic@$color still $(state "$color") after ${limit}s"; return 1; }
    fi
    systemctl reset-failed "$(unit "$color")" 2>/dev/null || true
    say "systemctl start ant-quic@$color (takes UDP port over)"
    systemctl start "$(unit "$color")"
}

# Health for WINDOW seconds: fails on 3 failed checks in a row or when COLOR leaves `active`.
watch_health() {
    local color=$1 port=$2 seconds=$3 misses=0 s
    for ((s = 0; s <= seconds; s++)); do
        [ "$(state "$color")" = active ] || { say "ant-quic@$color is $(state "$color")"; return 1; }
        if healthy_now "$port"; then misses=0; else misses=$((misses + 1)); fi
        [ "$misses" -lt 3 ] || { say "/health on 127.0.0.1:$port failed 3 times in a row"; return 1; }
        [ "$s" = "$seconds" ] || sleep 1
    done
    healthy_now "$port"
}

# Renames within bin/ are atomic: bin/ant-quic always exists, the running process keeps its inode.
rotate_forward() {
    [ ! -e "$bin/ant-quic.backup.2" ] || ln -f "$bin/ant-quic.backup.2" "$bin/.ant-quic.backup.3"
    [ ! -e "$bin/ant-quic.backup" ] || mv -fT "$bin/ant-quic.backup" "$bin/ant-quic.backup.2"
    if [ -e "$bin/ant-quic" ]; then
        ln -f "$bin/ant-quic" "$bin/.ant-quic.backup.tmp"
        mv -fT "$bin/.ant-quic.backup.tmp" "$bin/ant-quic.backup"
    fi
    mv -fT "$bin/ant-quic.new" "$bin/ant-quic"
}
# Undoes rotate_forward: the failed binary goes back to ant-quic.new.
rotate_back() {
    ln -f "$bin/ant-quic" "$bin/ant-quic.new"
    if [ -e "$bin/ant-quic.backup" ]; then
        mv -fT "$bin/ant-quic.backup" "$bin/ant-quic"
    else
        rm -f "$bin/ant-quic"
    fi
    [ ! -e "$bin/ant-quic.backup.2" ] || mv -fT "$bin/ant-quic.backup.2" "$bin/ant-quic.backup"
    [ ! -e "$bin/.ant-quic.backup.3" ] || mv -fT "$bin/.ant-quic.backup.3" "$bin/ant-quic.backup.2"
}
# One version back: the current binary leaves bin/ (it stays under releases/).
rotate_rollback() {
    mv -fT "$bin/ant-quic.backup" "$bin/ant-quic"
    [ ! -e "$bin/ant-quic.backup.2" ] || mv -fT "$bin/ant-quic.backup.2" "$bin/ant-quic.backup"
}

require_setup() {
    if [ ! -d "$bin" ] || [ ! -f "$config" ] || ! id -u "$user" >/dev/null 2>&1; then
        die "$root is not set up (run: deploy-do.sh setup --artifact TARBALL)"
    fi
    systemctl cat "$(unit blue)" >/dev/null 2>&1 || die "ant-quic@.service is not installed (run setup)"
}

cmd_setup() {
    local from tmp=""
    if [ -n "$artifact" ]; then
        check_sha "$artifact"
        tmp=$(mktemp -d)
        tar -xzf "$artifact" -C "$tmp" || die "cannot unpack $artifact"
        from=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -1)
    else
        from=$(cd "$(dirname "$0")" && pwd)
    fi
    [ -f "$from/setup-server.sh" ] || die "no setup-server.sh in $from (give --artifact TARBALL)"
    say "setup-server.sh --root $root --from $from --firewall $firewall"
    local rc=0
    bash "$from/setup-server.sh" --root "$root" --from "$from" --firewall "$firewall" || rc=$?
    [ -z "$tmp" ] || rm -rf "$tmp"
    case "$artifact" in "$root/incoming/"*) rm -f "$artifact" "$artifact.sha256" ;; esac
    [ "$rc" = 0 ] || die "setup-server.sh failed"
}

cmd_status() {
    require_setup
    local c port
    for c in "${colors[@]}"; do
        say "ant-quic@$c: $(state "$c") (pid $(main_pid "$c"), $(systemctl is-enabled "$(unit "$c")" 2>/dev/null || true))"
    done
    for f in ant-quic ant-quic.backup ant-quic.backup.2 ant-quic.new; do
        [ ! -e "$bin/$f" ] || say "bin/$f: $(version_of "$bin/$f")"
    done
    port=$(admin_port)
    say "health on 127.0.0.1:${port:-?}: $(health_json "${port:-0}" | tr -d '\n' | cut -c1-200)"
}

cmd_health() {
    require_setup
    local port color body
    port=$(admin_port)
    [ -n "$port" ] || die "cannot read the admin port from $config"
    color=$(serving_color) || die "no color is active (systemctl: blue $(state blue), green $(state green))"
    body=$(health_json "$port")
    say "ant-quic@$color serves: $body"
    healthy_now "$port" || die "/health on 127.0.0.1:$port is not ok"
    say "ok"
}

cmd_backup() {
    require_setup
    local dest
    dest="$root/backups/$(date -u +%Y%m%dT%H%M%SZ)"
    [ ! -e "$dest" ] || dest="$dest-$$"
    mkdir -p "$dest.part"
    cp -a "$root/config" "$root/data" "$dest.part/"
    mv -T "$dest.part" "$dest"
    say "config and data (identity key) saved in $dest"
}

cmd_deploy_blue() {
    require_setup
    check_sha "$artifact"
    local tmp pkg version
    tmp=$(mktemp -d "$releases/.unpack.XXXXXX")
    tar -xzf "$artifact" -C "$tmp" || { rm -rf "$tmp"; die "cannot unpack $artifact"; }
    pkg=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -1)
    if [ -z "$pkg" ] || [ ! -x "$pkg/bin/ant-quic" ] || [ ! -f "$pkg/VERSION" ]; then
        rm -rf "$tmp"
        die "$artifact is not a release package (no bin/ant-quic or VERSION)"
    fi
    version=$(cat "$pkg/VERSION")
    case "$version" in '' | *[!A-Za-z0-9._+-]*) rm -rf "$tmp"; die "bad VERSION '$version' in $artifact" ;; esac
    if [ -d "$releases/$version" ] && cmp -s "$pkg/bin/ant-quic" "$releases/$version/bin/ant-quic"; then
        rm -rf "$tmp"
        say "release $version already under $releases/$version"
    else
        rm -rf "${releases:?}/$version"
        mv -T "$pkg" "$releases/$version"
        rm -rf "$tmp"
        say "release $version unpacked to $releases/$version"
    fi
    local sum
    sum=$(sha256sum "$releases/$version/bin/ant-quic" | cut -d' ' -f1)
    grep -q "^$sum $version\$" "$releases/index" 2>/dev/null || echo "$sum $version" >>"$releases/index"
    install -m 755 "$releases/$version/bin/ant-quic" "$bin/.ant-quic.new.tmp"
    mv -fT "$bin/.ant-quic.new.tmp" "$bin/ant-quic.new"
    rm -f "$releases/.tested"
    case "$artifact" in "$root/incoming/"*) rm -f "$artifact" "$artifact.sha256" ;; esac
    say "installed $bin/ant-quic.new ($version); the serving node is untouched"
}

cmd_test_blue() {
    require_setup
    local new="$bin/ant-quic.new"
    [ -x "$new" ] || die "no $new (run deploy-blue first)"
    local version port rc=0 body peer
    version=$(version_of "$new")
    say "testing $new ($version)"
    say "config check $config"
    "$new" config check "$config" >/dev/null 2>&1 || die "the new version rejects $config ($new config check $config)"
    # systemd kills a draining node at TimeoutStopSec (STOPPING=1 arms it): the drain must end first.
    local drain stop_usec stop_s
    drain=$("$new" config check "$config" 2>/dev/null | awk '/^\[/ { s = $0 } s == "[node]" && $1 == "drain_timeout" { print $3 }')
    stop_usec=$(systemctl show -p TimeoutStopUSec --value "$(unit blue)" 2>/dev/null || true)
    # "1min 30s" -> 90 (systemd prints spans with h, min, s, ms; "infinity" never kills)
    stop_s=$(awk '{ t = 0; for (i = 1; i <= NF; i++) { v = $i + 0; u = $i; sub(/^[0-9.]+/, "", u);
        t += (u == "h") ? v * 3600 : (u == "min") ? v * 60 : (u == "s") ? v : (u == "ms") ? v / 1000 : 0 }
        print int(t) }' <<<"$stop_usec")
    if [ "$stop_usec" != infinity ] && [ -n "$drain" ] && [ "${stop_s:-0}" -gt 0 ] && [ "$drain" -ge "$stop_s" ]; then
        die "[node] drain_timeout = $drain is not below the unit's TimeoutStopSec ($stop_usec): raise it in a drop-in (systemctl edit ant-quic@)"
    fi
    say "drain_timeout ${drain:-?} s, below the unit's TimeoutStopSec ($stop_usec)"
    scratch=$(mktemp -d)
    chmod 755 "$scratch"
    stop_scratch() {
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -rf "$scratch"
    }
    pid=""
    trap stop_scratch EXIT
    mkdir -p "$scratch/www" "$scratch/out"
    head -c 8388608 /dev/urandom >"$scratch/www/smoke.bin"
    chown -R "$user:$user" "$scratch"
    # A scratch port: the production config, listen and admin port overridden (loopback only).
    port=$((20000 + RANDOM % 20000))
    say "starting it as $user on 127.0.0.1:$port (UDP, and admin HTTP)"
    # setpriv execs the node itself (runuser would stand between it and SIGTERM).
    setpriv --reuid="$user" --regid="$user" --init-groups -- "$new" --config "$config" \
        --listen "127.0.0.1:$port" --metrics-port "$port" \
        --www "$scratch/www" >"$scratch/node.log" 2>&1 &
    pid=$!
    local up=0
    for _ in $(seq 1 75); do
        kill -0 "$pid" 2>/dev/null || break
        if healthy_now "$port"; then up=1; break; fi
        sleep 0.2
    done
    if [ "$up" != 1 ]; then
        tail -5 "$scratch/node.log" >&2 || true
        die "the new version did not answer /health on 127.0.0.1:$port within 15 s"
    fi
    body=$(health_json "$port")
    peer=$(json_field peer_id <<<"$body")
    say "/health ok: $body"
    say "transfer: ant-quic get https://127.0.0.1:$port/smoke.bin --peer-id $peer"
    runuser -u "$user" -- "$new" get "https://127.0.0.1:$port/smoke.bin" --output "$scratch/out" \
        --peer-id "$peer" >"$scratch/get.log" 2>&1 || rc=$?
    if [ "$rc" != 0 ] || ! cmp -s "$scratch/www/smoke.bin" "$scratch/out/smoke.bin"; then
        tail -3 "$scratch/get.log" >&2 || true
        die "transfer from the new version failed or arrived altered"
    fi
    say "transfer ok: 8 MiB, SHA-256 $(sha256sum "$scratch/out/smoke.bin" | cut -c1-16)…"
    say "connectivity: ant-quic --bootstrap 127.0.0.1:$port --test"
    runuser -u "$user" -- "$new" --config "$config" --bootstrap "127.0.0.1:$port" --test --timeout 10 \
        >"$scratch/test.log" 2>&1 || { tail -3 "$scratch/test.log" >&2; die "--test against the new version failed"; }
    say "--test ok"
    kill -TERM "$pid"
    rc=0
    wait "$pid" || rc=$?
    pid=""
    [ "$rc" = 0 ] || die "the new version exited $rc on SIGTERM"
    sha256sum "$new" | cut -d' ' -f1 >"$releases/.tested"
    say "ok: $version passed (config, /health, transfer, --test, clean stop); run switch-to-blue"
}

cmd_switch_to_blue() {
    require_setup
    local port from to old_peer old_gen body new_peer
    port=$(admin_port)
    drain_s=$(drain_timeout)
    from=$(serving_color) || from=""
    if [ ! -e "$bin/ant-quic.new" ]; then
        if [ -n "$from" ] && [ -e "$bin/ant-quic" ] &&
            [ "$(stat -L -c %d:%i "/proc/$(main_pid "$from")/exe" 2>/dev/null)" = "$(stat -c %d:%i "$bin/ant-quic")" ]; then
            say "nothing to switch: ant-quic@$from already runs bin/ant-quic ($(version_of "$bin/ant-quic"))"
            return 0
        fi
        [ -e "$bin/ant-quic" ] || die "no bin/ant-quic.new to switch to (run deploy-blue)"
    elif [ "$force" = 0 ] && [ "$(cat "$releases/.tested" 2>/dev/null)" != "$(sha256sum "$bin/ant-quic.new" | cut -d' ' -f1)" ]; then
        die "bin/ant-quic.new has not passed test-blue (run test-blue, or --force)"
    fi
    to=blue
    [ "$from" != blue ] || to=green
    old_peer="" old_gen=0
    if [ -n "$from" ]; then
        body=$(health_json "$port")
        old_peer=$(json_field peer_id <<<"$body")
        old_gen=$(json_field generation <<<"$body")
        say "ant-quic@$from serves (pid $(main_pid "$from"), generation ${old_gen:-?}, peer id ${old_peer:-?})"
    else
        say "no color serves yet"
    fi
    local rotated=0
    if [ -e "$bin/ant-quic.new" ]; then
        rotate_forward
        rotated=1
        say "bin/ rotated: ant-quic = $(version_of "$bin/ant-quic"), ant-quic.backup = $(version_of "$bin/ant-quic.backup"), ant-quic.backup.2 = $(version_of "$bin/ant-quic.backup.2")"
    fi
    local failure=""
    if ! start_color "$to"; then
        failure="ant-quic@$to did not start"
    elif ! watch_health "$to" "$port" "$window"; then
        failure="ant-quic@$to unhealthy within ${window}s"
    else
        body=$(health_json "$port")
        new_peer=$(json_field peer_id <<<"$body")
        if [ -n "$old_peer" ] && [ "$new_peer" != "$old_peer" ]; then
            failure="peer id changed from $old_peer to $new_peer"
        fi
    fi
    if [ -z "$failure" ]; then
        rm -f "$bin/.ant-quic.backup.3" "$releases/.tested"
        systemctl enable -q "$(unit "$to")" 2>/dev/null || true
        [ -z "$from" ] || systemctl disable -q "$(unit "$from")" 2>/dev/null || true
        say "ok: ant-quic@$to serves $(version_of "$bin/ant-quic") (generation $(json_field generation <<<"$body"), peer id $new_peer)${from:+; ant-quic@$from drains and exits}"
        return 0
    fi
    # Automatic rollback (the runbook's): the previous binary back in place, and serving.
    say "$failure: rolling back by itself"
    systemctl stop "$(unit "$to")" 2>/dev/null || true
    systemctl reset-failed "$(unit "$to")" 2>/dev/null || true
    [ "$rotated" = 0 ] || rotate_back
    say "bin/ restored: ant-quic = $(version_of "$bin/ant-quic"), failed version kept as bin/ant-quic.new"
    if [ -n "$from" ] && [ "$(state "$from")" = active ]; then
        say "ant-quic@$from was never taken over and serves on"
    elif [ -n "$from" ]; then
        say "ant-quic@$from was taken over: starting it again with the restored binary"
        if ! start_color "$from" || ! watch_health "$from" "$port" "$window"; then
            die "$failure; rollback: ant-quic@$from did not come back healthy either"
        fi
    else
        die "$failure; rolled back bin/, nothing served before this switch"
    fi
    healthy_now "$port" || die "$failure; rolled back, but /health is still not ok"
    die "$failure; rolled back by itself: ant-quic@$(serving_color || echo none) serves $(version_of "$bin/ant-quic")"
}

cmd_rollback() {
    require_setup
    local port from to
    port=$(admin_port)
    drain_s=$(drain_timeout)
    [ -e "$bin/ant-quic.backup" ] || die "nothing to roll back to: no bin/ant-quic.backup"
    from=$(serving_color) || from=""
    to=blue
    [ "$from" != blue ] || to=green
    say "rolling back from $(version_of "$bin/ant-quic") to $(version_of "$bin/ant-quic.backup")"
    rotate_rollback
    start_color "$to" || die "ant-quic@$to did not start with $(version_of "$bin/ant-quic")"
    watch_health "$to" "$port" "$window" || die "ant-quic@$to unhealthy after the rollback"
    systemctl enable -q "$(unit "$to")" 2>/dev/null || true
    [ -z "$from" ] || systemctl disable -q "$(unit "$from")" 2>/dev/null || true
    say "ok: ant-quic@$to serves $(version_of "$bin/ant-quic")${from:+; ant-quic@$from drains and exits}"
}

case "$command" in
    setup) cmd_setup ;;
    status) cmd_status ;;
    health) cmd_health ;;
    backup) cmd_backup ;;
    deploy-blue) cmd_deploy_blue ;;
    test-blue) cmd_test_blue ;;
    switch-to-blue) cmd_switch_to_blue ;;
    rollback) cmd_rollback ;;
esac
