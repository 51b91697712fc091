"""DICOM JSON (PS3.18 Annex F) of stored instances, with bulk data as relative URIs.

Binary values longer than BULK_DATA_THRESHOLD bytes are not inlined: each becomes
``{"vr": ..., "BulkDataURI": "bulkdata/<path>"}`` where ``<path>`` names the
element by its tag and, inside sequences, by the tags and item numbers above it
(``bulkdata/00540016/0/00181072``). Retrieve turns the relative URI into an
absolute one under the instance's URL.
"""

from __future__ import annotations

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

BULK_DATA_THRESHOLD = 1024
BULK_DATA_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_PLACEHOLDER = "bulk"


def instance_json(dataset: Dataset, pixel_data_vr: str | None) -> dict:
    """The DICOM JSON of ``dataset`` (read without its pixel data) with bulk-data references."""

    def bulk_data_handler(element: DataElement) -> str:
        return _PLACEHOLDER

    model = dataset.to_json_dict(
        bulk_data_threshold=BULK_DATA_THRESHOLD,
        bulk_data_element_handler=bulk_data_handler,
        suppress_invalid_tags=True,
    )
    _name_bulk_data(model, "bulkdata")
    if pixel_data_vr:
        model["7FE00010"] = {"vr": pixel_data_vr, "BulkDataURI": "bulkdata/7FE00010"}
    return model


def _name_bulk_data(model: dict, prefix: str) -> None:
    for tag, attribute in model.items():
        if "BulkDataURI" in attribute:
            attribute["BulkDataURI"] = f"{prefix}/{tag}"
        elif attribute.get("vr") == "SQ":
            for number, item in enumerate(attribute.get("Value", [])):
                _name_bulk_data(item, f"{prefix}/{tag}/{number}")
