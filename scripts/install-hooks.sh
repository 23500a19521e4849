#!/usr/bin/env bash
# Installs the runbook's pre-commit hook (scripts/hooks/pre-commit). See --help.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {
    cat <<'USAGE'
Usage: scripts/install-hooks.sh [--uninstall | --help]

  (none)       install scripts/hooks/pre-commit as this repository's pre-commit hook, in the
               directory `git rev-parse --git-path hooks` names (core.hooksPath if set). Git
               shares that directory between all worktrees of a repository, so the hook runs
               in each of them; it runs scripts/validate-local.sh --quick of the worktree the
               commit is made in. Safe to re-run; refuses to replace a hook it did not install.
  --uninstall  remove the hook if this script installed it.
  --help       this text.

Skip the hook for one commit with `git commit --no-verify`.
USAGE
}

MARKER="ant-quic pre-commit hook"
hooks=$(git rev-parse --git-path hooks)
target="$hooks/pre-commit"

case "${1:-}" in
    --help | -h)
        usage
        ;;
    --uninstall)
        if [ ! -e "$target" ]; then
            echo "install-hooks: no pre-commit hook at $target"
        elif grep -q "$MARKER" "$target"; then
            rm -f "$target"
            echo "install-hooks: removed $target"
        else
            echo "install-hooks: $target was not installed by this script; left as it is" >&2
            exit 1
        fi
        ;;
    "")
        if [ -e "$target" ] && ! grep -q "$MARKER" "$target"; then
            echo "install-hooks: $target exists and was not installed by this script; move it away first" >&2
            exit 1
        fi
        mkdir -p "$hooks"
        if [ -e "$target" ] && cmp -s scripts/hooks/pre-commit "$target"; then
            echo "install-hooks: $target is up to date"
        else
            install -m 0755 scripts/hooks/pre-commit "$target"
            echo "install-hooks: installed $target (runs scripts/validate-local.sh --quick)"
        fi
        ;;
    *)
        echo "install-hooks: unknown option ${1}; see scripts/install-hooks.sh --help" >&2
        exit 2
        ;;
esac
