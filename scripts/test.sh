#!/usr/bin/env bash
# The whole test suite: install coi-watch with its test extra into .venv, lint (ruff), type
# check (mypy --strict) and run pytest. Privileged and Incus tests need root and the test bed
# (scripts/testbed.sh); in CI (CI=true) they fail rather than skip when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
.venv/bin/ruff check .
bash scripts/typecheck.sh
exec .venv/bin/pytest "$@"
