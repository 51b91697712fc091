"""Read what the service needs from a Part 10 file without loading its pixel data.

The file is parsed up to the Pixel Data element by pydicom; the pixel data
itself is only walked (item headers, never fragment contents) to find where
each frame's bytes sit in the file, so that a later frame retrieve is a ranged
read of the lake (PS3.5 A.4 for the encapsulated format).
"""

from __future__ import annotations

import struct
import threading
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from dicom_core.dicom.errors import InvalidInstance, UnreadableInstance
from dicom_core.dicom.frames import number_of_frames as frames_in
from dicom_core.dicom.structure import StructureLimits, check_structure
from dicom_core.dicom.uids import uid_problem

PREAMBLE_LENGTH = 128
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float Pixel, Double Float Pixel Data
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Elements larger than this stay on disk while the header is parsed.
_DEFER_SIZE = 64 * 1024

DEFAULT_LIMITS = StructureLimits()

# pydicom keeps process-wide state that parsing changes for a moment
# (warnings.catch_warnings here; config.strict_reading inside to_json_dict), so
# everything that reads a data set holds this lock. Parsing a header is short.
pydicom_lock = threading.RLock()


ByteRange = tuple[int, int]  # (offset in the file, length)


@dataclass(frozen=True)
class ParsedInstance:
    """What storing needs of an instance's header, and where its frames are (plain data: it crosses processes)."""

    transfer_syntax: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    number_of_frames: int
    # The VR of the Pixel Data element, None when the instance has no pixel data.
    pixel_data_vr: str | None
    # For each frame, the byte ranges that hold it, in order; None when they
    # cannot be known without decoding (deflated syntaxes, fragments without an
    # offset table, bit-packed data).
    frame_ranges: list[list[ByteRange]] | None


def parse_instance(fp: BinaryIO, size: int, limits: StructureLimits = DEFAULT_LIMITS) -> tuple[Dataset, ParsedInstance]:
    """Parse the Part 10 file in ``fp`` (``size`` bytes) and check what storing requires: its header and facts.

    Raises InvalidInstance with a client-facing reason.
    """
    fp.seek(0)
    head = fp.read(PREAMBLE_LENGTH + 4)
    if len(head) < PREAMBLE_LENGTH + 4 or head[PREAMBLE_LENGTH:] != b"DICM":
        raise UnreadableInstance("not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble (PS3.10 7.1)")
    check_structure(fp, size, limits)
    fp.seek(0)
    with pydicom_lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=_DEFER_SIZE)
        except (InvalidDicomError, EOFError, ValueError, KeyError, NotImplementedError, struct.error, OverflowError) as exc:
            raise UnreadableInstance(f"the DICOM data set cannot be parsed: {exc}") from None
        except Exception as exc:  # pydicom raises a wide range of types on hostile input
            raise UnreadableInstance(f"the DICOM data set cannot be parsed: {type(exc).__name__}: {exc}") from None
        stopped_at = fp.tell()
    truncated = [w for w in caught if "EOF" in str(w.message) or "end of file" in str(w.message).lower()]
    if truncated:
        raise InvalidInstance(f"the file is truncated: {truncated[0].message}")

    transfer_syntax = str(dataset.file_meta.get("TransferSyntaxUID", "")).strip()
    if not transfer_syntax:
        raise InvalidInstance("the file meta information has no TransferSyntaxUID (0002,0010)")
    if uid_problem(transfer_syntax):
        raise InvalidInstance(f"TransferSyntaxUID {transfer_syntax[:80]!r} is not a valid UID: {uid_problem(transfer_syntax)}")
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = str(dataset.get(keyword, "") or "").strip()
        problem = uid_problem(value) if value else f"{keyword} is missing"
        if problem:
            reason = problem if not value else f"{keyword} {value[:80]!r} is not a valid UID: {problem}"
            raise InvalidInstance(reason)
        uids[keyword] = value
    _check_character_set(dataset)
    if "PatientID" not in dataset:
        raise InvalidInstance("PatientID (0010,0020) is missing; it may be empty but must be present")

    number_of_frames = frames_in(dataset)
    pixel_data_vr, frame_ranges = None, None
    if stopped_at < size:
        pixel_data_vr, frame_ranges = _locate_frames(fp, stopped_at, size, dataset, transfer_syntax, number_of_frames)
    return dataset, ParsedInstance(
        transfer_syntax=transfer_syntax,
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        number_of_frames=number_of_frames,
        pixel_data_vr=pixel_data_vr,
        frame_ranges=frame_ranges,
    )


def _check_character_set(dataset: Dataset) -> None:
    """Refuse Specific Character Set values that are not defined terms (PS3.3 C.12.1.1.2)."""
    element = dataset.get("SpecificCharacterSet")
    if element is None:
        return
    values = element if isinstance(element, list | tuple | MultiValue) else [element]
    for value in values:
        term = str(value or "").strip()
        if term not in python_encoding:
            raise InvalidInstance(
                f"SpecificCharacterSet {term[:64]!r} is not a defined term of PS3.3 C.12.1.1.2; text cannot be decoded"
            )


def _locate_frames(
    fp: BinaryIO, position: int, size: int, dataset: Dataset, transfer_syntax: str, number_of_frames: int
) -> tuple[str | None, list[list[ByteRange]] | None]:
    """The VR of the pixel data element at ``position`` and the byte ranges of each frame."""
    syntax = UID(transfer_syntax)
    known = syntax.is_transfer_syntax  # a private syntax: read as explicit VR little endian (PS3.5 10)
    native_vr = "OW" if _bits_allocated(dataset) > 8 else "OB"
    if known and syntax.is_deflated:
        # Offsets in the file do not map to the inflated data set.
        return ("OB" if syntax.is_encapsulated else native_vr), None
    little = syntax.is_little_endian if known else True
    implicit = syntax.is_implicit_VR if known else False
    fp.seek(position)
    header = fp.read(12)
    if len(header) < 8:
        raise InvalidInstance("the file is truncated inside the Pixel Data element header")
    endian = "<" if little else ">"
    group, element = struct.unpack(endian + "HH", header[:4])
    tag = (group << 16) | element
    if tag not in PIXEL_DATA_TAGS:
        return None, None
    # Some writers encode the data set in implicit VR whatever the meta says (as pydicom
    # does, trust the bytes: an explicit VR is two upper-case letters).
    implicit = implicit or not header[4:6].isalpha() or not header[4:6].isupper()
    if implicit:
        (length,) = struct.unpack(endian + "L", header[4:8])
        value_offset, vr = position + 8, native_vr
    else:
        (length,) = struct.unpack(endian + "L", header[8:12])
        value_offset, vr = position + 12, header[4:6].decode("ascii")
    if length == _UNDEFINED_LENGTH:
        return "OB", _encapsulated_frames(fp, value_offset, size, dataset, number_of_frames)
    if value_offset + length > size:
        raise InvalidInstance(
            f"the Pixel Data element declares {length} bytes but the file ends {size - value_offset} bytes after its start"
        )
    return vr, _native_frames(dataset, value_offset, length, number_of_frames)


def _bits_allocated(dataset: Dataset) -> int:
    try:
        return int(dataset.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError):
        return 8


def _native_frames(dataset: Dataset, value_offset: int, length: int, number_of_frames: int) -> list[list[ByteRange]] | None:
    try:
        bits = int(dataset.BitsAllocated)
        frame_pixels = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
    except (AttributeError, TypeError, ValueError):
        return None
    if bits % 8 or frame_pixels == 0:
        return None  # bit-packed frames do not start on byte boundaries
    frame_length = frame_pixels * bits // 8
    if frame_length * number_of_frames > length:
        return None
    return [[(value_offset + index * frame_length, frame_length)] for index in range(number_of_frames)]


def _encapsulated_frames(
    fp: BinaryIO, value_offset: int, size: int, dataset: Dataset, number_of_frames: int
) -> list[list[ByteRange]] | None:
    """Walk the items of encapsulated pixel data (PS3.5 A.4) and group fragments into frames."""
    fp.seek(value_offset)
    offset_table: list[int] = []
    fragments: list[tuple[int, int, int]] = []  # (item offset from first fragment, value offset, length)
    first_fragment_item = None
    position = value_offset
    is_first_item = True
    while True:
        header = fp.read(8)
        if len(header) < 8:
            raise InvalidInstance("the encapsulated Pixel Data ends without a sequence delimiter: the file is truncated")
        group, element, length = struct.unpack("<HHL", header)
        tag = (group << 16) | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM:
            raise InvalidInstance(f"unexpected tag ({group:04X},{element:04X}) inside encapsulated Pixel Data")
        if length == _UNDEFINED_LENGTH or position + 8 + length > size:
            raise InvalidInstance("an encapsulated Pixel Data fragment runs past the end of the file")
        if is_first_item:
            if length % 4:
                raise InvalidInstance("the Basic Offset Table length is not a multiple of 4")
            offset_table = list(struct.unpack(f"<{length // 4}L", fp.read(length))) if length else []
            is_first_item = False
            first_fragment_item = position + 8 + length
        else:
            fragments.append((position - first_fragment_item, position + 8, length))
            fp.seek(length, 1)
        position += 8 + length
    if not fragments:
        return None
    extended = dataset.get("ExtendedOffsetTable")
    if extended is not None and extended.value:
        raw = extended.value
        offset_table = list(struct.unpack(f"<{len(raw) // 8}Q", raw))
    if number_of_frames == 1:
        return [[(value, length) for _, value, length in fragments]]
    if offset_table and len(offset_table) == number_of_frames:
        frames: list[list[ByteRange]] = [[] for _ in range(number_of_frames)]
        frame = -1
        for item_offset, value, length in fragments:
            while frame + 1 < number_of_frames and item_offset >= offset_table[frame + 1]:
                frame += 1
            if frame < 0:
                return None
            frames[frame].append((value, length))
        return frames if all(frames) else None
    if len(fragments) == number_of_frames:
        return [[(value, length)] for _, value, length in fragments]
    return None
