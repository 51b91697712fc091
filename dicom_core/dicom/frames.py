"""Frames of pixel data: their media types, their stored bytes, and decoding one frame.

A frame "as stored" is the native pixel bytes of that frame, or the data of the
fragments that hold it in an encapsulated transfer syntax (PS3.5 8.2, A.4),
without item headers. PS3.18 8.7.3.3.2 (Table 8.7.3-2) names the media type of
each compressed transfer syntax; native frames are ``application/octet-stream``.
Decoding is pydicom's (with the pylibjpeg plugins), so a decoded frame equals
what ``Dataset.pixel_array`` gives for it: colour images in RGB.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import as_pixel_options, get_decoder, pack_bits, pixel_array
from pydicom.uid import UID

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
NATIVE_MEDIA_TYPE = "application/octet-stream"

# PS3.18 Table 8.7.3-2: media types of compressed pixel data and their transfer syntaxes.
SYNTAXES_BY_MEDIA_TYPE: dict[str, tuple[str, ...]] = {
    "image/jpeg": ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "image/jxl": ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "video/mpeg": ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"),
    "video/mp4": (
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
    ),
    "video/H265": ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"),
}
_MEDIA_TYPE_OF_SYNTAX = {syntax: media for media, syntaxes in SYNTAXES_BY_MEDIA_TYPE.items() for syntax in syntaxes}


def media_type_of(transfer_syntax: str) -> str:
    """The media type of a frame in ``transfer_syntax`` as stored (PS3.18 Table 8.7.3-2)."""
    return _MEDIA_TYPE_OF_SYNTAX.get(transfer_syntax, NATIVE_MEDIA_TYPE)


def is_encapsulated(transfer_syntax: str) -> bool:
    syntax = UID(transfer_syntax)
    return syntax.is_transfer_syntax and syntax.is_encapsulated


def is_native_little_endian(transfer_syntax: str) -> bool:
    """Whether frames stored in ``transfer_syntax`` are already Explicit VR Little Endian frames."""
    return transfer_syntax in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


def can_decode(transfer_syntax: str) -> bool:
    """Whether pydicom, with the installed plugins, decodes pixel data in ``transfer_syntax``."""
    try:
        return get_decoder(UID(transfer_syntax)).is_available
    except (NotImplementedError, ValueError):
        return False


def stored_frames(dataset: Dataset, indexes: list[int]) -> list[bytes]:
    """Frames (0-based ``indexes``) of a whole data set as stored; used when the index has no frame ranges."""
    transfer_syntax = str(dataset.file_meta.TransferSyntaxUID)
    count = number_of_frames(dataset)
    if is_encapsulated(transfer_syntax):
        frames = list(generate_frames(dataset.PixelData, number_of_frames=count))
        return [frames[index] for index in indexes]
    if int(dataset.BitsAllocated) == 1:  # bit-packed frames do not start on byte boundaries
        return [bytes(pack_bits(pixel_array(dataset, index=index, raw=True))) for index in indexes]
    length = len(dataset.PixelData) // count
    return [bytes(dataset.PixelData[index * length : (index + 1) * length]) for index in indexes]


def decoded_frame_from_dataset(dataset: Dataset, index: int) -> np.ndarray:
    """Frame ``index`` (0-based) of a whole data set, decoded."""
    return pixel_array(dataset, index=index)


def decodes_from_frame_bytes(transfer_syntax: str) -> bool:
    """Whether a frame decodes from its own bytes and the header (which ends before the pixel data element).

    Not for big endian: whether its 8-bit samples sit in swapped 16-bit words
    depends on the Pixel Data element's VR (OB or OW), which the header does not hold.
    """
    return transfer_syntax != EXPLICIT_VR_BIG_ENDIAN


def decode_frame(header: Dataset, transfer_syntax: str, frame: bytes) -> np.ndarray:
    """One frame's pixels from its stored bytes and the image attributes of ``header``."""
    options = as_pixel_options(header)
    options.update(number_of_frames=1, pixel_keyword="PixelData")
    source = encapsulate([frame]) if is_encapsulated(transfer_syntax) else frame
    array, _ = get_decoder(UID(transfer_syntax)).as_array(source, **options)
    return array


def native_bytes(array: np.ndarray, bits_allocated: int) -> bytes:
    """A decoded frame as Explicit VR Little Endian native pixel bytes (PS3.5 8.1.1)."""
    if bits_allocated == 1:
        return bytes(pack_bits(array))
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def number_of_frames(dataset: Dataset) -> int:
    try:
        return max(int(dataset.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1
