"""Frames of an instance, as stored or decoded to native bytes (PS3.18 10.4.1.1.4): ranged reads of the lake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_core.dicom.frames import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    decode_frame,
    decoded_frame_from_dataset,
    decodes_from_frame_bytes,
    is_native_little_endian,
    stored_frames,
)
from dicom_core.dicom.transcode import CannotEncode, encoded_frame
from dicom_core.errors import NotAcceptable, NotFound
from dicom_core.operations.retrieve.finding import with_instance
from dicom_core.operations.retrieve.instances import AS_STORED, Part, check_transfer_syntax
from dicom_core.operations.retrieve.reading import (
    ReadAhead,
    open_ranges,
    read_dataset,
    read_header_and_frame,
    read_ranges,
    require_pixel_data,
)
from dicom_core.operations.retrieve.streams import in_order, iterate, single, started
from dicom_core.services import Services
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.records import InstanceRecord

FRAME_READ_AHEAD_BYTES = 1024 * 1024
"""The frames of an instance this process has not seen come from a read of its file sent with the index read when
the file is no larger than this (a single-frame CT, MR or ultrasound image; a small multi-frame one): one round trip
instead of two. A larger file's read-ahead asks for this much and is dropped."""


@dataclass(frozen=True)
class FrameRendition:
    """What the client negotiated for frames: the parts' media type and the transfer syntax (``*``: as stored)."""

    media_type: str
    transfer_syntax: str


def check_frame_numbers(instance: InstanceRecord, numbers: list[int]) -> None:
    """NotFound for a frame number the instance does not have (they are 1-based, PS3.18 10.4.1.1.4)."""
    for number in numbers:
        if not 1 <= number <= instance.number_of_frames:
            raise NotFound(
                f"frame {number} does not exist: instance {instance.key.sop} has {instance.number_of_frames} frame(s), "
                "numbered from 1"
            )


def frames_as_stored(instance: InstanceRecord, transfer_syntax: str) -> bool:
    """Whether frames in ``transfer_syntax`` are the stored frame bytes, without decoding."""
    if transfer_syntax in (AS_STORED, instance.transfer_syntax):
        return True
    return transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN and is_native_little_endian(instance.transfer_syntax)


async def retrieve_frames(
    services: Services, key: InstanceKey, numbers: list[int], negotiate: Callable[[str], FrameRendition]
) -> tuple[FrameRendition, AsyncIterator[Part]]:
    """Frames ``numbers`` of instance ``key``, in the rendition ``negotiate`` picks for its stored transfer syntax.

    The instance may come from the cached record (finding.with_instance), so the rendition
    is negotiated here, from the record the frames are read with.
    """

    async def use(instance: InstanceRecord, ahead: ReadAhead | None) -> tuple[FrameRendition, AsyncIterator[Part]]:
        rendition = negotiate(instance.transfer_syntax)
        return rendition, await _frames(services, instance, numbers, rendition, ahead)

    return await with_instance(services, key, use, read_ahead=True, read_ahead_limit=FRAME_READ_AHEAD_BYTES)


async def _frames(
    services: Services, instance: InstanceRecord, numbers: list[int], rendition: FrameRendition, ahead: ReadAhead | None
) -> AsyncIterator[Part]:
    """Frames ``numbers`` of ``instance`` in ``rendition``: as stored, or decoded and encoded in the transfer syntax asked for."""
    check_frame_numbers(instance, numbers)
    requested = rendition.transfer_syntax
    as_stored = frames_as_stored(instance, requested)
    if as_stored:
        syntax = EXPLICIT_VR_LITTLE_ENDIAN if requested == EXPLICIT_VR_LITTLE_ENDIAN else instance.transfer_syntax
    else:
        syntax = requested
        check_transfer_syntax([instance], requested)
    media_type = rendition.media_type

    if instance.frame_ranges is None or not (as_stored or decodes_from_frame_bytes(instance.transfer_syntax)):
        frames = await _frames_from_file(services, instance, numbers, None if as_stored else syntax)
        return iterate(Part(media_type, syntax, single(frame), size=len(frame)) for frame in frames)

    frame_ranges = instance.frame_ranges

    async def stored_part(number: int) -> Part:  # streamed from the lake
        ranges = frame_ranges[number - 1]
        chunks = await open_ranges(services, instance, ranges, ahead=ahead)
        return Part(media_type, syntax, chunks, size=sum(length for _, length in ranges))

    if as_stored:
        return await started(in_order(numbers, stored_part))
    # The header, and the first frame with it (from one read when that frame is nearly all of the file).
    header, first = await read_header_and_frame(services, instance, frame_ranges[numbers[0] - 1], ahead=ahead)

    async def transcoded_part(number: int) -> Part:
        frame = first if number == numbers[0] else await read_ranges(services, instance, frame_ranges[number - 1])
        encoded = await asyncio.to_thread(_transcoded_frame, header, instance, frame, syntax)
        return Part(media_type, syntax, single(encoded), size=len(encoded))

    return await started(in_order(numbers, transcoded_part))


def _transcoded_frame(header: Dataset, instance: InstanceRecord, frame: bytes, target: str) -> bytes:
    return _encoded(instance, decode_frame(header, instance.transfer_syntax, frame), header, target)


def _encoded(instance: InstanceRecord, pixels: np.ndarray, header: Dataset, target: str) -> bytes:
    """A decoded frame in ``target``; NotAcceptable saying what to ask for when it cannot be encoded in it."""
    try:
        return encoded_frame(pixels, header, target)
    except CannotEncode as error:
        raise NotAcceptable(
            f"the frames of instance {instance.key.sop} cannot be encoded in {target} ({error}); "
            f"ask for transfer-syntax=* (as stored) or {EXPLICIT_VR_LITTLE_ENDIAN}"
        ) from error


async def _frames_from_file(services: Services, instance: InstanceRecord, numbers: list[int], target: str | None) -> list[bytes]:
    """Frames of an instance whose frame ranges the index does not have: read and parse the whole file.

    ``target``: the transfer syntax to encode them in; None, as stored.
    """
    dataset = await read_dataset(services, instance)
    require_pixel_data(instance, dataset)

    def extract() -> list[bytes]:
        if target is None:
            return stored_frames(dataset, [number - 1 for number in numbers])
        return [_encoded(instance, decoded_frame_from_dataset(dataset, number - 1), dataset, target) for number in numbers]

    return await asyncio.to_thread(extract)
