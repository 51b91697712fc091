"""The fast DICOM JSON encoder gives what pydicom's to_json_dict gives, on every test file."""

from __future__ import annotations

import pydicom
import pytest
from pydicom import config

from dicom_core.dicom.json_model import BULK_DATA_THRESHOLD, instance_json
from tests.dicom_files import storable_test_files


def _name_bulk_data(model: dict, prefix: str) -> None:
    for tag, attribute in model.items():
        if "BulkDataURI" in attribute:
            attribute["BulkDataURI"] = f"{prefix}/{tag}"
        elif attribute.get("vr") == "SQ":
            for number, item in enumerate(attribute.get("Value", [])):
                _name_bulk_data(item, f"{prefix}/{tag}/{number}")


def pydicom_json(path) -> dict:
    """pydicom's DICOM JSON, element by element, bulk data named the way the service names it.

    Without value validation a sequence holding one invalid UI is kept whole, as the service
    keeps it (pydicom's suppress_invalid_tags would drop the whole sequence); values that cannot
    be converted at all (IS '1A' in badVR.dcm) are left out by both.
    """
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    model = {}
    with config.disable_value_validation():
        for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset yields elements, not tags
            if tag.element == 0:
                continue
            try:
                model[f"{tag:08X}"] = dataset[tag].to_json_dict(
                    bulk_data_element_handler=lambda element: "", bulk_data_threshold=BULK_DATA_THRESHOLD
                )
            except ValueError:
                continue
    _name_bulk_data(model, "bulkdata")
    return model


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
