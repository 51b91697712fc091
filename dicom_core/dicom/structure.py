"""A bounded pre-scan of a Part 10 file's element structure, before pydicom reads it.

pydicom builds Python objects for every element and sequence item it reads and
inflates a deflated data set into memory at once. A hostile file (millions of
empty sequence items, a deflate bomb, lengths that point past the end) would make
it use unbounded memory or time. This scan reads only element headers (tag, VR,
length; PS3.5 7.1 and 7.5), never values, and refuses such files with a reason.

It covers the whole data set, elements after the Pixel Data included: storing
parses only up to the pixel data, but a retrieve that reads the whole file (a
transcode, a rendering, metadata too large for the index) parses all of it.
Encapsulated pixel data (PS3.5 A.4) is walked item by item; its fragments are
not elements and are not counted. A deflated data set (PS3.5 A.5) is inflated
twice, as a stream: once to bound its size, once to scan it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.datadict import dictionary_VR

from dicom_core.dicom.errors import InvalidInstance

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_SHORT_LENGTH_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
    b"PN", b"SH", b"SL", b"SS", b"ST", b"SV", b"TM", b"UI", b"UL", b"US", b"UV",
}  # fmt: skip
_MAX_DEPTH = 32
_ELEMENT_HEADER = 8  # the shortest: tag, then VR and 2-byte length or a 4-byte length (PS3.5 7.1)
_INFLATE_CHUNK = 1024 * 1024
DEFLATED_SYNTAXES = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}


@dataclass(frozen=True)
class StructureLimits:
    """Defaults as the settings DICOM_MAX_ELEMENTS and DICOM_MAX_INFLATED_BYTES have them."""

    max_elements: int = 500_000  # data elements and sequence items, at every depth
    max_inflated_bytes: int = 256 * 1024**2  # size of a deflated data set once inflated


_IMPLICIT_HEADER = {True: struct.Struct("<HHL"), False: struct.Struct(">HHL")}  # tag, 4-byte length
_EXPLICIT_HEADER = {True: struct.Struct("<HH2sH"), False: struct.Struct(">HH2sH")}  # tag, VR, 2-byte length
_LONG_LENGTH = {True: struct.Struct("<L"), False: struct.Struct(">L")}


class _Scan:
    """A walk over the element headers of a data set that starts at ``position`` of a ``size``-byte file.

    It keeps its own position and reads each header with one read (two for a 4-byte length
    after a VR): a scan of a CT header reads hundreds of headers, and every call counts.
    """

    def __init__(
        self, fp: BinaryIO | _InflatedReader, position: int, size: int, little: bool, implicit: bool, limits: StructureLimits
    ) -> None:
        self._read = fp.read
        self._seek = fp.seek
        self.position = position
        self.size = size
        self.implicit = implicit
        self.limits = limits
        self.elements = 0
        self._implicit_header = _IMPLICIT_HEADER[little]
        self._explicit_header = _EXPLICIT_HEADER[little]
        self._long_length = _LONG_LENGTH[little]

    def read(self, count: int) -> bytes:
        data = self._read(count)
        if len(data) < count:
            raise InvalidInstance("the file is truncated: an element header runs past the end of the file")
        self.position += count
        return data

    def skip_to(self, position: int) -> None:
        self._seek(position)
        self.position = position

    def count(self) -> None:
        self.elements += 1
        if self.elements > self.limits.max_elements:
            raise InvalidInstance(
                f"the data set has more than {self.limits.max_elements} elements and sequence items (setting DICOM_MAX_ELEMENTS)"
            )

    def tag_and_length(self) -> tuple[int, bytes | None, int]:
        header = self.read(_ELEMENT_HEADER)
        group, element, length = self._implicit_header.unpack(header)
        if self.implicit or group == 0xFFFE:  # items and delimiters: always implicit form (PS3.5 7.5)
            return (group << 16) | element, None, length
        _, _, vr, length = self._explicit_header.unpack(header)
        if vr in _LONG_LENGTH_VRS:
            return (group << 16) | element, vr, self._long_length.unpack(self.read(4))[0]
        if vr not in _SHORT_LENGTH_VRS:
            raise InvalidInstance(f"element ({group:04X},{element:04X}) has the unknown VR {vr!r} (PS3.5 6.2)")
        return (group << 16) | element, vr, length

    def dataset(self, end: int | None, depth: int) -> None:
        """Scan elements until ``end`` (or an item delimiter when ``end`` is None)."""
        if depth > _MAX_DEPTH:
            raise InvalidInstance(f"sequences are nested more than {_MAX_DEPTH} deep")
        while end is None or self.position < end:
            if end is None and self.position >= self.size:
                raise InvalidInstance("the file is truncated inside a sequence item of undefined length")
            if depth == 0 and end is not None and end - self.position < _ELEMENT_HEADER:
                return  # a few stray bytes after the last element: pydicom stops there too
            tag, vr, length = self.tag_and_length()
            if tag == _ITEM_DELIMITER and end is None:
                return
            self.count()
            is_sequence = vr == b"SQ" or (vr is None and _dictionary_vr(tag) == "SQ")
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA:
                    self.fragments()
                    continue
                if is_sequence or vr == b"UN" or vr is None:
                    self.sequence(None, depth)
                    continue
                raise InvalidInstance(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has an undefined length but is not a sequence"
                )
            value_end = self.position + length
            if value_end > self.size:
                raise InvalidInstance(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes but the file ends "
                    f"{self.size - self.position} bytes after its header"
                )
            if is_sequence:
                self.sequence(value_end, depth)
            self.skip_to(value_end)

    def fragments(self) -> None:
        """Skip the items of encapsulated pixel data up to its sequence delimiter (PS3.5 A.4)."""
        while True:
            tag, _, length = self.tag_and_length()
            if tag == _SEQUENCE_DELIMITER:
                return
            if tag != _ITEM or length == _UNDEFINED:
                raise InvalidInstance(
                    f"encapsulated Pixel Data holds ({tag >> 16:04X},{tag & 0xFFFF:04X}) where a fragment must be"
                )
            if self.position + length > self.size:
                raise InvalidInstance("an encapsulated Pixel Data fragment runs past the end of the file")
            self.skip_to(self.position + length)

    def sequence(self, end: int | None, depth: int) -> None:
        while end is None or self.position < end:
            tag, _, length = self.tag_and_length()
            if tag == _SEQUENCE_DELIMITER:
                if end is None:
                    return
                continue
            if tag != _ITEM:
                raise InvalidInstance(f"a sequence holds ({tag >> 16:04X},{tag & 0xFFFF:04X}) where an item must be")
            self.count()
            if length == _UNDEFINED:
                self.dataset(None, depth + 1)
            else:
                item_end = self.position + length
                if item_end > self.size:
                    raise InvalidInstance("a sequence item declares more bytes than the file holds")
                self.dataset(item_end, depth + 1)
                self.skip_to(item_end)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


class _InflatedReader:
    """The inflated data set of a deflated file as a forward-only file, holding one chunk at a time.

    Seeking forward inflates and discards.
    """

    def __init__(self, fp: BinaryIO, start: int) -> None:
        fp.seek(start)
        self._fp = fp
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = b""
        self._offset = 0  # of the next byte in _buffer
        self._base = 0  # position in the inflated data set of _buffer[0]

    def _inflate(self) -> bool:
        """Replace the consumed part of the buffer with more inflated bytes; False at the end."""
        data = self._inflater.unconsumed_tail or self._fp.read(_INFLATE_CHUNK)
        if not data or self._inflater.eof:
            return False
        self._base += self._offset
        self._buffer = self._buffer[self._offset :] + self._inflater.decompress(data, _INFLATE_CHUNK)
        self._offset = 0
        return True

    def read(self, count: int) -> bytes:
        while len(self._buffer) - self._offset < count and self._inflate():
            pass
        data = self._buffer[self._offset : self._offset + count]
        self._offset += len(data)
        return data

    def seek(self, offset: int) -> None:
        while offset > self._base + len(self._buffer):
            self._offset = len(self._buffer)
            if not self._inflate():
                return
        self._offset = offset - self._base


def meta_end(fp: BinaryIO, size: int) -> tuple[int, str]:
    """Where the file meta information (group 0002, explicit VR little endian) ends, and its transfer syntax."""
    fp.seek(132)
    transfer_syntax = ""
    while fp.tell() + 8 <= size:
        start = fp.tell()
        header = fp.read(8)
        group, element = struct.unpack("<HH", header[:4])
        if group != 0x0002:
            fp.seek(start)
            return start, transfer_syntax
        vr = header[4:6]
        length = struct.unpack("<L", fp.read(4))[0] if vr in _LONG_LENGTH_VRS else struct.unpack("<H", header[6:8])[0]
        if fp.tell() + length > size:
            raise InvalidInstance("the file meta information runs past the end of the file")
        value = fp.read(length)
        if element == 0x0010:
            transfer_syntax = value.decode("ascii", "replace").rstrip("\0 ")
    return size, transfer_syntax


def check_structure(fp: BinaryIO, size: int, limits: StructureLimits) -> None:
    """Refuse files whose structure would make parsing unbounded (see the module docstring)."""
    start, transfer_syntax = meta_end(fp, size)
    if transfer_syntax in DEFLATED_SYNTAXES:
        inflated_size = _inflated_size(fp, start, limits)
        _Scan(_InflatedReader(fp, start), 0, inflated_size, True, False, limits).dataset(inflated_size, depth=0)
        return
    little = transfer_syntax != "1.2.840.10008.1.2.2"
    implicit = transfer_syntax == "1.2.840.10008.1.2"
    if not implicit and start + 6 <= size:
        # Some writers use implicit VR whatever the meta says: trust the bytes, as pydicom does.
        fp.seek(start + 4)
        vr = fp.read(2)
        implicit = not (vr.isalpha() and vr.isupper())
    fp.seek(start)
    _Scan(fp, start, size, little, implicit, limits).dataset(size, depth=0)


def _inflated_size(fp: BinaryIO, start: int, limits: StructureLimits) -> int:
    """The size of the deflated data set at ``start`` once inflated, refused beyond the limit."""
    fp.seek(start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = 0
    while True:
        chunk = fp.read(_INFLATE_CHUNK)
        data = inflater.unconsumed_tail + chunk if inflater.unconsumed_tail else chunk
        if not data:
            break
        try:
            while data:
                output = inflater.decompress(data, _INFLATE_CHUNK)
                inflated += len(output)
                if inflated > limits.max_inflated_bytes:
                    raise InvalidInstance(
                        f"the deflated data set inflates to more than {limits.max_inflated_bytes} bytes "
                        "(setting DICOM_MAX_INFLATED_BYTES)"
                    )
                data = inflater.unconsumed_tail
                if inflater.eof:
                    return inflated
        except zlib.error as error:
            raise InvalidInstance(f"the deflated data set cannot be inflated: {error}") from None
        if not chunk:
            break
    return inflated
