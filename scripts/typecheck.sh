#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping through an editable install, so lay the
# import tree out as symlinks under build/typecheck and check that (coi_watch = supervisor/,
# coi_watch.detectors = detectors/, ...). Extra arguments go to mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=build/typecheck/coi_watch
rm -rf build/typecheck && mkdir -p "$root"
for f in supervisor/*; do ln -s "$PWD/$f" "$root/$(basename "$f")"; done
for d in detectors responders rules; do ln -s "$PWD/$d" "$root/$d"; done
exec "${PYTHON:-.venv/bin/python}" -m mypy "$@" build/typecheck/coi_watch
