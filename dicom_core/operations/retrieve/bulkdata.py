"""Bulk data values of an instance, whole or a byte range of them (PS3.18 10.4.1.1.5)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from dicom_core.dicom.bulkdata import InvalidBulkDataPath, element_value, is_pixel_data, parse_path, slice_ranges
from dicom_core.errors import BadRequest, NotFound
from dicom_core.operations.retrieve.finding import find_instance
from dicom_core.operations.retrieve.reading import open_ranges, read_dataset, read_header
from dicom_core.operations.retrieve.streams import single
from dicom_core.services import Services
from dicom_core.storage.layout import InstanceKey


@dataclass
class BulkData:
    """A bulk data value: its size, and a reader of byte range [start, end) that checks the file first."""

    size: int
    open: Callable[[int, int], Awaitable[AsyncIterator[bytes]]]


async def retrieve_bulk_data(services: Services, key: InstanceKey, segments: list[str]) -> BulkData:
    """The bulk data value at ``segments`` (``7FE00010`` or ``<sequence>/<item>/<tag>``...) of instance ``key``."""
    try:
        path = parse_path(segments)
    except InvalidBulkDataPath as error:
        raise BadRequest(str(error)) from None
    instance = await find_instance(services, key)
    if is_pixel_data(path) and instance.frame_ranges:
        ranges = [piece for frame in instance.frame_ranges for piece in frame]

        async def open_pixel_data(start: int, end: int) -> AsyncIterator[bytes]:
            return await open_ranges(services, instance, slice_ranges(ranges, start, end))

        return BulkData(sum(length for _, length in ranges), open_pixel_data)
    # Elements before the pixel data are in the header; everything else needs the whole file.
    dataset = await (read_header(services, instance) if instance.frame_ranges else read_dataset(services, instance))
    value = element_value(dataset, path)
    if value is None:
        raise NotFound(f"instance {key.sop} has no bulk data at {'/'.join(segments)}")

    async def open_value(start: int, end: int) -> AsyncIterator[bytes]:
        return single(value[start:end])

    return BulkData(len(value), open_value)
