"""Rendered frames and thumbnails: consumer-format images of a frame (PS3.18 10.4.1.1.3)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from dicom_core.dicom.frames import decode_frame, decoded_frame_from_dataset, decodes_from_frame_bytes
from dicom_core.dicom.rendering import RenderingRefused, RenderOptions, Viewport, render
from dicom_core.dicom.transcode import can_transcode
from dicom_core.errors import BadRequest, NotAcceptable, NotFound
from dicom_core.operations.retrieve.finding import find_instances
from dicom_core.operations.retrieve.frames import check_frame_numbers
from dicom_core.operations.retrieve.reading import read_dataset, read_header_and_frame, require_pixel_data
from dicom_core.services import Services
from dicom_core.storage.layout import Scope
from dicom_core.storage.records import InstanceRecord

THUMBNAIL_SIZE = 128
"""Thumbnails fit in a square of this many pixels unless the client gives a viewport."""


async def retrieve_rendered(services: Services, instance: InstanceRecord, frame_number: int, options: RenderOptions) -> bytes:
    """Frame ``frame_number`` (1-based) of ``instance`` rendered as options.media_type (PS3.18 10.4.1.1.3)."""
    check_frame_numbers(instance, [frame_number])
    if not can_transcode(instance.transfer_syntax):
        raise NotAcceptable(
            f"instance {instance.key.sop} is stored in transfer syntax {instance.transfer_syntax}, which this service "
            "cannot decode, so it cannot be rendered; retrieve its frames with transfer-syntax=* instead"
        )
    if instance.frame_ranges is None or not decodes_from_frame_bytes(instance.transfer_syntax):
        dataset = await read_dataset(services, instance)
        require_pixel_data(instance, dataset)
        pixels = await asyncio.to_thread(decoded_frame_from_dataset, dataset, frame_number - 1)
        header = dataset
    else:
        header, frame = await read_header_and_frame(services, instance, instance.frame_ranges[frame_number - 1])
        pixels = await asyncio.to_thread(decode_frame, header, instance.transfer_syntax, frame)
    try:
        return await asyncio.to_thread(render, header, pixels, options, services.settings.limits.max_rendered_pixels)
    except RenderingRefused as error:
        raise BadRequest(str(error)) from None
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise NotAcceptable(
            f"instance {instance.key.sop} cannot be rendered as {options.media_type} ({type(error).__name__}: {error})"
        ) from error


async def retrieve_thumbnail(services: Services, target: Scope, options: RenderOptions) -> bytes:
    """A small rendering of the middle frame of the middle image (by InstanceNumber) of ``target``."""
    images = [instance for instance in await find_instances(services, target) if instance.has_image]
    if not images:
        raise NotFound("there is no image instance to make a thumbnail of (no instance has Rows (0028,0010))")
    images.sort(key=lambda instance: (instance.instance_number is None, instance.instance_number or 0))
    chosen = images[len(images) // 2]
    if options.viewport is None:
        options = replace(options, viewport=Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return await retrieve_rendered(services, chosen, (chosen.number_of_frames + 1) // 2, options)
