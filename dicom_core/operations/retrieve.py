"""WADO-RS: retrieve instances, metadata, frames, bulk data, rendered images and thumbnails (PS3.18 10.4).

Every retrieve is planned from the index: one point read for an instance, one
key-range query for a series or study. Files are then read from the lake:

- Instances stream as they are read. Up to ``RETRIEVE_CONCURRENCY`` files ahead
  of the one being sent are opened concurrently, each holding at most its first
  download block, so memory does not grow with the size of a study.
- Frames and pixel bulk data are ranged reads of the byte ranges the index keeps
  for each frame; the whole file is read only when the index has none (deflated,
  bit-packed, or fragments without an offset table).
- Metadata comes from the DICOM JSON kept in the index at store time; only an
  instance whose JSON was too large for the index has its file read.

Every read of a file is conditional on the ETag recorded at store time: a file
removed or rewritten in the lake outside the API is reported as such, and its
index entry flagged for reconciliation.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pydicom
from azure.core.exceptions import HttpResponseError, ResourceModifiedError
from pydicom.dataset import Dataset

from dicom_core.dicom.bulkdata import InvalidBulkDataPath, element_value, is_pixel_data, parse_path, slice_ranges
from dicom_core.dicom.frames import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_MEDIA_TYPE,
    decode_frame,
    decoded_frame_from_dataset,
    decodes_from_frame_bytes,
    is_native_little_endian,
    media_type_of,
    native_bytes,
    stored_frames,
)
from dicom_core.dicom.json_model import instance_json
from dicom_core.dicom.parse import pydicom_lock
from dicom_core.dicom.rendering import RenderingRefused, RenderOptions, Viewport, render
from dicom_core.dicom.transcode import can_transcode, to_explicit_vr_little_endian
from dicom_core.errors import BadRequest, Conflict, NotAcceptable, NotFound
from dicom_core.services import Services
from dicom_core.settings import DEFAULT_PARTITION
from dicom_core.storage.index import decode_frame_ranges
from dicom_core.storage.lake import FileMissing
from dicom_core.storage.layout import InstanceKey, Scope
from dicom_core.storage.reconciliation import FILE_CHANGED, FILE_REMOVED, flag_for_reconciliation

RETRIEVE_CONCURRENCY = 8
"""Files (or frames) read from the lake at the same time for one response."""
AS_STORED = "*"
"""The ``transfer-syntax`` parameter value meaning "as stored" (PS3.18 8.7.3.5.1)."""
DICOM = "application/dicom"
THUMBNAIL_SIZE = 128
"""Thumbnails fit in a square of this many pixels unless the client gives a viewport."""
_JSON_BATCH = 64 * 1024
PIXEL_DATA_KEY = "7FE00010"
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class StoredInstance:
    """What the index knows about one stored instance, without its metadata."""

    key: InstanceKey
    path: str
    size: int
    etag: str
    transfer_syntax: str
    number_of_frames: int
    frame_ranges: list[list[tuple[int, int]]] | None
    has_image: bool
    instance_number: int | None

    @classmethod
    def from_entity(cls, entity: dict) -> StoredInstance:
        attributes = json.loads(entity.get("Attributes") or "{}")
        number = attributes.get("00200013", {}).get("Value", [None])[0]
        return cls(
            key=InstanceKey(
                entity["PartitionName"], entity["StudyInstanceUID"], entity["SeriesInstanceUID"], entity["SOPInstanceUID"]
            ),
            path=entity["Path"],
            size=int(entity["Size"]),
            etag=entity["ETag"],
            transfer_syntax=entity["TransferSyntaxUID"],
            number_of_frames=int(entity.get("NumberOfFrames") or 1),
            frame_ranges=decode_frame_ranges(entity.get("FrameRanges")),
            has_image="00280010" in attributes,
            instance_number=number if isinstance(number, int) else None,
        )

    @property
    def relative_url(self) -> str:
        return f"studies/{self.key.study}/series/{self.key.series}/instances/{self.key.sop}"


@dataclass
class Part:
    """One body part of a response: media type, transfer syntax, bytes, and its name in a zip file."""

    media_type: str
    transfer_syntax: str | None
    chunks: AsyncIterator[bytes]
    name: str = ""


@dataclass
class Metadata:
    """A metadata response: its ETag, known before the body, and the DICOM JSON array as a stream."""

    etag: str
    body: AsyncIterator[bytes]


@dataclass
class BulkData:
    """A bulk data value: its size, and a reader of byte range [start, end) that checks the file first."""

    size: int
    open: Callable[[int, int], Awaitable[AsyncIterator[bytes]]]


# -- finding what to retrieve ------------------------------------------------------------------


async def find_instance(services: Services, key: InstanceKey) -> StoredInstance:
    """The instance ``key``; NotFound names the level (study, series, instance) that is missing."""
    entity = await services.index.get_instance(key)
    if entity is None:
        raise await _missing(services, Scope(key.partition, key.study, key.series, key.sop))
    return StoredInstance.from_entity(entity)


async def find_instances(services: Services, target: Scope) -> list[StoredInstance]:
    """The instances of a study, series or instance, in index order (by series, then SOP Instance UID)."""
    if target.sop is not None and target.series is not None:
        return [await find_instance(services, InstanceKey(target.partition, target.study, target.series, target.sop))]
    instances = [
        StoredInstance.from_entity(entity)
        async for entity in services.index.instances_of_study(target.partition, target.study, target.series)
    ]
    if not instances:
        raise await _missing(services, target)
    return instances


async def _entities(services: Services, target: Scope) -> list[dict]:
    """The index entities (with metadata) of a study, series or instance."""
    if target.sop is not None and target.series is not None:
        entity = await services.index.get_instance(InstanceKey(target.partition, target.study, target.series, target.sop))
        entities = [entity] if entity is not None else []
    else:
        entities = [entity async for entity in services.index.instances_of_study(target.partition, target.study, target.series)]
    if not entities:
        raise await _missing(services, target)
    return entities


async def _missing(services: Services, target: Scope) -> NotFound:
    """A 404 that says which level of ``target`` is not stored."""
    where = "" if target.partition == DEFAULT_PARTITION else f" in partition {target.partition}"
    if await services.index.get_study(target.partition, target.study) is None:
        return NotFound(f"study {target.study} is not stored{where}")
    if target.series is not None and await services.index.get_series(target.partition, target.study, target.series) is None:
        return NotFound(f"series {target.series} is not stored in study {target.study}{where}")
    if target.sop is not None:
        return NotFound(f"instance {target.sop} is not stored in series {target.series} of study {target.study}{where}")
    level = f"series {target.series}" if target.series else f"study {target.study}"
    return NotFound(f"{level}{where} has no stored instances")


# -- instances ---------------------------------------------------------------------------------


def check_transfer_syntax(instances: list[StoredInstance], transfer_syntax: str) -> None:
    """NotAcceptable unless every instance can be sent in ``transfer_syntax`` (a UID or ``*``)."""
    for instance in instances:
        if transfer_syntax in (AS_STORED, instance.transfer_syntax):
            continue
        if transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN:
            raise NotAcceptable(
                f"instance {instance.key.sop} is stored in transfer syntax {instance.transfer_syntax} and cannot be "
                f"transcoded to {transfer_syntax}; ask for transfer-syntax=* (as stored) or {EXPLICIT_VR_LITTLE_ENDIAN}"
            )
        if not can_transcode(instance.transfer_syntax):
            raise NotAcceptable(
                f"instance {instance.key.sop} is stored in transfer syntax {instance.transfer_syntax}, which this service "
                f"cannot decode to {EXPLICIT_VR_LITTLE_ENDIAN}; ask for transfer-syntax=* to get it as stored"
            )


async def retrieve_instances(services: Services, target: Scope, transfer_syntax: str) -> AsyncIterator[Part]:
    """The instances of ``target`` as Part 10 files in ``transfer_syntax`` (``*``: as stored), in order.

    The first file is opened before this returns, so that a failure to read it
    (removed, modified, archived) is the response's status, not a broken stream.
    """
    instances = await find_instances(services, target)
    check_transfer_syntax(instances, transfer_syntax)
    return await _started(_in_order(instances, lambda instance: _open_instance(services, instance, transfer_syntax)))


async def _open_instance(services: Services, instance: StoredInstance, transfer_syntax: str) -> Part:
    name = f"{instance.key.study}/{instance.key.series}/{instance.key.sop}.dcm"
    if transfer_syntax in (AS_STORED, instance.transfer_syntax):
        return Part(DICOM, instance.transfer_syntax, await _open_file(services, instance), name)
    data = await _read(services, instance)
    try:
        transcoded = await asyncio.to_thread(to_explicit_vr_little_endian, data)
    except Exception as error:  # decoders raise many types on damaged pixel data
        raise NotAcceptable(
            f"instance {instance.key.sop} could not be decoded from {instance.transfer_syntax} "
            f"({type(error).__name__}: {error}); ask for transfer-syntax=* to get it as stored"
        ) from error
    return Part(DICOM, EXPLICIT_VR_LITTLE_ENDIAN, _single(transcoded), name)


# -- metadata ----------------------------------------------------------------------------------


async def retrieve_metadata(services: Services, target: Scope, base_url: str) -> Metadata:
    """The DICOM JSON (PS3.18 Annex F) of the instances of ``target``, with absolute BulkDataURIs.

    One index read answers it. The ETag is a digest of the index entries (each
    changes when its instance is stored again) and of ``base_url``.
    """
    entities = await _entities(services, target)
    digest = hashlib.sha256(base_url.encode())
    for entity in entities:
        digest.update(f"{entity['RowKey']}\0{entity.metadata.get('etag', '')}\0".encode())
    return Metadata(f'"{digest.hexdigest()[:40]}"', _metadata_body(services, entities, base_url))


async def _metadata_body(services: Services, entities: list[dict], base_url: str) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()

    def instance_json_bytes(entity: dict) -> Awaitable[bytes]:
        if entity.get("Metadata"):
            done = loop.create_future()
            url = f"{base_url}/studies/{entity['StudyInstanceUID']}/series/{entity['SeriesInstanceUID']}"
            done.set_result(_absolute(zlib.decompress(entity["Metadata"]), f"{url}/instances/{entity['SOPInstanceUID']}"))
            return done
        return _metadata_from_file(services, StoredInstance.from_entity(entity), base_url)

    batch = bytearray(b"[")
    first = True
    async for model in _in_order(entities, instance_json_bytes):
        if not first:
            batch += b","
        batch += model
        first = False
        if len(batch) >= _JSON_BATCH:
            yield bytes(batch)
            batch.clear()
    batch += b"]"
    yield bytes(batch)


def _absolute(model: bytes, instance_url: str) -> bytes:
    """Relative ``bulkdata/...`` URIs (json_model.py) made absolute under the instance's URL (PS3.18 F.2.6).

    The stored JSON is compact, so the key and its value's start are one exact byte
    string; a text value cannot contain it because JSON escapes its quotes.
    """
    return model.replace(b'"BulkDataURI":"bulkdata/', b'"BulkDataURI":"' + instance_url.encode() + b"/bulkdata/")


async def _metadata_from_file(services: Services, instance: StoredInstance, base_url: str) -> bytes:
    """The DICOM JSON of an instance whose metadata the index could not hold (over 64 KiB compressed)."""
    data = await _read(services, instance)

    def build() -> bytes:
        with pydicom_lock:
            dataset = pydicom.dcmread(io.BytesIO(data), defer_size=_JSON_BATCH)
            model = instance_json(dataset, None)
        pixel_data = model.get(PIXEL_DATA_KEY)
        if pixel_data is not None:  # always a reference, as at store time, however small
            model[PIXEL_DATA_KEY] = {"vr": pixel_data["vr"], "BulkDataURI": f"bulkdata/{PIXEL_DATA_KEY}"}
        return _absolute(json.dumps(model, separators=(",", ":")).encode(), f"{base_url}/{instance.relative_url}")

    return await asyncio.to_thread(build)


# -- frames ------------------------------------------------------------------------------------


def check_frame_numbers(instance: StoredInstance, numbers: list[int]) -> None:
    """NotFound for a frame number the instance does not have (they are 1-based, PS3.18 10.4.1.1.4)."""
    for number in numbers:
        if not 1 <= number <= instance.number_of_frames:
            raise NotFound(
                f"frame {number} does not exist: instance {instance.key.sop} has {instance.number_of_frames} frame(s), "
                "numbered from 1"
            )


def frames_as_stored(instance: StoredInstance, transfer_syntax: str) -> bool:
    """Whether frames in ``transfer_syntax`` are the stored frame bytes, without decoding."""
    if transfer_syntax in (AS_STORED, instance.transfer_syntax):
        return True
    return transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN and is_native_little_endian(instance.transfer_syntax)


async def retrieve_frames(
    services: Services, instance: StoredInstance, numbers: list[int], transfer_syntax: str
) -> AsyncIterator[Part]:
    """Frames ``numbers`` of ``instance``, as stored or decoded to Explicit VR Little Endian native bytes."""
    check_frame_numbers(instance, numbers)
    as_stored = frames_as_stored(instance, transfer_syntax)
    if as_stored:
        syntax = EXPLICIT_VR_LITTLE_ENDIAN if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN else instance.transfer_syntax
        media_type = media_type_of(instance.transfer_syntax)
    else:
        media_type, syntax = NATIVE_MEDIA_TYPE, EXPLICIT_VR_LITTLE_ENDIAN
        check_transfer_syntax([instance], transfer_syntax)

    if instance.frame_ranges is None or not (as_stored or decodes_from_frame_bytes(instance.transfer_syntax)):
        frames = await _frames_from_file(services, instance, numbers, as_stored)
        return _iterate(Part(media_type, syntax, _single(frame)) for frame in frames)

    async def frame_part(number: int, header: Dataset | None) -> Part:
        frame = await _read_ranges(services, instance, instance.frame_ranges[number - 1])
        if header is not None:
            pixels = await asyncio.to_thread(decode_frame, header, instance.transfer_syntax, frame)
            frame = native_bytes(pixels, int(header.BitsAllocated))
        return Part(media_type, syntax, _single(frame))

    header = None if as_stored else await _read_header(services, instance)
    return await _started(_in_order(numbers, lambda number: frame_part(number, header)))


async def _frames_from_file(services: Services, instance: StoredInstance, numbers: list[int], as_stored: bool) -> list[bytes]:
    """Frames of an instance whose frame ranges the index does not have: read and parse the whole file."""
    dataset = await _read_dataset(services, instance)
    _require_pixel_data(instance, dataset)

    def extract() -> list[bytes]:
        if as_stored:
            return stored_frames(dataset, [number - 1 for number in numbers])
        bits = int(dataset.BitsAllocated)
        return [native_bytes(decoded_frame_from_dataset(dataset, number - 1), bits) for number in numbers]

    return await asyncio.to_thread(extract)


def _require_pixel_data(instance: StoredInstance, dataset: Dataset) -> None:
    if "PixelData" not in dataset:
        raise NotFound(f"instance {instance.key.sop} has no pixel data")


# -- bulk data ---------------------------------------------------------------------------------


async def retrieve_bulk_data(services: Services, key: InstanceKey, segments: list[str]) -> BulkData:
    """The bulk data value at ``segments`` (``7FE00010`` or ``<sequence>/<item>/<tag>``...) of instance ``key``."""
    try:
        path = parse_path(segments)
    except InvalidBulkDataPath as error:
        raise BadRequest(str(error)) from None
    instance = await find_instance(services, key)
    if is_pixel_data(path) and instance.frame_ranges:
        ranges = [piece for frame in instance.frame_ranges for piece in frame]

        async def open_ranges(start: int, end: int) -> AsyncIterator[bytes]:
            return await _open_ranges(services, instance, slice_ranges(ranges, start, end))

        return BulkData(sum(length for _, length in ranges), open_ranges)
    # Elements before the pixel data are in the header; everything else needs the whole file.
    dataset = await (_read_header(services, instance) if instance.frame_ranges else _read_dataset(services, instance))
    value = element_value(dataset, path)
    if value is None:
        raise NotFound(f"instance {key.sop} has no bulk data at {'/'.join(segments)}")

    async def open_value(start: int, end: int) -> AsyncIterator[bytes]:
        return _single(value[start:end])

    return BulkData(len(value), open_value)


async def _open_ranges(services: Services, instance: StoredInstance, ranges: list[tuple[int, int]]) -> AsyncIterator[bytes]:
    """The bytes of ``ranges`` of the file, in order; the first range is opened before this returns."""
    if not ranges:
        return _single(b"")
    first = await _open_file(services, instance, *ranges[0])

    async def rest() -> AsyncIterator[bytes]:
        async for chunk in first:
            yield chunk
        for offset, length in ranges[1:]:
            async for chunk in await _open_file(services, instance, offset, length):
                yield chunk

    return rest()


# -- rendered images and thumbnails ------------------------------------------------------------


async def retrieve_rendered(services: Services, instance: StoredInstance, frame_number: int, options: RenderOptions) -> bytes:
    """Frame ``frame_number`` (1-based) of ``instance`` rendered as options.media_type (PS3.18 10.4.1.1.3)."""
    check_frame_numbers(instance, [frame_number])
    if not can_transcode(instance.transfer_syntax):
        raise NotAcceptable(
            f"instance {instance.key.sop} is stored in transfer syntax {instance.transfer_syntax}, which this service "
            "cannot decode, so it cannot be rendered; retrieve its frames with transfer-syntax=* instead"
        )
    if instance.frame_ranges is None or not decodes_from_frame_bytes(instance.transfer_syntax):
        dataset = await _read_dataset(services, instance)
        _require_pixel_data(instance, dataset)
        pixels = await asyncio.to_thread(decoded_frame_from_dataset, dataset, frame_number - 1)
        header = dataset
    else:
        header, frame = await asyncio.gather(
            _read_header(services, instance), _read_ranges(services, instance, instance.frame_ranges[frame_number - 1])
        )
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


# -- reading the lake --------------------------------------------------------------------------


async def _open_file(
    services: Services, instance: StoredInstance, offset: int = 0, length: int | None = None
) -> AsyncIterator[bytes]:
    """The bytes of the file (or of one range of it), its first block already read and checked."""
    chunks = services.lake.stream(instance.path, offset, length, etag=instance.etag)
    try:
        try:
            first = await anext(chunks, b"")
        except ResourceModifiedError:
            await services.lake.properties(instance.path)  # FileMissing when it is gone rather than rewritten
            raise
    except FileMissing:
        await flag_for_reconciliation(services.index, instance.key, FILE_REMOVED)
        raise NotFound(
            f"instance {instance.key.sop} is in the index but its file {instance.path} was removed from the lake "
            "outside the API; the entry is flagged for reconciliation. Store the instance again to restore it"
        ) from None
    except ResourceModifiedError:
        await flag_for_reconciliation(services.index, instance.key, FILE_CHANGED)
        raise Conflict(
            f"the file of instance {instance.key.sop} ({instance.path}) was modified in the lake outside the API after "
            "it was stored, so it may no longer be that instance; the entry is flagged for reconciliation. Store the "
            "instance again (PUT) to replace it"
        ) from None
    except HttpResponseError as error:
        if getattr(error, "error_code", None) == "BlobArchived":
            raise Conflict(
                f"the file of instance {instance.key.sop} is in the Archive access tier, which this service does not "
                "read. Rehydrate it to the Hot or Cool tier, for example with `az storage blob set-tier --tier Hot "
                f"--rehydrate-priority Standard --container-name {services.lake.file_system} --name {instance.path}` "
                "(standard priority can take up to 15 hours), then retry"
            ) from None
        raise
    return _prepend(first, chunks)


async def _read(services: Services, instance: StoredInstance, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in await _open_file(services, instance, offset, length)])


async def _read_ranges(services: Services, instance: StoredInstance, ranges: list[tuple[int, int]]) -> bytes:
    parts = await asyncio.gather(*(_read(services, instance, offset, length) for offset, length in ranges))
    return b"".join(parts)


async def _read_header(services: Services, instance: StoredInstance) -> Dataset:
    """The data set up to the pixel data, from the bytes before the first frame (one ranged read)."""
    end = min(offset for frame in instance.frame_ranges or [] for offset, _ in frame)
    head = await _read(services, instance, 0, end)
    return await asyncio.to_thread(_parse, head, True)


async def _read_dataset(services: Services, instance: StoredInstance) -> Dataset:
    """The whole data set, pixel data included (the whole file is read)."""
    return await asyncio.to_thread(_parse, await _read(services, instance), False)


def _parse(data: bytes, header_only: bool) -> Dataset:
    with pydicom_lock:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only)


# -- ordering and concurrency ------------------------------------------------------------------


async def _in_order(items: Iterable[T], open_one: Callable[[T], Awaitable[R]]) -> AsyncIterator[R]:
    """``open_one`` of each item, yielded in order, with up to RETRIEVE_CONCURRENCY opened ahead."""
    iterator = iter(items)
    pending: deque[asyncio.Future[R]] = deque()

    def refill() -> None:
        while len(pending) < RETRIEVE_CONCURRENCY:
            item = next(iterator, _END)
            if item is _END:
                return
            pending.append(asyncio.ensure_future(open_one(item)))  # type: ignore[arg-type]

    try:
        refill()
        while pending:
            result = await pending.popleft()
            refill()
            yield result
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


_END: Any = object()


async def _started(items: AsyncIterator[R]) -> AsyncIterator[R]:
    """Wait for the first item, so that its failure becomes the response status; then all of them."""
    first = await anext(items)
    return _prepend(first, items)


async def _prepend(first: R, rest: AsyncIterator[R]) -> AsyncIterator[R]:
    yield first
    async for item in rest:
        yield item


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _iterate(items: Iterable[R]) -> AsyncIterator[R]:
    for item in items:
        yield item
