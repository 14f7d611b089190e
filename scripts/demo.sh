#!/usr/bin/env bash
# README command one: set up, then run the two-ward demo on embedded defaults.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/setup.sh"
cd "$root"
exec python scripts/demo.py "$@"
