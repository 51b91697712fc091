"""WADO-RS routes (PS3.18 10.4): instances, metadata, frames, bulk data, rendered images, thumbnails.

Content negotiation follows PS3.18 8.7: the Accept header's entries are tried
best quality first, and the first one this resource can produce wins; none is a
406 saying what the resource offers. Bodies stream (multipart_response.py).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicom_core.dicom.frames import EXPLICIT_VR_LITTLE_ENDIAN, NATIVE_MEDIA_TYPE, SYNTAXES_BY_MEDIA_TYPE, media_type_of
from dicom_core.dicom.rendering import DEFAULT_QUALITY, RENDERED_MEDIA_TYPES, WINDOW_FUNCTIONS, RenderOptions, Viewport, Window
from dicom_core.errors import BadRequest, NotAcceptable
from dicom_core.http.context import base_url, scope_of, services_for
from dicom_core.http.errors import error_response
from dicom_core.http.multipart_response import multipart_response, zip_response
from dicom_core.http.negotiation import AcceptedType, choose, parse_accept
from dicom_core.http.routing import Route
from dicom_core.operations.retrieve import (
    AS_STORED,
    DICOM,
    Part,
    find_instance,
    retrieve_bulk_data,
    retrieve_frames,
    retrieve_instances,
    retrieve_metadata,
    retrieve_rendered,
    retrieve_thumbnail,
)
from dicom_core.storage.layout import InstanceKey

DICOM_JSON = "application/dicom+json"
ZIP = "application/zip"
MULTIPART = "multipart/related"
_WILDCARDS = ("*/*", "*", "multipart/*")
_BULK_DATA_DEPTH = 3  # sequence levels a bulk data path may go through: bulkdata/sq/item/sq/item/sq/item/tag


def _instance_key(request: Request) -> InstanceKey:
    target = scope_of(request)
    return InstanceKey(target.partition, target.study, target.series or "", target.sop or "")


def _transfer_syntax(accepted: AcceptedType, default: str = EXPLICIT_VR_LITTLE_ENDIAN) -> str:
    """The transfer-syntax parameter, default Explicit VR Little Endian (PS3.18 8.7.3.5.2)."""
    return accepted.media_type.parameters.get("transfer-syntax", default).strip()


# -- instances ---------------------------------------------------------------------------------


def _instance_rendition(header: str | None, zip_allowed: bool, single_allowed: bool) -> tuple[str, str]:
    """(response media type, transfer syntax) for a study, series or instance retrieve."""
    for accepted in parse_accept(header):
        kind = accepted.media_type.type
        if kind == MULTIPART:
            part_type = accepted.media_type.parameters.get("type", DICOM).lower()
            if part_type in (DICOM, "application/*", "*/*"):
                return MULTIPART, _transfer_syntax(accepted)
        elif kind in _WILDCARDS:
            return MULTIPART, EXPLICIT_VR_LITTLE_ENDIAN
        elif kind == ZIP and zip_allowed:
            return ZIP, AS_STORED
        elif kind == DICOM and single_allowed:
            return DICOM, _transfer_syntax(accepted)
    offered = ['multipart/related; type="application/dicom" (transfer-syntax=* or 1.2.840.10008.1.2.1)']
    offered += [ZIP] if zip_allowed else []
    offered += [DICOM] if single_allowed else []
    raise NotAcceptable(f"the Accept header allows none of the media types this resource offers: {', '.join(offered)}")


async def get_instances(request: Request) -> Response:
    """GET a study, series or instance (PS3.18 10.4.1.1.1)."""
    target = scope_of(request)
    is_instance = target.sop is not None
    media_type, transfer_syntax = _instance_rendition(request.headers.get("accept"), not is_instance, is_instance)
    services = await services_for(request)
    parts = await retrieve_instances(services, target, transfer_syntax)
    if media_type == ZIP:
        name = target.series or target.study
        return zip_response(parts, f"{name}.zip")
    if media_type == DICOM:
        part = await anext(parts)
        return StreamingResponse(part.chunks, media_type=f"{DICOM}; transfer-syntax={part.transfer_syntax}")
    return multipart_response(parts, DICOM)


# -- metadata ----------------------------------------------------------------------------------


async def get_metadata(request: Request) -> Response:
    """GET .../metadata: DICOM JSON with BulkDataURIs, ETag and If-None-Match (PS3.18 10.4.1.1.2, Annex F)."""
    target = scope_of(request)
    media_type = choose(request.headers.get("accept"), [DICOM_JSON, "application/json"])
    services = await services_for(request)
    metadata = await retrieve_metadata(services, target, base_url(request))
    headers = {"ETag": metadata.etag, "Cache-Control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), metadata.etag):
        await metadata.body.aclose()
        return Response(status_code=304, headers=headers)
    return StreamingResponse(metadata.body, media_type=media_type, headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: weak comparison of If-None-Match entries with ``etag``."""
    if not if_none_match:
        return False
    candidates = [candidate.strip().removeprefix("W/") for candidate in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


# -- frames ------------------------------------------------------------------------------------


def _frame_numbers(raw: str, maximum: int) -> list[int]:
    """``1,3,5`` as [1, 3, 5]; anything else is a 400 (PS3.18 10.4.1.1.4)."""
    if raw.count(",") >= maximum:
        raise BadRequest(
            f"the frame list names {raw.count(',') + 1} frames, more than {maximum} (setting DICOM_MAX_FRAMES_PER_REQUEST)"
        )
    numbers = []
    for item in raw.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise BadRequest(f"frame list {raw[:80]!r} is malformed: give frame numbers from 1, separated by commas")
        numbers.append(int(item))
    return numbers


def _frame_rendition(header: str | None, stored_syntax: str) -> tuple[str, str]:
    """(part media type, transfer syntax) for frames of an instance stored in ``stored_syntax``."""
    stored_type = media_type_of(stored_syntax)
    for accepted in parse_accept(header):
        kind = accepted.media_type.type
        if kind in _WILDCARDS:
            return stored_type, AS_STORED
        if kind != MULTIPART:
            continue
        part_type = accepted.media_type.parameters.get("type", NATIVE_MEDIA_TYPE).lower()
        requested = accepted.media_type.parameters.get("transfer-syntax")
        if part_type in ("*/*", "*"):
            return stored_type, requested or AS_STORED
        if part_type == NATIVE_MEDIA_TYPE:
            return NATIVE_MEDIA_TYPE, requested or EXPLICIT_VR_LITTLE_ENDIAN
        if stored_syntax in SYNTAXES_BY_MEDIA_TYPE.get(part_type, ()) and requested in (None, AS_STORED, stored_syntax):
            return part_type, AS_STORED
    raise NotAcceptable(
        f"the Accept header allows none of the media types of these frames, stored in transfer syntax {stored_syntax}: "
        f'multipart/related; type="application/octet-stream" with transfer-syntax=* or {EXPLICIT_VR_LITTLE_ENDIAN}'
        + (f', or type="{stored_type}"' if stored_type != NATIVE_MEDIA_TYPE else "")
    )


async def get_frames(request: Request) -> Response:
    """GET .../frames/{frames} (PS3.18 10.4.1.1.4): ranged reads of the lake."""
    key = _instance_key(request)
    services = await services_for(request)
    numbers = _frame_numbers(request.path_params["frames"], services.settings.limits.max_frames_per_request)
    instance = await find_instance(services, key)
    media_type, transfer_syntax = _frame_rendition(request.headers.get("accept"), instance.transfer_syntax)
    parts = await retrieve_frames(services, instance, numbers, transfer_syntax)
    return multipart_response(_with_media_type(parts, media_type), media_type)


async def _with_media_type(parts, media_type: str):
    async for part in parts:
        part.media_type = media_type
        yield part


# -- bulk data ---------------------------------------------------------------------------------


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single range of a ``Range: bytes=...`` header as [start, end), None to send everything (RFC 9110 14.2)."""
    if not header or not header.strip().lower().startswith("bytes=") or "," in header:
        return None  # absent, another unit, or several ranges: the whole value (RFC 9110 allows ignoring Range)
    first, _, last = header.strip()[6:].partition("-")
    try:
        if first.strip() == "":
            start, end = max(size - int(last), 0), size
        else:
            start = int(first)
            end = min(int(last) + 1, size) if last.strip() else size
    except ValueError:
        return None
    if start >= size or start >= end or start < 0:
        raise _RangeNotSatisfiable(size)
    return start, end


class _RangeNotSatisfiable(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


async def get_bulk_data(request: Request) -> Response:
    """GET .../bulkdata/<tag>[/<item>/<tag>...]: one bulk data value, whole or a byte range (PS3.18 10.4.1.1.5)."""
    key = _instance_key(request)
    segments = [request.path_params[f"segment{position}"] for position in range(_segment_count(request))]
    accepted = _bulk_data_rendition(request.headers.get("accept"))
    services = await services_for(request)
    bulk_data = await retrieve_bulk_data(services, key, segments)
    try:
        selected = _byte_range(request.headers.get("range"), bulk_data.size)
    except _RangeNotSatisfiable as error:
        response = error_response(416, f"the range is outside the {error.size} bytes of this bulk data")
        response.headers["Content-Range"] = f"bytes */{error.size}"
        return response
    start, end = selected or (0, bulk_data.size)
    chunks = await bulk_data.open(start, end)
    status = 206 if selected else 200
    if accepted == MULTIPART:
        return multipart_response(_iterate_one(Part(NATIVE_MEDIA_TYPE, None, chunks)), NATIVE_MEDIA_TYPE)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start)}
    if selected:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{bulk_data.size}"
    return StreamingResponse(chunks, status_code=status, media_type=NATIVE_MEDIA_TYPE, headers=headers)


def _segment_count(request: Request) -> int:
    return sum(1 for name in request.path_params if name.startswith("segment"))


def _bulk_data_rendition(header: str | None) -> str:
    """``application/octet-stream`` (single part, the default) or multipart/related of it."""
    for accepted in parse_accept(header):
        kind = accepted.media_type.type
        if kind in (NATIVE_MEDIA_TYPE, "application/*", "*/*", "*"):
            return NATIVE_MEDIA_TYPE
        if kind == MULTIPART and accepted.media_type.parameters.get("type", NATIVE_MEDIA_TYPE).lower() in (
            NATIVE_MEDIA_TYPE,
            "application/*",
            "*/*",
        ):
            return MULTIPART
    raise NotAcceptable('bulk data is offered as application/octet-stream or multipart/related; type="application/octet-stream"')


async def _iterate_one(part: Part):
    yield part


def _bulk_data_paths() -> list[str]:
    """bulkdata/{segment0}, bulkdata/{segment0}/{segment1}/{segment2}, ... up to _BULK_DATA_DEPTH sequence levels.

    Plain path parameters rather than a catch-all, so that the same templates
    work in Starlette and in Azure Functions routes.
    """
    return [
        "/bulkdata/" + "/".join(f"{{segment{position}}}" for position in range(1 + 2 * depth))
        for depth in range(_BULK_DATA_DEPTH + 1)
    ]


# -- rendered and thumbnails -------------------------------------------------------------------


def _render_options(request: Request) -> RenderOptions:
    """The PS3.18 8.3.5.1 query parameters: quality, window, viewport (others are ignored)."""
    media_type = choose(request.headers.get("accept"), list(RENDERED_MEDIA_TYPES))
    query = request.query_params
    quality = _integer(query.get("quality", str(DEFAULT_QUALITY)), "quality")
    if not 1 <= quality <= 100:
        raise BadRequest(f"quality {quality} is out of range: give 1 to 100")
    return RenderOptions(media_type, quality, _window(query.get("window")), _viewport(query.get("viewport")))


def _integer(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} {raw[:40]!r} is not an integer") from None


def _window(raw: str | None) -> Window | None:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.4)."""
    if raw is None:
        return None
    values = [value.strip() for value in raw.split(",")]
    function = values[2].lower() if len(values) == 3 else "linear"
    try:
        center, width = float(values[0]), float(values[1])
    except (ValueError, IndexError):
        center = width = float("nan")
    if len(values) not in (2, 3) or center != center or width != width or width <= 0 or function not in WINDOW_FUNCTIONS:
        raise BadRequest(
            f"window {raw[:80]!r} is malformed: give center,width,function with a positive width and function one of "
            + ", ".join(WINDOW_FUNCTIONS)
        )
    return Window(center, width, function)


def _viewport(raw: str | None) -> Viewport | None:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3)."""
    if raw is None:
        return None
    values = [value.strip() for value in raw.split(",")]
    if len(values) not in (2, 6) or not all(value.isdigit() for value in values) or int(values[0]) < 1 or int(values[1]) < 1:
        raise BadRequest(
            f"viewport {raw[:80]!r} is malformed: give vw,vh (positive integers) or vw,vh,sx,sy,sw,sh (non-negative)"
        )
    numbers = [int(value) for value in values]
    region = tuple(numbers[2:]) if len(numbers) == 6 else None
    if region is not None and (region[2] < 1 or region[3] < 1):
        raise BadRequest(f"viewport {raw[:80]!r}: the source region's width and height must be positive")
    return Viewport(numbers[0], numbers[1], region)  # type: ignore[arg-type]


async def get_rendered(request: Request) -> Response:
    """GET .../rendered on an instance (its first frame) or on a frame (PS3.18 10.4.1.1.3)."""
    key = _instance_key(request)
    services = await services_for(request)
    numbers = _frame_numbers(request.path_params.get("frames", "1"), services.settings.limits.max_frames_per_request)
    if len(numbers) != 1:
        raise BadRequest("a rendered frame request names exactly one frame")
    options = _render_options(request)
    instance = await find_instance(services, key)
    image = await retrieve_rendered(services, instance, numbers[0], options)
    return Response(image, media_type=options.media_type)


async def get_thumbnail(request: Request) -> Response:
    """GET .../thumbnail on a study, series or instance: a small rendering of a representative image."""
    target = scope_of(request)
    options = _render_options(request)
    services = await services_for(request)
    return Response(await retrieve_thumbnail(services, target, options), media_type=options.media_type)


_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

ROUTES = [
    Route("retrieve_study", _STUDY, ("GET",), get_instances),
    Route("retrieve_series", _SERIES, ("GET",), get_instances),
    Route("retrieve_instance", _INSTANCE, ("GET",), get_instances),
    Route("retrieve_study_metadata", _STUDY + "/metadata", ("GET",), get_metadata),
    Route("retrieve_series_metadata", _SERIES + "/metadata", ("GET",), get_metadata),
    Route("retrieve_instance_metadata", _INSTANCE + "/metadata", ("GET",), get_metadata),
    Route("retrieve_frames", _INSTANCE + "/frames/{frames}", ("GET",), get_frames),
    Route("retrieve_instance_rendered", _INSTANCE + "/rendered", ("GET",), get_rendered),
    Route("retrieve_frame_rendered", _INSTANCE + "/frames/{frames}/rendered", ("GET",), get_rendered),
    Route("retrieve_study_thumbnail", _STUDY + "/thumbnail", ("GET",), get_thumbnail),
    Route("retrieve_series_thumbnail", _SERIES + "/thumbnail", ("GET",), get_thumbnail),
    Route("retrieve_instance_thumbnail", _INSTANCE + "/thumbnail", ("GET",), get_thumbnail),
    *(
        Route(f"retrieve_bulk_data_{depth}", _INSTANCE + path, ("GET",), get_bulk_data)
        for depth, path in enumerate(_bulk_data_paths())
    ),
]
