#!/usr/bin/env bash
# Install everything the project needs, idempotently: .venv from the pinned requirements,
# Azurite from npm, and (with --infra) the infra-check tools in .venv-infra.
# Needs Python 3.11+ and Node.js 20+ with npm; installs them with apt-get when missing and root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

want_infra=0
for argument in "$@"; do
  [[ "$argument" == "--infra" ]] && want_infra=1
done

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v npm >/dev/null || need_apt+=(nodejs npm)
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: please install ${need_apt[*]} (Python 3.11+, Node.js 20+)" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: Python 3.11 or newer is required (found $(python3 --version))" >&2
  exit 1
}

stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }

requirements_stamp="$(stamp requirements.txt requirements-dev.txt requirements-bench.txt)"
if [[ ! -x .venv/bin/python || "$(cat .venv/.requirements 2>/dev/null)" != "$requirements_stamp" ]]; then
  echo "setup: installing Python packages into .venv"
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
  echo "$requirements_stamp" > .venv/.requirements
fi

if [[ ! -x node_modules/.bin/azurite || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "setup: installing Azurite from npm"
  npm ci --no-audit --no-fund --loglevel=error
fi

if ((want_infra)); then
  infra_stamp="$(stamp requirements-infra.txt)"
  if [[ ! -x .venv-infra/bin/python || "$(cat .venv-infra/.requirements 2>/dev/null)" != "$infra_stamp" ]]; then
    echo "setup: installing the infra checks (checkov, tree-sitter-bicep) into .venv-infra"
    python3 -m venv .venv-infra
    .venv-infra/bin/python -m pip install --quiet --upgrade pip
    .venv-infra/bin/python -m pip install --quiet -r requirements-infra.txt
    echo "$infra_stamp" > .venv-infra/.requirements
  fi
fi
