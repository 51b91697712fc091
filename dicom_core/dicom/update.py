"""Bulk update of patient and study attributes: which attributes, and rewriting a header without touching pixels.

The attributes a bulk update may change are the ones the Azure DICOM service allows: the
non-sequence attributes of the Patient Identification and Patient Demographic modules
(PS3.3 C.2.2, C.2.3) and three of the General Study module (PS3.3 C.7.2.1). They all sit in
groups 0008, 0010 and 0040, so in a Part 10 file they come before the Pixel Data element
(PS3.5 7.1: elements in ascending tag order). A file is therefore rewritten as its new
header followed by the old file's bytes from the Pixel Data element on, unchanged
(``rewrite_header``); where the header ends is found by ``header_end``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import pydicom
from pydicom.config import RAISE
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.valuerep import validate_value

from dicom_core.dicom.parse import pydicom_lock
from dicom_core.dicom.structure import DEFLATED_SYNTAXES, meta_end
from dicom_core.errors import BadRequest

_PATIENT_IDENTIFICATION = (
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID", "OtherPatientIDs", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "MedicalRecordLocator",
)  # fmt: skip
_PATIENT_DEMOGRAPHIC = (
    "PatientAge", "Occupation", "ConfidentialityConstraintOnPatientDataDescription", "PatientBirthDate",
    "PatientBirthTime", "PatientSex", "QualityControlSubject", "PatientSize", "PatientWeight", "PatientAddress",
    "MilitaryRank", "BranchOfService", "CountryOfResidence", "RegionOfResidence", "PatientTelephoneNumbers",
    "EthnicGroup", "PatientReligiousPreference", "PatientComments", "ResponsiblePerson", "ResponsiblePersonRole",
    "ResponsibleOrganization", "PatientSpeciesDescription", "PatientBreedDescription", "BreedRegistrationNumber",
)  # fmt: skip
_GENERAL_STUDY = ("ReferringPhysicianName", "AccessionNumber", "StudyDescription")

UPDATABLE: dict[int, str] = {
    tag_for_keyword(keyword): keyword for keyword in (*_PATIENT_IDENTIFICATION, *_PATIENT_DEMOGRAPHIC, *_GENERAL_STUDY)
}
"""The attributes a bulk update may change, by tag (docs/bulk-update.md lists them)."""

SPECIFIC_CHARACTER_SET = "00080005"
_UTF8 = "ISO_IR 192"
_MAX_VALUE_CHARACTERS = 1024


@dataclass(frozen=True)
class ChangeDataset:
    """The validated ``changeDataset`` of a bulk update: its DICOM JSON elements and the same as a data set."""

    elements: dict[str, dict]

    @property
    def dataset(self) -> Dataset:
        return Dataset.from_json(self.elements)

    @property
    def ascii_only(self) -> bool:
        return all(str(value).isascii() for element in self.elements.values() for value in _texts(element))


def _texts(element: dict) -> list[str]:
    texts = []
    for value in element.get("Value", []):
        texts += value.values() if isinstance(value, dict) else [value]
    return [str(text) for text in texts]


def _describe(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}){' ' + keyword if keyword else ''}"


def parse_change_dataset(document: object) -> ChangeDataset:
    """The ``changeDataset`` of a bulk update request, checked; BadRequest names the first attribute that is wrong."""
    if not isinstance(document, dict) or not document:
        raise BadRequest("changeDataset must be a non-empty DICOM JSON object (PS3.18 F.2) of the attributes to change")
    elements: dict[str, dict] = {}
    for key, element in document.items():
        if not isinstance(key, str) or len(key) != 8 or any(c not in "0123456789abcdefABCDEF" for c in key):
            raise BadRequest(f"changeDataset key {str(key)[:20]!r} is not a tag of 8 hexadecimal digits")
        tag = int(key, 16)
        where = f"changeDataset attribute {_describe(tag)}"
        if tag not in UPDATABLE:
            raise BadRequest(
                f"{where} cannot be updated: a bulk update changes only the non-sequence attributes of the Patient "
                "Identification and Patient Demographic modules and ReferringPhysicianName, AccessionNumber and "
                "StudyDescription (docs/bulk-update.md)"
            )
        expected = dictionary_VR(tag)
        if not isinstance(element, dict) or element.get("vr") != expected:
            raise BadRequest(f'{where} must be a DICOM JSON element with "vr": "{expected}"')
        unknown = sorted(set(element) - {"vr", "Value"})
        if unknown:
            raise BadRequest(f"{where} has {unknown[0][:20]!r}; give its vr and Value only")
        values = element.get("Value")
        if not isinstance(values, list) or not values or any(value is None for value in values):
            raise BadRequest(f"{where} has no value: a bulk update sets values and cannot empty an attribute")
        if sum(len(text) for text in _texts(element)) > _MAX_VALUE_CHARACTERS:
            raise BadRequest(f"{where} is longer than {_MAX_VALUE_CHARACTERS} characters")
        elements[f"{tag:08X}"] = _checked(element, tag, where)
    return ChangeDataset(elements)


def _checked(element: dict, tag: int, where: str) -> dict:
    """The element as DICOM JSON once its values are known to fit its VR (PS3.5 6.2)."""
    try:
        with pydicom_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data_element = Dataset.from_json({f"{tag:08X}": element})[tag]
            values = data_element.value if data_element.VM > 1 else [data_element.value]
            for value in values:  # numbers as strings are checked as their text (PS3.5 6.2: DS, IS)
                validate_value(data_element.VR, str(value) if data_element.VR in ("DS", "IS") else value, RAISE)
            return data_element.to_json_dict(1024, lambda _: "")
    except Exception as error:  # pydicom raises several types for values that do not fit
        raise BadRequest(f"{where}: {error}") from None


def header_end(head: bytes, file_size: int) -> int | None:
    """Where the Pixel Data element (or the end of the data set) starts in a file whose first bytes are ``head``.

    None when ``head`` stops before it: read more of the file.
    """
    fp = io.BytesIO(head)
    try:
        with pydicom_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.dcmread(fp, stop_before_pixels=True, defer_size=len(head) + 1)
    except Exception:
        if len(head) < file_size:
            return None  # an element runs past what was read
        raise
    position = fp.tell()
    if position < len(head):
        return position  # stopped at a Pixel Data tag
    return file_size if len(head) >= file_size else None


@dataclass(frozen=True)
class RewrittenHeader:
    """A header with the change applied and the Specific Character Set it is written in (when it has one)."""

    data: bytes
    character_set: dict | None


def rewrite_header(head: bytes, change: ChangeDataset) -> RewrittenHeader:
    """``head`` (preamble, file meta and data set up to Pixel Data) with ``change`` applied.

    The preamble and file meta are kept byte for byte; every element not changed is written
    back as read. Values the instance's Specific Character Set cannot hold switch the data
    set to UTF-8 (ISO_IR 192), every text re-encoded (PS3.5 6.1.2.3).
    """
    start, transfer_syntax = meta_end(io.BytesIO(head), len(head))
    if transfer_syntax in DEFLATED_SYNTAXES:
        raise ValueError("a deflated data set is rewritten whole (rewrite_file)")
    with pydicom_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True)
        _apply(dataset, change)
        body = DicomBytesIO()
        body.is_little_endian = dataset.file_meta.TransferSyntaxUID != pydicom.uid.ExplicitVRBigEndian
        body.is_implicit_VR = dataset.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
        write_dataset(body, dataset)
        return RewrittenHeader(head[:start] + body.getvalue(), _character_set(dataset))


def rewrite_file(data: bytes, change: ChangeDataset) -> RewrittenHeader:
    """A whole file with ``change`` applied: for a deflated data set, which cannot be spliced."""
    with pydicom_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(io.BytesIO(data))
        _apply(dataset, change)
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=True)
        return RewrittenHeader(out.getvalue(), _character_set(dataset))


def _apply(dataset: Dataset, change: ChangeDataset) -> None:
    if not change.ascii_only and _UTF8 not in (dataset.get("SpecificCharacterSet") or ""):
        dataset.decode()  # every text to str, so that it is written again in UTF-8
        dataset.SpecificCharacterSet = _UTF8
    for element in change.dataset:
        dataset[element.tag] = element


def character_set_of(head: bytes) -> dict | None:
    """The Specific Character Set element of the data set in ``head``, as DICOM JSON (None when it has none)."""
    with pydicom_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _character_set(pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, specific_tags=[0x00080005]))


def _character_set(dataset: Dataset) -> dict | None:
    element = dataset.get_item(0x00080005)
    return None if element is None else dataset[0x00080005].to_json_dict(1024, lambda _: "")
