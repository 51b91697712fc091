#!/usr/bin/env bash
# The long crash soak: the kill tests of tests/test_crash.py with many more kill points per scenario.
# DICOM_CRASH_POINTS (default 40 here) and DICOM_CRASH_SEED choose them; extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
DICOM_CRASH_POINTS="${DICOM_CRASH_POINTS:-40}" exec .venv/bin/python -m pytest tests/test_crash.py "$@"
