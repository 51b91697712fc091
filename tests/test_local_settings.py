"""local.settings.sample.json names every setting the service reads, with Azurite defaults."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sample_settings_cover_every_setting_the_code_reads():
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    source = (ROOT / "dicom_core" / "settings.py").read_text()
    read = set(re.findall(r'"(DICOM_[A-Z_]+)"', source)) - {"DICOM_AUTH_TEST_SECRET"}  # a secret: never in a sample
    assert read <= set(values), read - set(values)
    assert values["DicomLake"] == values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert values["PYTHON_ENABLE_INIT_INDEXING"] == "1"
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"


def test_host_json_serves_v2_without_a_prefix():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensions"]["http"]["routePrefix"] == ""
    assert host["extensionBundle"]["id"] == "Microsoft.Azure.Functions.ExtensionBundle"
