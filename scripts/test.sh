#!/usr/bin/env bash
# README command two: set up, lint, type-check, then run every test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/setup.sh"
cd "$root"
ruff check .
mypy
python -m pytest "$@"
