"""The fast DICOM JSON encoder gives what pydicom's to_json_dict gives, on every test file."""

from __future__ import annotations

import pydicom
import pytest

from dicom_core.dicom.json_model import instance_json
from tests.dicom_files import pydicom_json, storable_test_files


@pytest.mark.parametrize("path", storable_test_files(), ids=lambda path: path.name)
def test_encoder_matches_pydicom(path):
    dataset = pydicom.dcmread(path, stop_before_pixels=True, defer_size=64 * 1024)
    ours = instance_json(dataset, pixel_data_vr=None)
    reference = pydicom_json(path)
    assert ours == reference


def test_pixel_data_becomes_a_bulk_data_reference():
    path = storable_test_files()[0]
    model = instance_json(pydicom.dcmread(path, stop_before_pixels=True), pixel_data_vr="OB")
    assert model["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulkdata/7FE00010"}
