#!/usr/bin/env bash
# Run the test suite in a project venv (placeholder; the lead will extend it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=strict
exec .venv/bin/pytest "$@"
