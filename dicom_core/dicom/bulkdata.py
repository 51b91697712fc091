"""Bulk data references (PS3.18 8.4.1.2, F.2.6) and the bytes they point to.

A stored instance's metadata names each bulk data element by a path relative to
the instance URL: ``bulkdata/<tag>`` at the top level and
``bulkdata/<sequence tag>/<item>/<tag>`` inside sequences (json_model.py). The
value served is the element's value as stored. For encapsulated Pixel Data it is
the data of its fragments, concatenated without item headers or offset table:
the compressed bit stream (for video, the MPEG stream).
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments

from dicom_core.dicom.frames import is_encapsulated
from dicom_core.dicom.parse import PIXEL_DATA_TAGS

ByteRange = tuple[int, int]  # (offset, length)
_BULK_DATA_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


class InvalidBulkDataPath(ValueError):
    """The path does not have the shape tag(/item/tag)*."""


def parse_path(segments: list[str]) -> list[int]:
    """``["00540016", "0", "00181072"]`` as [tag, item, tag]; raises InvalidBulkDataPath."""
    if len(segments) % 2 == 0:
        raise InvalidBulkDataPath("a bulk data path is a tag, or sequence tag/item number/tag pairs ending in a tag")
    path = []
    for position, segment in enumerate(segments):
        is_tag = position % 2 == 0
        valid = len(segment) == 8 and all(c in "0123456789abcdefABCDEF" for c in segment) if is_tag else segment.isdigit()
        if not valid:
            expected = "an 8-digit hexadecimal tag" if is_tag else "an item number"
            raise InvalidBulkDataPath(f"segment {segment[:20]!r} of the bulk data path is not {expected}")
        path.append(int(segment, 16) if is_tag else int(segment))
    return path


def is_pixel_data(path: list[int]) -> bool:
    return len(path) == 1 and path[0] in PIXEL_DATA_TAGS


def element_value(dataset: Dataset, path: list[int]) -> bytes | None:
    """The stored value of the binary element at ``path`` in ``dataset``, or None when there is none."""
    current = dataset
    for position in range(0, len(path) - 1, 2):
        sequence = current.get(path[position])
        if sequence is None or sequence.VR != "SQ" or path[position + 1] >= len(sequence.value):
            return None
        current = sequence.value[path[position + 1]]
    element = current.get(path[-1])
    if element is None or element.VR not in _BULK_DATA_VRS or element.value is None:
        return None
    value = bytes(element.value)
    if is_pixel_data(path) and is_encapsulated(str(dataset.file_meta.TransferSyntaxUID)):
        return b"".join(generate_fragments(value))
    return value


def slice_ranges(ranges: list[ByteRange], start: int, end: int) -> list[ByteRange]:
    """The file ranges that hold bytes ``start``..``end`` (exclusive) of the concatenation of ``ranges``."""
    selected = []
    position = 0
    for offset, length in ranges:
        low, high = max(start, position), min(end, position + length)
        if low < high:
            selected.append((offset + low - position, high - low))
        position += length
        if position >= end:
            break
    return selected
