"""DICOM JSON (PS3.18 Annex F) of stored instances, with bulk data as relative URIs.

Binary values longer than the bulk-data threshold are not inlined: each becomes
``{"vr": ..., "BulkDataURI": "bulkdata/<path>"}`` where ``<path>`` names the
element by its tag and, inside sequences, by the tags and item numbers above it
(``bulkdata/00540016/0/00181072``). Retrieve turns the relative URI into an
absolute one under the instance's URL.

pydicom's ``Dataset.to_json_dict`` builds a full DataElement for every attribute
and costs several milliseconds per instance, most of the time of a store. This
encoder writes the JSON straight from pydicom's raw (undecoded) elements for the
common case: little-endian data sets in a single-byte or UTF-8 character set.
Everything else, element by element, goes through pydicom, and the output is the
same as pydicom's (tests/test_json_model.py compares them on every test file).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

BULK_DATA_THRESHOLD = 1024
# pydicom compares the raw length with the size that base64 would turn into the threshold.
_BULK_RAW_LENGTH = (BULK_DATA_THRESHOLD // 4) * 3
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_SINGLE_VALUED_TEXT = {"LT", "ST", "UT", "UR"}
_PLAIN_TEXT = {"AE", "AS", "CS", "DA", "DT", "TM", "UI"}  # always the default repertoire
_CHARSET_TEXT = {"LO", "SH", "UC", "LT", "ST", "UT", "UR"}
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_SIMPLE_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def instance_json(dataset: Dataset, pixel_data_vr: str | None) -> dict:
    """The DICOM JSON of ``dataset`` (read without its pixel data) with bulk-data references."""
    model = _dataset_json(dataset, _encoding_of(dataset, "latin-1"), "bulkdata")
    if pixel_data_vr:
        model["7FE00010"] = {"vr": pixel_data_vr, "BulkDataURI": "bulkdata/7FE00010"}
    return model


def _encoding_of(dataset: Dataset, inherited: str | None) -> str | None:
    """The Python codec of the data set's character set; None when only pydicom can decode it."""
    raw = dataset._dict.get(0x00080005)
    if raw is None:
        return inherited
    value = raw.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, list | tuple) or (isinstance(value, str) and "\\" in value):
        return None
    return _SIMPLE_CHARSETS.get(str(value or "").strip())


def _dataset_json(dataset: Dataset, encoding: str | None, prefix: str) -> dict:
    model: dict[str, Any] = {}
    for tag in sorted(dataset._dict):
        if tag & 0xFFFF == 0 or tag >> 16 == 0x0002:  # group lengths; file meta is not part of the data set
            continue
        element = dataset._dict[tag]
        key = f"{tag:08X}"
        try:
            if isinstance(element, RawDataElement) and element.is_little_endian and encoding is not None:
                encoded = _raw_json(element, dataset, encoding, f"{prefix}/{key}")
            else:
                encoded = None
            if encoded is None:
                encoded = _pydicom_json(dataset, tag, encoding, f"{prefix}/{key}")
        except (ValueError, TypeError, struct.error, UnicodeError, KeyError, OverflowError, NotImplementedError):
            continue  # an invalid value is left out, as pydicom's suppress_invalid_tags does
        model[key] = encoded
    return model


def _vr_of(element: RawDataElement, dataset: Dataset) -> str:
    vr = element.VR
    if vr is None:  # implicit VR: the dictionary decides
        try:
            vr = dictionary_VR(element.tag)
        except KeyError:
            return "UN"
    if vr == "US or SS":
        return "SS" if dataset._dict.get(0x00280103) is not None and _pixel_representation(dataset) == 1 else "US"
    if vr in ("OB or OW", "US or OW", "US or SS or OW"):
        return "OW"
    return vr


def _pixel_representation(dataset: Dataset) -> int:
    value = dataset.get(0x00280103)
    return int(value.value) if value is not None and value.value is not None else 0


def _raw_json(element: RawDataElement, dataset: Dataset, encoding: str, bulk_uri: str) -> dict | None:
    """The JSON of an undecoded little-endian element, or None to let pydicom do it."""
    if element.VR == "UN":
        return None  # pydicom replaces UN with the dictionary VR of known tags
    vr = _vr_of(element, dataset)
    value = element.value
    if not element.length:
        return {"vr": vr} if vr != "SQ" else None
    if value is None:  # deferred (large) value: still in the file
        return {"vr": vr, "BulkDataURI": bulk_uri} if vr in _BINARY_VRS else None
    if vr in _BINARY_VRS:
        if not value:
            return {"vr": vr}
        if len(value) > _BULK_RAW_LENGTH:
            return {"vr": vr, "BulkDataURI": bulk_uri}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if vr in _NUMBER_FORMATS:
        if not value:
            return {"vr": vr}
        code = _NUMBER_FORMATS[vr]
        size = struct.calcsize(f"<{code}")
        numbers = list(struct.unpack(f"<{len(value) // size}{code}", value[: len(value) - len(value) % size]))
        if vr in ("FL", "FD"):
            numbers = [float(number) for number in numbers]
        return {"vr": vr, "Value": numbers}
    if vr == "AT":
        if not value:
            return {"vr": vr}
        pairs = struct.unpack(f"<{len(value) // 2}H", value)
        return {"vr": vr, "Value": [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs) - 1, 2)]}
    if vr in _PLAIN_TEXT or vr in _CHARSET_TEXT or vr in ("IS", "DS"):
        text = value.decode(encoding if vr in _CHARSET_TEXT else "latin-1")
        if vr in _SINGLE_VALUED_TEXT:
            text = text.rstrip(" \0") if vr != "UR" else text.strip(" \0")
            return {"vr": vr, "Value": [text]} if text else {"vr": vr}
        text = text.rstrip(" \0")
        if not text:
            return {"vr": vr}
        items = text.split("\\")
        if vr == "IS":
            return {"vr": vr, "Value": [int(_number_text(item)) for item in items]}
        if vr == "DS":
            return {"vr": vr, "Value": [float(item) for item in items]}
        return {"vr": vr, "Value": items}
    if vr == "PN":
        text = value.decode(encoding).rstrip(" \0")
        if not text:
            return {"vr": vr}
        people = []
        for person in text.split("\\"):
            groups = person.split("=")
            entry = {"Alphabetic": groups[0]}
            if len(groups) > 1:
                entry["Ideographic"] = groups[1]
            if len(groups) > 2:
                entry["Phonetic"] = groups[2]
            people.append(entry)
        return {"vr": vr, "Value": people}
    return None  # SQ, unknown VRs: pydicom


def _number_text(text: str) -> str:
    stripped = text.strip()
    if not stripped.lstrip("+-").isdigit():
        raise ValueError(f"IS value {text!r} is not an integer")
    return stripped


def _pydicom_json(dataset: Dataset, tag: int, encoding: str | None, bulk_uri: str) -> dict:
    """The JSON of one element through pydicom (sequences, other character sets, big endian)."""
    element = dataset[Tag(tag)]  # decodes the raw element with the data set's character set
    if element.VR == "SQ":
        items = []
        for number, item in enumerate(element.value or Sequence()):
            items.append(_dataset_json(item, _encoding_of(item, encoding), f"{bulk_uri}/{number}"))
        return {"vr": "SQ", "Value": items}
    return element.to_json_dict(bulk_data_element_handler=lambda _: bulk_uri, bulk_data_threshold=BULK_DATA_THRESHOLD)
