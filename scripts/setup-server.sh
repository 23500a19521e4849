#!/usr/bin/env bash
# Prepares a server for ant-quic, as root (the runbook's "Server Configuration"):
#   - system user ant-quic (no login shell, no sudo: the node needs neither);
#   - ROOT/{bin,config,logs,data} owned by it, ROOT/{releases,backups} for deploy-do.sh;
#   - ROOT/config/ant-quic.toml from the package, unless one is there (never overwritten);
#   - the unit template ant-quic@.service installed, systemd reloaded, ant-quic@blue enabled
#     (unless a color already is);
#   - shell completions (bash, zsh, fish) and the man page installed under /usr/local/share;
#   - the nftables rules installed in /etc/nftables.d and loaded (and included from
#     /etc/nftables.conf, so that they survive a reboot).
# Idempotent: a second run changes nothing and says so.
#
#   setup-server.sh [--root DIR] [--from PACKAGE_DIR] [--firewall load|check|skip]
#
# PACKAGE_DIR is an unpacked release package (default: the directory of this script).
set -euo pipefail

root=/opt/ant-quic from=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) firewall=load
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=${2:?--root needs a directory}; shift ;;
        --from) from=${2:?--from needs a directory}; shift ;;
        --firewall) firewall=${2:?--firewall needs load, check or skip}; shift ;;
        *) echo "setup-server: FAILED: unknown argument $1" >&2; exit 1 ;;
    esac
    shift
done

readonly user=ant-quic
readonly unit_dir=/etc/systemd/system
readonly nft_file=/etc/nftables.d/ant-quic.nft
readonly share=/usr/local/share
changes=0

fail() { echo "setup-server: FAILED: $*" >&2; exit 1; }
changed() { echo "setup-server: $*"; changes=$((changes + 1)); }
same() { echo "setup-server: $* (unchanged)"; }

[ "$(id -u)" = 0 ] || fail "run as root"
case "$firewall" in load | check | skip) ;; *) fail "--firewall takes load, check or skip" ;; esac
for f in ant-quic.toml systemd/ant-quic@.service firewall/ant-quic.nft; do
    [ -f "$from/$f" ] || fail "$from/$f missing: --from must name an unpacked release package"
done
command -v systemctl >/dev/null || fail "systemctl missing: this server does not run systemd"

# Installs SRC as DEST (mode MODE, owner OWNER) unless DEST already has that content.
put() {
    local src=$1 dest=$2 mode=$3 owner=$4
    if [ -f "$dest" ] && cmp -s "$src" "$dest" &&
        [ "$(stat -c '%a %U:%G' "$dest")" = "$mode $owner" ]; then
        same "$dest"
        return 1
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dest.tmp"
    mv -f "$dest.tmp" "$dest"
    changed "installed $dest"
}

# The user.
if id -u "$user" >/dev/null 2>&1; then
    same "user $user"
else
    useradd --system --user-group --home-dir "$root/data" --no-create-home \
        --shell /usr/sbin/nologin --comment "ant-quic node" "$user"
    changed "created system user $user"
fi

# The tree.
for d in bin config logs data releases backups; do
    case "$d" in
        releases | backups) mode=750 owner=root:root ;;
        data) mode=700 owner=$user:$user ;;
        *) mode=755 owner=$user:$user ;;
    esac
    if [ -d "$root/$d" ] && [ "$(stat -c '%a %U:%G' "$root/$d")" = "$mode $owner" ]; then
        same "$root/$d"
    else
        install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$root/$d"
        changed "made $root/$d ($mode $owner)"
    fi
done

# The configuration: the package's, unless the operator's is there.
if [ -f "$root/config/ant-quic.toml" ]; then
    if cmp -s "$from/ant-quic.toml" "$root/config/ant-quic.toml"; then
        same "$root/config/ant-quic.toml"
    else
        same "$root/config/ant-quic.toml kept as it is (it differs from the package's)"
    fi
else
    sed "s#/opt/ant-quic#$root#g" "$from/ant-quic.toml" >"$root/config/.ant-quic.toml.tmp"
    chown "$user:$user" "$root/config/.ant-quic.toml.tmp"
    chmod 644 "$root/config/.ant-quic.toml.tmp"
    mv -f "$root/config/.ant-quic.toml.tmp" "$root/config/ant-quic.toml"
    changed "installed $root/config/ant-quic.toml"
fi

# Shell completions and the manual page, where bash-completion, zsh, fish and man look for
# software installed outside the package manager (packages from before they shipped have none).
for f in bash-completion/completions/ant-quic zsh/site-functions/_ant-quic \
    fish/vendor_completions.d/ant-quic.fish man/man1/ant-quic.1; do
    [ -f "$from/share/$f" ] || continue
    mkdir -p "$(dirname "$share/$f")"
    put "$from/share/$f" "$share/$f" 644 root:root || true
done

# The unit.
unit_src=$(mktemp)
trap 'rm -f "$unit_src"' EXIT
sed "s#/opt/ant-quic#$root#g" "$from/systemd/ant-quic@.service" >"$unit_src"
if put "$unit_src" "$unit_dir/ant-quic@.service" 644 root:root; then
    systemctl daemon-reload
    changed "systemctl daemon-reload"
fi
if systemctl -q is-enabled ant-quic@blue.service 2>/dev/null ||
    systemctl -q is-enabled ant-quic@green.service 2>/dev/null; then
    same "enabled color ($(systemctl is-enabled ant-quic@blue.service 2>/dev/null || true) blue, $(systemctl is-enabled ant-quic@green.service 2>/dev/null || true) green)"
else
    systemctl enable -q ant-quic@blue.service
    changed "systemctl enable ant-quic@blue (starts at boot)"
fi

# The firewall.
if [ "$firewall" = skip ]; then
    echo "setup-server: firewall skipped (--firewall skip)"
else
    command -v nft >/dev/null || fail "nft missing: apt-get install nftables"
    nft -c -f "$from/firewall/ant-quic.nft" || fail "nft -c rejects $from/firewall/ant-quic.nft"
    mkdir -p "$(dirname "$nft_file")"
    file_changed=0
    put "$from/firewall/ant-quic.nft" "$nft_file" 644 root:root && file_changed=1
    if [ "$firewall" = check ]; then
        echo "setup-server: firewall rules checked, not loaded (--firewall check)"
    else
        if [ "$file_changed" = 1 ] || ! nft list table inet ant_quic >/dev/null 2>&1; then
            nft -f "$nft_file" || fail "nft -f $nft_file failed"
            changed "loaded $nft_file (table inet ant_quic: UDP 9000, TCP 22, loopback, established)"
        else
            same "table inet ant_quic loaded"
        fi
        include="include \"$nft_file\""
        if [ -f /etc/nftables.conf ] && grep -qxF "$include" /etc/nftables.conf; then
            same "/etc/nftables.conf includes $nft_file"
        else
            [ -f /etc/nftables.conf ] || printf '#!/usr/sbin/nft -f\n' >/etc/nftables.conf
            printf '%s\n' "$include" >>/etc/nftables.conf
            changed "/etc/nftables.conf now includes $nft_file"
        fi
        if systemctl -q is-enabled nftables.service 2>/dev/null; then
            same "nftables.service enabled"
        elif systemctl cat nftables.service >/dev/null 2>&1; then
            systemctl enable -q nftables.service
            changed "systemctl enable nftables (rules load at boot)"
        fi
    fi
fi

if [ "$changes" = 0 ]; then
    echo "setup-server: done, nothing changed"
else
    echo "setup-server: done, $changes change(s)"
fi
