"""Transcode a stored instance, or one frame, to another transfer syntax (PS3.5 A.2, A.4.4, A.4.6; PS3.18 8.7.3.5).

Explicit VR Little Endian is the default transfer syntax of ``application/dicom``
in WADO-RS, so a retrieve without a ``transfer-syntax`` parameter, or one asking
for 1.2.840.10008.1.2.1, gets every instance in it: compressed pixel data is
decoded by pydicom's decoders (pylibjpeg, Pillow), big-endian and deflated data
sets are rewritten. A client may also ask for JPEG 2000 Lossless (PS3.5 A.4.4) or
HTJ2K Lossless (PS3.5 A.4.6): each frame is decoded and encoded on its own, so
memory holds one decoded frame at a time, by imagecodecs: OpenJPEG for JPEG 2000,
OpenJPH for HTJ2K (pydicom 3.0 has no HTJ2K encoder, and pylibjpeg-openjpeg's
encoder is not safe in concurrent threads), both reversible, so the pixels decode
to exactly the source's. The SOP Instance UID is kept: the instance is the
same one, and a lossless target adds no loss (PS3.5 8.2.4).
"""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_core.dicom.frames import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    can_decode,
    decoded_frame_from_dataset,
    is_encapsulated,
    native_bytes,
    number_of_frames,
)
from dicom_core.dicom.parse import pydicom_lock

JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
TARGET_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, JPEG_2000_LOSSLESS, HTJ2K_LOSSLESS)
"""The transfer syntaxes this service transcodes to, the PS3.18 default first."""


class CannotEncode(ValueError):
    """The pixel data cannot be put in the target transfer syntax; the message says why."""


def can_transcode(transfer_syntax: str) -> bool:
    """Whether a file stored in ``transfer_syntax`` can be decoded, to be sent in another syntax."""
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        return False
    return not is_encapsulated(transfer_syntax) or can_decode(transfer_syntax)


def transcode(data: bytes, target: str) -> bytes:
    """The Part 10 file ``data`` in ``target``, one of TARGET_SYNTAXES (blocking; run it in a thread)."""
    with pydicom_lock:
        dataset = pydicom.dcmread(io.BytesIO(data))
    if str(dataset.file_meta.TransferSyntaxUID) == target:
        return data
    if target == EXPLICIT_VR_LITTLE_ENDIAN:
        return _to_explicit_vr_little_endian(dataset)
    return _to_lossless_jpeg_2000(dataset, target)


def encoded_frame(pixels: np.ndarray, header: Dataset, target: str) -> bytes:
    """A decoded frame as the bytes of a frame in ``target``: native pixels, or one JPEG 2000 codestream."""
    bits_allocated = int(header.BitsAllocated)
    if target == EXPLICIT_VR_LITTLE_ENDIAN:
        return native_bytes(pixels, bits_allocated)
    if bits_allocated not in (8, 16) or pixels.dtype.kind not in "iu":
        raise CannotEncode(f"{bits_allocated}-bit pixels cannot be encoded in JPEG 2000 here (8 or 16 bits only)")
    pixels = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))  # the encoders take native order
    # Reversible wavelets and no colour transform: lossless, and RGB stays RGB (PS3.5 8.2.4). Both
    # encoders write the samples' full precision (8 or 16 bits), which decodes to the same values.
    try:
        if target == HTJ2K_LOSSLESS:
            return bytes(imagecodecs.htj2k_encode(pixels, reversible=True, rgb=False))
        return bytes(imagecodecs.jpeg2k_encode(pixels, codecformat="J2K", reversible=True, mct=False))
    except (RuntimeError, ValueError) as error:  # imagecodecs' codec errors derive from RuntimeError
        raise CannotEncode(str(error)) from error


def _to_lossless_jpeg_2000(dataset: Dataset, target: str) -> bytes:
    """Every frame decoded and encoded on its own, then encapsulated, one fragment per frame (PS3.5 A.4)."""
    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        raise CannotEncode("float pixel data has no encapsulated transfer syntax (PS3.5 A.4)")
    if "PixelData" not in dataset:  # nothing to compress: the data set alone, encoded as the syntax says
        return _written(dataset, UID(target))
    frames = [
        encoded_frame(decoded_frame_from_dataset(dataset, index), dataset, target) for index in range(number_of_frames(dataset))
    ]
    if int(dataset.SamplesPerPixel) == 3:
        dataset.PhotometricInterpretation = "RGB"  # pydicom decodes YBR to RGB
        dataset.PlanarConfiguration = 0  # the decoded samples are interleaved
    dataset.PixelData = encapsulate(frames)
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    return _written(dataset, UID(target))


def _to_explicit_vr_little_endian(dataset: Dataset) -> bytes:
    transfer_syntax = str(dataset.file_meta.TransferSyntaxUID)
    big_endian = not UID(transfer_syntax).is_little_endian
    if is_encapsulated(transfer_syntax):
        dataset.decompress(generate_instance_uid=False)  # sets Explicit VR Little Endian, RGB for YBR
    elif big_endian and "PixelData" in dataset and int(dataset.BitsAllocated) > 1:
        array = dataset.pixel_array  # pydicom reads the big-endian values (OW words are swapped even at 8 bits)
        dataset.PixelData = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        dataset["PixelData"].VR = "OW" if int(dataset.BitsAllocated) > 8 else "OB"
    return _written(dataset, ExplicitVRLittleEndian)


def _written(dataset: Dataset, target: UID) -> bytes:
    """``dataset`` as a Part 10 file in ``target``, a little-endian explicit VR syntax (PS3.5 A.2, A.4)."""
    big_endian = not dataset.file_meta.TransferSyntaxUID.is_little_endian
    dataset.file_meta.TransferSyntaxUID = target
    for _ in dataset.iterall():
        pass  # decode every raw element, so each is written with its VR even if read in implicit VR
    output = io.BytesIO()
    if big_endian:  # pydicom re-encodes every element only when forced to
        pydicom.dcmwrite(output, dataset, implicit_vr=False, little_endian=True, force_encoding=True)
    else:
        dataset.save_as(output, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return output.getvalue()
