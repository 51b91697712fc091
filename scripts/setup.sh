#!/usr/bin/env bash
# Install everything the project needs, idempotently: .venv from the pinned requirements, Azurite and
# playwright-core from npm, and with --test what only the test suite needs: the OHIF Viewer and Debian's
# Chromium for the browser test, Debian's Orthanc and its DICOMweb plugin for the interoperability test, the
# infra-check tools in .venv-infra.
# Needs Python 3.11+ and Node.js 20+ with npm; installs them (and chromium, orthanc) with apt-get when missing
# and root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# --test: also what only the test suite needs (infra checks, the OHIF Viewer, Chromium, Orthanc).
want_test_tools=0
for argument in "$@"; do
  [[ "$argument" == "--test" ]] && want_test_tools=1
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
  echo "setup: installing Azurite and playwright-core from npm"
  npm ci --no-audit --no-fund --loglevel=error
fi

# The OHIF Viewer for tests/test_ohif.py: the built viewer in the dist/ folder of the npm package pinned in
# package.json ("ohifViewer"). Only that package's tarball is fetched (npm pack), checked against the pinned
# integrity and unpacked into node_modules/.ohif-app: the built viewer needs none of its npm dependencies (a
# plain `npm install @ohif/app` would pull hundreds of packages it never loads, and fails on these machines,
# whose registry lacks @ohif/i18n@3.13.2).
if ((want_test_tools)); then
  ohif_spec="$(node -p 'require("./package.json").ohifViewer.package')"
  ohif_integrity="$(node -p 'require("./package.json").ohifViewer.integrity')"
  if [[ "$(cat node_modules/.ohif-app/.integrity 2>/dev/null)" != "$ohif_integrity" ]]; then
    echo "setup: fetching the OHIF Viewer ($ohif_spec)"
    download="$(mktemp -d)"
    npm pack "$ohif_spec" --pack-destination "$download" --loglevel=error >/dev/null
    tarball=("$download"/*.tgz)
    actual="sha512-$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "${tarball[0]}")"
    if [[ "$actual" != "$ohif_integrity" ]]; then
      echo "setup: $ohif_spec has integrity $actual, not the $ohif_integrity pinned in package.json" >&2
      rm -rf "$download"
      exit 1
    fi
    rm -rf node_modules/.ohif-app && mkdir -p node_modules/.ohif-app
    tar -xzf "${tarball[0]}" -C node_modules/.ohif-app --strip-components=1
    echo "$ohif_integrity" > node_modules/.ohif-app/.integrity
    rm -rf "$download"
  fi

  # Debian's Chromium for the browser test (Playwright drives it; no browser download is possible here).
  if [[ ! -x /usr/bin/chromium ]]; then
    if [[ $(id -u) -eq 0 ]]; then
      echo "setup: installing Debian's chromium"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "setup: please install Debian's chromium (/usr/bin/chromium) for the OHIF browser test" >&2
    fi
  fi

  # Debian's Orthanc and its DICOMweb plugin for tests/test_orthanc.py (the benchmark's peer too).
  if ! command -v Orthanc >/dev/null || [[ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]]; then
    if [[ $(id -u) -eq 0 ]]; then
      echo "setup: installing Debian's orthanc and orthanc-dicomweb"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        orthanc orthanc-dicomweb >/dev/null
      # On a systemd host the package also starts a system Orthanc (ports 8042, 4242). The tests start their
      # own on free ports and never use it, so do not leave it running idle. (In containers it never starts:
      # there is no systemd, and policy-rc.d forbids starting services.)
      if [[ -d /run/systemd/system ]]; then
        systemctl disable --now orthanc.service >/dev/null 2>&1 || true
      fi
    else
      echo "setup: please install Debian's orthanc and orthanc-dicomweb for the Orthanc interoperability test" >&2
    fi
  fi

  infra_stamp="$(stamp requirements-infra.txt)"
  if [[ ! -x .venv-infra/bin/python || "$(cat .venv-infra/.requirements 2>/dev/null)" != "$infra_stamp" ]]; then
    echo "setup: installing the infra checks (checkov, tree-sitter-bicep) into .venv-infra"
    python3 -m venv .venv-infra
    .venv-infra/bin/python -m pip install --quiet --upgrade pip
    .venv-infra/bin/python -m pip install --quiet -r requirements-infra.txt
    echo "$infra_stamp" > .venv-infra/.requirements
  fi
fi
