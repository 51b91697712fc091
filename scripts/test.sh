#!/usr/bin/env bash
# Set everything up and run the whole test suite: lint, infra checks, then pytest against a real
# Azurite that the tests start themselves. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" --test
cd "$ROOT"

echo "== ruff"
.venv/bin/ruff check .

echo "== infra checks"
bash scripts/check_infra.sh .venv-infra/bin/python

echo "== pytest"
export INFRA_PYTHON="$ROOT/.venv-infra/bin/python"
exec .venv/bin/python -m pytest "$@"
