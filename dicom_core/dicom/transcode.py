"""Transcode a stored Part 10 file to Explicit VR Little Endian (PS3.5 A.2; PS3.18 8.7.3.5.2).

Explicit VR Little Endian is the default transfer syntax of ``application/dicom``
in WADO-RS, so a retrieve without a ``transfer-syntax`` parameter, or one asking
for 1.2.840.10008.1.2.1, gets every instance in it: compressed pixel data is
decoded by pydicom's decoders (pylibjpeg, Pillow), big-endian and deflated data
sets are rewritten. The SOP Instance UID is kept: the instance is the same one.
"""

from __future__ import annotations

import io

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_core.dicom.frames import EXPLICIT_VR_LITTLE_ENDIAN, can_decode, is_encapsulated
from dicom_core.dicom.parse import pydicom_lock


def can_transcode(transfer_syntax: str) -> bool:
    """Whether a file stored in ``transfer_syntax`` can be sent as Explicit VR Little Endian."""
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        return False
    return not is_encapsulated(transfer_syntax) or can_decode(transfer_syntax)


def to_explicit_vr_little_endian(data: bytes) -> bytes:
    """The Part 10 file ``data`` rewritten in Explicit VR Little Endian (blocking; run it in a thread)."""
    with pydicom_lock:
        dataset = pydicom.dcmread(io.BytesIO(data))
    transfer_syntax = str(dataset.file_meta.TransferSyntaxUID)
    if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return data
    big_endian = not UID(transfer_syntax).is_little_endian
    if is_encapsulated(transfer_syntax):
        dataset.decompress(generate_instance_uid=False)  # sets Explicit VR Little Endian, RGB for YBR
    elif big_endian and "PixelData" in dataset and int(dataset.BitsAllocated) > 1:
        array = dataset.pixel_array  # pydicom reads the big-endian values (OW words are swapped even at 8 bits)
        dataset.PixelData = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        dataset["PixelData"].VR = "OW" if int(dataset.BitsAllocated) > 8 else "OB"
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for _ in dataset.iterall():
        pass  # decode every raw element, so each is written with its VR even if read in implicit VR
    output = io.BytesIO()
    if big_endian:  # pydicom re-encodes every element only when forced to
        pydicom.dcmwrite(output, dataset, implicit_vr=False, little_endian=True, force_encoding=True)
    else:
        dataset.save_as(output, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return output.getvalue()
