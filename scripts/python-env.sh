#!/usr/bin/env bash
# Python environment for the interoperability tests (tests/interop/).
#
# Creates the virtualenv target/pyenv (relative to the repository root) when it
# is missing, or when tests/interop/requirements.txt or the base interpreter
# changed since it was built (a hash is kept in target/pyenv/.requirements.sha256),
# installs the requirements into it, and prints the venv's python path as the
# LAST line of stdout. Everything else goes to stderr. Idempotent and safe to run
# concurrently (flock on target/pyenv.lock when flock exists).
#
# Works on a fresh Debian machine with python3 + pip only: when `python3 -m venv`
# fails (Debian without python3-venv / ensurepip), it falls back to, in order:
# an installed `virtualenv` module, `apt-get install -y python3-venv` (as root),
# and `pip install virtualenv` (with --break-system-packages where PEP 668 asks
# for it).
#
# Environment: PYTHON selects the base interpreter (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/target/pyenv"
REQ="$ROOT/tests/interop/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

log() { echo "python-env: $*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "no '$PYTHON' on PATH"
    exit 1
fi
if [ ! -f "$REQ" ]; then
    log "missing $REQ"
    exit 1
fi

mkdir -p "$ROOT/target"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$ROOT/target/pyenv.lock"
    flock -w 600 9 || { log "could not lock $ROOT/target/pyenv.lock"; exit 1; }
fi

want_hash() {
    {
        cat "$REQ"
        "$PYTHON" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}
WANT="$(want_hash)"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
    && "$VENV/bin/python" -c 'import aioquic' >/dev/null 2>&1; then
    echo "$VENV/bin/python"
    exit 0
fi

# a venv made with another interpreter or requirements is rebuilt from scratch
try_venv() {
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >&2 && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}
try_virtualenv() {
    rm -rf "$VENV"
    "$PYTHON" -m virtualenv -q "$VENV" >&2 && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}
pip_install_virtualenv() {
    "$PYTHON" -m pip install -q virtualenv >&2 \
        || "$PYTHON" -m pip install -q --break-system-packages virtualenv >&2
}

log "creating $VENV"
if try_venv; then
    :
elif "$PYTHON" -m virtualenv --version >/dev/null 2>&1 && try_virtualenv; then
    log "used virtualenv"
else
    made=0
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        ver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        log "python3 -m venv failed; installing python3-venv with apt-get"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv "python$ver-venv" >&2; then
            apt-get update -q >&2 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv "python$ver-venv" >&2 \
                || DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2 || true
        fi
        if try_venv; then made=1; fi
    fi
    if [ "$made" = 0 ]; then
        log "falling back to pip install virtualenv"
        if pip_install_virtualenv && try_virtualenv; then
            made=1
        fi
    fi
    if [ "$made" = 0 ]; then
        rm -rf "$VENV"
        log "could not create a virtualenv with $PYTHON (tried venv, apt-get python3-venv, pip virtualenv)"
        exit 1
    fi
fi

log "installing $(grep -v "^#" "$REQ" | tr "\n" " ")"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" >&2
"$VENV/bin/python" -c 'import aioquic; print("python-env: aioquic", aioquic.__version__)' >&2
echo "$WANT" > "$STAMP"
echo "$VENV/bin/python"
