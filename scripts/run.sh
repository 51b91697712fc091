#!/usr/bin/env bash
# Set everything up and serve the DICOMweb API at http://127.0.0.1:7071/v2.
# With no DicomLake setting, Azurite is started too (data in .azurite/); Ctrl-C stops both.
# Extra arguments go to `python -m dicom_core serve` (e.g. --port 8080).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/python -m dicom_core serve "$@"
