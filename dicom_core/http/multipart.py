"""Streaming reader of STOW-RS request bodies (PS3.18 8.6.1.2, RFC 2387 multipart/related).

Parts are written to spooled temporary files as the body arrives (held in memory
up to a small size, on local disk beyond), so memory does not grow with the size
of a request or of an instance. The multipart grammar is python-multipart's.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MAX_BOUNDARY_LENGTH, MultipartParser

from dicom_core.dicom.failure_reasons import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from dicom_core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from dicom_core.http.media_types import DICOM, MediaType
from dicom_core.operations.store import ReceivedPart
from dicom_core.settings import Limits


def check_store_media_type(content_type: str | None) -> MediaType:
    """Accept ``multipart/related; type="application/dicom"`` or a single ``application/dicom`` body."""
    if not content_type:
        raise UnsupportedMediaType(
            'the request has no Content-Type; send multipart/related; type="application/dicom" or application/dicom'
        )
    media_type = MediaType.parse(content_type)
    if media_type.type == DICOM:
        return media_type
    if media_type.type != "multipart/related":
        raise UnsupportedMediaType(
            f'Content-Type {media_type.type} is not supported; send multipart/related; type="application/dicom" '
            "or application/dicom"
        )
    part_type = media_type.parameters.get("type", DICOM).lower()
    if part_type != DICOM:
        raise UnsupportedMediaType(
            f"multipart/related with type={part_type} is not supported; only application/dicom parts can be stored"
        )
    boundary = media_type.parameters.get("boundary", "")
    if not boundary:
        raise BadRequest("the multipart/related Content-Type has no boundary parameter")
    # RFC 2046 5.1.1 lets senders make boundaries of at most 70 characters, but Orthanc's DICOMweb plugin
    # sends 73, so accept what the parser accepts; it refuses longer ones itself
    # (docs/architecture.md, "Facts the code relies on").
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise BadRequest(
            f"the multipart boundary is {len(boundary)} characters long; at most {MAX_BOUNDARY_LENGTH} are accepted "
            "(RFC 2046 5.1.1 allows 70)"
        )
    return media_type


class _Limit:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.received = 0

    def count(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limits.max_request_bytes:
            raise PayloadTooLarge(
                f"the request body exceeds the maximum request size of {self.limits.max_request_bytes} bytes "
                "(setting DICOM_MAX_REQUEST_BYTES); split it into several requests"
            )


def _new_spool(limits: Limits) -> tempfile.SpooledTemporaryFile:
    return tempfile.SpooledTemporaryFile(max_size=limits.spool_memory_bytes, mode="w+b")


def _too_large(limits: Limits) -> tuple[int, str]:
    return (
        OUT_OF_RESOURCES,
        f"the instance exceeds the maximum instance size of {limits.max_instance_bytes} bytes (setting DICOM_MAX_INSTANCE_BYTES)",
    )


async def read_single_part(body: AsyncIterator[bytes], limits: Limits) -> AsyncIterator[ReceivedPart]:
    """A whole ``application/dicom`` body as one part."""
    limit = _Limit(limits)
    spool = _new_spool(limits)
    size = 0
    try:
        async for chunk in body:
            limit.count(chunk)
            size += len(chunk)
            if size <= limits.max_instance_bytes:
                spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    if size == 0:
        spool.close()
        raise BadRequest("the request body is empty")
    yield ReceivedPart(DICOM, spool, size, _too_large(limits) if size > limits.max_instance_bytes else None)


class _PartCollector:
    """python-multipart callbacks that write each part to its own spool file.

    A callback can fire several times for one header or part when a network chunk
    splits it (python-multipart calls them once per piece), so header names and values accumulate.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.finished: list[ReceivedPart] = []
        self.parts_seen = 0
        self.ended = False
        self._spool: tempfile.SpooledTemporaryFile | None = None
        self._size = 0
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self) -> None:
        self.parts_seen += 1
        if self.parts_seen > self.limits.max_parts_per_request:
            raise PayloadTooLarge(
                f"the request has more than {self.limits.max_parts_per_request} parts "
                "(setting DICOM_MAX_PARTS_PER_REQUEST); split it into several requests"
            )
        self._spool = _new_spool(self.limits)
        self._size = 0
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._size <= self.limits.max_instance_bytes:
            self._spool.write(data[start:end])

    def _part_end(self) -> None:
        content_type = self._headers.get("content-type", "")
        media_type = MediaType.parse(content_type).type if content_type else ""
        refusal = _too_large(self.limits) if self._size > self.limits.max_instance_bytes else None
        if self._size == 0 and refusal is None:
            refusal = (CANNOT_UNDERSTAND, "the part is empty")
        self.finished.append(ReceivedPart(media_type, self._spool, self._size, refusal))
        self._spool = None

    def _end(self) -> None:
        self.ended = True

    def discard(self) -> None:
        for part in self.finished:
            part.file.close()
        self.finished.clear()
        if self._spool is not None:
            self._spool.close()
            self._spool = None


async def read_multipart(body: AsyncIterator[bytes], boundary: str, limits: Limits) -> AsyncIterator[ReceivedPart]:
    """Yield each part of a multipart/related body as soon as it is complete.

    A body that is not valid multipart before any part completes is a 400; a body
    cut short after some parts yields those parts and then an incomplete-part
    failure, so what arrived whole is still stored and reported.
    """
    collector = _PartCollector(limits)
    parser = MultipartParser(boundary.encode("latin-1"), collector.callbacks())
    limit = _Limit(limits)
    delivered = 0
    try:
        async for chunk in body:
            limit.count(chunk)
            try:
                parser.write(chunk)
            except MultipartParseError as error:
                if delivered or collector.finished:
                    collector.finished.append(_broken_part(f"the multipart body is malformed after this point: {error}"))
                    break
                raise BadRequest(
                    f"the multipart/related body is malformed ({error}): parts must be separated by "
                    "lines of '--' + the boundary given in Content-Type"
                ) from None
            while collector.finished:
                delivered += 1
                yield collector.finished.pop(0)
            if collector.ended:
                break
        else:
            if not collector.ended:
                if delivered == 0 and not collector.finished:
                    if collector.parts_seen == 0:
                        raise BadRequest(
                            "the body has no multipart part: parts must be separated by lines of '--' + the "
                            "boundary given in Content-Type"
                        )
                    raise BadRequest("the multipart/related body ends before its closing boundary")
                collector.finished.append(_broken_part("the body ended before the closing boundary: this part is incomplete"))
        while collector.finished:
            delivered += 1
            yield collector.finished.pop(0)
    finally:
        collector.discard()
    if delivered == 0:
        raise BadRequest("the multipart/related body has no parts")


def _broken_part(message: str) -> ReceivedPart:
    return ReceivedPart("", tempfile.SpooledTemporaryFile(max_size=1), 0, (CANNOT_UNDERSTAND, message))
