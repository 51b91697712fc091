#!/usr/bin/env bash
# The long fuzz run: the property-based fuzz tests with thousands of examples each.
# Extra arguments go to pytest (e.g. -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
HYPOTHESIS_PROFILE=long exec .venv/bin/python -m pytest tests/test_fuzz.py "$@"
