"""Reading instance files from the lake, each read conditional on the ETag the index recorded.

A file removed or rewritten outside the API, or one in the Archive tier, is a precise
404 or 409 here, and its index entry is flagged for reconciliation; callers never see
the SDK's exceptions for these.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace

import pydicom
from azure.core.exceptions import AzureError, HttpResponseError, ResourceModifiedError
from pydicom.dataset import Dataset

from dicom_core.dicom.parse import pydicom_lock
from dicom_core.errors import Conflict, DicomServiceError, NotFound
from dicom_core.operations.retrieve.streams import prepend, single
from dicom_core.services import Services
from dicom_core.storage.lake import FileMissing, Lake
from dicom_core.storage.records import InstanceRecord

WHOLE_FILE_SLACK_BYTES = 64 * 1024
"""Ranges of a file that leave out at most this many of its bytes are read as the whole file (``nearly_whole_file``)."""
FILE_REMOVED = "file removed from the lake outside the API"
FILE_CHANGED = "file modified in the lake outside the API"


def as_received(instance: InstanceRecord) -> InstanceRecord:
    """The instance as first received: its original when a bulk update kept one, else the instance itself.

    An original is written once and never changed, so its reads need no ETag condition.
    """
    if instance.original_path is None:
        return instance
    return replace(instance, path=instance.original_path, etag="", cached=False)


class StaleRecord(Exception):
    """A cached record that the lake contradicts: decide again on a fresh index read (finding.with_instance)."""


class ReadAhead:
    """The whole file at an instance's layout path, requested before its index record is read, unconditionally.

    Sent together with the index read (finding.with_instance), it makes a first retrieve one
    round trip long rather than two. Its bytes are served only for a record that names this
    path and the ETag the lake answered with, which is what the record's own conditional read
    would have returned; for anything else (no record, the original a bulk update kept, another
    ETag, a failed read) the record's own read decides, as without it. A read not taken is closed.

    With ``limit``, only the file's first ``limit`` bytes are asked for, and served only for a
    record whose file is no larger, so that they are the whole file.
    """

    def __init__(self, lake: Lake, path: str, limit: int | None = None) -> None:
        self._path = path
        self._limit = limit
        self._opening = asyncio.ensure_future(lake.open(path, 0, limit))
        self._claimed = False  # one reader asked for it (frames of one request are opened together)
        self._served = False

    def may_serve(self, instance: InstanceRecord) -> bool:
        """Whether this read can be ``instance``'s whole file for a reader that asks now, before its answer is known."""
        fits = self._limit is None or instance.size <= self._limit
        return not self._claimed and instance.path == self._path and bool(instance.etag) and fits

    async def take(self, instance: InstanceRecord) -> AsyncIterator[bytes] | None:
        """The file's chunks if they are ``instance``'s recorded version, whole, else None; for one reader only."""
        if not self.may_serve(instance):
            return None
        self._claimed = True
        try:
            opened = await self._opening
        except (FileMissing, AzureError):
            return None  # the record's own read meets the same and reports it
        if opened.etag != instance.etag:
            return None
        self._served = True
        return opened.chunks

    async def close(self) -> None:
        if self._served:
            return
        if not self._opening.done():
            self._opening.cancel()  # abandoned in flight: its connection is closed, not reused
        elif not self._opening.cancelled() and self._opening.exception() is None:
            await self._opening.result().close()


async def open_file(
    services: Services,
    instance: InstanceRecord,
    offset: int = 0,
    length: int | None = None,
    *,
    ahead: ReadAhead | None = None,
) -> AsyncIterator[bytes]:
    """The bytes of the file (or of one range of it), its first block already read and checked.

    A whole file comes from ``ahead`` when that read is of the recorded version.
    """
    chunks = await ahead.take(instance) if ahead is not None and offset == 0 and length is None else None
    if chunks is None:
        chunks = services.lake.stream(instance.path, offset, length, etag=instance.etag)
    try:
        first = await anext(chunks, b"")
    except (FileMissing, ResourceModifiedError) as error:
        if instance.cached:
            # Replaced or deleted through the API (maybe on another host) since it was cached, or
            # changed outside it: only a fresh record tells which, and a fresh record is not flagged.
            raise StaleRecord(instance.key) from None
        raise await _changed_outside_the_api(services, instance, removed=isinstance(error, FileMissing)) from None
    except HttpResponseError as error:
        if getattr(error, "error_code", None) == "BlobArchived":
            raise Conflict(
                f"the file of instance {instance.key.sop} is in the Archive access tier, which this service does not "
                "read. Rehydrate it to the Hot or Cool tier, for example with `az storage blob set-tier --tier Hot "
                f"--rehydrate-priority Standard --container-name {services.lake.file_system} --name {instance.path}` "
                "(standard priority can take up to 15 hours), then retry"
            ) from None
        raise
    return prepend(first, chunks)


async def _changed_outside_the_api(services: Services, instance: InstanceRecord, *, removed: bool) -> DicomServiceError:
    """The 404 or 409 for a file that no longer has the indexed ETag; its entry is flagged for reconciliation."""
    if not removed:
        try:
            await services.lake.properties(instance.path)
        except FileMissing:
            removed = True  # gone rather than rewritten
    if removed:
        await services.index.flag_for_reconciliation(instance.key, FILE_REMOVED)
        return NotFound(
            f"instance {instance.key.sop} is in the index but its file {instance.path} was removed from the lake "
            "outside the API; the entry is flagged for reconciliation. Store the instance again to restore it"
        )
    await services.index.flag_for_reconciliation(instance.key, FILE_CHANGED)
    return Conflict(
        f"the file of instance {instance.key.sop} ({instance.path}) was modified in the lake outside the API after "
        "it was stored, so it may no longer be that instance; the entry is flagged for reconciliation. Store the "
        "instance again (PUT) to replace it"
    )


async def read(
    services: Services, instance: InstanceRecord, offset: int = 0, length: int | None = None, *, ahead: ReadAhead | None = None
) -> bytes:
    return b"".join([chunk async for chunk in await open_file(services, instance, offset, length, ahead=ahead)])


async def open_ranges(
    services: Services, instance: InstanceRecord, ranges: list[tuple[int, int]], *, ahead: ReadAhead | None = None
) -> AsyncIterator[bytes]:
    """The bytes of ``ranges`` of the file, in chunks; the first read is checked before this returns.

    Ranges that are nearly all of the file, or any ranges of a file that ``ahead`` may serve whole,
    come from one read of the whole file, cut here. A single-frame CT's frame is all of its file but
    the header, a few KB: read whole, it is the same one Get Blob, for bytes that cost nothing on
    Azure; and Azurite, the local default, serves a whole file with 1 ms less CPU than a range of it,
    since for a range under 4 MiB it reads the bytes twice, to compute an MD5 it sends only when
    asked (docs/retrieve.md, Frames).
    """
    if not ranges:
        return single(b"")
    if _read_whole(instance, ranges, ahead):
        return _cut(await open_file(services, instance, ahead=ahead), ranges)
    first = await open_file(services, instance, *ranges[0])

    async def rest() -> AsyncIterator[bytes]:
        async for chunk in first:
            yield chunk
        for offset, length in ranges[1:]:
            async for chunk in await open_file(services, instance, offset, length):
                yield chunk

    return rest()


def nearly_whole_file(instance: InstanceRecord, ranges: list[tuple[int, int]]) -> bool:
    """Whether ``ranges`` are in file order and leave out at most WHOLE_FILE_SLACK_BYTES of the file (read it whole)."""
    return _in_file_order(ranges) and instance.size - sum(length for _, length in ranges) <= WHOLE_FILE_SLACK_BYTES


def _read_whole(instance: InstanceRecord, ranges: list[tuple[int, int]], ahead: ReadAhead | None) -> bool:
    """Whether ``ranges`` come from one read of the whole file: nearly all of it, or of a file read ahead."""
    if nearly_whole_file(instance, ranges):
        return True
    return ahead is not None and ahead.may_serve(instance) and _in_file_order(ranges)


def _in_file_order(ranges: list[tuple[int, int]]) -> bool:
    return all(offset + length <= following for (offset, length), (following, _) in itertools.pairwise(ranges))


async def _cut(chunks: AsyncIterator[bytes], ranges: list[tuple[int, int]]) -> AsyncIterator[bytes]:
    """The bytes of ``ranges`` (ascending, not overlapping) out of ``chunks``, a file's bytes from its start."""
    position, remaining = 0, iter(ranges)
    offset, length = next(remaining)
    async for chunk in chunks:
        chunk_end = position + len(chunk)
        while True:
            start, stop = max(offset, position), min(offset + length, chunk_end)
            if start < stop:
                yield chunk[start - position : stop - position]
            if offset + length > chunk_end:
                break  # the range goes on in the next chunk
            following = next(remaining, None)
            if following is None:
                return
            offset, length = following
        position = chunk_end


async def read_ranges(services: Services, instance: InstanceRecord, ranges: list[tuple[int, int]]) -> bytes:
    """The bytes of ``ranges`` of the file, joined: from one whole read when they are nearly all of it, else read together."""
    if nearly_whole_file(instance, ranges):
        return b"".join([chunk async for chunk in await open_ranges(services, instance, ranges)])
    parts = await asyncio.gather(*(read(services, instance, offset, length) for offset, length in ranges))
    return b"".join(parts)


async def read_header(services: Services, instance: InstanceRecord) -> Dataset:
    """The data set up to the pixel data, from the bytes before the first frame (one ranged read)."""
    head = await read(services, instance, 0, _header_end(instance))
    return await asyncio.to_thread(_parse, head, True)


async def read_header_and_frame(
    services: Services, instance: InstanceRecord, ranges: list[tuple[int, int]], *, ahead: ReadAhead | None = None
) -> tuple[Dataset, bytes]:
    """The data set up to the pixel data and the bytes of a frame's ``ranges``, to decode it.

    From one read of the whole file when the frame is nearly all of it (``open_ranges``: a
    single-frame image), else from the header's range and the frame's, read at the same time.
    """
    if ranges and _read_whole(instance, ranges, ahead):
        data = await read(services, instance, ahead=ahead)
        header = await asyncio.to_thread(_parse, data[: _header_end(instance)], True)
        return header, b"".join(data[offset : offset + length] for offset, length in ranges)
    header, frame = await asyncio.gather(read_header(services, instance), read_ranges(services, instance, ranges))
    return header, frame


def _header_end(instance: InstanceRecord) -> int:
    """Where the header ends: at the first byte of the first frame."""
    return min(offset for frame in instance.frame_ranges or [] for offset, _ in frame)


async def read_dataset(services: Services, instance: InstanceRecord) -> Dataset:
    """The whole data set, pixel data included (the whole file is read)."""
    return await asyncio.to_thread(_parse, await read(services, instance), False)


def require_pixel_data(instance: InstanceRecord, dataset: Dataset) -> None:
    if "PixelData" not in dataset:
        raise NotFound(f"instance {instance.key.sop} has no pixel data")


def _parse(data: bytes, header_only: bool) -> Dataset:
    with pydicom_lock:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only)
