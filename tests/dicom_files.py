"""Test data: the files pydicom and pydicom-data ship, and instances made with pydicom."""

from __future__ import annotations

import io
import uuid
from functools import cache
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_core.dicom.json_model import BULK_DATA_THRESHOLD

REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# pydicom's test files cut short on purpose; pydicom itself reads some of them without a word.
TRUNCATED_TEST_FILES = ("rtplan_truncated.dcm", "MR_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm")


def _is_storable(path: Path) -> bool:
    """A Part 10 file with the four UIDs and a PatientID, judged by pydicom alone."""
    if path.name in TRUNCATED_TEST_FILES:
        return False
    with open(path, "rb") as handle:
        handle.seek(128)
        if handle.read(4) != b"DICM":
            return False
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        whole = pydicom.dcmread(path)
    except Exception:
        return False
    if "TransferSyntaxUID" not in dataset.file_meta:  # required by PS3.10 7.1
        return False
    if not _pixel_data_complete(path, whole):
        return False
    for keyword in REQUIRED:
        value = str(dataset.get(keyword, "") or "")
        if not value or len(value) > 64 or not all(part.isdigit() for part in value.split(".")):
            return False
    return "PatientID" in dataset


def _pixel_data_complete(path: Path, dataset: Dataset) -> bool:
    """False for the truncated files pydicom reads without complaint."""
    if b"\xe0\x7f\x10\x00" in path.read_bytes() and "PixelData" not in dataset:
        return False  # the element is there but pydicom could not read it to its end
    if "PixelData" not in dataset or dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        return True
    bits = int(dataset.get("BitsAllocated", 0) or 0)
    if bits % 8 or "Rows" not in dataset:
        return True
    try:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except ValueError:
        frames = 1  # badVR.dcm: NumberOfFrames '1A'

    expected = int(dataset.Rows) * int(dataset.Columns) * int(dataset.SamplesPerPixel) * bits // 8 * frames
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    return len(dataset.PixelData) >= (expected * 2 // 3 if photometric.startswith("YBR_FULL_422") else expected)


@cache
def storable_test_files() -> list[Path]:
    """Every valid Part 10 file pydicom (and pydicom-data) ship.

    Several files share UIDs (one image in several transfer syntaxes).
    """
    return [Path(name) for name in sorted(get_testdata_files("*")) if Path(name).is_file() and _is_storable(Path(name))]


def sample_path(name: str) -> Path:
    return Path(get_testdata_file(name))


def file_bytes(name: str) -> bytes:
    return sample_path(name).read_bytes()


def new_instance(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    patient_id: str = "PAT-1",
    modality: str = "CT",
    template: str = "CT_small.dcm",
    **attributes,
) -> bytes:
    """A Part 10 file made from a pydicom test file with new (or given) UIDs."""
    dataset = pydicom.dcmread(get_testdata_file(template))
    dataset.StudyInstanceUID = study or generate_uid()
    dataset.SeriesInstanceUID = series or generate_uid()
    dataset.SOPInstanceUID = sop or generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientID = patient_id
    dataset.Modality = modality
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def minimal_instance(**attributes) -> bytes:
    """A small Part 10 file built from nothing, for attributes test files lack."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.PatientID = "P"
    for keyword, value in attributes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(
    parts: list[bytes | tuple[str, bytes]], boundary: str | None = None, *, content_length: bool = False
) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts, and its boundary.

    ``content_length`` adds a Content-Length header to each part, as Orthanc does.
    """
    boundary = boundary or f"boundary-{uuid.uuid4().hex}"
    body = io.BytesIO()
    for part in parts:
        content_type, data = part if isinstance(part, tuple) else ("application/dicom", part)
        length = f"Content-Length: {len(data)}\r\n" if content_length else ""
        body.write(f"--{boundary}\r\nContent-Type: {content_type}\r\n{length}\r\n".encode())
        body.write(data)
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), boundary


def stow_headers(boundary: str, quoted: bool = True) -> dict[str, str]:
    type_parameter = 'type="application/dicom"' if quoted else "type=application/dicom"
    return {
        "Content-Type": f"multipart/related; {type_parameter}; boundary={boundary}",
        "Accept": "application/dicom+json",
    }


def preamble_zeroed(data: bytes) -> bytes:
    return bytes(128) + data[128:]


def _name_bulk_data(model: dict, prefix: str) -> None:
    for tag, attribute in model.items():
        if "BulkDataURI" in attribute:
            attribute["BulkDataURI"] = f"{prefix}/{tag}"
        elif attribute.get("vr") == "SQ":
            for number, item in enumerate(attribute.get("Value", [])):
                _name_bulk_data(item, f"{prefix}/{tag}/{number}")


def pydicom_json(source: Path | BinaryIO) -> dict:
    """pydicom's DICOM JSON, element by element, bulk data named the way the service names it.

    Without value validation a sequence holding one invalid UI is kept whole, as the service
    keeps it (pydicom's suppress_invalid_tags would drop the whole sequence); values that cannot
    be converted at all (IS '1A' in badVR.dcm) are left out by both.
    """
    dataset = pydicom.dcmread(source, stop_before_pixels=True)
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


def uids(data: bytes) -> tuple[str, str, str, str]:
    """(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID) of a Part 10 file."""
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return (
        str(dataset.StudyInstanceUID),
        str(dataset.SeriesInstanceUID),
        str(dataset.SOPInstanceUID),
        str(dataset.SOPClassUID),
    )
